"""The worker's wire format: JSON lines, one UTF-8 object per line, on the worker's stdin and stdout.

This module is the worker's half of the contract; ``blender_addon/bridge/worker_protocol.py`` is the add-on's
half (it cannot import texup). Both carry :data:`PROTOCOL_VERSION`, and a test checks they agree.

Client -> worker (``id`` is the client's job or request id, any string):

* ``{"type": "upscale", "id", "options": {...}, "items": [{"key", "src", "dst", "role", "overwrite", "origin"}, ...]}``
  -- each output is judged by its folder's manifest as ``texup upscale`` judges it: an unchanged earlier texup
  output of the same source, model, version and options is *up to date* (its ``result`` says ``"reason": "up to
  date"`` and nothing is written); texup's own earlier output is redone in place; a file texup did not write is
  replaced only with ``"overwrite": true``. ``origin`` (optional) names the source for the manifest when ``src``
  is a temporary copy (the add-on's packed and generated images)
* ``{"type": "train", "id", "data_dir", "out_dir", "pretrained", "steps", "stage", "config", "config_file",
  "device", "precision"}`` -- fine-tune a generator on the images under ``data_dir`` (see :func:`parse_train`);
  events: ``progress`` (``item`` "train", ``done``/``total`` steps, ``loss``, ``eta_s``), one ``result``
  (``dst`` the exported ``.safetensors``, ``steps``, ``psnr_before``/``psnr_after`` when held-out images
  were evaluated; no ``width``/``height``), ``message`` (``text``: one line from the trainer, e.g. a skipped
  file), ``error``, then ``done``
* ``{"type": "cancel", "id"}`` -- cancel that job (running: stops at the next tile or training step; queued: never
  starts); a cancel for an id that is neither queued nor running is ignored (logged, not remembered)
* ``{"type": "ping", "id"}`` -> ``{"type": "pong", "id"}``
* ``{"type": "models", "id"}`` -> ``{"type": "models", "id", "models": [...]}``
* ``{"type": "info", "id"}`` -> ``{"type": "info", "id", "texup", "torch" (null without torch), "python",
  "engines" (candidate keys), "devices": [{"key", "name", "engines", "software"}], "auto": {"key",
  "measured", "model"}}`` -- what this worker can run on (see :func:`info`); additive, still protocol 1
* ``{"type": "shutdown"}`` -- cancel everything and exit 0

Worker -> client: ``hello`` (first line), then ``progress``, ``result``, ``error`` and ``done`` events of
each job, ``pong`` and ``models`` replies. An ``error`` event has ``kind`` (the exception class name),
a one-line ``message`` and a ``traceback`` (may be empty). A message of an unknown type, or a line that
is not a JSON object, nests deeper than :data:`MAX_DEPTH` or is longer than 16 MiB, gets an ``error``
event and the worker goes on. Item paths must be absolute without ``..``; an item that breaks this gets an
``error`` event and the job's other items go on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from texup import options as schema
from texup.options import ROLES, STAGES

PROTOCOL_VERSION = 1
REQUEST_TYPES: tuple[str, ...] = ("upscale", "train", "cancel", "ping", "models", "info", "shutdown")

_OPTION_KEYS = frozenset(schema.PROTOCOL_OPTIONS)  # texup.options.RUN_OPTIONS: the schema says which


MAX_DEPTH = 32
"""Deepest nesting of objects and lists a message may have. Real messages need 4 (a training ``config``
a few more); anything deeper is refused before the worker walks it (json itself overflows near 1000)."""


class ProtocolError(ValueError):
    """A line or message that does not follow the protocol; ``str(err)`` is one line."""


def encode(message: dict[str, Any]) -> str:
    """One protocol line (no newline) for ``message``: compact JSON, non-ASCII kept as UTF-8.

    A string holding a lone surrogate (a request may carry ``"\\ud800"`` in an id or item key, which the
    worker echoes) has no UTF-8 form: such a line is written with every non-ASCII character escaped instead,
    so it still reads back as the same string (writing it as UTF-8 raised ``UnicodeEncodeError``, which the
    worker took for a closed pipe and stopped).
    """
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(message, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def decode(line: str | bytes) -> dict[str, Any]:
    """Parse one line into a message dict that has a string ``type``; raises :class:`ProtocolError`."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(f"line is not UTF-8: {err}") from None
    try:
        message = json.loads(line)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"line is not JSON: {err.msg} at column {err.colno}") from None
    except RecursionError:
        raise ProtocolError(f"line nests objects or lists too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as err:  # an integer of more than 4300 digits (int conversion limit): not a usable value
        raise ProtocolError(f"line is not usable JSON: {' '.join(str(err).split())[:200]}") from None
    if _depth(message) > MAX_DEPTH:
        raise ProtocolError(f"line nests objects or lists too deeply (at most {MAX_DEPTH} levels)")
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("a message needs a string 'type'")
    if "id" in message and (
        not isinstance(message["id"], (str, int)) or isinstance(message["id"], bool)
    ):  # bool is an int
        raise ProtocolError("'id' must be a string or an integer")
    return message


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion; stops past :data:`MAX_DEPTH`."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


#: The fields of :class:`JobOptions`: one per job option of the schema (:data:`texup.options.PROTOCOL_OPTIONS`), with
#: its default; a new option of texup.options is a job option without an edit here.
_JobFields: Any = schema.option_record(
    "_JobFields", (o for o in schema.RUN_OPTIONS if o.protocol), "The schema's job options, with their defaults."
)


class JobOptions(_JobFields):
    """Options of one upscale job, shared by all its items (see :class:`texup.inference.pipeline.UpscaleOptions`):
    a frozen dataclass with one field per job option of :data:`texup.options.RUN_OPTIONS`.

    ``model`` is a known model name or a weights file path (``None``: texup's default model);
    ``scale`` the output scale (``None``: the model's); ``target_size`` an exact (width, height);
    ``tile`` the input tile size in pixels (``None``: automatic); ``seamless`` "auto"/"on"/"off";
    ``color_fix`` "auto"/"on"/"off" (:mod:`texup.inference.colorfix`).
    """


@dataclass(frozen=True)
class JobItem:
    """One file of a job: ``key`` is the client's name for it (echoed in events); paths are absolute.
    ``overwrite``: whether an existing ``dst`` may be replaced (default: such an item fails, nothing is lost)."""

    key: str
    src: str
    dst: str
    role: str = "color"
    overwrite: bool = False
    origin: str | None = None  # what the source is to the client when ``src`` is a temporary copy (a packed image)


@dataclass(frozen=True)
class UpscaleRequest:
    id: str
    options: JobOptions
    items: tuple[JobItem, ...] = field(default_factory=tuple)


def _choice(options: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = options.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise ProtocolError(f"option {key!r} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _option(message: dict[str, Any], name: str) -> Any:
    """A run option of ``message`` checked by the schema (:mod:`texup.options`)."""
    try:
        return schema.check(name, message.get(name))
    except ValueError as err:
        raise ProtocolError(f"option {err}") from None


def parse_options(options: Any) -> JobOptions:
    """Validate the ``options`` object of an upscale message; unknown keys are refused (typos)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ProtocolError("'options' must be an object")
    unknown = sorted(set(options) - _OPTION_KEYS)
    if unknown:
        raise ProtocolError(f"unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_OPTION_KEYS))})")
    values = {name: _option(options, name) for name in schema.PROTOCOL_OPTIONS}
    if values["scale"] is not None and values["target_size"] is not None:
        raise ProtocolError("give either 'scale' or 'target_size', not both")
    if values["tile"] is not None and values["overlap"] > values["tile"]:
        raise ProtocolError(
            f"option 'overlap' must not be larger than 'tile' ({values['tile']}), got {values['overlap']}"
        )
    return JobOptions(**values)


def parse_items(items: Any) -> tuple[JobItem, ...]:
    """Validate the ``items`` list of an upscale message (keys unique, paths non-empty, known roles)."""
    if not isinstance(items, list):
        raise ProtocolError("'items' must be a list")
    parsed: list[JobItem] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"item {index} must be an object")
        key, src, dst = item.get("key"), item.get("src"), item.get("dst")
        role = item.get("role", "color")
        if not isinstance(key, str) or not key:
            raise ProtocolError(f"item {index} needs a non-empty string 'key'")
        if key in seen:
            raise ProtocolError(f"item key {key!r} appears twice")
        seen.add(key)
        if not isinstance(src, str) or not src:
            raise ProtocolError(f"item {key!r} needs a non-empty string 'src'")
        if not isinstance(dst, str) or not dst:
            raise ProtocolError(f"item {key!r} needs a non-empty string 'dst'")
        if role not in ROLES:
            raise ProtocolError(f"item {key!r}: role must be one of {', '.join(ROLES)}, got {role!r}")
        overwrite = item.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise ProtocolError(f"item {key!r}: 'overwrite' must be true or false, got {overwrite!r}")
        origin = item.get("origin")
        if origin is not None and (not isinstance(origin, str) or not origin):
            raise ProtocolError(f"item {key!r}: 'origin' must be a non-empty string, got {origin!r}")
        parsed.append(JobItem(key=key, src=src, dst=dst, role=role, overwrite=overwrite, origin=origin))
    return tuple(parsed)


def parse_upscale(message: dict[str, Any]) -> UpscaleRequest:
    """Validate an ``upscale`` message; raises :class:`ProtocolError` naming the problem."""
    job_id = message.get("id")
    if not isinstance(job_id, (str, int)) or job_id == "":
        raise ProtocolError("an upscale message needs an 'id'")
    return UpscaleRequest(
        id=str(job_id), options=parse_options(message.get("options")), items=parse_items(message.get("items"))
    )


@dataclass(frozen=True)
class TrainRequest:
    """A fine-tuning job (see :func:`parse_train`); paths are as the client sent them."""

    id: str
    data_dir: str
    out_dir: str
    steps: int
    stage: str = "psnr"
    pretrained: str | None = None
    config: dict[str, Any] | None = None
    config_file: str | None = None
    device: str = "auto"
    precision: str = "auto"


_TRAIN_KEYS = frozenset(
    {
        "type",
        "id",
        "data_dir",
        "out_dir",
        "pretrained",
        "steps",
        "stage",
        "config",
        "config_file",
        "device",
        "precision",
    }
)


def parse_train(message: dict[str, Any]) -> TrainRequest:
    """Validate a ``train`` message; raises :class:`ProtocolError` naming the problem.

    ``data_dir`` (images, searched recursively) and ``out_dir`` (checkpoint, logs, ``model.safetensors``)
    are required non-empty strings; ``steps`` an integer >= 1; ``stage`` "psnr" or "gan" (default
    "psnr"); ``pretrained`` a model name or weights file (``null``: the trainer's default). ``config``
    (an object, as a training config file) or ``config_file`` (a ``.json``/``.toml`` path), not both, give
    every other training setting; the message's own fields override theirs. Unknown keys are refused.
    """
    job_id = message.get("id")
    if not isinstance(job_id, (str, int)) or job_id == "":
        raise ProtocolError("a train message needs an 'id'")
    unknown = sorted(set(message) - _TRAIN_KEYS)
    if unknown:
        raise ProtocolError(f"unknown train field(s) {', '.join(unknown)} (known: {', '.join(sorted(_TRAIN_KEYS))})")
    for key in ("data_dir", "out_dir"):
        if not isinstance(message.get(key), str) or not message[key]:
            raise ProtocolError(f"a train message needs a non-empty string {key!r}")
    steps = message.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ProtocolError(f"'steps' must be an integer of at least 1, got {steps!r}")
    for key in ("pretrained", "config_file"):
        value = message.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ProtocolError(f"{key!r} must be a non-empty string or null, got {value!r}")
    config = message.get("config")
    if config is not None and not isinstance(config, dict):
        raise ProtocolError("'config' must be an object (the settings of a training config file)")
    if config is not None and message.get("config_file") is not None:
        raise ProtocolError("give either 'config' or 'config_file', not both")
    return TrainRequest(
        id=str(job_id),
        data_dir=message["data_dir"],
        out_dir=message["out_dir"],
        steps=steps,
        stage=_choice(message, "stage", STAGES, "psnr"),
        pretrained=message.get("pretrained"),
        config=config,
        config_file=message.get("config_file"),
        device=_option(message, "device"),
        precision=_option(message, "precision"),
    )


# --- worker -> client events -------------------------------------------------------------------


def hello(
    *, texup_version: str, torch_version: str | None, device: str, pid: int, engines: list[str] | None = None
) -> dict[str, Any]:
    """``torch`` is None when the worker runs without torch (ncnn only); ``engines`` lists what can run here
    (``engine/device/precision`` keys, :func:`texup.engines.select.candidates`)."""
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "texup": texup_version,
        "torch": torch_version,
        "device": device,
        "pid": pid,
        "engines": list(engines or []),
    }


def info(
    request_id: str | None,
    *,
    texup_version: str,
    torch_version: str | None,
    python: str,
    engines: list[str],
    devices: list[dict[str, Any]],
    auto: dict[str, Any],
) -> dict[str, Any]:
    """The answer to an ``info`` request: what this worker is and what it can run on.

    ``engines``: the candidate keys (``engine/device/precision``, best guess first). ``devices``: one
    object per device ``{"key": "cpu" | "cuda:N" | "mps" | "vulkan:N", "name": the CPU model or GPU name,
    "engines": the engines that run on it, "software": true for a CPU implementation of Vulkan (never
    picked by auto)}``. ``auto``: ``{"key": the candidate auto uses for ``model`` (null: nothing can run),
    "measured": true when that choice was timed on this machine and recorded, false when it is the
    first guess before measuring, "model": the model it is for}``.
    """
    return {
        "type": "info",
        "id": request_id,
        "texup": texup_version,
        "torch": torch_version,
        "python": python,
        "engines": list(engines),
        "devices": [dict(d) for d in devices],
        "auto": dict(auto),
    }


def progress(
    job_id: str, item: str, index: int, count: int, done: int, total: int, tile_fraction: float | None = None
) -> dict[str, Any]:
    """``done`` whole tiles of ``total``; ``tile_fraction`` (0..1, optional) how far the next tile is."""
    extra = {} if tile_fraction is None else {"tile_fraction": round(float(tile_fraction), 3)}
    return {
        **extra,
        "type": "progress",
        "id": job_id,
        "item": item,
        "index": index,
        "count": count,
        "done": done,
        "total": total,
    }


def result(
    job_id: str, item: str, dst: str, width: int, height: int, seconds: float, *, reason: str | None = None
) -> dict[str, Any]:
    """An item's output is there: ``reason`` (additive, still protocol 1) says why it was made ("new", what
    changed since the earlier output, ...) or that the earlier output was "up to date" and nothing was done."""
    out: dict[str, Any] = {
        "type": "result",
        "id": job_id,
        "item": item,
        "dst": dst,
        "width": width,
        "height": height,
        "seconds": round(seconds, 4),
    }
    if reason is not None:
        out["reason"] = reason
    return out


def train_progress(job_id: str, step: int, total: int, loss: float | None, eta_s: float | None) -> dict[str, Any]:
    """A training step finished: the upscale ``progress`` shape (one item, "train"; ``done`` steps of
    ``total``) plus the generator's ``loss`` and the estimated seconds left (``eta_s``; null until known)."""
    return {
        "type": "progress",
        "id": job_id,
        "item": "train",
        "index": 0,
        "count": 1,
        "done": step,
        "total": total,
        "loss": None if loss is None or not math.isfinite(loss) else round(float(loss), 6),
        "eta_s": None if eta_s is None else round(float(eta_s), 1),
    }


def message(job_id: str, text: str) -> dict[str, Any]:
    """One line for the user about a running job (the trainer's notes: data found, files skipped, fallbacks)."""
    return {"type": "message", "id": job_id, "text": " ".join(text.split())}


def train_result(
    job_id: str, model_path: str, steps: int, seconds: float, psnr_before: float | None, psnr_after: float | None
) -> dict[str, Any]:
    """The exported generator (``dst``), steps run, and held-out PSNR (dB) before/after (null: no held-out images)."""

    def db(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else round(float(value), 3)

    return {
        "type": "result",
        "id": job_id,
        "item": "train",
        "dst": model_path,
        "steps": steps,
        "seconds": round(seconds, 4),
        "psnr_before": db(psnr_before),
        "psnr_after": db(psnr_after),
    }


def error(job_id: str | None, item: str | None, kind: str, message: str, traceback: str = "") -> dict[str, Any]:
    one_line = " ".join(message.split()) or kind
    return {"type": "error", "id": job_id, "item": item, "kind": kind, "message": one_line, "traceback": traceback}


def done(job_id: str, ok: int, failed: int, cancelled: bool) -> dict[str, Any]:
    return {"type": "done", "id": job_id, "ok": ok, "failed": failed, "cancelled": cancelled}
