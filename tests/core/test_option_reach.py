"""A new pixel-changing run option is at most five edits (issue 22 item 1; ARCHITECTURE.md, "Add a run option").

The test makes the edits a developer would make, and no other: a made-up option ``sharpen`` in the schema's source
(texup/options.py, which the add-on carries as bridge/options.py) and its field in ``UpscaleOptions``. In a fresh
interpreter it then shows the option reaching ``texup upscale``'s flag, the pipeline's options, the output folder's
manifest (recorded, compared on a rerun, read as its ``before`` value in entries from before it), the worker
protocol and the worker's job, and the add-on's job options, scene property and run values. The pipeline's use of
the option and the panel's row are the remaining edits; a stand-in upscaler stands for the pipeline here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NEW_OPTION = """
    Option("sharpen", "float", 0.0, "made up: sharpen the output by this much", low=0.0, high=1.0, pixels=True),
"""

SCRIPT = textwrap.dedent(
    r'''
    import importlib.util, io, json, sys, types
    from dataclasses import field, make_dataclass
    from pathlib import Path

    import numpy as np

    ROOT, WORK, NEW_OPTION = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, str(ROOT / "blender_addon"))

    # edit 1: the option in the schema (texup/options.py, carried by the add-on as bridge/options.py)
    source = (ROOT / "core" / "texup" / "options.py").read_text()
    anchor = "\n)\nOPTIONS: dict[str, Option]"
    assert source.count(anchor) == 1
    source = source.replace(anchor, "\n" + NEW_OPTION.strip("\n") + anchor)
    for name in ("texup.options", "bridge.options"):  # in place before either package imports its schema
        module = types.ModuleType(name)
        module.__file__ = str(ROOT / "core" / "texup" / "options.py")
        sys.modules[name] = module  # dataclasses look their module up while the schema defines its records
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    import bridge
    import texup

    from bridge import worker_protocol

    assert worker_protocol.schema is sys.modules["bridge.options"]  # the add-on's modules read the edited schema
    texup.options, bridge.options = sys.modules["texup.options"], sys.modules["bridge.options"]

    # edit 2: its field in UpscaleOptions
    from texup.inference import pipeline

    pipeline.UpscaleOptions = make_dataclass(
        "UpscaleOptions", [("sharpen", float, field(default=0.0))], bases=(pipeline.UpscaleOptions,), frozen=True
    )

    from texup import options as schema
    from texup.cli.main import main
    from PIL import Image
    from texup.worker import protocol
    from texup.worker.server import WorkerServer

    assert schema.OPTIONS["sharpen"].pixels and "sharpen" in schema.PIXEL_OPTIONS
    seen = []  # the options each upscale got


    class Engine:
        name = "stand-in"


    class StandIn:
        """What the pipeline's use of the option stands for: records the options, doubles the pixels."""

        scale, engine, device, precision = 2, Engine(), "cpu", "fp32"

        def upscale_array(self, pixels, options, **kwargs):
            seen.append(options)
            return np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1)

        def upscale_file(self, src, dst, options, *, progress, cancel, format=None):
            pixels = np.asarray(Image.open(src))
            Image.fromarray(self.upscale_array(pixels, options)).save(dst, format="PNG")
            return Path(dst)


    import texup.api as api

    api.get_upscaler = lambda model, **kwargs: StandIn()
    src = WORK / "in" / "wall.png"
    src.parent.mkdir()
    Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(src)
    model = WORK / "m.safetensors"
    model.write_bytes(b"weights")

    # the CLI: its flag, checked by the schema; the pipeline's options; the manifest's record
    def cli(out, *flags):
        seen.clear()
        code = main(["upscale", str(src), "-o", str(out), "--model", str(model), "--scale", "2", *flags])
        return code, [o.sharpen for o in seen]

    def recorded(out):
        entries = json.loads((out / ".texup" / "outputs.json").read_text())["files"]
        (entry,) = entries.values()
        return entry["options"]

    out = WORK / "cli"
    assert cli(out, "--sharpen", "0.5") == (0, [0.5])
    assert recorded(out)["sharpen"] == 0.5
    assert cli(out, "--sharpen", "0.5") == (0, [])  # up to date: same options
    assert cli(out) == (0, [0.0])  # the default differs from what the output recorded: redone
    assert recorded(out)["sharpen"] == 0.0
    try:
        main(["upscale", str(src), "-o", str(out), "--sharpen", "2"])
        raise AssertionError("--sharpen 2 was taken")
    except SystemExit as stop:
        assert stop.code == 2
    # an entry from before the option existed reads as its `before` (here: the default): still up to date
    manifest = out / ".texup" / "outputs.json"
    document = json.loads(manifest.read_text())
    for entry in document["files"].values():
        del entry["options"]["sharpen"]
    manifest.write_text(json.dumps(document))
    assert cli(out) == (0, [])

    # the add-on's job options (bridge/worker_protocol.py), sent to the worker's protocol and job
    from bridge import manifest as bridge_manifest
    from bridge import scene_options
    from bridge.worker_protocol import JobOptions, ProtocolError

    sent = JobOptions(model=str(model), scale=2.0, sharpen=0.25)
    sent.validate()
    assert sent.to_json()["sharpen"] == 0.25 and "sharpen" not in JobOptions().to_json()
    try:
        JobOptions(sharpen=3.0).validate()
        raise AssertionError("sharpen 3 was taken")
    except ProtocolError as err:
        assert str(err).startswith("sharpen must be between 0 and 1")
    try:
        protocol.parse_options({"sharpen": "much"})
        raise AssertionError("sharpen 'much' was taken")
    except protocol.ProtocolError as err:
        assert str(err).startswith("option sharpen must be a number")
    out = WORK / "worker"
    message = {
        "type": "upscale", "id": "j", "options": sent.to_json(),
        "items": [{"key": "wall", "src": str(src), "dst": str(out / "wall_x2.png")}],
    }
    events = io.StringIO()
    seen.clear()
    WorkerServer(io.BytesIO(), events, get_upscaler=lambda model, **kw: StandIn()).run_job(
        protocol.parse_upscale(message)
    )
    kinds = [json.loads(line)["type"] for line in events.getvalue().splitlines()]
    assert kinds[-2:] == ["result", "done"], events.getvalue()
    assert [o.sharpen for o in seen] == [0.25]
    assert recorded(out)["sharpen"] == 0.25
    # the add-on's own reading of the manifest compares it too
    assert bridge_manifest.pixel_options(scale=2.0, sharpen=0.25)["sharpen"] == 0.25

    # the add-on's scene: a generated property (properties.py adds it to TexupSettings), read into the run
    hand_made = ("model", "scale", "tile", "seamless", "color_fix")
    generated = scene_options.generated_properties(hand_made)
    assert generated["sharpen"] == (
        "FloatProperty",
        {"name": "Sharpen", "description": "made up: sharpen the output by this much", "default": 0.0,
         "min": 0.0, "max": 1.0},
    )
    assert not set(generated) & set(hand_made)  # a hand-made property is never generated again
    assert "sharpen" in [o.name for o in scene_options.run_options()]  # a field of RunSettings
    values = {"seamless": "on", "color_fix": "auto", "sharpen": 0.75, "max_size": 7}
    assert scene_options.scene_values(values.__getitem__, values) == {"seamless": "on", "color_fix": "auto",
                                                                       "sharpen": 0.75}
    assert JobOptions(**scene_options.scene_values(values.__getitem__, values)).to_json()["sharpen"] == 0.75
    print("reached")
    '''
)


def test_a_new_pixel_option_reaches_the_cli_worker_manifest_and_add_on_without_other_edits(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path), NEW_OPTION],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("reached"), done.stdout + done.stderr


def test_the_made_up_option_is_new():
    """The test above proves something only while texup has no such option."""
    from texup import options as schema

    assert "sharpen" not in schema.OPTIONS
