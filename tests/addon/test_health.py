"""The worker health check: a real texup worker answers with versions, engines and named devices; a
missing path, a Python without texup, another protocol, a silent worker are refused with one line."""

from __future__ import annotations

import os
import sys
import threading
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge import health  # noqa: E402
from bridge.bundle import WorkerLaunch  # noqa: E402
from bridge.client import WorkerStartError  # noqa: E402
from bridge.health import HealthCheck, HealthReport, check_worker, status_lines  # noqa: E402
from bridge.worker_protocol import DeviceInfo, Info, ProtocolError, info_message, parse_event  # noqa: E402

FAKE = str(Path(__file__).with_name("fake_worker.py"))


def fake_texup(tmp_path: Path, mode: str) -> WorkerLaunch:
    """A launch whose ``-m texup worker`` is the fake worker in ``mode`` (a ``texup`` package on the
    launch's PYTHONPATH, ahead of the real one: this also proves the launch's env reaches the worker)."""
    package = tmp_path / "fake_site" / "texup"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        f"import runpy, sys\nsys.argv = [{FAKE!r}, {mode!r}]\nrunpy.run_path({FAKE!r}, run_name='__main__')\n"
    )
    return WorkerLaunch(
        python=sys.executable, env={"PYTHONPATH": str(tmp_path / "fake_site")}, source="preference", description="fake"
    )


def test_the_real_worker_answers_with_versions_engines_and_named_devices():
    import texup

    report = check_worker(
        WorkerLaunch(python=sys.executable, source="TEXUP_PYTHON", description="this venv"), timeout=120
    )

    assert report.ok, report.error
    assert report.texup == texup.__version__
    try:
        import torch
    except ImportError:
        assert report.torch is None
    else:
        assert report.torch == torch.__version__
    assert report.engines and report.auto in report.engines
    cpu = report.device("cpu")
    assert cpu is not None and cpu.name and cpu.name != "?" and not cpu.software
    assert report.auto_device is not None
    assert (report.python, report.source, report.description) == (sys.executable, "TEXUP_PYTHON", "this venv")
    icon, text = status_lines(report)[0]
    assert icon == "CHECKMARK" and f"texup {texup.__version__}" in text
    assert any("Auto: " in line for _, line in status_lines(report))
    assert any(line.startswith("cpu ") for line in health.device_lines(report))


def test_a_missing_path_is_refused_at_once():
    report = check_worker(WorkerLaunch(python="/nonexistent/python"), timeout=10)

    assert not report.ok and report.texup is None
    assert "/nonexistent/python" in report.error and "does not exist" in report.error
    assert "\n" not in report.error and report.seconds < 5
    assert status_lines(report) == [("ERROR", f"Worker: {report.error}")]


def test_a_python_without_texup_is_refused(tmp_path):
    env_dir = tmp_path / "bare"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    report = check_worker(WorkerLaunch(python=str(python)), timeout=60)

    assert not report.ok
    assert "has no texup" in report.error and str(python) in report.error
    assert all(icon != "CHECKMARK" for icon, _ in status_lines(report))


def test_a_worker_of_another_protocol_is_refused(tmp_path):
    report = check_worker(fake_texup(tmp_path, "badversion"), timeout=30)

    assert not report.ok and "protocol 99" in report.error


def test_a_silent_worker_times_out(tmp_path):
    started = time.monotonic()
    report = check_worker(fake_texup(tmp_path, "silent"), timeout=2)

    assert not report.ok and "did not get ready within 2 s" in report.error
    assert time.monotonic() - started < 10


def test_an_older_texup_without_info_still_counts_with_a_note(tmp_path):
    report = check_worker(fake_texup(tmp_path, "normal"), timeout=30)

    assert report.ok and report.texup == "0.0-fake" and report.devices == ()
    assert "cannot list its devices" in report.error


