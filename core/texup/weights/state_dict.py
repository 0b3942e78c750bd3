"""Reading weight files into flat ``name -> tensor`` dicts, without ever running code from them.

* ``.safetensors`` — read with :func:`safetensors.torch.load_file` (a plain tensor container).
* ``.pth`` / ``.pt`` / ``.ckpt`` — pickles; read only with ``torch.load(weights_only=True)``, whose
  unpickler allows tensors and plain containers and refuses any other global. A refusal becomes
  :class:`~texup.errors.UnsafeWeightsError` naming what the pickle wanted to call; the pickle's
  opcodes are scanned (never executed) to name it when torch's message does not.
* ``.param`` / ``.bin`` — ncnn graphs, see :mod:`texup.weights.ncnn`; a ``.bin`` without a sibling
  ``.param`` is read as a PyTorch pickle (Hugging Face's ``pytorch_model.bin``).

Training checkpoints are unwrapped (``params_ema`` preferred over ``params``, then ``state_dict``,
``model``) and DataParallel's ``module.`` prefixes are stripped.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from texup.errors import ModelLoadError, UnsafeWeightsError
from texup.weights.ncnn import is_ncnn
from texup.weights.safetensors_lib import safetensors_module

PICKLE_SUFFIXES = frozenset({".pth", ".pt", ".ckpt"})
SAFETENSORS_SUFFIXES = frozenset({".safetensors"})
NCNN_SUFFIXES = frozenset({".param", ".bin"})
SUPPORTED_SUFFIXES = PICKLE_SUFFIXES | SAFETENSORS_SUFFIXES | NCNN_SUFFIXES

#: Checkpoint keys that hold the generator's weights, most preferred first. BasicSR stores the
#: exponential moving average of the weights as ``params_ema``; it is what its authors evaluate.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g", "generator")

#: Globals a state-dict pickle legitimately references (torch's weights-only unpickler allows them).
_BENIGN_GLOBAL_PREFIXES = (
    "torch.",
    "collections.OrderedDict",
    "_codecs.encode",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.slice",
    "builtins.complex",
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{name: tensor}`` dict (tensors on the CPU, dtype as stored).

    Supported: ``.safetensors``; ``.pth``/``.pt``/``.ckpt`` (weights-only unpickling); ncnn ``.param``
    (with its sibling ``.bin``) or the ``.bin`` (with its sibling ``.param``), converted to texup's
    canonical names in fp32; a ``.bin`` without a sibling ``.param`` is read as a PyTorch pickle. Wrapped
    checkpoints are unwrapped and ``module.`` prefixes stripped;
    key names are otherwise returned as stored (see :func:`texup.weights.canonicalize`).

    Raises:
        UnsafeWeightsError: a pickle that would run code or build objects other than tensors.
        ModelLoadError: missing, unreadable, empty, truncated or corrupt file; unsupported extension;
            no tensors inside. The message names the file and the reason.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ModelLoadError(
            path,
            f"unsupported weights format {suffix or '(no extension)'!r}; "
            f"expected one of {', '.join(sorted(SUPPORTED_SUFFIXES))}",
        )
    if not path.is_file():
        raise ModelLoadError(path, "no such file" if not path.exists() else "not a regular file")
    if is_ncnn(path):
        from texup.weights.ncnn import load_ncnn

        return load_ncnn(path)
    if path.stat().st_size == 0:
        raise ModelLoadError(path, "empty file (0 bytes)")
    if suffix in SAFETENSORS_SUFFIXES:
        raw = _read_safetensors(path)
    elif suffix == ".bin":
        # No sibling .param: a .bin is then a PyTorch pickle (Hugging Face's pytorch_model.bin).
        try:
            raw = _read_pickle(path)
        except UnsafeWeightsError:
            raise
        except ModelLoadError as exc:
            raise ModelLoadError(
                path, f"neither ncnn weights (no {path.with_suffix('.param').name} beside it) nor {exc.reason}"
            ) from exc
    else:
        raw = _read_pickle(path)
    return unwrap_state_dict(raw, source=path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    SafetensorError = safetensors_module(path).SafetensorError
    load_file = safetensors_module(path, "safetensors.torch").load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(path, f"not a valid safetensors file ({_one_line(exc)})") from exc


def _read_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols newer than 2; the weights-only unpickler handles them.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" in message:
            culprit = _refused_global(message) or _scan_pickle_globals(path)
            if culprit is not None:
                raise UnsafeWeightsError(
                    path,
                    f"refused: the pickle wants to call {culprit}, which a weights file never needs "
                    "(it could run arbitrary code); texup loads pickles with weights_only=True only",
                ) from exc
            # Nothing callable named: an opcode torch's restricted unpickler does not accept, which
            # in practice means a damaged file or a non-pickle with a .pth name.
            raise ModelLoadError(
                path, f"not a readable PyTorch weights file (weights-only unpickler: {_torch_reason(message)})"
            ) from exc
        raise ModelLoadError(path, f"corrupt pickle ({_one_line(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - re-raised below with the file named, cause chained
        # torch.load reports damaged input through an open-ended set of exception types (a truncated
        # zip: RuntimeError; random bytes: KeyError, IndexError, ValueError, EOFError, ...). The file
        # is untrusted input, so every parse failure is the same user-facing error.
        raise ModelLoadError(path, f"not a readable PyTorch weights file ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text:
        return name
    return f"{name}: {text[:200]}"


def _refused_global(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _torch_reason(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    interesting = [
        ln
        for ln in lines
        if not ln.startswith(("Weights only load failed", "Check the documentation", "Please file an issue"))
    ]
    return (interesting[0] if interesting else lines[-1] if lines else "weights-only unpickler refused it")[:200]


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickle byte streams of a torch file: ``*/data.pkl`` of a zip checkpoint, else the file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
    return [path.read_bytes()]


def _scan_pickle_globals(path: Path) -> str | None:
    """Name the first suspicious global a pickle references, reading opcodes only (nothing executes)."""
    for data in _pickle_streams(path):
        stream = io.BytesIO(data)
        # A legacy torch file is several pickles in a row; scan them all.
        while stream.tell() < len(data):
            strings: list[str] = []
            try:
                for opcode, arg, _pos in pickletools.genops(stream):
                    if isinstance(arg, str):
                        strings.append(arg)
                    name = None
                    if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        name = arg.replace(" ", ".")
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        name = f"{strings[-2]}.{strings[-1]}"
                    if name is not None and not name.startswith(_BENIGN_GLOBAL_PREFIXES):
                        return name
            except (ValueError, pickle.PickleError, EOFError):
                break
    return None


def unwrap_state_dict(obj: Any, *, source: str | Path = "<state dict>") -> dict[str, torch.Tensor]:
    """Reduce a loaded checkpoint to its generator's flat ``{name: tensor}`` dict.

    Follows :data:`WRAPPER_KEYS` (``params_ema`` before ``params`` before ``state_dict`` ...) while
    the mapping is not itself a state dict, strips every leading ``module.`` (DataParallel), and drops
    non-tensor entries (step counters and the like) that sit beside the tensors.

    Raises:
        ModelLoadError: ``obj`` is not a mapping or holds no tensors.
    """
    for _ in range(4):  # checkpoints nest at most a couple of levels
        if not isinstance(obj, dict):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ModelLoadError(source, f"expected a state dict (name -> tensor), found {type(obj).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        while name.startswith("module."):
            name = name[len("module.") :]
        tensors[name] = value
    if not tensors:
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        raise ModelLoadError(source, f"no tensors found (top-level keys: {keys or 'none'})")
    return tensors
