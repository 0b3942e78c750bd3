"""Libraries and farms (issue 13): the manifest, incremental reruns, --dry-run, --force, --shard, kills and
concurrent runs over one output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from texup.archs import RRDBNet
from texup.cli.main import main
from texup.imageio import read_image, write_image
from texup.library import (
    NEW,
    SOURCE_CHANGED,
    UP_TO_DATE,
    Settings,
    WorkItem,
    expand_inputs,
    make_plan,
    parse_shard,
    pixel_options,
    shard_of,
    take_shard,
)
from texup.outputs import OutputRecord
from texup.weights import save_model
from texup.weights.ref import ModelRef

TEXUP = [sys.executable, "-m", "texup"]


def _upscale_command(lib: Path, out: Path, model: Path) -> list[str]:
    """``texup upscale LIB -o OUT`` with ``model`` on the CPU's torch engine, as a subprocess command."""
    return [*TEXUP, "upscale", str(lib), "-o", str(out), "--model", str(model), "--engine", "torch", "--device", "cpu"]


def _tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), path, provenance={"test": "library"})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("model") / "tiny_x4.safetensors", 0)


def _library(folder: Path, count: int, size: int = 20) -> list[Path]:
    rng = np.random.default_rng(count)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"t{i:03d}.png"
        write_image(path, rng.integers(0, 256, (size, size + i % 3, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def _age(paths, seconds: float = 10.0) -> None:
    """Sources written seconds ago (a cached hash is trusted only for files older than 2 s when hashed)."""
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def run_cli(*args: object) -> int:
    return main([str(a) for a in args])


def _summary(err: str) -> str:
    return [line for line in err.splitlines() if "up to date" in line][-1]


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


# --- shards --------------------------------------------------------------------------------------------------


def test_shards_cover_the_inputs_once_and_adding_files_moves_no_other():
    items = [WorkItem(Path(f"/lib/{d}/tex{i}.png"), Path(d)) for d in ("a", "b", "c") for i in range(200)]
    for count in (1, 2, 3, 7, 16):
        shares = [take_shard(items, (k, count)) for k in range(1, count + 1)]
        assert sorted((i.src for s in shares for i in s), key=str) == sorted((i.src for i in items), key=str)
        assert sum(len(s) for s in shares) == len(items)
        if count > 1:
            assert all(len(s) > 0 for s in shares)  # a usable spread, not everything in one task
    more = items + [WorkItem(Path(f"/lib/new/n{i}.png"), Path("new")) for i in range(50)]
    assert all(shard_of(i, 7) == shard_of(j, 7) for i, j in zip(items, more))
    # where the library is mounted does not matter, only the path below the folder given
    assert shard_of(WorkItem(Path("/mnt/x/a/t.png"), Path("a")), 5) == shard_of(
        WorkItem(Path("D:/lib/a/t.png"), Path("a")), 5
    )


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "3", "-1/2", "1/2/3"])
def test_bad_shards_are_usage_errors(text, tmp_path, capsys):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)
    with pytest.raises(SystemExit):
        run_cli("upscale", tmp_path, "-o", tmp_path / "out", "--shard", text)
    assert "--shard" in capsys.readouterr().err


def test_shard_runs_do_their_share_and_the_manifest_merges(tiny_model, tmp_path, capsys):
    lib = _library(tmp_path / "lib", 9)
    out = tmp_path / "out"
    for k in (1, 2, 3):
        assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model, "--shard", f"{k}/3") == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{p.stem}_x4.png" for p in lib)
    manifest = json.loads((out / ".texup" / "outputs.json").read_text())
    assert sorted(manifest["files"]) == sorted(f"{p.stem}_x4.png" for p in lib)
    capsys.readouterr()
    _age(lib)
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    assert "0 upscaled, 9 up to date, 0 changed and redone, 0 failed" in _summary(capsys.readouterr().err)
    empty = next(k for k in range(1, 40) if shard_of(WorkItem(lib[0], Path()), 40) != k)
    assert run_cli("upscale", lib[0], "-o", tmp_path / "none", "--model", tiny_model, "--shard", f"{empty}/40") == 0
    assert "holds none of these inputs" in capsys.readouterr().err and not (tmp_path / "none").exists()


# --- incremental reruns ---------------------------------------------------------------------------------------


