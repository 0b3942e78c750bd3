"""Import spandrel (the peer implementation used by parity tests) even where torchvision is broken.

Why this exists: spandrel's package ``__init__`` imports every architecture it knows, and two of
them unrelated to ESRGAN (LaMa, RestoreFormer) import ``torchvision.transforms.functional`` at
module level for ``InterpolationMode``, ``rotate`` and ``normalize``. In this project's test
environment the installed torchvision wheel is built against CUDA torch and fails to import with the
CPU torch (``RuntimeError: operator torchvision::nms does not exist``), which would make spandrel
unimportable although the ESRGAN and Compact code we compare against never touches torchvision.

:func:`import_spandrel` therefore imports the real torchvision first and uses it whenever that
works. Only if it fails does it drop the half-imported ``torchvision*`` modules and install a
minimal stub package providing exactly the names those unrelated architectures import; calling a
stubbed function raises, so a test that reached them by mistake would fail loudly rather than
compute something wrong.
"""

from __future__ import annotations

import enum
import sys
import types
from typing import Any, NoReturn


def _unavailable(name: str):
    def stub(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise RuntimeError(
            f"torchvision.transforms.functional.{name} is a test stub (torchvision could not be imported)"
        )

    stub.__name__ = name
    return stub


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _install_torchvision_stub() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    root = types.ModuleType("torchvision")
    root.__path__ = []  # a package, so submodule imports resolve through sys.modules
    root.__texup_stub__ = True
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__path__ = []
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode
    for name in ("rotate", "normalize", "resize", "to_tensor", "to_pil_image"):
        setattr(functional, name, _unavailable(name))
    transforms.functional = functional
    root.transforms = transforms
    sys.modules.update(
        {
            "torchvision": root,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )


def import_spandrel() -> types.ModuleType:
    """Return the ``spandrel`` module, stubbing torchvision only if the real one cannot be imported."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError, AttributeError):
        _install_torchvision_stub()
    import spandrel

    return spandrel
