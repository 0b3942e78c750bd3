"""The panel's Colour Fix setting (bpy 5.0.1 in-process): a scene property whose value reaches the run's settings,
the worker's job options and the manifest's pixel options (``.venv-blender/bin/python -m pytest
tests/blender/test_colorfix_bpy.py``). Skipped where ``bpy`` cannot be imported (the main venv)."""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy")


@pytest.fixture(scope="module")
def addon():
    import blender_addon
    from blender_addon import service

    blender_addon.register()
    yield blender_addon
    service.stop_worker()
    blender_addon.unregister()


def test_colour_fix_setting_reaches_the_run_settings_and_the_job(addon):
    from blender_addon.bridge.manifest import pixel_options
    from blender_addon.bridge.worker_protocol import COLOR_FIX, JobOptions
    from blender_addon.operators import run_settings

    settings = bpy.context.scene.texup
    assert settings.color_fix == "auto"
    assert tuple(item.identifier for item in type(settings).bl_rna.properties["color_fix"].enum_items) == COLOR_FIX
    assert run_settings(bpy.context).color_fix == "auto"
    settings.color_fix = "off"
    chosen = run_settings(bpy.context)
    assert chosen.color_fix == "off"
    assert JobOptions(color_fix=chosen.color_fix).to_json()["color_fix"] == "off"
    assert pixel_options(scale=4, seamless="auto", role="color", color_fix=chosen.color_fix)["color_fix"] == "off"
    settings.color_fix = "auto"