def test_a_rerun_does_exactly_what_changed_and_says_why(tiny_model, tmp_path, capsys):
    lib = _library(tmp_path / "lib", 4)
    _age(lib)
    out = tmp_path / "out"
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    assert "4 upscaled, 0 up to date, 0 changed and redone, 0 failed" in _summary(capsys.readouterr().err)
    entry = json.loads((out / ".texup" / "outputs.json").read_text())["files"]["t000_x4.png"]
    assert entry["source_sha256"] and entry["model"].startswith("sha256:") and entry["texup"]
    assert entry["options"] == {
        "scale": None,
        "size": None,
        "seamless": "auto",
        "role": "color",
        "color_fix": "auto",
        "dds_format": None,
        "alpha": "auto",
    }
    first = _mtimes(out)

    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    assert "0 upscaled, 4 up to date, 0 changed and redone, 0 failed" in _summary(capsys.readouterr().err)
    assert _mtimes(out) == first

    write_image(lib[1], np.zeros((20, 21, 3), np.uint8))  # new content
    os.utime(lib[2])  # touched, same content: not redone
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    captured = capsys.readouterr()
    assert "0 upscaled, 3 up to date, 1 changed and redone (1 source changed), 0 failed" in _summary(captured.err)
    assert f"{lib[1]} -> {out / 't001_x4.png'} (source changed)" in captured.out
    now = _mtimes(out)
    assert [n for n in first if now[n] != first[n]] == ["t001_x4.png"]
    assert read_image(out / "t001_x4.png").pixels.max() == 0

    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model, "--seamless", "off") == 0
    assert "4 changed and redone (4 options changed)" in _summary(capsys.readouterr().err)
    args = ("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model, "--seamless", "off")
    assert run_cli(*args, "--color-fix", "off") == 0  # the colour fix changes pixels: a pixel option
    assert "4 changed and redone (4 options changed)" in _summary(capsys.readouterr().err)
    assert run_cli(*args) == 0  # back to auto
    assert "4 changed and redone (4 options changed)" in _summary(capsys.readouterr().err)
    assert (
        run_cli(
            "upscale",
            tmp_path / "lib",
            "-o",
            out,
            "--model",
            tiny_model,
            "--seamless",
            "off",
            "--tile",
            "16",
            "--overlap",
            "4",
        )
        == 0
    )  # tile and overlap change pixels only within rounding
    assert "0 upscaled, 4 up to date" in _summary(capsys.readouterr().err)
    other = _tiny(tmp_path / "other_x4.safetensors", 1)
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", other, "--seamless", "off") == 0
    assert "4 changed and redone (4 model changed)" in _summary(capsys.readouterr().err)
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", other, "--seamless", "off", "--force") == 0
    assert "4 changed and redone (4 forced)" in _summary(capsys.readouterr().err)
    assert not (out / ".texup" / "journal").exists() or not list((out / ".texup" / "journal").iterdir())


def test_touched_sources_are_hashed_once_then_trusted(tiny_model, tmp_path, monkeypatch):
    lib = _library(tmp_path / "lib", 3)
    _age(lib, 100)
    out = tmp_path / "out"
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    import texup.library as library

    hashed: list[str] = []
    real = library.sha256_file
    monkeypatch.setattr(library, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    assert hashed == []  # unchanged size and mtime: the recorded hash
    _age(lib[:1], 50)  # touched
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    assert hashed == ["t000.png"]
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    assert hashed == ["t000.png"]  # the entry was refreshed with the new mtime


def test_dry_run_lists_each_output_with_its_reason_and_writes_nothing(tiny_model, tmp_path, capsys):
    lib = _library(tmp_path / "lib", 3)
    out = tmp_path / "out"
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model, "--dry-run") == 0
    captured = capsys.readouterr()
    assert not out.exists()
    assert captured.out.count(f"({NEW})") == 3
    assert "dry run: 3 to upscale (3 new), 0 up to date" in captured.err
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    write_image(lib[0], np.full((20, 20, 3), 9, np.uint8))
    manifest = (out / ".texup" / "outputs.json").read_bytes()
    before = _mtimes(out)
    capsys.readouterr()
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model, "--dry-run") == 0
    captured = capsys.readouterr()
    assert f"{lib[0]} -> {out / 't000_x4.png'} ({SOURCE_CHANGED})" in captured.out
    assert captured.out.count(f"({UP_TO_DATE})") == 2
    assert "dry run: 1 to upscale (1 source changed), 2 up to date" in captured.err
    assert _mtimes(out) == before and (out / ".texup" / "outputs.json").read_bytes() == manifest
    assert sorted(p.name for p in (out / ".texup").iterdir()) == ["journal", "lock", "outputs.json"]
    assert list((out / ".texup" / "journal").iterdir()) == []


