"""One "upscale one file safely" step (issue 22 item 3): every output is claimed by :func:`texup.library.claim_output`
(through a :class:`~texup.library.Claimant`) and put in place by :func:`texup.library.commit_output`, whichever runs
it: ``texup upscale`` on this machine, its Ray driver, or the worker."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import texup.library as library
from texup.cli.main import main
from texup.imageio import write_image
from texup.library import (
    GO,
    NEW,
    REFUSED,
    UP_TO_DATE,
    Claimant,
    Planned,
    Settings,
    WorkItem,
    claim_output,
    commit_output,
    entry_for,
    pixel_options,
    source_state,
)
from texup.outputs import HELD, OutputRecord


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Settings, Planned]:
    src = tmp_path / "a.png"
    write_image(src, np.full((4, 4, 3), 7, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    settings = Settings(out, "_x4", None, "sha256:m", "1.0", pixel_options(scale=4))
    return out, settings, Planned(WorkItem(src, Path()), out / "a_x4.png", NEW)


def _run(out: Path) -> OutputRecord:
    """A run's record of ``out`` with its journal open (two records in one process are two runs: the journals'
    locks are per open file)."""
    record = OutputRecord(out)
    record.open_journal()
    return record


def test_a_claim_is_go_while_no_other_run_has_the_output_and_held_while_one_does(folder):
    out, settings, planned = folder
    first, second = _run(out), _run(out)
    got = claim_output(first, planned, settings)
    assert got.outcome == GO and got.planned is planned and not got.held
    held = claim_output(second, planned, settings)
    assert held.outcome == HELD and held.held and held.planned is None and held.refused is None
    first.release("a_x4.png")  # failed there: another run may make it
    assert claim_output(second, planned, settings).outcome == GO
    first.close()
    second.close()


def test_a_claim_finds_an_output_another_run_made_meanwhile_up_to_date(folder):
    out, settings, planned = folder
    other, this = _run(out), _run(out)
    assert claim_output(other, planned, settings).outcome == GO
    info = entry_for(settings, source_state(planned.item.src))
    commit_output(other, planned.dst, info, lambda tmp: tmp.write_bytes(b"made by the other run"))
    other.add(planned.dst, **info)
    got = claim_output(this, planned, settings)
    assert got.outcome == UP_TO_DATE and got.planned is None and got.refused is None
    assert claim_output(_run(out), planned, settings).outcome == UP_TO_DATE  # released: nobody holds it
    other.close()
    this.close()


def test_a_claim_refuses_a_file_texup_did_not_write_that_appeared_since_the_plan(folder):
    out, settings, planned = folder
    planned.dst.write_bytes(b"someone else's file")
    record = _run(out)
    got = claim_output(record, planned, settings)
    assert got.outcome == REFUSED and got.planned is None
    assert got.refused is not None and f"output {planned.dst} exists" in got.refused and "--overwrite" in got.refused
    assert claim_output(_run(out), planned, settings).outcome == REFUSED  # the refusal released the claim
    record.close()


def test_a_claimant_whose_folder_lock_cannot_be_taken_warns_once_and_goes_on_without_claims(folder, monkeypatch):
    out, settings, planned = folder
    record = _run(out)
    lock = out / ".texup" / "lock"
    lock.unlink()
    lock.mkdir()  # a folder where the lock file goes: the lock can never be taken
    warned: list[str] = []
    asked: list[Path] = []
    real = library.claim_output
    monkeypatch.setattr(library, "claim_output", lambda *a: asked.append(a[1].dst) or real(*a))
    claimant = Claimant(warned.append)
    for _ in range(3):
        got = claimant.claim(record, planned, settings)
        assert got.outcome == GO and got.planned is planned
    assert len(asked) == 1 and not claimant.active
    assert len(warned) == 1 and warned[0].endswith("; outputs are made without claims from now on")
    assert "lock" in warned[0]


def test_a_commit_whose_output_fails_journals_nothing_and_leaves_no_file(folder):
    out, settings, planned = folder
    record = _run(out)
    info = entry_for(settings, source_state(planned.item.src))

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half an image")
        raise ValueError("the encoder gave up")

    with pytest.raises(ValueError, match="gave up"):
        commit_output(record, planned.dst, info, fail)
    assert sorted(p.name for p in out.iterdir()) == [".texup"]
    assert OutputRecord(out).entry(planned.dst) is None
    commit_output(record, planned.dst, info, lambda tmp: tmp.write_bytes(b"made"))
    assert planned.dst.read_bytes() == b"made" and OutputRecord(out).wrote(planned.dst)  # journalled before the rename
    record.close()


# --- the three callers go through the one claim and the one commit ------------------------------------------------


@pytest.fixture
def seen(monkeypatch) -> dict[str, list[str]]:
    """Spies on :func:`claim_output` and :func:`commit_output` wherever texup's modules refer to them: the names of
    the outputs each was called for."""
    import texup.cli.upscale  # noqa: F401 -- imported before the spies, so every name bound to them is patched
    import texup.worker.server  # noqa: F401

    calls: dict[str, list[str]] = {"claim": [], "commit": []}
    for name, kind in (("claim_output", "claim"), ("commit_output", "commit")):
        real = getattr(library, name)

        def spy(record, planned_or_dst, *rest, real=real, kind=kind):
            dst = planned_or_dst.dst if isinstance(planned_or_dst, Planned) else planned_or_dst
            calls[kind].append(Path(dst).name)
            return real(record, planned_or_dst, *rest)

        for module in [m for n, m in sys.modules.items() if n == "texup" or n.startswith("texup.")]:
            if getattr(module, name, None) is real:
                monkeypatch.setattr(module, name, spy)
    return calls


def _library(tmp_path: Path) -> tuple[Path, Path]:
    lib, out = tmp_path / "lib", tmp_path / "out"
    lib.mkdir()
    for name in ("a", "b"):
        write_image(lib / f"{name}.png", np.full((6, 5, 3), 9, np.uint8))
    return lib, out


class _Quadrupling:
    """A x4 stand-in upscaler for the CLI's batch and the worker."""

    scale, device, precision = 4, "cpu", "fp32"
    engine = type("E", (), {"name": "stand-in"})()

    def upscale_array(self, pixels, options, *, colorspace=None, progress=None, cancel=None):
        return np.repeat(np.repeat(pixels, 4, axis=0), 4, axis=1)

    def upscale_file(self, src, dst, options, *, format=None, **_kw):
        from texup.imageio import read_image

        write_image(dst, self.upscale_array(read_image(src).pixels, options), format=format)
        return Path(dst)


