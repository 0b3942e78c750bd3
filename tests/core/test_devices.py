"""One device / precision resolver for inference and training (texup.devices).

The CUDA and MPS branches run without those devices: torch's probes are monkeypatched, and torch.device objects
need no hardware.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import get_args

import pytest
import torch

from texup import devices, options
from texup.devices import pick_channels_last, pick_device, pick_precision, pick_training_precision

CPU = torch.device("cpu")
NO_BF16 = {"avx512_bf16": False, "amx_bf16": False, "bf16": False, "sve_bf16": False}


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA devices, as torch reports it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def _cpu_bf16(monkeypatch, native: bool, flag: str = "avx512_bf16") -> None:
    caps = dict(torch.cpu.get_capabilities()) | NO_BF16 | {flag: native}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: MappingProxyType(caps))


def _gpu(monkeypatch, capability: tuple[int, int], *, emulates_bf16: bool = True, hip: str | None = None) -> None:
    """The CUDA device's compute capability (8.0 on: native bf16) and whether torch can emulate bf16 on it."""
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: emulates_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")


def _one_line_naming(err: pytest.ExceptionInfo, name: str) -> str:
    message = str(err.value)
    assert "\n" not in message and repr(name) in message, message
    return message


# -- devices ------------------------------------------------------------------------------------
def test_auto_without_gpus_is_the_cpu_and_explicit_cpu_is_honoured(no_gpu):
    assert pick_device() == pick_device("auto") == pick_device(" AUTO ") == CPU
    assert pick_device("auto", local_rank=5) == CPU
    assert pick_device("cpu") == pick_device(" CPU ", local_rank=1) == CPU


def test_auto_prefers_cuda_then_mps(monkeypatch, no_gpu):
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert pick_device("auto") == torch.device("mps") == pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("auto") == torch.device("cuda", 0)


def test_each_rank_gets_its_own_gpu(two_gpus):
    for rank, index in ((0, 0), (1, 1), (2, 0), (3, 1)):  # more ranks than GPUs: ranks share them in turn
        assert pick_device("auto", local_rank=rank) == torch.device("cuda", index)
        assert pick_device("cuda", local_rank=rank) == torch.device("cuda", index)
        assert pick_device("cuda:1", local_rank=rank) == torch.device("cuda", 1)  # an index is the user's choice
    assert pick_device("cuda") == torch.device("cuda", 0)  # inference: rank 0


def test_a_gpu_index_this_machine_lacks_is_refused(two_gpus):
    with pytest.raises(ValueError, match="only 2 CUDA device") as err:
        pick_device("cuda:2")
    _one_line_naming(err, "cuda:2")


@pytest.mark.parametrize(("name", "match"), [("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available")])
def test_cuda_without_cuda_is_refused_never_a_fallback(no_gpu, name, match):
    with pytest.raises(ValueError, match=match) as err:
        pick_device(name)
    _one_line_naming(err, name)


def test_mps_without_mps_is_refused(no_gpu):
    with pytest.raises(ValueError, match="MPS is not available") as err:
        pick_device("mps")
    _one_line_naming(err, "mps")


@pytest.mark.parametrize("name", ["gpu", "tpu", "", "cuda:x", "cuda:-1", "vulkan:0x"])
def test_unknown_device_names(name):
    with pytest.raises(ValueError, match="unknown device") as err:
        pick_device(name)
    assert "expected auto, cpu, cuda, cuda:N or mps" in _one_line_naming(err, name)


@pytest.mark.parametrize("name", ["xpu", "meta"])
def test_devices_torch_knows_but_texup_does_not_run_on(name):
    with pytest.raises(ValueError, match="unsupported device") as err:
        pick_device(name)
    _one_line_naming(err, name)


def test_negative_local_rank_is_refused():
    with pytest.raises(ValueError, match="local rank must be 0 or more, got -1"):
        pick_device("cpu", local_rank=-1)