def test_skip_existing_still_looks_at_names_only_and_force_never_replaces_foreign_files(tiny_model, tmp_path, capsys):
    lib = _library(tmp_path / "lib", 2)
    out = tmp_path / "out"
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model) == 0
    write_image(lib[0], np.zeros((20, 20, 3), np.uint8))
    before = _mtimes(out)
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model, "--skip-existing") == 0
    assert _mtimes(out) == before
    foreign = out / "t001_x4.png"
    foreign.write_bytes(b"someone else's")
    capsys.readouterr()
    assert run_cli("upscale", tmp_path / "lib", "-o", out, "--model", tiny_model, "--force") == 1
    assert foreign.read_bytes() == b"someone else's"
    err = capsys.readouterr().err
    assert "t001_x4.png exists and is not an unchanged earlier texup output" in err
    assert "0 upscaled, 0 up to date, 1 changed and redone (1 forced), 1 failed" in err
    assert run_cli("upscale", lib[0], "-o", out, "--force", "--skip-existing") == 2


def model_identity(model: str, record: OutputRecord) -> str:
    return ModelRef.of(model).identity(record.file_hash)


def test_the_plan_needs_no_model_and_names_the_model_by_content(tmp_path, tiny_model):
    lib = _library(tmp_path / "lib", 2)
    record = OutputRecord(tmp_path / "out")
    copy = tmp_path / "elsewhere" / "same.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(tiny_model.read_bytes())
    assert model_identity(str(tiny_model), record) == model_identity(str(copy), record)  # content, not place
    copy.write_bytes(tiny_model.read_bytes() + b" ")
    assert model_identity(str(tiny_model), record) != model_identity(str(copy), record)
    items, problems = expand_inputs([str(tmp_path / "lib")], recursive=False)
    settings = Settings(
        out_dir=tmp_path / "out",
        suffix="_x4",
        fmt=None,
        model="m",
        texup="0",
        options=pixel_options(scale=None, size=None, seamless="auto", role="color"),
    )
    plan = make_plan(items, settings, record)
    assert [p.reason for p in plan.todo] == [NEW, NEW] and not problems
    code = (
        "import sys, texup.library as L; from pathlib import Path; r = L.OutputRecord(sys.argv[2]); "
        "from texup.weights.ref import ModelRef; ModelRef.of('realesr-animevideov3').identity(r.file_hash); "
        "items, _ = L.expand_inputs([sys.argv[1]], recursive=False); "
        "s = L.Settings(out_dir=Path(sys.argv[2]), suffix='', fmt=None, model='m', texup='0', options={}); "
        "assert len(L.make_plan(items, s, r).todo) == 2; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "lib"), str(tmp_path / "out")], check=True)
    assert len(lib) == 2


def test_a_known_model_is_named_by_the_files_its_weights_come_from(tmp_path):
    record = OutputRecord(tmp_path)
    from texup.weights.registry import ncnn_files

    ident = model_identity("realesr-animevideov3", record)
    if ncnn_files("realesr-animevideov3") is not None:
        assert ident.startswith("realesr-animevideov3 sha256:")
    assert model_identity("no-such-model", record) == "unknown:no-such-model"


# --- kills and concurrent runs --------------------------------------------------------------------------------


def test_a_run_killed_mid_batch_is_continued_by_the_next_run(tiny_model, tmp_path):
    lib = _library(tmp_path / "lib", 40, size=48)
    out = tmp_path / "out"
    command = _upscale_command(tmp_path / "lib", out, tiny_model)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    written = 0
    while written < 3:
        line = proc.stdout.readline()
        assert line, "the batch ended before it could be killed"
        written += " -> " in line
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    done_before = sorted(p.name for p in out.glob("*.png"))
    assert 3 <= len(done_before) < len(lib)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = _summary(rerun.stderr)
    upscaled = int(summary.split("texup: ")[1].split(" upscaled")[0])
    current = int(summary.split(", ")[1].split(" up to date")[0])
    assert current == len(done_before) and upscaled == len(lib) - len(done_before), summary
    assert "0 changed and redone, 0 failed" in summary
    record = OutputRecord(out)
    for src in lib:
        dst = out / f"{src.stem}_x4.png"
        assert read_image(dst).pixels.shape[:2] == (48 * 4, (48 + int(src.stem[1:]) % 3) * 4)
        assert record.wrote(dst)


_WRITE_THEN_DIE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from texup.outputs import OutputRecord
    out = Path(sys.argv[1])
    record = OutputRecord(out)
    record.open_journal()
    with record.writing(out / "renamed.png", {"source_sha256": "s"}) as tmp:
        tmp.write_bytes(b"complete output")
    os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed after the journal line, before the rename
    with record.writing(out / "late.png", {"source_sha256": "s"}) as tmp:
        tmp.write_bytes(b"an output that never got its name")
""")


def test_a_kill_between_rename_and_save_leaves_the_output_known_as_texups(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "late.png").write_bytes(b"the user's file")
    proc = subprocess.run([sys.executable, "-c", _WRITE_THEN_DIE, str(out)])
    assert proc.returncode == -signal.SIGKILL
    assert not (out / ".texup" / "outputs.json").exists()  # never saved
    record = OutputRecord(out)
    assert record.wrote(out / "renamed.png")  # from the dead run's journal: the file matches its line
    assert not record.wrote(out / "late.png") and (out / "late.png").read_bytes() == b"the user's file"
    record.put("other.png", {"size": 0, "mtime_ns": 0})
    record.save()  # folds the ended run's journal into the manifest and removes it
    assert list((out / ".texup" / "journal").iterdir()) == []
    files = json.loads((out / ".texup" / "outputs.json").read_text())["files"]
    assert "renamed.png" in files and "late.png" not in files
    assert OutputRecord(out).wrote(out / "renamed.png")


_ADD_MANY = textwrap.dedent("""
    import sys
    from pathlib import Path
    from texup.outputs import OutputRecord
    out, tag = Path(sys.argv[1]), sys.argv[2]
    record = OutputRecord(out)
    record.open_journal()
    for i in range(60):
        path = out / f"{tag}{i}.png"
        with record.writing(path, {"n": i}) as tmp:
            tmp.write_bytes(tag.encode() * (i + 1))
        record.add(path, save_every=0.0, n=i)
    record.close()
""")


def test_concurrent_records_over_one_folder_keep_every_entry(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _ADD_MANY, str(out), tag]) for tag in "abcd"]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    files = json.loads((out / ".texup" / "outputs.json").read_text())["files"]
    assert len(files) == 240
    record = OutputRecord(out)
    assert all(record.wrote(out / name) for name in files)


def test_concurrent_cli_runs_over_one_output_folder(tiny_model, tmp_path):
    lib = _library(tmp_path / "lib", 16)
    out = tmp_path / "out"
    base = _upscale_command(tmp_path / "lib", out, tiny_model)
    runs = [base + ["--shard", "1/2"], base + ["--shard", "2/2"], base]  # the third does the same inputs again
    procs = [subprocess.Popen(r, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in runs]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in results]
    manifest = json.loads((out / ".texup" / "outputs.json").read_text())
    names = sorted(f"{p.stem}_x4.png" for p in lib)
    assert sorted(manifest["files"]) == names
    record = OutputRecord(out)
    assert all(record.wrote(out / n) for n in names)
    for name in names:
        read_image(out / name)
    _age(lib)
    rerun = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "0 upscaled, 16 up to date" in rerun.stderr, rerun.stderr


def test_manifest_saves_space_out_as_a_save_gets_expensive(tmp_path, monkeypatch):
    """The whole manifest is rewritten at each save; on a large library saving must not dominate the run."""
    import texup.outputs as outputs_module
    from texup.outputs import OutputRecord

    now = [100.0]
    monkeypatch.setattr(outputs_module.time, "monotonic", lambda: now[0])
    real_dumps = outputs_module.json.dumps
    saves = []

    def slow_dumps(obj, **kw):  # a save that takes 0.5 s on the fake clock
        if isinstance(obj, dict) and "files" in obj:
            saves.append(now[0])
            now[0] += 0.5
        return real_dumps(obj, **kw)

    monkeypatch.setattr(outputs_module.json, "dumps", slow_dumps)
    record = OutputRecord(tmp_path)
    for i, t in enumerate((101.0, 103.0, 106.0, 111.5, 112.0)):
        now[0] = t
        record.put(f"o{i}.png", {"size": 1, "mtime_ns": 1})
    assert saves == [101.0, 111.5]  # after a 0.5 s save the next waits 10 s, not 1 s
    record.close()  # the end of a run always saves
    assert len(saves) == 3
    import json

    on_disk = json.loads((tmp_path / ".texup" / "outputs.json").read_text())["files"]
    assert sorted(on_disk) == [f"o{i}.png" for i in range(5)]