def test_info_events_parse_and_bad_ones_are_refused():
    event = parse_event(
        '{"type":"info","id":"r1","texup":"0.1.0","torch":null,"python":"/py","engines":'
        '["ncnn/cpu/auto"],"devices":[{"key":"cpu","name":"AMD EPYC","engines":["ncnn"],'
        '"software":false},{"key":"vulkan:0","name":"llvmpipe","engines":["ncnn"],"software":true}],'
        '"auto":{"key":"ncnn/cpu/auto","measured":false,"model":"realesrgan-x4plus"}}'
    )
    assert event == Info(
        id="r1",
        texup="0.1.0",
        torch=None,
        python="/py",
        engines=("ncnn/cpu/auto",),
        devices=(DeviceInfo("cpu", "AMD EPYC", ("ncnn",)), DeviceInfo("vulkan:0", "llvmpipe", ("ncnn",), True)),
        auto="ncnn/cpu/auto",
        auto_measured=False,
        auto_model="realesrgan-x4plus",
    )
    assert info_message("x") == {"type": "info", "id": "x"}
    with pytest.raises(ProtocolError):
        parse_event('{"type":"info","id":"r1","texup":"0.1.0","engines":[],"devices":[1],"auto":{}}')
    with pytest.raises(ProtocolError):
        parse_event('{"type":"info","id":"r1","texup":"0.1.0","engines":[],"devices":[]}')


def test_status_before_any_check_is_not_checked_never_a_tick():
    assert status_lines(None) == [("QUESTION", "Worker: not checked")]
    assert status_lines(None, running=True)[0][0] == "SORTTIME"
    assert status_lines(HealthReport(ok=True, texup="1", engines=()))[-1][0] == "ERROR"  # texup without engines


def test_health_check_runs_in_the_background_and_can_be_forgotten():
    gate = threading.Event()

    def slow_check(launch, timeout):
        gate.wait(10)
        return HealthReport(ok=True, python=launch.python, texup="9")

    holder = HealthCheck(check=slow_check)
    assert holder.result is None and not holder.running and not holder.requested
    assert holder.start(lambda: WorkerLaunch(python="/py"))
    assert holder.running and holder.requested
    assert not holder.start(lambda: WorkerLaunch(python="/other"))  # one at a time
    gate.set()
    report = holder.wait(10)
    assert report is not None and report.python == "/py" and not holder.running and holder.generation == 1

    holder.forget()
    assert holder.result is None and not holder.requested

    def no_worker():
        raise WorkerStartError("no texup worker: set --worker-python")

    holder.start(no_worker)
    report = holder.wait(10)
    assert report is not None and not report.ok and report.error == "no texup worker: set --worker-python"


def test_a_result_forgotten_while_running_is_dropped():
    gate = threading.Event()
    holder = HealthCheck(check=lambda launch, timeout: (gate.wait(10), HealthReport(ok=True))[1])
    holder.start(lambda: WorkerLaunch(python="/py"))
    holder.forget()
    gate.set()
    holder.wait(10)
    assert holder.result is None


def test_the_panels_compact_lines_fit_the_sidebar_and_keep_the_tick_rule():
    from bridge.worker_protocol import DeviceInfo

    ok = HealthReport(
        ok=True,
        python="/x/python",
        texup="0.1.0",
        torch=None,
        engines=("ncnn/vulkan:0/fp16",),
        devices=(DeviceInfo(key="vulkan:0", name="AMD Radeon RX 7900 XTX", engines=("ncnn",), software=False),),
        auto="ncnn/vulkan:0/fp16",
        auto_measured=True,
    )
    lines = health.compact_status_lines(ok)
    assert lines[0] == ("CHECKMARK", "Worker: texup 0.1.0")
    assert lines[1] == ("BLANK1", "no PyTorch (ncnn engine)")
    assert lines[-1][0] == "INFO" and lines[-1][1].startswith("Auto: ncnn on AMD Radeon")  # cut to the width
    assert all(len(text) <= 30 for _, text in lines)
    bad = HealthReport(
        ok=False,
        python="/nonexistent/python",
        error="the worker Python '/nonexistent/python' does not exist: choose another Python as "
        "'Worker Python' in the texup add-on preferences",
    )
    lines = health.compact_status_lines(bad)
    assert lines[0] == ("ERROR", "Worker not working:") and all(icon != "CHECKMARK" for icon, _ in lines)
    assert 2 <= len(lines) <= 5 and all(len(text) <= 30 for _, text in lines)
    assert health.compact_status_lines(None) == [("QUESTION", "Worker: not checked")]