def test_training_and_inference_share_the_resolver(two_gpus):
    from texup.engines import select, torch_engine
    from texup.training import distributed, state

    assert torch_engine.pick_device is pick_device and torch_engine.pick_precision is pick_precision
    assert torch_engine.pick_channels_last is pick_channels_last
    assert distributed.pick_device is pick_device and state.pick_training_precision is pick_training_precision
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        pick_device("cuda:7")  # training validates explicit devices as inference does
    assert select.check_device("CUDA:1") == "cuda:1"
    assert pick_training_precision(CPU, "fp32") == (None, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_training_setup_refuses_a_missing_gpu(monkeypatch):
    from texup.training.distributed import setup

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        setup("cuda")
    assert setup("cpu").device == CPU


# -- bf16 probes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16", "bf16", "sve_bf16"])
def test_cpu_bf16_probe_reads_the_instruction_flags(monkeypatch, flag):
    _cpu_bf16(monkeypatch, True, flag)
    assert devices.cpu_has_native_bf16() is True
    _cpu_bf16(monkeypatch, False, flag)
    assert devices.cpu_has_native_bf16() is False


def test_cpu_bf16_probe_ignores_onednn_emulation(monkeypatch):
    # An AVX-512 CPU without bf16 instructions: oneDNN would run bf16 (emulated, slower than fp32); auto must not.
    caps = dict(torch.cpu.get_capabilities()) | NO_BF16 | {"avx512_f": True, "avx512_bw": True, "avx512_vl": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: MappingProxyType(caps))
    assert devices.cpu_has_native_bf16() is False
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    assert devices.cpu_has_native_bf16() is False


@pytest.mark.parametrize(
    ("capability", "hip", "native"),
    [((8, 0), None, True), ((9, 0), None, True), ((7, 5), None, False), ((7, 0), "6.2", True)],
)
def test_gpu_bf16_probe_is_per_device_and_native_only(monkeypatch, capability, hip, native):
    _gpu(monkeypatch, capability, emulates_bf16=True, hip=hip)
    assert devices.cuda_has_native_bf16(torch.device("cuda", 1)) is native


# -- precision: the two policies ----------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_the_cpu_follows_native_bf16_in_both_policies(monkeypatch, native):
    _cpu_bf16(monkeypatch, native)
    assert pick_precision(CPU) is pick_precision(CPU, "auto") is (torch.bfloat16 if native else torch.float32)
    assert pick_training_precision(CPU) == ((torch.bfloat16, False) if native else (None, False))


def test_auto_precision_on_mps_is_fp32_in_both_policies(monkeypatch):
    _cpu_bf16(monkeypatch, True)  # the CPU's bf16 has nothing to say about MPS
    mps = torch.device("mps")
    assert pick_precision(mps) is torch.float32
    assert pick_training_precision(mps) == (None, False)


@pytest.mark.parametrize(
    ("capability", "training"),
    [((8, 0), (torch.bfloat16, False)), ((9, 0), (torch.bfloat16, False)), ((7, 5), (torch.float16, True))],
)
def test_auto_precision_on_cuda_inference_fp16_training_bf16_where_native(monkeypatch, capability, training):
    _gpu(monkeypatch, capability, emulates_bf16=True)  # torch emulates bf16 on 7.5: still not auto's pick
    gpu = torch.device("cuda", 0)
    assert pick_precision(gpu) is torch.float16  # inference: fp16 on every GPU
    assert pick_training_precision(gpu) == training  # training: no GradScaler unless the GPU lacks bf16


def test_explicit_precisions(monkeypatch):
    _cpu_bf16(monkeypatch, False)  # explicit names are honoured whatever auto would pick
    assert pick_precision(CPU, "fp32") is torch.float32
    assert pick_precision(CPU, " BF16 ") is torch.bfloat16
    assert pick_precision(CPU, "fp16") is torch.float16  # inference casts weights: runs on any device
    assert pick_training_precision(CPU, "bf16") == (torch.bfloat16, False)
    assert pick_training_precision(CPU, "FP32") == (None, False)
    _gpu(monkeypatch, (7, 5))
    assert pick_training_precision(torch.device("cuda", 0), "fp16") == (torch.float16, True)
    assert pick_training_precision(torch.device("cuda", 0), "bf16") == (torch.bfloat16, False)  # emulated: asked for


def test_fp16_training_off_cuda_is_refused():
    for device in (CPU, torch.device("mps")):
        with pytest.raises(ValueError, match=f"fp16 training needs a CUDA device .* uses {device.type}"):
            pick_training_precision(device, "fp16")


def test_bf16_on_a_gpu_that_cannot_run_it_is_refused_in_both_policies(monkeypatch):
    _gpu(monkeypatch, (6, 0), emulates_bf16=False)
    gpu = torch.device("cuda", 0)
    for pick in (pick_precision, pick_training_precision):
        with pytest.raises(ValueError, match="bf16 requested but Tesla P100-PCIE-16GB does not support it"):
            pick(gpu, "bf16")
    assert pick_training_precision(gpu) == (torch.float16, True)  # auto still finds a precision


@pytest.mark.parametrize("name", ["int8", "", "float32"])
def test_unknown_precisions_in_both_policies(name):
    for pick in (pick_precision, pick_training_precision):
        with pytest.raises(ValueError, match=f"unknown precision {name!r}: expected auto, fp32, bf16, fp16"):
            pick(CPU, name)


# -- layout and names -----------------------------------------------------------------------------
def test_layout_auto_and_explicit(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert pick_channels_last(CPU, torch.bfloat16) is True
    assert pick_channels_last(CPU, torch.float32) is False
    assert pick_channels_last(torch.device("cuda", 1), torch.float16) is True
    assert pick_channels_last(torch.device("mps"), torch.float32) is False
    assert pick_channels_last(CPU, torch.float32, " Channels_Last") is True
    assert pick_channels_last(torch.device("cuda", 0), torch.float16, "nchw") is False
    with pytest.raises(ValueError, match="unknown layout 'nhwc': expected auto, nchw, channels_last"):
        pick_channels_last(CPU, torch.float32, "nhwc")


def test_names_match_the_options_that_the_cli_worker_and_config_validate_against():
    assert ("auto", *get_args(devices.PrecisionName)) == options.PRECISIONS
    assert ("auto", *get_args(devices.LayoutName)) == options.LAYOUTS
    assert tuple(devices.DTYPES) == options.PRECISIONS[1:]
    assert all(devices.DTYPE_NAMES[dtype] == name for name, dtype in devices.DTYPES.items())
