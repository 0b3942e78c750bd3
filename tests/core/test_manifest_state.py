"""The output folder's state under damage and attack (issue 21 items 2-5, 12): FIFOs and links in ``.texup``, saves
that fail, damaged manifests and journals, claims of runs sharing a folder, SIGTERM. Each test failed before the
fix it names."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from texup.archs import RRDBNet
from texup.cli.main import main
from texup.imageio import write_image
from texup.outputs import CLAIMED, CLAIMED_AFTER_OTHER, HELD, ManifestError, OutputRecord
from texup.weights import save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "blender_addon"))
from bridge.manifest import OutputsView, pixel_options  # noqa: E402

TEXUP = [sys.executable, "-m", "texup"]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    return save_model(net, tmp_path_factory.mktemp("model") / "tiny_x4.safetensors", provenance={"test": "state"})


def _library(folder: Path, count: int, size: int = 20) -> list[Path]:
    rng = np.random.default_rng(count)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"t{i:03d}.png"
        write_image(path, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        paths.append(path)
    then = time.time() - 10  # old enough for their hashes to be trusted by size and mtime
    for path in paths:
        os.utime(path, (then, then))
    return paths


def _command(lib: Path, out: Path, model: Path) -> list[str]:
    return [*TEXUP, "upscale", str(lib), "-o", str(out), "--model", str(model), "--engine", "torch", "--device", "cpu"]


def _run(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``texup ARGS`` in a child process: a hang fails the test at ``timeout`` instead of blocking it."""
    return subprocess.run([*TEXUP, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _upscale(
    lib: Path, out: Path, model: Path, *extra: object, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return _run(
        "upscale", lib, "-o", out, "--model", model, "--engine", "torch", "--device", "cpu", *extra, timeout=timeout
    )


def _summary(err: str) -> str:
    return [line for line in err.splitlines() if " upscaled, " in line][-1]


def _counts(err: str) -> tuple[int, int]:
    """(upscaled, up to date) from a run's summary line."""
    found = re.search(r"texup: (\d+) upscaled, (\d+) up to date", _summary(err))
    assert found, err
    return int(found.group(1)), int(found.group(2))


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def _one_entry_folder(tmp_path: Path) -> tuple[Path, Path]:
    """An output folder whose manifest records ``a.png`` (matching the file)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"an output")
    record = OutputRecord(out)
    record.add(out / "a.png", source_sha256="s")
    record.save()
    return out, out / "a.png"


@contextmanager
def _in_time(seconds: float = 20.0):
    """Fail (instead of hanging the test run) when the block does not finish in time; the block runs on a daemon
    thread, so a blocked ``open`` cannot keep pytest from ending."""
    box: dict[str, object] = {}

    def call(fn):
        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - handed to the test
                box["error"] = err

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(seconds)
        assert not thread.is_alive(), f"blocked for {seconds} s"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("value")

    yield call


# --- item 2: FIFOs ---------------------------------------------------------------------------------------------


@needs_fifo
def test_a_fifo_in_place_of_the_manifest_or_a_journal_never_blocks(tmp_path):
    out, output = _one_entry_folder(tmp_path)
    (out / ".texup" / "outputs.json").unlink()
    os.mkfifo(out / ".texup" / "outputs.json")
    (out / ".texup" / "journal").mkdir()
    os.mkfifo(out / ".texup" / "journal" / "123-abc.jsonl")
    with _in_time() as call:
        record = call(lambda: OutputRecord(out))
        assert any("outputs.json is a FIFO" in w for w in record.warnings), record.warnings
        record.put("b.png", {"size": 1, "mtime_ns": 1})
        call(record.save)  # the FIFO is moved aside, a plain manifest written
        view = call(lambda: OutputsView(str(out)))
    assert (out / ".texup" / "outputs.json").is_file()
    assert (out / ".texup" / "outputs.json.damaged").is_fifo()
    assert (out / ".texup" / "journal" / "123-abc.jsonl").is_fifo()  # not read, not deleted
    assert view.problems == [] and view.entry(str(output)) is None  # the FIFO manifest's records are gone


@needs_fifo
def test_a_fifo_lock_or_journal_does_not_hang_a_cli_run(tiny_model, tmp_path):
    lib = _library(tmp_path / "lib", 2)
    out = tmp_path / "out"
    (out / ".texup" / "journal").mkdir(parents=True)
    os.mkfifo(out / ".texup" / "journal" / "1-dead.jsonl")
    os.mkfifo(out / ".texup" / "outputs.json")
    proc = _upscale(tmp_path / "lib", out, tiny_model, timeout=120)
    _no_traceback(proc)
    assert proc.returncode == 0 and _counts(proc.stderr) == (2, 0), proc.stderr
    assert "texup: warning:" in proc.stderr and "outputs.json is a FIFO" in proc.stderr
    assert OutputRecord(out).wrote(out / f"{lib[0].stem}_x4.png")
    (out / ".texup" / "lock").unlink()
    os.mkfifo(out / ".texup" / "lock")
    lib[0].write_bytes(lib[1].read_bytes())  # changed: the run must write, so it needs the lock
    proc = _upscale(tmp_path / "lib", out, tiny_model, timeout=120)
    _no_traceback(proc)
    assert proc.returncode == 1 and "lock is a FIFO" in proc.stderr and "nothing was upscaled" in proc.stderr


def test_the_add_on_reader_never_hashes_a_fifo_source(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs")
    out, output = _one_entry_folder(tmp_path)
    fifo = tmp_path / "src.png"
    os.mkfifo(fifo)
    entry = json.loads((out / ".texup" / "outputs.json").read_text())["files"]["a.png"]
    options = pixel_options(scale=4)
    entry.update(texup="1", options=options, model_ref="m", model_files=[{"path": str(output), **_stat(output)}])
    (out / ".texup" / "outputs.json").write_text(json.dumps({"files": {"a.png": entry}}))
    with _in_time() as call:
        view = call(lambda: OutputsView(str(out)))
        why = call(lambda: view.why_not_current(str(output), source=str(fifo), model="m", options=options, texup="1"))
    assert why == "source unreadable"


def _stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def test_the_add_on_reads_entries_as_texup_does():
    import bridge.manifest as addon

    import texup.outputs as outputs

    assert addon.ENTRY_FIELDS == outputs.ENTRY_FIELDS
    for key in ("a.png", "sub/b.png", "../a.png", "/abs.png", "a\0.png", ".texup/x", "", "a//b", "C:/x", "a\\b", 5):
        assert addon.valid_key(key) == outputs.valid_key(key), key


# --- item 3: a save that fails keeps the journals ----------------------------------------------------------------


def test_a_manifest_save_that_fails_keeps_the_journal_and_the_next_run_owns_the_outputs(tiny_model, tmp_path):
    lib = _library(tmp_path / "lib", 3)
    out = tmp_path / "out"
    (out / ".texup" / "outputs.json").mkdir(parents=True)  # a folder in the manifest's place
    proc = _upscale(tmp_path / "lib", out, tiny_model)
    _no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("texup: error:")]
    assert len(errors) == 1 and "outputs.json" in errors[0] and "stay recorded in its journal" in errors[0]
    assert _counts(proc.stderr) == (3, 0)
    (out / ".texup" / "outputs.json").rmdir()
    again = _upscale(tmp_path / "lib", out, tiny_model)
    assert again.returncode == 0 and _counts(again.stderr) == (0, 3), again.stderr  # not "not texup's output"
    record = OutputRecord(out)
    assert all(record.wrote(out / f"{p.stem}_x4.png") for p in lib)
    assert list((out / ".texup" / "journal").iterdir()) == []  # folded once saved


def test_a_disk_full_save_keeps_ended_runs_journals(tmp_path, monkeypatch):
    import texup.outputs as outputs_module

    out = tmp_path / "out"
    (out / ".texup" / "journal").mkdir(parents=True)
    (out / "dead.png").write_bytes(b"written by a killed run")
    line = {"key": "dead.png", "entry": {"source_sha256": "s", **_stat(out / "dead.png")}}
    journal = out / ".texup" / "journal" / "1-dead.jsonl"
    journal.write_text(json.dumps(line) + "\n")
    record = OutputRecord(out)
    record.put("other.png", {"size": 1, "mtime_ns": 1})

    @contextmanager
    def disk_full(path):
        raise OSError(errno.ENOSPC, "No space left on device")
        yield

    monkeypatch.setattr(outputs_module, "atomic_path", disk_full)
    with pytest.raises(ManifestError, match="No space left on device"):
        record.save()
    record.put("third.png", {"size": 1, "mtime_ns": 1}, save_every=0.0)  # a periodic save: no exception
    assert isinstance(record.save_error, ManifestError)
    assert journal.exists() and OutputRecord(out).wrote(out / "dead.png")
    monkeypatch.undo()
    record.save()
    assert not journal.exists() and OutputRecord(out).wrote(out / "dead.png")


# --- item 4: links in .texup are not followed ----------------------------------------------------------------


def test_a_linked_journal_folder_is_never_emptied(tmp_path):
    out, output = _one_entry_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "precious.jsonl"
    victim.write_text('{"key": "a.png", "entry": {"size": 1, "mtime_ns": 1}}\n')
    os.symlink(elsewhere, out / ".texup" / "journal")
    record = OutputRecord(out)
    assert any("journal is a link" in w for w in record.warnings), record.warnings
    record.put("b.png", {"size": 1, "mtime_ns": 1})
    record.save()
    assert victim.exists()
    with pytest.raises(ManifestError, match="journal is a link"):
        record.open_journal()
    assert victim.exists() and list(elsewhere.iterdir()) == [victim]


def test_a_dangling_lock_link_does_not_create_its_target(tmp_path):
    out, _ = _one_entry_folder(tmp_path)
    target = tmp_path / "not-here" / "made-by-texup"
    target.parent.mkdir()
    (out / ".texup" / "lock").unlink()
    os.symlink(target, out / ".texup" / "lock")
    record = OutputRecord(out)
    record.put("b.png", {"size": 1, "mtime_ns": 1})
    with pytest.raises(ManifestError, match="lock is a link"):
        record.save()
    assert not target.exists()


def test_a_linked_state_folder_keeps_the_manifest_inside_the_output_folder(tiny_model, tmp_path):
    lib = _library(tmp_path / "lib", 1)
    elsewhere = tmp_path / "elsewhere"
    other = tmp_path / "other"
    other.mkdir()
    (other / "t000_x4.png").write_bytes(b"someone else's file")
    record = OutputRecord(other)
    record.add(other / "t000_x4.png")
    record.save()
    os.rename(other / ".texup", elsewhere)
    out = tmp_path / "out"
    out.mkdir()
    os.replace(other / "t000_x4.png", out / "t000_x4.png")
    os.symlink(elsewhere, out / ".texup")
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir() if p.is_file()}
    view = OutputRecord(out)
    assert not view.wrote(out / "t000_x4.png")  # the linked manifest is not read
    assert any(".texup is a link" in w for w in view.warnings)
    proc = _upscale(tmp_path / "lib", out, tiny_model, "--overwrite")
    _no_traceback(proc)
    assert proc.returncode == 1 and ".texup is a link" in proc.stderr and "nothing was upscaled" in proc.stderr
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir() if p.is_file()} == before
    assert (out / "t000_x4.png").read_bytes() == b"someone else's file" and len(lib) == 1


def test_a_linked_manifest_or_journal_file_is_not_read_nor_written_through(tmp_path):
    out, output = _one_entry_folder(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_text((out / ".texup" / "outputs.json").read_text())
    (out / ".texup" / "outputs.json").unlink()
    os.symlink(outside, out / ".texup" / "outputs.json")
    (out / ".texup" / "journal").mkdir()
    outside_journal = tmp_path / "outside.jsonl"
    outside_journal.write_text(json.dumps({"key": "a.png", "entry": _stat(output)}) + "\n")
    os.symlink(outside_journal, out / ".texup" / "journal" / "1-x.jsonl")
    before = outside.read_bytes()
    record = OutputRecord(out)
    assert not record.wrote(output)
    assert any("outputs.json is a link" in w for w in record.warnings), record.warnings
    assert OutputsView(str(out)).entry(str(output)) is None
    record.put("b.png", {"size": 1, "mtime_ns": 1})
    record.save()
    assert outside.read_bytes() == before and outside_journal.exists()
    assert not (out / ".texup" / "outputs.json").is_symlink()


# --- item 5: a damaged manifest is named, and what can be read is kept ------------------------------------------


def test_a_truncated_manifest_is_named_and_its_readable_entries_kept(tiny_model, tmp_path):
    lib = _library(tmp_path / "lib", 4)
    out = tmp_path / "out"
    first = _upscale(tmp_path / "lib", out, tiny_model)
    assert first.returncode == 0, first.stderr
    manifest = out / ".texup" / "outputs.json"
    text = manifest.read_text()
    cut = text.index('"t002_x4.png"')  # the first two entries are whole
    manifest.write_text(text[:cut])
    rerun = _upscale(tmp_path / "lib", out, tiny_model)
    _no_traceback(rerun)
    warnings = [line for line in rerun.stderr.splitlines() if line.startswith("texup: warning:")]
    assert len(warnings) == 1 and str(manifest) in warnings[0] and "not valid JSON" in warnings[0], rerun.stderr
    assert "2 entries could still be read" in warnings[0]
    refused = [line for line in rerun.stderr.splitlines() if line.startswith("texup: error:")]
    assert len(refused) == 2 and all("manifest" in line and "damaged" in line for line in refused), refused
    assert rerun.returncode == 1 and _counts(rerun.stderr) == (0, 2)
    assert (out / ".texup" / "outputs.json.damaged").read_text() == text[:cut]
    view = OutputsView(str(out))
    assert view.entry(str(out / "t000_x4.png")) is not None and lib


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe garbage \x00\x81",
        b"[]",
        b'"a string"',
        b'{"files": []}',
        b'{"files": {"a.png": "not an entry"}}',
        b"[" * 100_000,
        b'{"files": {"a.png": {"size": 1e400, "mtime_ns": ' + b"9" * 5000 + b"}}}",
    ],
    ids=["binary", "list", "string", "files-list", "entry-string", "deep", "huge-numbers"],
)
def test_garbage_or_wrong_shaped_manifests_are_named_never_a_traceback(tmp_path, content):
    out, output = _one_entry_folder(tmp_path)
    (out / ".texup" / "outputs.json").write_bytes(content)
    record = OutputRecord(out)
    assert len(record.warnings) == 1 and "outputs.json" in record.warnings[0] and "\n" not in record.warnings[0]
    assert not record.wrote(output) and record.damage_note
    view = OutputsView(str(out))
    assert view.entry(str(output)) is None and len(view.problems) == 1
    record.put("b.png", {"size": 1, "mtime_ns": 1})
    record.save()
    assert (out / ".texup" / "outputs.json.damaged").read_bytes() == content
    assert OutputRecord(out).warnings == []


def test_wrong_typed_fields_are_ignored_not_tracebacks(tiny_model, tmp_path):
    _library(tmp_path / "lib", 2)
    out = tmp_path / "out"
    assert _upscale(tmp_path / "lib", out, tiny_model).returncode == 0
    manifest = out / ".texup" / "outputs.json"
    data = json.loads(manifest.read_text())
    for entry in data["files"].values():
        entry["hashed_ns"] = "yesterday"  # int() of it was a ValueError traceback in source_state
        entry["options"] = 7
    for cached in data["hashes"].values():
        cached["hashed_ns"] = None  # the model's cached hash: int(None) was a TypeError traceback
        cached["sha256"] = 12
    data["files"]["bad\u0000name.png"] = {"size": 1, "mtime_ns": 2}  # a NUL: stat() raised ValueError
    data["files"]["../escape.png"] = {"size": 1, "mtime_ns": 2}
    manifest.write_text(json.dumps(data, indent=1))
    rerun = _upscale(tmp_path / "lib", out, tiny_model)
    _no_traceback(rerun)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 changed and redone (2 options changed)" in _summary(rerun.stderr)  # the options were unreadable
    warning = [line for line in rerun.stderr.splitlines() if line.startswith("texup: warning:")]
    assert len(warning) == 1 and "2 unreadable (dropped)" in warning[0] and "wrong type" in warning[0], warning


def test_invalid_utf8_or_deep_nesting_in_a_journal_is_skipped_with_a_warning(tmp_path):
    out, output = _one_entry_folder(tmp_path)
    (out / ".texup" / "journal").mkdir()
    (out / "b.png").write_bytes(b"a killed run's output")
    good = json.dumps({"key": "b.png", "entry": _stat(out / "b.png")}).encode()
    (out / ".texup" / "journal" / "1-x.jsonl").write_bytes(b"\xff\xfe\xfd\n" + b"[" * 50_000 + b"\n" + good + b"\n")
    record = OutputRecord(out)
    assert record.wrote(out / "b.png") and record.wrote(output)
    assert any("2 damaged lines skipped" in w for w in record.warnings), record.warnings
    assert OutputsView(str(out)).entry(str(out / "b.png")) is not None


def test_temporary_files_of_a_killed_save_are_swept(tmp_path):
    out, _ = _one_entry_folder(tmp_path)
    stale = out / ".texup" / ".outputs.json.0123456789ab.tmp"
    stale.write_text("{half a manifest")
    record = OutputRecord(out)
    record.put("b.png", {"size": 1, "mtime_ns": 1})
    record.save()
    assert not stale.exists()


# --- item 12: claims of runs sharing a folder, SIGTERM -----------------------------------------------------------

_CLAIM_AND_WAIT = textwrap.dedent("""
    import sys, time
    from texup.outputs import OutputRecord
    record = OutputRecord(sys.argv[1])
    record.open_journal()
    print(record.claim("x.png"), flush=True)
    time.sleep(120)
""")


def test_a_claim_holds_while_its_run_lives_and_ends_with_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _CLAIM_AND_WAIT, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == CLAIMED
        record = OutputRecord(out)
        record.open_journal()
        assert record.claim("x.png") == HELD
        assert record.claim("y.png") == CLAIMED
    finally:
        holder.kill()
        holder.wait(30)
    assert record.claim("x.png") == CLAIMED_AFTER_OTHER  # its run died: the claim ended with its lock
    record.close()


_CLAIM_UNTIL_KILLED = textwrap.dedent("""
    import sys, time
    from texup.outputs import OutputRecord
    record = OutputRecord(sys.argv[1])
    record.open_journal()
    print(record.claim(sys.argv[2]), flush=True)
    time.sleep(600)
""")


def test_an_output_another_run_holds_is_left_to_it_then_made_when_that_run_dies(tiny_model, tmp_path):
    _library(tmp_path / "lib", 3)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _CLAIM_UNTIL_KILLED, str(out), "t000_x4.png"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == CLAIMED
    run = subprocess.Popen(
        _command(tmp_path / "lib", out, tiny_model), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert run.stdout is not None
        lines = [run.stdout.readline(), run.stdout.readline()]
        assert all(" -> " in line for line in lines) and "t000" not in "".join(lines), lines
        time.sleep(1.0)
        assert run.poll() is None and not (out / "t000_x4.png").exists()  # waiting for the holder
    finally:
        holder.kill()
        holder.wait(30)
    rest, err = run.communicate(timeout=120)
    assert run.returncode == 0 and _counts(err) == (3, 0), err
    assert "t000_x4.png" in rest and OutputRecord(out).wrote(out / "t000_x4.png")


_CLAIM_THEN_WRITE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from texup.outputs import OutputRecord
    out, entry, go = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
    record = OutputRecord(out)
    record.open_journal()
    print(record.claim("a_x4.png"), flush=True)
    while not go.exists():
        time.sleep(0.05)
    with record.writing(out / "a_x4.png", entry) as tmp:
        tmp.write_bytes(b"made by the other run")
    record.add(out / "a_x4.png", **entry)
    record.close()
""")


def test_an_output_another_run_holds_is_up_to_date_once_it_is_written(tmp_path):
    from texup.batch import Batch as _Batch
    from texup.batch import Claims as _Claims
    from texup.library import NEW, Planned, Settings, WorkItem, entry_for, pixel_options, source_state

    src = tmp_path / "a.png"
    src.write_bytes(b"source")
    out = tmp_path / "out"
    out.mkdir()
    options = pixel_options(scale=None, size=None, seamless="auto", role="color")
    settings = Settings(out, "_x4", None, "sha256:m", "1.0", options)
    entry = entry_for(settings, source_state(src), engine="other")
    go = tmp_path / "go"
    command = [sys.executable, "-c", _CLAIM_THEN_WRITE, str(out), json.dumps(entry), str(go)]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == CLAIMED
    record = OutputRecord(out)
    record.open_journal()
    failures: list[str] = []
    batch = _Batch(None, record, settings, lambda name, reason: failures.append(reason))  # type: ignore[arg-type]
    claims = _Claims([Planned(WorkItem(src, Path()), out / "a_x4.png", NEW)], batch)
    assert claims.take(block=False) is None and len(claims.deferred) == 1  # held: left to the other run
    go.touch()
    assert claims.take(block=True) is None  # waited, then found it made
    assert holder.wait(30) == 0
    assert batch.by_other == 1 and claims.resolved == 1 and not failures
    record.close()


def test_runs_sharing_an_output_folder_split_the_work(tiny_model, tmp_path):
    lib = _library(tmp_path / "lib", 24, size=40)
    out = tmp_path / "out"
    command = _command(tmp_path / "lib", out, tiny_model)
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    counts = [_counts(err) for _, err in results]
    assert all(made + current == len(lib) for made, current in counts), counts
    assert sum(made for made, _ in counts) == len(lib), counts  # each output made once, by one of the runs
    assert sum(1 for made, _ in counts if made) >= 2, counts  # started together, they shared the work
    written = [line for out_text, _ in results for line in out_text.splitlines() if " -> " in line]
    assert len(written) == len(lib)
    record = OutputRecord(out)
    assert all(record.wrote(out / f"{p.stem}_x4.png") for p in lib)
    assert record.warnings == [] and list((out / ".texup" / "journal").iterdir()) == []


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_is_reported_and_exits_143_with_the_outputs_recorded(tiny_model, tmp_path, signum, code):
    lib = _library(tmp_path / "lib", 40, size=48)
    out = tmp_path / "out"
    command = _command(tmp_path / "lib", out, tiny_model)

    def as_from_a_terminal() -> None:  # under nohup (a CI runner, say) SIGHUP arrives ignored, and texup keeps that
        signal.signal(signum, signal.SIG_DFL)

    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal
    )
    assert proc.stdout is not None
    written = 0
    while written < 2:
        line = proc.stdout.readline()
        assert line, "the batch ended before it could be stopped"
        written += " -> " in line
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    assert f"texup: stopped by {name}; the outputs written so far are recorded" in err and "Traceback" not in err
    done = sorted(out.glob("*.png"))
    assert 2 <= len(done) < len(lib)
    record = OutputRecord(out)
    assert all(record.wrote(p) for p in done)
    assert list((out / ".texup" / "journal").iterdir()) == []  # saved, then ended


def test_the_in_process_cli_leaves_sigterm_as_it_was(tiny_model, tmp_path):
    _library(tmp_path / "lib", 1)
    before = [signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)]
    args = ["upscale", str(tmp_path / "lib"), "-o", str(tmp_path / "out"), "--model", str(tiny_model)]
    assert main([*args, "--engine", "torch", "--device", "cpu"]) == 0
    assert [signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)] == before


