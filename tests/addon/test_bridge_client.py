"""WorkerClient against a fake worker: lifecycle, events, cancel, crash, version check, start errors."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge.client import WorkerClient, WorkerError, WorkerStartError, find_worker_python  # noqa: E402
from bridge.worker_protocol import (  # noqa: E402
    Crashed,
    Done,
    Error,
    Hello,
    Job,
    JobItem,
    JobOptions,
    Models,
    Pong,
    Progress,
    Result,
)
from workerutil import collect  # noqa: E402

FAKE = str(Path(__file__).with_name("fake_worker.py"))


def fake(mode: str, **kwargs) -> WorkerClient:
    return WorkerClient(sys.executable, args=(FAKE, mode), **kwargs)


def job_of(tmp_path: Path, names: list[str], missing: tuple[str, ...] = ()) -> Job:
    items = []
    for name in names:
        src = tmp_path / f"{name}.png"
        if name not in missing:
            src.write_bytes(b"pixels of " + name.encode())
        items.append(JobItem(key=name, src=str(src), dst=str(tmp_path / f"{name}_x4.png"), role="color"))
    return Job(options=JobOptions(scale=4), items=tuple(items))


@pytest.fixture
def worker():
    client = fake("normal")
    client.start(timeout=20)
    yield client
    client.stop()


def test_start_reads_hello_and_stop_ends_the_process(worker):
    assert isinstance(worker.hello, Hello) and worker.hello.protocol == 1
    assert worker.alive
    assert worker.stop(timeout=5) == 0
    assert not worker.alive
    assert worker.poll() == []  # a requested stop is not a crash
    with pytest.raises(WorkerError):
        worker.ping()


def test_job_events_arrive_in_order_and_results_exist(worker, tmp_path):
    job = job_of(tmp_path, ["wall", "floor"])
    job_id = worker.submit(job)
    assert worker.busy
    events = collect(worker, lambda e: isinstance(e, Done))
    mine = [e for e in events if getattr(e, "id", None) == job_id]
    assert mine == events
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.item for p in progress][:1] == ["wall"] and progress[-1].item == "floor"
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    results = [e for e in events if isinstance(e, Result)]
    assert [r.item for r in results] == ["wall", "floor"]
    for r in results:
        assert Path(r.dst).is_file()
    done = events[-1]
    assert (done.ok, done.failed, done.cancelled) == (2, 0, False)
    assert not worker.busy


def test_missing_item_is_an_error_event_and_the_job_goes_on(worker, tmp_path):
    job = job_of(tmp_path, ["gone", "wall"], missing=("gone",))
    worker.submit(job)
    events = collect(worker, lambda e: isinstance(e, Done))
    errors = [e for e in events if isinstance(e, Error)]
    assert len(errors) == 1 and errors[0].item == "gone" and errors[0].kind == "ImageReadError"
    assert "gone.png" in errors[0].message
    assert [e.item for e in events if isinstance(e, Result)] == ["wall"]
    assert (events[-1].ok, events[-1].failed) == (1, 1)


def test_error_event_carries_kind_message_and_traceback(tmp_path):
    with fake("error") as client:
        client.start(timeout=20)
        client.submit(job_of(tmp_path, ["bad_one", "good"]))
        events = collect(client, lambda e: isinstance(e, Done))
    (err,) = [e for e in events if isinstance(e, Error)]
    assert (err.item, err.kind) == ("bad_one", "ValueError")
    assert "simulated failure" in err.message and err.traceback.startswith("Traceback")
    assert (events[-1].ok, events[-1].failed) == (1, 1)


def test_cancel_stops_the_job_and_leaves_no_output(tmp_path):
    with fake("slow") as client:
        client.start(timeout=20)
        job = job_of(tmp_path, ["a", "b"])
        job_id = client.submit(job)
        collect(client, lambda e: isinstance(e, Progress))
        client.cancel(job_id)
        events = collect(client, lambda e: isinstance(e, Done))
        assert events[-1].cancelled is True and events[-1].ok == 0
        assert not any(isinstance(e, Result) for e in events)
        assert not any(Path(item.dst).exists() for item in job.items)
        assert client.alive  # cancelling a job keeps the worker warm
        client.ping()
        assert any(isinstance(e, Pong) for e in collect(client, lambda e: isinstance(e, Pong)))


def test_crash_mid_job_becomes_a_crashed_event_with_exit_code_and_log_tail(tmp_path):
    client = fake("crash")
    client.start(timeout=20)
    client.submit(job_of(tmp_path, ["a"]))
    events = collect(client, lambda e: isinstance(e, Crashed))
    crashed = events[-1]
    assert crashed.returncode == 3
    assert "out of cheese" in crashed.stderr_tail and "out of cheese" in crashed.message
    assert not client.alive and not client.busy
    with pytest.raises(WorkerError):
        client.submit(job_of(tmp_path, ["b"]))
    client.stop()


def test_protocol_version_mismatch_is_a_clear_error_and_stops_the_worker():
    client = fake("badversion")
    with pytest.raises(WorkerStartError, match=r"protocol 99.*protocol 1"):
        client.start(timeout=20)
    assert not client.alive


def test_silent_worker_times_out_and_is_stopped():
    client = fake("silent")
    with pytest.raises(WorkerStartError, match="did not get ready"):
        client.start(timeout=1.0)
    assert not client.alive


def test_missing_python_names_the_path(tmp_path):
    missing = tmp_path / "no" / "python3"
    with pytest.raises(WorkerStartError, match=str(missing).replace("\\", "\\\\")):
        WorkerClient(str(missing)).start(timeout=5)


def test_non_executable_python_is_refused(tmp_path):
    script = tmp_path / "python"
    script.write_text("not a program")
    script.chmod(0o644)
    with pytest.raises(WorkerStartError, match="not an executable"):
        WorkerClient(str(script)).start(timeout=5)


def test_python_without_texup_says_how_to_install(tmp_path):
    # -S skips site-packages, so this real interpreter cannot import texup (cwd has no texup either)
    client = WorkerClient(sys.executable, args=("-S", "-m", "texup", "worker"), cwd=str(tmp_path))
    with pytest.raises(
        WorkerStartError, match="has no texup: install it there .*pip install PATH/TO/texup.*Worker Python"
    ):
        client.start(timeout=20)


def test_poll_never_blocks_while_the_worker_is_silent(worker):
    slowest = 0.0
    for _ in range(50):
        start = time.perf_counter()
        assert worker.poll() == []
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.005


def test_models_and_ping_and_stderr_log_file(tmp_path):
    log = tmp_path / "worker.log"
    with fake("normal", log_path=str(log)) as client:
        client.start(timeout=20)
        request = client.request_models()
        events = collect(client, lambda e: isinstance(e, Models))
        assert events[-1].id == request and events[-1].models[0]["name"] == "fake-x4"
    assert "starting in mode normal" in log.read_text()
    assert "starting in mode normal" in client.stderr_tail()


def test_invalid_job_is_refused_before_sending(worker, tmp_path):
    bad = Job(options=JobOptions(tile=8), items=(JobItem("a", "/x.png", "/y.png"),))
    with pytest.raises(ValueError, match="tile"):
        worker.submit(bad)
    dup = Job(options=JobOptions(), items=(JobItem("a", "/x.png", "/y.png"), JobItem("a", "/x.png", "/z.png")))
    with pytest.raises(ValueError, match="twice"):
        worker.submit(dup)
    assert not worker.busy


# --- find_worker_python ------------------------------------------------------------------------


def _exe(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_python_prefers_the_preference_then_env_then_path(tmp_path):
    pref = _exe(tmp_path / "pref" / "python3")
    env_py = _exe(tmp_path / "env" / "python3")
    assert find_worker_python(str(pref), environ={"TEXUP_PYTHON": str(env_py)}) == str(pref)
    assert find_worker_python(None, environ={"TEXUP_PYTHON": str(env_py)}) == str(env_py)
    assert find_worker_python("", environ={}, which=lambda name: None) is None


def test_find_python_resolves_a_bare_command_name_on_path(tmp_path):
    py = _exe(tmp_path / "bin" / "python3.11")
    assert find_worker_python(
        "python3.11", environ={}, which=lambda name: str(py) if name == "python3.11" else None
    ) == str(py)


def test_find_python_in_a_venv_folder(tmp_path):
    py = _exe(tmp_path / "venv" / "bin" / "python3")
    assert find_worker_python(str(tmp_path / "venv"), environ={}) == str(py)


def test_find_python_from_texup_script_shebang(tmp_path):
    py = _exe(tmp_path / "envs" / "a" / "bin" / "python3.12")
    script = _exe(tmp_path / "bin" / "texup", f"#!{py}\nimport sys\n")
    assert find_worker_python(None, environ={}, which=lambda name: str(script)) == str(py)


def test_find_python_from_pip_long_path_launcher(tmp_path):
    py = _exe(tmp_path / "with space" / "bin" / "python")
    script = _exe(tmp_path / "bin2" / "texup", f"#!/bin/sh\n'''exec' \"{py}\" \"$0\" \"$@\"\n' '''\n")
    assert find_worker_python(None, environ={}, which=lambda name: str(script)) == str(py)


def test_find_python_next_to_texup_script(tmp_path):
    py = _exe(tmp_path / "venv" / "bin" / "python")
    script = _exe(tmp_path / "venv" / "bin" / "texup", "#!/nonexistent/python\n")
    assert find_worker_python(None, environ={}, which=lambda name: str(script)) == str(py)


def test_find_python_keeps_a_missing_preference_so_start_can_say_what_is_wrong(tmp_path):
    missing = tmp_path / "nope" / "python"
    assert find_worker_python(str(missing), environ={}) == str(missing)


def test_found_python_runs_the_real_module(tmp_path):
    """The interpreter found from the venv's own texup script is this test's interpreter's environment."""
    script = Path(sys.executable).parent / "texup"
    if not script.exists():
        pytest.skip("texup console script not installed next to this interpreter")
    found = find_worker_python(None, environ={}, which=lambda name: str(script))
    assert found is not None and os.path.samefile(Path(found).parent, Path(sys.executable).parent)


