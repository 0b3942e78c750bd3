"""The run-option schema (texup.options): one definition read by the CLI, the worker protocol, the manifest and the
add-on (which carries the same file)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import zipfile
from pathlib import Path

import pytest

from texup import options as schema

ROOT = Path(__file__).resolve().parents[2]


def test_the_add_on_carries_the_schema_byte_for_byte():
    assert (ROOT / "blender_addon" / "bridge" / "options.py").read_bytes() == (
        ROOT / "core" / "texup" / "options.py"
    ).read_bytes(), "copy core/texup/options.py to blender_addon/bridge/options.py"


def test_the_build_writes_the_schema_from_core(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_addon
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    stale = tmp_path / "options.py"
    stale.write_text("stale = True\n")
    real = build_addon._source_files

    def with_a_stale_copy(root, keep):
        for path, rel in real(root, keep):
            yield (stale if rel == build_addon.SCHEMA_COPY else path), rel

    monkeypatch.setattr(build_addon, "_source_files", with_a_stale_copy)
    with zipfile.ZipFile(build_addon.build(str(tmp_path))) as zf:
        carried = zf.read(f"{build_addon.PACKAGE}/{build_addon.SCHEMA_COPY}")
    assert carried == (ROOT / "core" / "texup" / "options.py").read_bytes()


def test_the_schema_imports_nothing_but_the_standard_library():
    text = (ROOT / "core" / "texup" / "options.py").read_text()
    imports = [line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert set(imports) <= {"__future__", "math", "collections.abc", "dataclasses", "typing"}, imports


def test_pixel_options_keep_the_manifests_keys_and_order():
    # outputs already on disk recorded these keys: a rename would redo every one of them
    assert schema.PIXEL_OPTIONS == ("scale", "size", "seamless", "role", "color_fix", "dds_format", "alpha")
    recorded = schema.pixel_options({"scale": 4, "target_size": (64, 32), "role": "normal"})
    assert recorded == {
        "scale": 4.0,
        "size": [64, 32],
        "seamless": "auto",
        "role": "normal",
        "color_fix": "auto",
        "dds_format": None,
        "alpha": "auto",
    }
    assert json.loads(json.dumps(recorded)) == recorded
    assert schema.pixel_options({"size": [8, 8]})["size"] == [8, 8]  # by manifest key too
    with pytest.raises(ValueError, match="not pixel options: tile"):
        schema.pixel_options({"tile": 64})
    with pytest.raises(ValueError, match="color_fix must be one of auto, on, off, got 'yes'"):
        schema.pixel_options({"color_fix": "yes"})


def test_an_entry_from_before_an_option_reads_as_what_it_was_made_with():
    now = schema.pixel_options({"scale": 4})
    before_dds = {k: v for k, v in now.items() if k != "dds_format"}
    assert schema.same_pixel_options(before_dds, now)  # DDS outputs kept their own format then too
    before_fix = {k: v for k, v in before_dds.items() if k != "color_fix"}
    assert not schema.same_pixel_options(before_fix, now)  # made without the colour fix: auto would change it
    assert schema.same_pixel_options(before_fix, schema.pixel_options({"scale": 4, "color_fix": "off"}))
    assert not schema.same_pixel_options({**now, "sharpen": 1}, now)  # a texup that knew more options
    assert not schema.same_pixel_options(None, now) and not schema.same_pixel_options([], now)
    assert not schema.same_pixel_options({**now, "scale": 2.0}, now)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("scale", 0, "scale must be between 0.01 and 16, got 0"),
        ("scale", float("nan"), "scale must be a number, got nan"),
        ("scale", True, "scale must be a number, got True"),
        ("tile", 8, "tile must be at least 16, got 8"),
        ("tile", 32.5, "tile must be an integer, got 32.5"),
        ("overlap", -1, "overlap must be at least 0, got -1"),
        ("target_size", [0, 4], "target_size must be [width, height] of positive integers, got [0, 4]"),
        ("device", "cuda:x", "device must be auto, cpu, mps, cuda[:N] or vulkan[:N], got 'cuda:x'"),
        ("engine", "onnx", "engine must be one of auto, torch, ncnn, openvino, got 'onnx'"),
        ("model", "", "model must be a non-empty string, got ''"),
        ("seamless", "x" * 200, "seamless must be one of auto, on, off, got 'xxxx"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(name, value, message):
    with pytest.raises(ValueError) as err:
        schema.check(name, value)
    assert str(err.value).startswith(message) and "\n" not in str(err.value) and len(str(err.value)) < 200


def test_good_values_come_back_in_the_options_own_type():
    assert schema.check("scale", 2) == 2.0 and isinstance(schema.check("scale", 2), float)
    assert schema.check("tile", 64.0) == 64 and isinstance(schema.check("tile", 64.0), int)
    assert schema.check("target_size", [3, 5]) == (3, 5)
    assert schema.check("device", "cuda:1") == "cuda:1"
    assert schema.check("overlap", None) == schema.OVERLAP_DEFAULT
    assert schema.check("color_fix", None) == "auto"


def test_dds_formats_are_imageios():
    from texup.imageio import DDS_FORMATS

    assert schema.DDS_FORMATS == tuple(DDS_FORMATS)


def test_the_worker_protocol_knows_exactly_the_schemas_job_options():
    from texup.worker import protocol

    fields = {f.name for f in dataclasses.fields(protocol.JobOptions)}
    assert fields == set(schema.PROTOCOL_OPTIONS)
    for option in schema.RUN_OPTIONS:
        if not option.protocol:
            continue
        assert getattr(protocol.JobOptions(), option.name) == option.default, option.name
        with pytest.raises(protocol.ProtocolError, match=f"^option {option.name} must"):
            protocol.parse_options({option.name: ["not", "a", "value", "of", "any", "kind"]})


def test_the_cli_flags_of_choice_options_come_from_the_schema():
    from texup.cli.main import build_parser

    parser = build_parser()
    upscale = next(
        action.choices["upscale"] for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    flags = {a.dest: a for a in upscale._actions}
    for option in schema.RUN_OPTIONS:
        if option.kind == "choice":
            action = flags[option.name]
            assert tuple(action.choices) == option.choices and action.default == option.default, option.name


def test_records_that_hold_values_take_none_only_where_it_is_the_default():
    assert schema.OPTIONS["dds_format"].require(None) is None  # "each input's own"
    with pytest.raises(ValueError, match="^seamless must be given, got None$"):
        schema.OPTIONS["seamless"].require(None)
    with pytest.raises(ValueError, match="^layout must be given"):
        schema.EngineChoice(layout=None)  # type: ignore[arg-type]
    assert [o.name for o in schema.options_in(["layout", "tile", "seamless", "nope"])] == ["seamless", "layout"]
    assert [o.name for o in schema.options_in(["device", "engine"], ("choice", "device"))] == ["engine", "device"]


def test_the_ncnn_engine_and_torch_agree_on_native_bf16():
    """machine.native_bf16 (cpuinfo, for ncnn) and devices.cpu_has_native_bf16 (torch's probe) read one flag list."""
    torch = pytest.importorskip("torch")
    if not Path("/proc/cpuinfo").exists() or not hasattr(torch.cpu, "get_capabilities"):
        pytest.skip("needs /proc/cpuinfo and torch.cpu.get_capabilities")
    from texup.devices import cpu_has_native_bf16
    from texup.machine import native_bf16

    assert native_bf16() == cpu_has_native_bf16()