# --- the worker and the Ray driver claim as texup upscale does (issue 21, the second leftover) ---------------------


class _FakeUpscaler:
    """A x4 stand-in for the worker: counts the files it makes."""

    scale = 4
    engine = type("E", (), {"name": "fake"})()
    device = precision = "cpu"

    def __init__(self) -> None:
        self.made: list[str] = []

    def upscale_file(self, src, dst, options, *, format=None, **_kw):
        self.made.append(Path(src).name)
        write_image(dst, np.zeros((4, 4, 3), np.uint8), format=format)
        return Path(dst)


def _worker_job(tmp_path: Path, names: list[str], out: Path) -> tuple[object, object]:
    from texup.worker import protocol

    items = []
    for name in names:
        src = tmp_path / f"{name}.png"
        write_image(src, np.full((4, 4, 3), 7, np.uint8))
        items.append({"key": name, "src": str(src), "dst": str(out / f"{name}_x4.png")})
    return protocol.parse_upscale({"type": "upscale", "id": "j", "options": {"model": "m"}, "items": items}), items


def test_the_worker_leaves_an_output_another_run_holds_then_makes_it_when_that_run_dies(tmp_path):
    """Beside a texup upscale run holding ``b``'s output, the worker makes ``a`` and ``c``, waits, and makes ``b``
    only once the holder died; before, it made ``b`` too (the work done twice)."""
    import io

    from texup.worker.server import WorkerServer

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _CLAIM_UNTIL_KILLED, str(out), "b_x4.png"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == CLAIMED
        request, _ = _worker_job(tmp_path, ["a", "b", "c"], out)
        upscaler = _FakeUpscaler()
        lines = io.StringIO()
        server = WorkerServer(io.BytesIO(b""), lines, device="cpu", get_upscaler=lambda model, **kw: upscaler)
        job = threading.Thread(target=server.run_job, args=(request,), daemon=True)
        job.start()
        deadline = time.monotonic() + 60
        while upscaler.made != ["a.png", "c.png"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert upscaler.made == ["a.png", "c.png"] and job.is_alive()  # b left to the holder, waited for
        assert not (out / "b_x4.png").exists()
    finally:
        holder.kill()
        holder.wait(30)
    job.join(60)
    assert not job.is_alive() and upscaler.made == ["a.png", "c.png", "b.png"]
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert events[-1]["type"] == "done" and (events[-1]["ok"], events[-1]["failed"]) == (3, 0), events
    assert OutputRecord(out).wrote(out / "b_x4.png")


def test_the_worker_answers_up_to_date_for_an_output_another_run_made_while_it_was_held(tmp_path):
    import io

    from texup.inference.pipeline import UpscaleOptions
    from texup.library import entry_for, source_state
    from texup.weights.ref import ModelRef
    from texup.worker.server import WorkerServer, _Outputs

    out = tmp_path / "out"
    out.mkdir()
    request, items = _worker_job(tmp_path, ["a", "b"], out)
    # the entry the worker itself would record for b, so the holder's output is up to date for it
    _, settings = _Outputs("m", engine=None).folder(out, UpscaleOptions(role="color"), False)
    entry = entry_for(
        settings, source_state(Path(items[1]["src"])), model_ref=ModelRef.of("m").manifest_ref(), model_files=[]
    )
    go = tmp_path / "go"
    script = _CLAIM_THEN_WRITE.replace('"a_x4.png"', '"b_x4.png"').replace(
        'tmp.write_bytes(b"made by the other run")',
        'import numpy; from texup.imageio import write_image; write_image(tmp, numpy.ones((3, 2, 3), "uint8"), '
        'format="png")',
    )
    assert "write_image(tmp" in script
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(out), json.dumps(entry), str(go)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == CLAIMED
    upscaler = _FakeUpscaler()
    lines = io.StringIO()
    server = WorkerServer(io.BytesIO(b""), lines, device="cpu", get_upscaler=lambda model, **kw: upscaler)
    job = threading.Thread(target=server.run_job, args=(request,), daemon=True)
    job.start()
    deadline = time.monotonic() + 60
    while upscaler.made != ["a.png"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    go.touch()
    assert holder.wait(30) == 0
    job.join(60)
    assert not job.is_alive() and upscaler.made == ["a.png"]  # b was made once, by the other run
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    (b,) = [e for e in events if e["type"] == "result" and e["item"] == "b"]
    assert b["reason"] == "up to date" and (b["width"], b["height"]) == (2, 3)  # the other run's
    assert events[-1]["type"] == "done" and events[-1]["ok"] == 2


def test_a_worker_job_cancelled_while_waiting_for_a_held_output_ends(tmp_path):
    import io

    from texup.worker.server import WorkerServer

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _CLAIM_UNTIL_KILLED, str(out), "a_x4.png"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == CLAIMED
        request, _ = _worker_job(tmp_path, ["a"], out)
        upscaler = _FakeUpscaler()
        lines = io.StringIO()
        server = WorkerServer(io.BytesIO(b""), lines, device="cpu", get_upscaler=lambda model, **kw: upscaler)
        job = threading.Thread(target=server.run_job, args=(request,), daemon=True)
        job.start()
        time.sleep(1.0)
        assert job.is_alive()
        server._cancelled.add("j")
        job.join(10)
        assert not job.is_alive() and upscaler.made == []
        events = [json.loads(line) for line in lines.getvalue().splitlines()]
        assert events[-1]["type"] == "done" and events[-1]["cancelled"] is True
    finally:
        holder.kill()
        holder.wait(30)


def test_the_ray_driver_leaves_an_output_another_run_holds_then_makes_it_when_that_run_dies(tmp_path, monkeypatch):
    """texup upscale --ray against a fake Ray (tests/core/test_cluster.py's): the driver claims each file before it
    goes to the cluster, so ``b`` waits for the holder; before, the driver sent every planned file at once."""
    import test_cluster

    import texup.cluster as cluster

    fake, _handles = test_cluster._scheduling_ray(set())
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "_placements", lambda ray, device: [{}])
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in "abc":
        write_image(lib / f"{name}.png", np.full((6, 5, 3), 9, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _CLAIM_UNTIL_KILLED, str(out), "b_x4.png"], stdout=subprocess.PIPE, text=True
    )
    seen: dict[str, bool] = {}

    def kill_once_the_rest_is_made() -> None:
        deadline = time.monotonic() + 60
        while not ((out / "a_x4.png").exists() and (out / "c_x4.png").exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        seen["b made while held"] = (out / "b_x4.png").exists()
        holder.kill()

    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == CLAIMED
        killer = threading.Thread(target=kill_once_the_rest_is_made, daemon=True)
        killer.start()
        code = main(["upscale", str(lib), "-o", str(out), "--model", "m", "--scale", "4", "--suffix", "_x4", "--ray"])
        killer.join(60)
    finally:
        holder.kill()
        holder.wait(30)
    assert code == 0 and seen == {"b made while held": False}
    assert all(OutputRecord(out).wrote(out / f"{name}_x4.png") for name in "abc")


def test_run_on_ray_asks_claim_before_sending_and_again_for_held_files(tmp_path, monkeypatch):
    import test_cluster

    import texup.cluster as cluster

    fake, _handles = test_cluster._scheduling_ray(set())
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "_placements", lambda ray, device: [{}, {}])
    monkeypatch.setattr(cluster, "CLAIM_POLL_S", 0.01)
    tasks = []
    for name in ("held", "settled", "free"):
        write_image(tmp_path / f"{name}.png", np.full((6, 5, 3), 9, np.uint8))
        tasks.append((str(tmp_path / f"{name}.png"), str(tmp_path / "out" / f"{name}_x4.png")))
    asked: list[int] = []

    def claim(index: int) -> bool | None:
        asked.append(index)
        if index == 0:
            return None if asked.count(0) < 4 else True  # held three times, then free
        return index != 1

    arrived: list[int] = []
    outcomes = cluster.run_on_ray(
        tasks, model="m", options={"scale": 4}, claim=claim, on_outcome=lambda o: arrived.append(o.index)
    )
    assert asked.count(0) == 4 and asked.count(1) == 1 and asked.count(2) == 1
    assert sorted(arrived) == [0, 2] and outcomes[1].settled and not outcomes[0].settled
    assert outcomes[0].ok and outcomes[2].ok
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["free_x4.png", "held_x4.png"]


def test_a_plan_knows_an_output_another_run_wrote_after_its_one_reload(tmp_path):
    """Three runs sharing a folder: a run's plan reads the manifest again at most once, so an output another run
    renamed into place later in the plan was refused as "not an unchanged earlier texup output" (a CI failure
    under load); the other run's journal says it wrote it, and the plan now reads what journals added since."""
    from texup.library import NEW, UP_TO_DATE, Settings, entry_for, judge, pixel_options, source_state, write_output

    out = tmp_path / "out"
    out.mkdir()
    srcs = [tmp_path / "a.png", tmp_path / "b.png"]
    for src in srcs:
        write_image(src, np.full((4, 4, 3), 7, np.uint8))
    settings = Settings(out, "_x4", None, "sha256:m", "1.0", pixel_options(scale=4))
    planner = OutputRecord(out)
    assert judge(srcs[0], out / "a_x4.png", settings, planner).reason == NEW
    planner.reload()  # the plan's one reload is spent
    writer = OutputRecord(out)
    writer.open_journal()
    info = entry_for(settings, source_state(srcs[1]))
    write_output(writer, out / "b_x4.png", np.zeros((16, 16, 3), np.uint8), None, info)
    verdict = judge(srcs[1], out / "b_x4.png", settings, planner, may_reload=False)
    assert verdict.refused is None and verdict.reason == UP_TO_DATE, verdict
    writer.close()
    planner.close()
