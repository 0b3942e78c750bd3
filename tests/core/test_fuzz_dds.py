"""Seeded DDS mutants (issue 24) through ``read_image``, with scripts/fuzz.py's mutators and its decode engine (a
child process per batch: a hang, a crash or a memory blow-up is a finding), plus mutants aimed at the header
fields that hold sizes and counts (width, height, pitch, depth, mip count, pixel format, caps, the DX10 fields).

Every mutant must decode to the shape and type its header promises or be refused in one line naming the file.
tests/core/test_fuzz.py runs scripts/fuzz.py's own DDS seeds (six) with every other format's, through the decode
engine and a ``texup upscale`` batch; this file adds every DDS pixel format and the aimed mutants.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from realdata import real_image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import fuzz  # noqa: E402

from texup.imageio import ImageInfo, write_image  # noqa: E402

SEED = 24
MUTANTS = 264  # 2 x 12 seeds x 11 (generic) + as many aimed at header fields
_FIELDS = (12, 16, 20, 24, 28, 80, 84, 88, 92, 96, 100, 104, 108, 112, 128, 132, 136, 140, 144)
_VALUES = (0, 1, 2, 3, 4, 6, 7, 13, 31, 32, 64, 0x7F, 0x200, 0xFE00, 0x200000, 16384, 65535, 0x7FFFFFFF, 0xFFFFFFFF)


def _seeds(folder: Path) -> list[tuple[str, str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = real_image("coffee.png", (40, 60, 13, 21))  # odd sizes: partial blocks
    alpha = (np.arange(13 * 21).reshape(13, 21, 1) * 7 % 256).astype(np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    linear = (rgb.astype(np.float32) / 255) ** 2.2 * 4
    cases = [
        ("bc1", rgba, {}),
        ("bc2", rgba, {}),
        ("bc3", rgba, {"dds_dx10": True}),
        ("bc4", rgb[:, :, :1], {}),
        ("bc5", rgb, {}),
        ("bc6h", linear, {}),
        ("bc7", rgba, {"dds_srgb": True}),
        ("rgba8", rgba, {}),
        ("bgrx8", rgb, {"dds_mipmaps": 1}),
        ("r16", rgb[:, :, :1].astype(np.uint16) * 257, {}),
        ("rg8", rgb, {}),
        ("rgba16f", np.concatenate([linear, alpha / 255], axis=2).astype(np.float32), {}),
    ]
    out = []
    for fmt, pixels, extra in cases:
        path = folder / f"dds_{fmt}.dds"
        write_image(path, pixels, like=ImageInfo(None, "dds", 1, 1, 4, "uint8", "srgb", {"dds_format": fmt, **extra}))
        out.append((f"dds_{fmt}", "dds", path))
    return out


def _aimed(seeds: list[tuple[str, str, Path]], count: int, rng: np.random.Generator, folder: Path) -> list:
    """Mutants with one or two header fields (u32) set to values that break sizes and counts."""
    out = []
    for i in range(count):
        name, fmt, path = seeds[i % len(seeds)]
        data = bytearray(path.read_bytes())
        hows = []
        for _ in range(int(rng.integers(1, 3))):
            offset = int(rng.choice(_FIELDS))
            value = int(rng.choice(_VALUES))
            if offset + 4 <= len(data):
                struct.pack_into("<I", data, offset, value)
                hows.append(f"u32@{offset}={value:#x}")
        if rng.random() < 0.3:  # and a cut through the blocks
            cut = int(rng.integers(128, len(data)))
            data = data[:cut]
            hows.append(f"truncate {cut}")
        target = folder / f"a{i:05d}_{name}.dds"
        target.write_bytes(bytes(data))
        out.append(fuzz.Mutant(target, fmt, name, "; ".join(hows)))
    return out


@pytest.mark.parametrize("kind", ["generic", "aimed"])
def test_dds_mutants_decode_to_their_header_or_are_refused_naming_the_file(tmp_path, kind):
    seeds = _seeds(tmp_path / "seeds")
    rng = np.random.default_rng(SEED)
    folder = tmp_path / "mutants"
    folder.mkdir()
    if kind == "generic":
        mutants = fuzz.make_mutants(seeds, MUTANTS, rng, folder)
    else:
        mutants = _aimed(seeds, MUTANTS, rng, folder)
    results = fuzz.decode_all(mutants, tmp_path, per_file_timeout=20)
    findings = [
        f"{r.outcome}: {r.mutant.path.name} ({r.mutant.how}): {r.detail}"
        for r in results
        if r.outcome not in ("decoded", "refused")
    ]
    assert not findings, "\n".join(findings)
    refused = [r for r in results if r.outcome == "refused"]
    decoded = [r for r in results if r.outcome == "decoded"]
    assert len(refused) > len(results) // 4 and decoded, (len(refused), len(decoded))
    reasons = {r.detail.split(" (")[0].split(":")[0] for r in refused}
    assert any("DDS" in reason for reason in reasons), reasons  # DDS's own checks answer, not a decoder's crash
