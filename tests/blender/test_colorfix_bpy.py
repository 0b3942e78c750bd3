"""The panel's Colour Fix and Alpha settings (bpy 5.0.1 in-process): scene properties whose values reach the run's
settings, the worker's job options and the manifest's pixel options (``.venv-blender/bin/python -m pytest
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
    from blender_addon.bridge.worker_protocol import COLOR_FIX

    settings = bpy.context.scene.texup
    assert settings.color_fix == "auto"
    assert tuple(item.identifier for item in type(settings).bl_rna.properties["color_fix"].enum_items) == COLOR_FIX
    _reaches_the_job(settings, "color_fix", "off")


def test_alpha_setting_is_generated_from_the_schema_and_reaches_the_job(addon):
    """Alpha has no hand-made property: bridge/scene_options.py makes it from texup's schema (issue 23's alpha rule)."""
    from blender_addon.bridge import options as schema

    settings = bpy.context.scene.texup
    assert settings.alpha == "auto"
    prop = type(settings).bl_rna.properties["alpha"]
    assert tuple(item.identifier for item in prop.enum_items) == schema.ALPHA_MODES == ("auto", "model", "resample")
    assert [item.name for item in prop.enum_items] == ["Auto", "Model", "Resample"]
    _reaches_the_job(settings, "alpha", "resample")


def _reaches_the_job(settings, name: str, value: str) -> None:
    """The scene property ``name`` (at its default "auto") set to ``value`` reaches the run's settings, the worker's
    job options and the manifest's pixel options; put back to "auto" afterwards."""
    from blender_addon.bridge.manifest import pixel_options
    from blender_addon.bridge.worker_protocol import JobOptions
    from blender_addon.operators import run_settings

    assert getattr(run_settings(bpy.context), name) == "auto"
    setattr(settings, name, value)
    try:
        chosen = getattr(run_settings(bpy.context), name)
        assert chosen == value
        assert JobOptions(**{name: chosen}).to_json()[name] == value
        assert pixel_options(scale=4, seamless="auto", role="color", **{name: chosen})[name] == value
    finally:
        setattr(settings, name, "auto")
