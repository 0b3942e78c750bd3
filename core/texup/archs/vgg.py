"""VGG19 feature extractor for the perceptual loss, built without torchvision.

The module holds the convolution part of VGG19 under the same parameter names as torchvision's
``vgg19`` (``features.0.weight`` ... ``features.34.bias``), so a torchvision-format state dict
(``vgg19-dcbb9e9d.pth``, or any ``.safetensors`` / ``.pth`` with those names) loads into it directly.
Only the layers up to the requested one are built; the classifier is never needed.

The published torchvision file, its SHA-256 and its download live with the other weights texup knows
(:mod:`texup.weights.registry`: ``VGG19_URL``, ``fetch_vgg19``); reading a file into this module is
:func:`texup.weights.model.load_vgg19_features`. This module only builds the network (no imports of
:mod:`texup.weights`: the weights package builds archs, never the other way round).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from texup.errors import ModelLoadError

#: VGG19 ("E") layout: numbers are conv widths, "M" a 2x2 max pooling.
_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)

#: ImageNet statistics the torchvision weights were trained with (RGB, inputs in [0, 1]).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def layer_indices() -> dict[str, int]:
    """Names ``conv1_1`` .. ``conv5_4``, ``relu1_1`` .. ``relu5_4``, ``pool1`` .. ``pool5`` -> index in ``features``."""
    names: dict[str, int] = {}
    block, conv, index = 1, 1, 0
    for item in _CFG:
        if item == "M":
            names[f"pool{block}"] = index
            index += 1
            block, conv = block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = index
            names[f"relu{block}_{conv}"] = index + 1
            index += 2
            conv += 1
    return names


class VGG19Features(nn.Module):
    """VGG19 up to and including ``layer`` (default ``conv5_4``: before its ReLU, as ESRGAN uses).

    ``forward`` takes (N, 3, H, W) RGB in [0, 1] (it applies the ImageNet normalisation itself) and
    returns the activation of ``layer``. Parameters are frozen and the module stays in eval mode;
    gradients still flow to the input.
    """

    #: ImageNet normalisation, (1, 3, 1, 1) buffers (not saved).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, layer: str = "conv5_4") -> None:
        super().__init__()
        indices = layer_indices()
        if layer not in indices:
            raise ValueError(f"unknown VGG19 layer {layer!r}; known: {', '.join(indices)}")
        self.layer = layer
        last = indices[layer]
        modules: list[nn.Module] = []
        in_ch = 3
        for item in _CFG:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(in_ch, int(item), 3, 1, 1), nn.ReLU(inplace=False)]
                in_ch = int(item)
        self.features = nn.Sequential(*modules[: last + 1])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        # A frozen feature extractor: never switch to training mode (it has no dropout/BN, but keep it explicit).
        return super().train(False)

    def load_torchvision_state_dict(
        self, state_dict: dict[str, torch.Tensor], *, source: str | Path = "<state dict>"
    ) -> None:
        """Load ``features.N.*`` tensors from a torchvision-format VGG19 state dict (others are ignored).

        Raises:
            ModelLoadError: a needed tensor is missing or has the wrong shape (named in the message).
        """
        own = self.state_dict()
        problems = []
        for key, target in own.items():
            if key not in state_dict:
                problems.append(f"missing {key}")
            elif tuple(state_dict[key].shape) != tuple(target.shape):
                problems.append(f"{key} {tuple(state_dict[key].shape)} != {tuple(target.shape)}")
        if problems:
            raise ModelLoadError(source, f"not a torchvision VGG19 state dict: {'; '.join(problems[:3])}")
        self.load_state_dict({k: state_dict[k].to(torch.float32) for k in own}, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


__all__ = [
    "VGG19Features",
    "layer_indices",
]
