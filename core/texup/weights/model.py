"""Loading any supported weights file into a ready module, and saving texup's own format.

texup's format is a ``.safetensors`` file whose metadata says what it holds, so loading never guesses:

==================  =========================================================
``texup.format``    ``"1"``
``texup.arch``      a registered architecture (:mod:`texup.archs`)
``texup.hparams``   JSON of the constructor kwargs
``texup.scale``     the output scale, as a decimal string
``texup.provenance`` JSON object: where the weights came from (free-form)
==================  =========================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from texup._atomic import atomic_path
from texup.archs import build
from texup.archs.spec import ArchModule, arch_names, get_spec, spec_for_module
from texup.errors import ModelLoadError
from texup.weights.arrays import arch_from_metadata
from texup.weights.detect import detect_architecture
from texup.weights.keymaps import canonicalize, naming_style
from texup.weights.model_format import FORMAT_VERSION, sorted_header
from texup.weights.ncnn import is_ncnn
from texup.weights.safetensors_lib import safetensors_module
from texup.weights.state_dict import read_state_dict


@dataclass
class LoadedModel:
    """A generator ready for inference.

    Attributes:
        module: the network, in eval mode, float32, on the CPU, ``requires_grad`` off everywhere.
            ``forward`` takes (N, C, H, W) float in [0, 1] with H, W multiples of ``input_multiple``.
        arch: architecture name (a registered :class:`~texup.archs.spec.ArchSpec`'s).
        hparams: the module's constructor kwargs.
        scale: output size / input size.
        input_multiple: the caller pads H and W to multiples of this and crops the output back.
        name: registry name, or the file's stem.
        path: the file it was loaded from (``None`` when built in memory).
        metadata: ``source_format`` ("safetensors", "pickle" or "ncnn"), ``naming`` of the source
            keys, ``provenance`` (dict) when the file carried one, and any other safetensors
            metadata entries that are not texup's own.
    """

    module: nn.Module
    arch: str
    hparams: dict[str, Any]
    scale: int
    input_multiple: int
    name: str
    path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    safetensors = safetensors_module(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(path, f"not a valid safetensors file ({type(exc).__name__}: {exc})") from exc


def instantiate(arch: str, hparams: dict[str, Any], sd: dict[str, torch.Tensor], *, source: str | Path) -> nn.Module:
    """Build ``arch(**hparams)`` and load ``sd`` strictly; return it eval, fp32, CPU, frozen.

    Raises:
        ModelLoadError: bad hparams, or tensors that do not fit (missing / unexpected names,
            wrong shapes), listed in the message.
    """
    try:
        module = build(arch, hparams)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(source, f"cannot build {arch} with {hparams}: {exc}") from exc
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shapes (e.g. {'; '.join(wrong[:3])})")
        raise ModelLoadError(source, f"tensors do not fit {arch}({_fmt(hparams)}): {'; '.join(parts)}")
    # assign=True adopts the loaded tensors instead of copying them into freshly initialised ones: with
    # safetensors' memory-mapped (copy-on-write) tensors the weights are paged in from the file, not copied
    # (several times faster to load: docs/benchmarks.md).
    module.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True, assign=True)
    module = module.to(device="cpu", dtype=torch.float32).eval()
    module.requires_grad_(False)
    return module


def _fmt(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in hparams.items())


def load_model(path: str | Path, *, name: str | None = None) -> LoadedModel:
    """Load any supported weights file (see :func:`read_state_dict`) into a :class:`LoadedModel`.

    Files written by :func:`save_model` are built from their metadata; anything else is
    canonicalized and its architecture detected from tensor shapes. Either way the tensors must fit
    the architecture exactly.

    Raises:
        UnsafeWeightsError, ModelLoadError: see :func:`read_state_dict`, :func:`detect_architecture`,
            :func:`instantiate`; ncnn graphs ending in a resize (``realesr-animevideov3-x2``/``-x3``)
            are refused, as texup would otherwise run them at the wrong scale.
    """
    path = Path(path)
    metadata: dict[str, Any] = {}
    suffix = path.suffix.lower()
    if path.is_file() and is_ncnn(path):
        from texup.weights.ncnn import read_ncnn

        ncnn = read_ncnn(path)
        if ncnn.output_resize is not None:
            raise ModelLoadError(
                path,
                f"the ncnn graph resizes the network's output by {ncnn.output_resize:g} after "
                f"{ncnn.arch}; texup loads only networks without a trailing resize",
            )
        arch, hparams, sd = ncnn.arch, ncnn.hparams, ncnn.state_dict
        metadata.update(source_format="ncnn", naming="ncnn")
    else:
        sd = read_state_dict(path)
        found = None
        if suffix == ".safetensors":
            meta = _safetensors_metadata(path)
            found = arch_from_metadata(meta, path)
            for key, value in meta.items():
                if key == "texup.provenance":
                    try:
                        metadata["provenance"] = json.loads(value)
                    except json.JSONDecodeError as exc:
                        raise ModelLoadError(path, f"metadata 'texup.provenance' is not valid JSON ({exc})") from exc
                elif not key.startswith("texup."):
                    metadata[key] = value
        metadata["source_format"] = "safetensors" if suffix == ".safetensors" else "pickle"
        metadata["naming"] = naming_style(sd)
        sd = canonicalize(sd, source=path)
        detected = detect_architecture(sd, source=path)
        if found is not None:
            _check_metadata_matches_tensors(found, detected, path)
        arch, hparams = found if found is not None else detected
    module = instantiate(arch, hparams, sd, source=path)
    built = cast(ArchModule, module)  # every architecture's module exposes these (texup.archs)
    return LoadedModel(
        module=module,
        arch=arch,
        hparams=dict(built.hparams),
        scale=int(built.scale),
        input_multiple=int(built.input_multiple),
        name=name if name is not None else path.stem,
        path=path,
        metadata=metadata,
    )


def _size_signature(arch: str, hparams: dict[str, Any], path: Path) -> tuple[Any, ...]:
    """What fixes the tensors' shapes (and so the network's size) for ``hparams``: the spec's
    :meth:`~texup.archs.spec.ArchSpec.signature`."""
    spec = get_spec(arch)
    try:
        return spec.signature(hparams)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ModelLoadError(path, f"metadata hparams for {arch} are incomplete or invalid ({exc!r})") from None


def _check_metadata_matches_tensors(
    found: tuple[str, dict[str, Any]], detected: tuple[str, dict[str, Any]], path: Path
) -> None:
    """Refuse metadata that disagrees with the tensors' shapes *before* anything is built.

    A file's metadata could otherwise ask for a network of any size (``num_conv=20000``: 3.2 GB allocated
    from a 324-byte file) that the tensors would only be checked against afterwards. What the shapes cannot
    tell (an RRDBNet's split of conv_first's channels into input channels and unshuffle; the compact model's
    parameter-free activation) is still taken from the metadata.
    """
    (arch, hparams), (d_arch, d_hparams) = found, detected
    if arch != d_arch:
        raise ModelLoadError(path, f"metadata says {arch} but the tensors are a {d_arch}")
    claimed, actual = _size_signature(arch, hparams, path), _size_signature(d_arch, d_hparams, path)
    if claimed != actual:
        raise ModelLoadError(
            path,
            f"tensors do not fit {arch}({_fmt(hparams)}): the metadata does not match the "
            f"tensors' shapes, which say {_fmt(d_hparams)}",
        )


def _arch_of(module: nn.Module) -> str:
    spec = spec_for_module(module)
    if spec is None:
        raise TypeError(f"save_model: {type(module).__name__} is not one of {', '.join(arch_names())}")
    return spec.name


def save_model(
    model: LoadedModel | nn.Module,
    path: str | Path,
    *,
    provenance: dict[str, Any] | None = None,
    keep_dtype: bool = False,
) -> Path:
    """Write ``model`` as texup ``.safetensors`` (metadata in the module docstring); return the path.

    The file is written to a temporary name in the same directory and moved into place with
    :func:`os.replace`, so readers never see a half-written file. Tensors are stored contiguous,
    converted to float32 unless ``keep_dtype``. ``provenance`` defaults to the LoadedModel's own.

    Raises:
        TypeError: ``model`` is not a texup architecture.
        ValueError: ``path`` does not end in ``.safetensors`` or provenance is not JSON-serialisable.
        OSError: the directory is not writable (no partial file is left behind).
    """

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"save_model writes .safetensors files, got {path}")
    if isinstance(model, LoadedModel):
        module, arch = model.module, model.arch
        if provenance is None:
            provenance = model.metadata.get("provenance")
    else:
        module, arch = model, _arch_of(model)
    built = cast(ArchModule, module)  # every architecture's module exposes these (texup.archs)
    metadata = {
        "texup.format": FORMAT_VERSION,
        "texup.arch": arch,
        "texup.hparams": json.dumps(dict(built.hparams), sort_keys=True),
        "texup.scale": str(int(built.scale)),
        "texup.provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    tensors = {}
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if not keep_dtype:
            tensor = tensor.to(torch.float32)
        tensors[key] = tensor.contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(_reproducible_safetensors(tensors, metadata))
    return path


def _reproducible_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The .safetensors bytes of ``tensors`` with the header's keys in sorted order (:func:`sorted_header`)."""
    from safetensors.torch import save

    return sorted_header(save(tensors, metadata=metadata))


def load_vgg19_features(path: str | Path, layer: str = "conv5_4") -> nn.Module:
    """The perceptual loss's VGG19 feature extractor (:class:`texup.archs.vgg.VGG19Features`) loaded from a
    torchvision-format file, read safely. Raises ``ModelLoadError`` / ``UnsafeWeightsError``."""
    from texup.archs.vgg import VGG19Features
    from texup.weights.state_dict import read_state_dict

    module = VGG19Features(layer)
    module.load_torchvision_state_dict(read_state_dict(path), source=path)
    return module
