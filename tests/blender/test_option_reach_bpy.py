"""A new run option reaches the add-on's scene, panel settings and job without an edit in the add-on but its panel row
(bpy 5.0.1, in a fresh interpreter: ``.venv-blender/bin/python -m pytest tests/blender/test_option_reach_bpy.py``;
issue 22 item 1, tests/core/test_option_reach.py for the CLI, worker and manifest). Skipped without ``bpy``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    r"""
    import sys, types
    from pathlib import Path

    ROOT = Path(sys.argv[1])
    sys.path.insert(0, str(ROOT))
    # the one edit in the add-on's copy of the schema: a made-up pixel option
    source = (ROOT / "blender_addon" / "bridge" / "options.py").read_text()
    anchor = "\n)\nOPTIONS: dict[str, Option]"
    assert source.count(anchor) == 1
    option = '    Option("sharpen", "float", 0.0, "made up: sharpen by this much", low=0.0, high=1.0, pixels=True),'
    module = types.ModuleType("blender_addon.bridge.options")
    module.__file__ = "options.py"
    sys.modules[module.__name__] = module
    exec(compile(source.replace(anchor, "\n" + option + anchor), module.__file__, "exec"), module.__dict__)

    import bpy
    import blender_addon
    from blender_addon.bridge import worker_protocol

    assert worker_protocol.schema is module
    blender_addon.register()
    try:
        from blender_addon.operators import run_settings
        from blender_addon.upscale_run import RunSettings

        settings = bpy.context.scene.texup
        prop = type(settings).bl_rna.properties["sharpen"]
        assert (prop.type, prop.default, prop.hard_min, prop.hard_max) == ("FLOAT", 0.0, 0.0, 1.0), prop
        assert prop.description == "made up: sharpen by this much"
        assert run_settings(bpy.context).sharpen == 0.0
        settings.sharpen = 0.75
        chosen = run_settings(bpy.context)
        assert isinstance(chosen, RunSettings) and abs(chosen.sharpen - 0.75) < 1e-6
        sent = worker_protocol.JobOptions(sharpen=chosen.sharpen).to_json()
        assert abs(sent["sharpen"] - 0.75) < 1e-6
    finally:
        blender_addon.unregister()
    print("reached")
    """
)


def test_a_new_option_is_a_scene_property_and_reaches_the_run_settings():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("reached"), done.stdout + done.stderr