# --- non-blocking start: spawn() returns at once, check_ready() is polled from a timer -----------------


def _ready_after_polling(client: WorkerClient, timeout: float = 20.0) -> tuple[Hello, int, float]:
    """check_ready() every 10 ms until the hello; returns it, the number of polls and the slowest one."""
    polls, slowest, deadline = 0, 0.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        start = time.perf_counter()
        hello = client.check_ready()
        slowest = max(slowest, time.perf_counter() - start)
        polls += 1
        if hello is not None:
            return hello, polls, slowest
        time.sleep(0.01)
    raise AssertionError("no hello")


def test_spawn_returns_at_once_and_check_ready_picks_up_the_hello(tmp_path):
    slow = tmp_path / "slow_python"
    slow.write_text(f'#!/bin/sh\nsleep 1\nexec "{sys.executable}" "$@"\n')
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)
    client = WorkerClient(str(slow), args=(FAKE, "normal"))
    try:
        start = time.perf_counter()
        client.spawn(timeout=20)
        assert time.perf_counter() - start < 0.5
        assert client.alive and not client.ready
        with pytest.raises(WorkerError, match="still starting"):
            client.submit(job_of(tmp_path, ["a"]))
        hello, polls, slowest = _ready_after_polling(client)
        assert isinstance(hello, Hello) and client.ready and client.check_ready() is hello
        assert polls > 10 and slowest < 0.05
        job_id = client.submit(job_of(tmp_path, ["a"]))
        events = collect(client, lambda e: isinstance(e, Done))
        assert [e.ok for e in events if isinstance(e, Done) and e.id == job_id] == [1]
    finally:
        client.stop()


@pytest.mark.parametrize("mode, message", [("badversion", r"protocol 99"), ("silent", "did not get ready")])
def test_check_ready_raises_start_errors_and_keeps_saying_them(mode, message):
    client = fake(mode)
    client.spawn(timeout=1.5)
    with pytest.raises(WorkerStartError, match=message):
        _ready_after_polling(client)
    assert client.start_failed and not client.alive
    with pytest.raises(WorkerStartError, match=message):
        client.check_ready()


def test_check_ready_names_a_python_without_texup(tmp_path):
    client = WorkerClient(sys.executable, args=("-S", "-m", "texup", "worker"), cwd=str(tmp_path))
    client.spawn(timeout=20)
    with pytest.raises(WorkerStartError, match="has no texup"):
        _ready_after_polling(client)


def test_spawn_refuses_a_missing_python_at_once(tmp_path):
    with pytest.raises(WorkerStartError, match="does not exist"):
        WorkerClient(str(tmp_path / "none" / "python")).spawn()