def test_texup_upscale_claims_and_commits_each_output_through_the_one_step(tmp_path, monkeypatch, seen):
    from texup import api

    monkeypatch.setattr(api, "get_upscaler", lambda *a, **kw: _Quadrupling())
    lib, out = _library(tmp_path)
    assert main(["upscale", str(lib), "-o", str(out), "--model", "m", "--scale", "4", "--suffix", "_x4"]) == 0
    assert seen == {"claim": ["a_x4.png", "b_x4.png"], "commit": ["a_x4.png", "b_x4.png"]}
    assert all(OutputRecord(out).wrote(out / f"{n}_x4.png") for n in "ab")


def test_texup_upscale_on_ray_claims_and_commits_each_output_through_the_one_step(tmp_path, monkeypatch, seen):
    import test_cluster

    import texup.cluster as cluster

    fake, _ = test_cluster._scheduling_ray(set())
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "_placements", lambda ray, device: [{}, {}])
    lib, out = _library(tmp_path)
    assert main(["upscale", str(lib), "-o", str(out), "--model", "m", "--scale", "4", "--suffix", "_x4", "--ray"]) == 0
    assert sorted(seen["claim"]) == sorted(seen["commit"]) == ["a_x4.png", "b_x4.png"]
    assert all(OutputRecord(out).wrote(out / f"{n}_x4.png") for n in "ab")


def test_the_worker_claims_and_commits_each_output_through_the_one_step(tmp_path, seen):
    from texup.worker import protocol
    from texup.worker.server import WorkerServer

    lib, out = _library(tmp_path)
    out.mkdir()
    other = _run(out)  # another run's journal: the folder has texup's state, so the worker claims there
    items = [{"key": n, "src": str(lib / f"{n}.png"), "dst": str(out / f"{n}_x4.png")} for n in "ab"]
    request = protocol.parse_upscale({"type": "upscale", "id": "j", "options": {"model": "m"}, "items": items})
    lines = io.StringIO()
    server = WorkerServer(io.BytesIO(b""), lines, device="cpu", get_upscaler=lambda model, **kw: _Quadrupling())
    job = threading.Thread(target=server.run_job, args=(request,), daemon=True)
    job.start()
    job.join(60)
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert events[-1]["type"] == "done" and events[-1]["ok"] == 2, events
    assert seen == {"claim": ["a_x4.png", "b_x4.png"], "commit": ["a_x4.png", "b_x4.png"]}
    assert all(OutputRecord(out).wrote(out / f"{n}_x4.png") for n in "ab")
    other.close()
