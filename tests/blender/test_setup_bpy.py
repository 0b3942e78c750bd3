"""Preferences' worker setup inside Blender (the PyPI ``bpy`` module): Test Worker against the real worker
and a wrong path, the status drawn without file access, the PyTorch installer's operators.

Run with the bpy environment: ``TEXUP_PYTHON=$PWD/.venv/bin/python .venv-blender/bin/python -m pytest
tests/blender/test_setup_bpy.py``. Skipped where ``bpy`` cannot be imported (the main venv).
"""

from __future__ import annotations

import builtins
import json
import os
import threading

import pytest

bpy = pytest.importorskip("bpy")


class RecordingLayout:
    """Stands in for ``bpy.types.UILayout``: records labels, operators and properties drawn."""

    def __init__(self, log: list | None = None) -> None:
        self.log = [] if log is None else log

    def _child(self, *args, **kwargs) -> RecordingLayout:
        return RecordingLayout(self.log)

    row = column = box = split = _child

    def label(self, *, text: str = "", icon: str = "NONE") -> None:
        self.log.append(("label", icon, text))

    def operator(self, idname: str, **kwargs) -> None:
        self.log.append(("operator", idname, kwargs.get("text", "")))

    def prop(self, data, name: str, **kwargs) -> None:
        self.log.append(("prop", name, ""))

    def labels(self) -> list[tuple[str, str]]:
        return [(icon, text) for kind, icon, text in self.log if kind == "label"]


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    import blender_addon
    from blender_addon import service

    blender_addon.register()
    service.configure(str(tmp_path_factory.mktemp("user")))  # what an extension's user folder would be
    yield blender_addon
    service.stop_worker()
    blender_addon.unregister()


@pytest.fixture
def setup_ops(addon):
    from blender_addon import setup_ops

    setup_ops.WORKER_CHECK.wait(120)
    setup_ops.WORKER_CHECK.forget()
    return setup_ops


def test_test_worker_reports_the_real_workers_versions_and_devices(setup_ops, monkeypatch, worker_python):
    monkeypatch.setenv("TEXUP_PYTHON", worker_python)

    assert bpy.ops.texup.test_worker() == {"FINISHED"}

    report = setup_ops.WORKER_CHECK.result
    assert report is not None and report.ok and report.python == worker_python and report.source == "TEXUP_PYTHON"
    assert report.texup and report.engines and report.device("cpu") is not None
    layout = RecordingLayout()
    from blender_addon.ui import draw_worker_status

    draw_worker_status(layout, bpy.context, details=True)
    labels = layout.labels()
    assert labels[0][0] == "CHECKMARK" and f"texup {report.texup}" in labels[0][1]
    assert any(text.startswith("cpu ") for _, text in labels)


@pytest.mark.parametrize("python", ["/nonexistent/python", "/bin/sh"])
def test_a_path_without_a_working_texup_never_gets_a_tick(setup_ops, monkeypatch, python):
    monkeypatch.setenv("TEXUP_PYTHON", python)

    with pytest.raises(RuntimeError, match="texup: "):
        bpy.ops.texup.test_worker()

    report = setup_ops.WORKER_CHECK.result
    assert report is not None and not report.ok and report.error
    layout = RecordingLayout()
    from blender_addon.ui import draw_worker_status

    draw_worker_status(layout, bpy.context)
    assert all(icon != "CHECKMARK" for icon, _ in layout.labels())
    assert layout.labels()[0][0] == "ERROR"


