"""Seeded fuzzing (issue 11): mutated PNG/JPEG/TIFF/EXR/WebP/TGA/BMP/DDS files through ``read_image`` and one
``texup upscale`` batch, and garbage request lines through one ``python -m texup worker``; damaged output-folder
state (manifest, journals, FIFOs and links in ``.texup``; issue 21) through texup's and the add-on's readers.

The engines live in scripts/fuzz.py (which runs them longer); here a fixed seed and small counts keep the
run deterministic and under a minute on a 2-core machine. Regression tests for what the fuzzing found follow.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import fuzz  # noqa: E402

from texup.errors import ImageReadError  # noqa: E402
from texup.imageio import FORMATS, read_image  # noqa: E402
from texup.worker import protocol  # noqa: E402
from texup.worker.protocol import ProtocolError  # noqa: E402

SEED = 11
FILE_MUTANTS = 840  # 30 per seed
CLI_MUTANTS = 84  # 3 per seed
WORKER_LINES = 200


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[tuple[str, str, Path]]]:
    work = tmp_path_factory.mktemp("fuzz")
    return work, fuzz.make_seeds(work / "seeds")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_seeds_cover_every_format_and_decode(corpus):
    _, seeds = corpus
    assert {fmt for _, fmt, _ in seeds} == set(FORMATS)
    dtypes = set()
    for name, fmt, path in seeds:
        image = read_image(path)
        assert image.info.format == fmt, name
        assert max(image.info.width, image.info.height) <= 32
        dtypes.add(image.info.dtype)
    assert dtypes == {"uint8", "uint16", "float16", "float32"}


def test_mutation_is_deterministic(corpus):
    _, seeds = corpus
    data = seeds[0][2].read_bytes()
    a = [fuzz.mutate(data, "png", np.random.default_rng(5)) for _ in range(3)]
    b = [fuzz.mutate(data, "png", np.random.default_rng(5)) for _ in range(3)]
    assert a == b and a[0][0] != data


def test_mutated_files_decode_to_their_header_or_are_refused_naming_the_file(corpus):
    work, seeds = corpus
    mutants = fuzz.make_mutants(seeds, FILE_MUTANTS, np.random.default_rng(SEED), work / "decode")
    before = _listing(work / "decode")
    results = fuzz.decode_all(mutants, work, per_file_timeout=20)
    findings = [
        f"{r.outcome}: {r.mutant.path.name} ({r.mutant.how}): {r.detail}"
        for r in results
        if r.outcome not in ("decoded", "refused")
    ]
    assert not findings, "\n".join(findings)
    table = fuzz.summarize(results)
    assert set(table) == set(FORMATS)
    assert all(row["refused"] > 0 for row in table.values()), table  # the damage reaches every reader
    assert sum(row["decoded"] for row in table.values()) > 0
    assert _listing(work / "decode") == before  # reading leaves nothing behind


def test_one_upscale_batch_over_mutants_reports_each_bad_file_once_and_goes_on(corpus):
    work, seeds = corpus
    mutants = fuzz.make_mutants(seeds, CLI_MUTANTS, np.random.default_rng(SEED + 1), work / "cli-mutants")
    report = fuzz.run_cli_batch(mutants, work, timeout=300)
    assert not report.problems, "\n".join(report.problems) + "\n" + report.stderr[-3000:]
    assert report.written + report.failed == report.inputs == CLI_MUTANTS
    assert report.written > 0 and report.failed > 0 and report.returncode == 1


def test_the_worker_survives_garbage_lines_and_answers_after_each(corpus):
    work, seeds = corpus
    valid = [path for _, fmt, path in seeds if fmt in ("png", "tga", "exr")]
    lines = fuzz.worker_lines(np.random.default_rng(SEED + 2), WORKER_LINES, work / "worker", valid)
    report = fuzz.run_worker_fuzz(lines, work / "worker", line_timeout=60)
    assert not report.problems, "\n".join(report.problems)
    assert report.exit_code == 0
    assert report.jobs > 50 and report.kinds.get("ProtocolError", 0) > 50
    assert {"ImageReadError", "FileError"} <= set(report.kinds)  # hostile items reached the item checks


MANIFEST_CASES = 150


def test_damaged_output_folder_state_is_named_never_followed_never_a_hang(tmp_path):
    """Issue 21 items 2-5: damaged manifests and journals (bytes and JSON), FIFOs, links and folders in .texup, read
    by texup and by the add-on, then written to and saved."""
    report = fuzz.run_manifest_fuzz(np.random.default_rng(SEED + 3), MANIFEST_CASES, tmp_path, timeout=600)
    assert not report.problems, "\n".join(report.problems)
    assert report.cases == MANIFEST_CASES and set(report.kinds) == {"manifest", "journal", "swap"}


def test_the_manifest_harness_finds_a_reader_that_follows_links_or_blocks(tmp_path, monkeypatch):
    import texup.outputs as outputs

    def blind(path, offset=0):  # the old reader: blocks on a FIFO
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()

    with monkeypatch.context() as patch:
        patch.setattr(outputs, "_plain_dir", lambda path: path.is_dir())  # follows a linked .texup
        case = fuzz.ManifestCase(0, "state -> link-dir", None, None, ("state", "link-dir"))
        problems = fuzz._manifest_case(case, tmp_path)
    assert any("outside the output folder was changed" in p for p in problems), problems
    monkeypatch.setattr(outputs, "_read_plain", blind)
    monkeypatch.setattr(fuzz, "_HANG_S", 1)
    case = fuzz.ManifestCase(1, "journal -> fifo", None, None, ("journal", "fifo"))
    assert any("hang" in p for p in fuzz._manifest_case(case, tmp_path)), "a FIFO read was not caught"


def test_the_decode_harness_catches_hangs_crashes_and_wrong_exceptions(corpus, tmp_path, monkeypatch):
    _, seeds = corpus
    monkeypatch.setenv("TEXUP_FUZZ_SELFTEST", "1")
    files = []
    for name in ("a.png", "selftest-hang.png", "selftest-typeerror.png", "selftest-exit.png", "b.png"):
        target = tmp_path / name
        target.write_bytes(seeds[0][2].read_bytes())
        files.append(fuzz.Mutant(target, "png", "png_rgb8", "copy"))
    outcomes = [r.outcome for r in fuzz.decode_all(files, tmp_path, per_file_timeout=3)]
    assert outcomes == ["decoded", "hang", "other-exception", "other-exception", "decoded"]


# --- regressions found by the fuzzing --------------------------------------------------------------------------


def test_a_lone_surrogate_in_an_echoed_id_does_not_stop_the_worker():
    """``{"id": "\\ud800"}`` is valid JSON; echoing it made the UTF-8 protocol stream raise UnicodeEncodeError,
    which the worker took for a closed pipe: it stopped and the next ping went unanswered."""
    from texup.worker.server import WorkerServer

    lines = b'{"type": "ping", "id": "\\ud800"}\n{"type": "nope", "id": "\\udfff x"}\n{"type": "ping", "id": "after"}\n'
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", newline="\n", write_through=True)
    server = WorkerServer(io.BytesIO(lines), out, get_upscaler=lambda *a, **k: None)
    runner = threading.Thread(target=server.serve, daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    events = [json.loads(line) for line in raw.getvalue().decode("utf-8").splitlines()]
    assert [(e["type"], e["id"]) for e in events] == [("pong", "\ud800"), ("error", "\udfff x"), ("pong", "after")]
    assert protocol.decode(protocol.encode({"type": "pong", "id": "\ud800é"}))["id"] == "\ud800é"
    assert protocol.encode({"type": "pong", "id": "é"}) == '{"type":"pong","id":"é"}'  # UTF-8 kept otherwise


def test_numbers_json_accepts_but_texup_cannot_use_are_protocol_errors():
    # More than 4300 digits: json.loads raised a bare ValueError (an error event with a traceback).
    with pytest.raises(ProtocolError, match="not usable JSON"):
        protocol.decode('{"type": "ping", "id": ' + "1" * 5000 + "}")
    # NaN passes every comparison, so scale NaN was accepted and failed later per item, with a traceback.
    with pytest.raises(ProtocolError, match="scale"):
        protocol.parse_options({"scale": float("nan")})
    with pytest.raises(ProtocolError, match="tile"):
        protocol.parse_options({"tile": float("inf")})
    # An integer too large for a float raised OverflowError from the integer check: the job got no `done`.
    assert protocol.parse_options({"tile": 10**400}).tile == 10**400
    with pytest.raises(ProtocolError, match="overlap"):
        protocol.parse_options({"tile": 64, "overlap": 10**400})


def test_the_worker_finishes_a_job_with_a_huge_integer_option_with_done(tmp_path):
    from texup.worker.server import WorkerServer

    line = (
        '{"type": "upscale", "id": "j", "options": {"overlap": 1' + "0" * 400 + ', "tile": 64}, "items": []}\n'
        '{"type": "upscale", "id": "k", "options": {"scale": NaN}, "items": []}\n'
    ).encode()
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", newline="\n", write_through=True)
    server = WorkerServer(io.BytesIO(line), out, get_upscaler=lambda *a, **k: None)
    server.serve()
    events = [json.loads(text) for text in raw.getvalue().decode("utf-8").splitlines()]
    assert [(e["type"], e["id"]) for e in events] == [("error", "j"), ("done", "j"), ("error", "k"), ("done", "k")]
    assert all(e["kind"] == "ProtocolError" and not e["traceback"] for e in events if e["type"] == "error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_image_refuses_a_fifo_instead_of_blocking_on_it(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_image(fifo)
        except BaseException as err:  # noqa: BLE001 - recorded for the assertion
            result.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the open() so the thread ends, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("read_image blocked on a FIFO")
    assert isinstance(result[0], ImageReadError) and str(result[0]).startswith(f"{fifo}: not a regular file")


def test_bytes_of_a_damaged_file_quoted_in_a_reason_stay_on_one_line(corpus, tmp_path):
    """A PNG chunk type or EXR attribute name holding a line break used to split `texup: error: <file>: ...`."""
    import struct

    from texup.imageio import probe_image

    _, seeds = corpus
    png = dict((name, path) for name, _, path in seeds)["png_rgb8"].read_bytes()
    bad_png = tmp_path / "chunk.png"
    bad_png.write_bytes(png[:33] + struct.pack(">I", 10**6) + b"a\nb\x8d" + png[41:])
    bad_exr = tmp_path / "attr.exr"
    bad_exr.write_bytes(b"\x76\x2f\x31\x01" + struct.pack("<I", 2) + b"ch\nx\x00chlist\x00" + struct.pack("<i", 10**9))
    for path, quoted in ((bad_png, "a\\nb\\x8d chunk runs past the end"), (bad_exr, "attribute ch\\nx claims")):
        for reader in (read_image, probe_image):
            with pytest.raises(ImageReadError) as caught:
                reader(path)
            text = str(caught.value)
            assert text.startswith(f"{path}: ") and text.isprintable() and quoted in text, text


def test_a_boolean_id_is_refused_like_any_other_non_string_id():
    """``"id": false`` passed the integer check (bool is an int) and ran as job "False"."""
    for value in (True, False):
        with pytest.raises(ProtocolError, match="'id'"):
            protocol.decode(json.dumps({"type": "upscale", "id": value, "items": []}))
    assert protocol.decode('{"type": "ping", "id": 0}')["id"] == 0


def test_an_overlap_beyond_the_image_or_the_automatic_tile_is_capped_not_obeyed():
    """Found by the fuzzer: overlap 1000 on a 20x28 image took 81 s; 10**6 asked for a 43.7 TiB buffer."""
    import time

    import numpy as np

    import texup
    from texup.inference.pipeline import UpscaleOptions

    upscaler = texup.Upscaler("realesr-animevideov3", engine="ncnn")
    pixels = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
    reference = upscaler.upscale_array(pixels, UpscaleOptions(overlap=28))
    start = time.perf_counter()
    for overlap in (1000, 10**6):
        assert np.array_equal(upscaler.upscale_array(pixels, UpscaleOptions(overlap=overlap)), reference)
    assert time.perf_counter() - start < 20
