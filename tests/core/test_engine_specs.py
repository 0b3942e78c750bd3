"""The engine registry (texup.engines.spec): the names it holds, what selection derives from it, swapping a spec."""

from __future__ import annotations

import pytest

from texup import options
from texup.engines import select, spec
from texup.engines.base import ENGINE_NAMES
from texup.engines.spec import Candidate, Device


def test_the_registered_engines_are_the_schemas_names_and_the_addon_labels_them_all():
    assert spec.engine_names() == ENGINE_NAMES == tuple(e for e in options.ENGINES if e != "auto")
    assert set(options.ENGINE_LABELS) == set(options.ENGINES)
    with pytest.raises(RuntimeError, match="differ"):
        spec.check_names(("auto", "torch"), options.ENGINE_LABELS)
    with pytest.raises(RuntimeError, match="ENGINE_LABELS"):
        spec.check_names(options.ENGINES, {"auto": ("Auto", "")})


def test_devices_choices_and_implied_engines_derive_from_the_specs():
    assert spec.device_patterns() == ("cpu", "cuda[:N]", "gpu[:N]", "mps", "npu", "vulkan[:N]")
    assert [select.engine_for_device(d) for d in ("vulkan:2", "cuda", "MPS", "cpu", "auto", "gpu:1", "npu")] == [
        "ncnn",
        "torch",
        "torch",
        None,
        None,
        "openvino",
        "openvino",
    ]
    pattern = spec.choice_pattern()
    assert pattern.fullmatch("ncnn/vulkan:12/fp16") and pattern.fullmatch("torch/cuda/auto")
    assert not pattern.fullmatch("torch/mps:0/fp32") and not pattern.fullmatch("tpu/cpu/auto")
    assert spec.get_spec("ncnn").precisions_on("vulkan:3") == ("fp32", "fp16")
    assert spec.get_spec("ncnn").precisions_on("cpu") == ("fp32", "bf16")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda\\[:N\\], gpu\\[:N\\], mps, npu or vulkan\\[:N\\]"):
        select.check_device("tpu")
    with pytest.raises(ValueError, match="expected auto, torch, ncnn"):
        select.open_engine("realesr-animevideov3", engine="tensorrt")


def test_a_swapped_spec_drives_candidates_devices_and_opening(tmp_path, monkeypatch):
    """Tests swap a spec (spec.replaced) instead of patching functions of the engines' modules."""
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    opened: list[tuple[str, str]] = []

    class Fake:
        name, precision, scale = "ncnn", "fp16", 4

    def fake_open(model, device, precision, layout):
        opened.append((device, precision))
        return Fake()

    gpu = [(spec.RANK_VULKAN, Candidate("ncnn", "vulkan:1")), (spec.RANK_CPU_BUNDLED, Candidate("ncnn", "cpu"))]
    with (
        spec.replaced("ncnn", available=lambda: True, candidates=lambda: gpu, open=fake_open),
        spec.replaced("torch", available=lambda: False),
        spec.replaced("openvino", available=lambda: False),
    ):
        assert [c.key for c in select.candidates()] == ["ncnn/vulkan:1/auto", "ncnn/cpu/auto"]
        # fp16 is offered on Vulkan only, so the pool is one candidate: opened without measuring
        assert isinstance(select.open_engine("realesr-animevideov3", precision="fp16"), Fake)
        assert opened == [("vulkan:1", "fp16")]
    with (
        spec.replaced("torch", available=lambda: False, found_devices=lambda: [Device("cpu", "x")]),
        spec.replaced("openvino", available=lambda: False),
    ):
        assert all(d["engines"] == ["ncnn"] for d in select.devices_here())
    assert spec.get_spec("ncnn").open is not fake_open  # restored