def test_drawing_the_preferences_touches_no_file_and_starts_the_first_check_on_a_thread(
    setup_ops, monkeypatch, worker_python
):
    from blender_addon import preferences, service, ui

    monkeypatch.setenv("TEXUP_PYTHON", worker_python)
    main = threading.current_thread()
    resolved_on = []
    real_resolve = service.resolve_launch

    def resolve(preference):
        resolved_on.append(threading.current_thread())
        return real_resolve(preference)

    monkeypatch.setattr(service, "resolve_launch", resolve)
    real_open, real_stat = builtins.open, os.stat

    def guarded(real):
        def call(*args, **kwargs):
            if threading.current_thread() is main:
                raise AssertionError(f"file access while drawing: {args[:1]}")
            return real(*args, **kwargs)

        return call

    class Prefs:  # the AddonPreferences' fields, as draw reads them
        worker_python = ""
        output_dir = "//upscaled"
        default_model = "realesrgan-x4plus"
        device = "auto"

    prefs = Prefs()
    prefs.layout = RecordingLayout()
    monkeypatch.setattr(builtins, "open", guarded(real_open))
    monkeypatch.setattr(os, "stat", guarded(real_stat))
    try:
        preferences.TexupPreferences.draw(prefs, bpy.context)
    finally:
        monkeypatch.setattr(builtins, "open", real_open)
        monkeypatch.setattr(os, "stat", real_stat)

    first = prefs.layout.labels()
    assert first[0] in (("SORTTIME", "Worker: checking…"), ("QUESTION", "Worker: not checked"))
    assert ("operator", "texup.test_worker", "Test") in prefs.layout.log
    assert any(entry[:2] == ("operator", "texup.install_torch") for entry in prefs.layout.log)
    report = setup_ops.WORKER_CHECK.wait(120)
    assert report is not None and report.ok
    assert resolved_on and all(thread is not main for thread in resolved_on)

    again = RecordingLayout()
    ui.draw_worker_status(again, bpy.context)  # the first check is not repeated on later draws
    assert again.labels()[0][0] == "CHECKMARK" and not setup_ops.WORKER_CHECK.running


def test_device_choices_include_the_vulkan_engine(addon):
    from blender_addon.preferences import DEVICES

    assert [d[0] for d in DEVICES] == ["auto", "cpu", "vulkan", "cuda", "mps"]


def test_a_failing_install_changes_nothing_and_reports_one_line(setup_ops, monkeypatch):
    monkeypatch.setenv("TEXUP_TORCH_REQUIREMENT", "torch==0.0.0")
    monkeypatch.setenv("TEXUP_TORCH_INDEX_URL", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    folder = setup_ops.user_dir()

    with pytest.raises(RuntimeError, match="PyTorch was not installed: .*torch==0.0.0"):
        bpy.ops.texup.install_torch()

    job = setup_ops.installer()
    assert job is not None and job.done and job.error and "\n" not in job.error
    assert not os.path.exists(os.path.join(folder, "torch-env"))
    assert not os.path.exists(os.path.join(folder, "torch-env.partial"))
    assert os.path.isfile(os.path.join(folder, "torch-install.log"))
    layout = RecordingLayout()
    from blender_addon.preferences import draw_torch_section

    draw_torch_section(layout, bpy.context)
    texts = [text for _, text in layout.labels()]
    assert any(text.startswith("Install failed: ") for text in texts)
    assert any(text == f"Log: {os.path.join(folder, 'torch-install.log')}" for text in texts)


def test_remove_deletes_an_installed_environment(setup_ops):
    folder = setup_ops.user_dir()
    env = os.path.join(folder, "torch-env")
    os.makedirs(os.path.join(env, "bin"))
    with open(os.path.join(env, "texup-torch-env.json"), "w", encoding="utf-8") as handle:
        json.dump({"torch": "2.13.0+cpu", "cuda": False}, handle)
    setup_ops.refresh_torch_state()
    layout = RecordingLayout()
    from blender_addon.preferences import draw_torch_section

    draw_torch_section(layout, bpy.context)
    assert ("CHECKMARK", "Installed: torch 2.13.0+cpu (CPU)") in layout.labels()

    assert bpy.ops.texup.remove_torch_env() == {"FINISHED"}
    assert not os.path.exists(env) and setup_ops.torch_env_marker() is None
    setup_ops.WORKER_CHECK.wait(120)


def test_without_an_extension_folder_the_installer_is_off_with_a_note(setup_ops, monkeypatch):
    from blender_addon import service

    monkeypatch.setattr(service, "_user_dir", None)
    assert not bpy.ops.texup.install_torch.poll()
    layout = RecordingLayout()
    from blender_addon.preferences import draw_torch_section

    draw_torch_section(layout, bpy.context)
    assert layout.labels()[-2][1].startswith("Installing PyTorch needs Blender 4.2+")
    assert not any(entry[0] == "operator" for entry in layout.log)
