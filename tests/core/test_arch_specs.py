"""The architecture registry (texup.archs.spec): every registered spec is complete and agrees with its module,
detection, loading, saving, the torch engine and the ncnn exporter find architectures only through it, and an
architecture registered from outside (here: a test) is picked up without editing any other module."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from texup.archs import ARCHITECTURES, ArchSpec, arch_names, build, get_spec, register, spec_for_module, unregister
from texup.archs.spec import ALL_DTYPES, generic_activation_bytes, tensor_shape
from texup.engines import torch_engine
from texup.engines.ncnn_export import export_ncnn, supported_archs
from texup.errors import ModelLoadError
from texup.weights import detect_architecture, load_model, save_model
from texup.weights.arrays import arch_from_metadata, read_array_model, scale_and_multiple
from texup.weights.ncnn import read_ncnn

#: Small hparams for every registered architecture: odd channel counts, every scale layout, every activation.
CASES: dict[str, list[dict[str, Any]]] = {
    "RRDBNet": [
        {"num_in_ch": c, "num_out_ch": c, "scale": s, "num_feat": 8, "num_block": 2, "num_grow_ch": 4}
        for s, c in ((1, 3), (2, 3), (2, 1), (4, 1), (4, 3), (8, 3), (16, 3))
    ],
    "SRVGGNetCompact": [
        {"num_in_ch": c, "num_out_ch": c, "num_feat": 8, "num_conv": n, "upscale": u, "act_type": a}
        for c, n, u, a in ((3, 2, 4, "prelu"), (1, 0, 2, "relu"), (3, 1, 3, "leakyrelu"), (3, 3, 1, "prelu"))
    ],
}
ALL_CASES = [(arch, hp) for arch, cases in CASES.items() for hp in cases]


def _case_id(case: Any) -> str:
    if isinstance(case, dict):
        return "-".join(f"{v}" for v in case.values())
    return str(case)


def _random_module(arch: str, hparams: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    module = build(arch, hparams).eval()
    with torch.no_grad():
        for p in module.parameters():  # distinct values everywhere (PReLU slopes start equal)
            p.uniform_(-0.2, 0.2)
    return module


def test_every_registered_architecture_has_cases_here():
    """A newly registered architecture fails here until it gets cases (and so the checks below)."""
    assert set(arch_names()) == set(CASES)
    assert list(ARCHITECTURES) == list(arch_names())


@pytest.mark.parametrize("arch,hparams", ALL_CASES, ids=_case_id)
def test_spec_agrees_with_its_module_and_detection_round_trips(arch: str, hparams: dict[str, Any]) -> None:
    spec = get_spec(arch)
    module = _random_module(arch, hparams)
    assert isinstance(module, ARCHITECTURES[arch]) and spec_for_module(module) is spec
    assert module.hparams == hparams
    assert (spec.scale(hparams), spec.input_multiple(hparams)) == (module.scale, module.input_multiple)
    assert scale_and_multiple(arch, hparams) == (module.scale, module.input_multiple)
    assert spec.dtypes and set(spec.dtypes) <= set(ALL_DTYPES)

    sd = module.state_dict()
    found, detected = detect_architecture(sd, source="net.pth")
    assert found == arch and spec.signature(detected) == spec.signature(hparams)
    if hparams.get("act_type") != "leakyrelu":  # ReLU and LeakyReLU have no tensors: detection says "relu"
        assert detected == hparams
    again = build(arch, detected)
    again.load_state_dict(sd, strict=True)  # the detected hparams describe exactly these tensors

    # A real forward on an odd size padded to the input multiple gives scale times that size.
    m, s = module.input_multiple, module.scale
    h, w = 7 + (-7 % m), 5 + (-5 % m)
    x = torch.rand(1, hparams["num_in_ch"], h, w)
    with torch.inference_mode():
        y = module(x)
    assert y.shape == (1, hparams["num_out_ch"], h * s, w * s)
    # The activation estimate covers at least the output tensor, and grows with the input.
    assert spec.activation_bytes(hparams, h, w, 4) >= y.numel() * 4
    assert spec.activation_bytes(hparams, 2 * h, 2 * w, 4) > spec.activation_bytes(hparams, h, w, 4)


@pytest.mark.parametrize("arch,hparams", ALL_CASES, ids=_case_id)
def test_the_ncnn_exporter_finds_every_arch_and_its_files_read_back(
    arch: str, hparams: dict[str, Any], tmp_path: Path
) -> None:
    spec = get_spec(arch)
    assert spec.ncnn_writer is not None and spec.ncnn_reader is not None and arch in supported_archs()
    sd = {k: v.numpy() for k, v in _random_module(arch, hparams).state_dict().items()}
    param, weights = tmp_path / "m.param", tmp_path / "m.bin"
    checkpoints = export_ncnn(arch, hparams, sd, param, weights, dense="concat")
    assert checkpoints[-1] == "output"
    model = read_ncnn(param, weights, numpy=True)  # the reader the spec names, through the registry
    assert (model.arch, model.hparams) == (arch, hparams) and model.output_resize is None
    assert model.state_dict.keys() == sd.keys()
    assert all(np.array_equal(model.state_dict[k], sd[k]) for k in sd)


@pytest.mark.parametrize("arch,hparams", [(a, hp) for a, hp in ALL_CASES if hp["num_in_ch"] == 3], ids=_case_id)
def test_the_torch_engine_finds_every_arch_through_the_registry(arch: str, hparams: dict[str, Any]) -> None:
    spec = get_spec(arch)
    module = _random_module(arch, hparams)
    model = _Model(module, arch)
    engine = torch_engine.TorchEngine(model, device="cpu", precision="fp32", layout="nchw")
    assert engine.spec is spec
    rows = getattr(engine.module, "stream_rows", None)
    assert rows == (torch_engine.STREAM_ROWS if spec.streams_rows else None)
    assert engine.activation_bytes(40) == spec.activation_bytes(hparams, 40, 40, 4, rows)
    tile = np.random.default_rng(3).random((9, 11, 3), dtype=np.float32)
    out = engine.run_tile(tile)
    assert out.shape == (9 * module.scale, 11 * module.scale, 3)


class _Model:
    """A LoadedModel-like stand-in (no file)."""

    def __init__(self, module: nn.Module, arch: str) -> None:
        self.module, self.arch, self.name = module, arch, arch
        self.hparams: dict[str, Any] = dict(module.hparams)
        self.scale: int = int(module.scale)
        self.input_multiple: int = int(module.input_multiple)


def test_detection_messages_name_the_registered_families() -> None:
    with pytest.raises(ModelLoadError) as err:
        detect_architecture({"head.weight": np.zeros((2, 3))}, source="x.pth")
    assert str(err.value) == (
        "x.pth: not a known architecture: found 1 tensors, e.g. head.weight (2, 3) "
        "(texup reads ESRGAN/RRDBNet and Real-ESRGAN SRVGGNetCompact weights)"
    )
    with pytest.raises(KeyError, match="unknown architecture 'SwinIR'; known: RRDBNet, SRVGGNetCompact"):
        get_spec("SwinIR")
    with pytest.raises(ValueError, match="already registered"):
        register(get_spec("RRDBNet"))
    with pytest.raises(ValueError, match="unknown architecture 'SwinIR'"):
        scale_and_multiple("SwinIR", {})
    with pytest.raises(ModelLoadError, match="metadata names unknown architecture 'SwinIR'"):
        arch_from_metadata({"texup.arch": "SwinIR"}, Path("m.safetensors"))


# --- an architecture registered from outside ----------------------------------------------------------


class Shuffler(nn.Module):
    """A made-up generator: one convolution to ``num_ch * scale**2`` channels, pixel-shuffled."""

    def __init__(self, *, num_ch: int = 3, scale: int = 2) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {"num_ch": num_ch, "scale": scale}
        self.scale = scale
        self.input_multiple = 1
        self.shuf_conv = nn.Conv2d(num_ch, num_ch * scale * scale, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.shuf_conv(x), self.scale)


def _detect_shuffler(sd: Mapping[str, Any], source: str | Path) -> dict[str, Any] | None:
    if "shuf_conv.weight" not in sd:
        return None
    out_ch, num_ch, _, _ = tensor_shape(sd, "shuf_conv.weight", source, 4)
    return {"num_ch": num_ch, "scale": round((out_ch // num_ch) ** 0.5)}


SHUFFLER = ArchSpec(
    name="Shuffler",
    label="test Shuffler",
    network=lambda: Shuffler,
    detect=_detect_shuffler,
    scale=lambda hp: int(hp["scale"]),
    dtypes=("fp32",),
)


@pytest.fixture
def shuffler() -> Iterator[ArchSpec]:
    register(SHUFFLER)
    try:
        yield SHUFFLER
    finally:
        unregister(SHUFFLER.name)


def test_a_spec_registered_elsewhere_is_found_by_every_consumer(shuffler: ArchSpec, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Shuffler(num_ch=3, scale=3).eval()
    sd = net.state_dict()
    assert detect_architecture(sd) == ("Shuffler", {"num_ch": 3, "scale": 3})
    assert "Shuffler" in ARCHITECTURES and ARCHITECTURES["Shuffler"] is Shuffler
    assert build("Shuffler", {"num_ch": 1, "scale": 2}).hparams == {"num_ch": 1, "scale": 2}

    # Loading a foreign file (shapes only), saving texup's format (arch found by the module's class), reloading.
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(plain))
    loaded = load_model(plain)
    assert (loaded.arch, loaded.hparams, loaded.scale, loaded.input_multiple) == ("Shuffler", net.hparams, 3, 1)
    saved = save_model(net, tmp_path / "own.safetensors", provenance={"test": 1})
    again = load_model(saved)
    assert again.arch == "Shuffler" and again.metadata["provenance"] == {"test": 1}
    assert read_array_model(saved).scale == 3
    # Metadata that disagrees with the tensors is refused by the generic signature (all hparams).
    lie = tmp_path / "lie.safetensors"
    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        str(lie),
        metadata={"texup.arch": "Shuffler", "texup.hparams": json.dumps({"num_ch": 3, "scale": 4})},
    )
    with pytest.raises(ModelLoadError, match="the metadata does not match the tensors"):
        load_model(lie)

    # The torch engine: found by class, generic activation estimate, no row streaming, its dtypes only.
    engine = torch_engine.TorchEngine(loaded, device="cpu", precision="auto", layout="nchw")
    assert engine.spec is shuffler and engine.precision == "fp32"
    assert engine.activation_bytes(64) == generic_activation_bytes(net.hparams, 3, 64, 64, 4)
    tile = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(tile).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(engine.run_tile(tile), expected, atol=1e-6)
    with pytest.raises(ValueError, match="precision bf16 requested but Shuffler runs only in fp32"):
        torch_engine.TorchEngine(loaded, device="cpu", precision="bf16")

    # No ncnn writer: the exporter says so and lists the ones that have one.
    with pytest.raises(ValueError, match="unsupported architecture 'Shuffler'; supported: RRDBNet, SRVGGNetCompact"):
        export_ncnn("Shuffler", net.hparams, {k: v.numpy() for k, v in sd.items()}, tmp_path / "a", tmp_path / "b")


def test_an_unregistered_spec_is_gone_everywhere(tmp_path: Path) -> None:
    sd = Shuffler().state_dict()
    register(SHUFFLER)
    unregister("Shuffler")
    assert "Shuffler" not in arch_names() and "Shuffler" not in ARCHITECTURES
    with pytest.raises(ModelLoadError, match="not a known architecture"):
        detect_architecture(sd)
    with pytest.raises(TypeError, match="Shuffler is not one of RRDBNet, SRVGGNetCompact"):
        save_model(Shuffler(), tmp_path / "x.safetensors")


def test_a_detector_that_claims_tensors_raises_for_bad_shapes(shuffler: ArchSpec) -> None:
    with pytest.raises(ModelLoadError, match=r"m.pth: tensor 'shuf_conv.weight' has shape \(12, 3\), expected 4"):
        detect_architecture({"shuf_conv.weight": np.zeros((12, 3))}, source="m.pth")


# --- without torch ------------------------------------------------------------------------------------

_NO_TORCH = """
import sys
sys.modules['torch'] = None  # `import torch` raises ImportError, as if not installed
import numpy as np
from texup.archs import arch_names, get_spec
from texup.weights.detect import detect_architecture
from texup.engines.ncnn_export import export_ncnn, supported_archs
rng = np.random.default_rng(0)
sd = {}
for k, (o, i) in enumerate([(8, 3), (8, 8), (27, 8)]):
    sd[f"body.{2 * k}.weight"] = rng.random((o, i, 3, 3), dtype=np.float32)
    sd[f"body.{2 * k}.bias"] = rng.random(o, dtype=np.float32)
arch, hp = detect_architecture(sd)
spec = get_spec(arch)
export_ncnn(arch, hp, sd, sys.argv[1] + "/m.param", sys.argv[1] + "/m.bin")
print(arch, hp["upscale"], spec.scale(hp), spec.input_multiple(hp), spec.activation_bytes(hp, 4, 4))
print(",".join(arch_names()), ",".join(supported_archs()))
assert 'torch' not in sys.modules or sys.modules['torch'] is None
"""


def test_the_registry_detection_and_export_run_without_torch(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    expected_bytes = (2 * 8 + 4 * 27) * 16 * 4
    assert run.stdout.split() == [
        "SRVGGNetCompact",
        "3",
        "3",
        "1",
        str(expected_bytes),
        "RRDBNet,SRVGGNetCompact",
        "RRDBNet,SRVGGNetCompact",
    ]
    assert (tmp_path / "m.param").read_text().startswith("7767517\n")
