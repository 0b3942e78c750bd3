"""The add-on's half of the worker protocol: message builders and event parsing (stdlib only).

The worker (``python -m texup worker``, see texup/worker/protocol.py) reads one JSON object per line
on stdin and writes one per line on stdout. This module must stay importable without bpy, torch or
texup: it runs inside Blender's own Python (3.10 in Blender 3.4, 3.11 in 4.x).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from . import options as schema

PROTOCOL_VERSION = 1

# texup's run-option schema: this package's options.py is texup/options.py itself (copied by the build,
# compared byte for byte by tests/core/test_options.py); the add-on cannot import texup
ROLES, SEAMLESS, PRECISIONS = schema.ROLES, schema.SEAMLESS_MODES, schema.PRECISIONS
ENGINES, LAYOUTS, STAGES, COLOR_FIX = schema.ENGINES, schema.LAYOUTS, schema.STAGES, schema.COLOR_FIX_MODES
TILE_MIN = schema.TILE_MIN


class ProtocolError(ValueError):
    """A worker line that is not a protocol event, or a job that would not be a valid message."""


# --- what the add-on sends ---------------------------------------------------------------------


#: The fields of :class:`JobOptions`: one per job option of texup's schema (``PROTOCOL_OPTIONS``), with its default;
#: a new option of options.py is one the add-on can send without an edit here.
_JobFields: Any = schema.option_record(
    "_JobFields", (o for o in schema.RUN_OPTIONS if o.protocol), "The schema's job options, with their defaults."
)


class JobOptions(_JobFields):
    """Options shared by every item of a job: a frozen dataclass with one field per job option of texup's schema.

    ``model``: a known model name or a weights file path (``None``: the worker's default model).
    ``scale``: output scale, e.g. 2 or 4 (``None``: the model's own). ``tile``: input tile size in
    pixels, at least 16 (``None``: automatic). ``seamless``: "auto" (detect tileable textures), "on", "off".
    ``device``: "auto", "cpu", "cuda", "cuda:N", "mps", "vulkan", "vulkan:N". ``precision``: "auto", "fp32",
    "bf16", "fp16". ``engine``: "auto" (the fastest measured here), "torch", "ncnn". ``layout``: the torch engine's
    memory layout, "auto" (measured per CPU kind), "nchw", "channels_last". ``color_fix``: keep the source's
    low-frequency colour, "auto" (per role, as texup measured), "on", "off". The add-on leaves ``target_size``
    and ``overlap`` at their defaults (not sent).
    """

    def validate(self) -> None:
        """Raise :class:`ProtocolError` naming the first bad option (texup's own checks: the schema)."""
        for f in fields(self):
            try:
                schema.check(f.name, getattr(self, f.name))
            except ValueError as err:
                raise ProtocolError(str(err)) from None

    def to_json(self) -> dict[str, Any]:
        """The job's ``options`` object: seamless, device and precision always (the first protocol-1 workers'
        keys), every other option only when set, so a worker from before it still takes the jobs that leave it
        at its default."""
        out: dict[str, Any] = {}
        for f in fields(self):
            option, value = schema.OPTIONS[f.name], getattr(self, f.name)
            if f.name in ("seamless", "device", "precision") or value != option.default:
                out[f.name] = float(value) if option.kind == "float" and value is not None else value
        return out


@dataclass(frozen=True)
class JobItem:
    """One file to upscale. ``key`` is the add-on's own name for it, echoed in every event about it;
    ``src`` and ``dst`` are absolute file paths; ``role`` is "color", "normal" or "data"."""

    key: str
    src: str
    dst: str
    role: str = "color"
    origin: str | None = None  # the source's stable name when ``src`` is a temporary copy (packed, generated)

    def validate(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ProtocolError("an item needs a non-empty key")
        for name in ("src", "dst"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"item {self.key!r} needs a non-empty {name} path")
        if self.role not in ROLES:
            raise ProtocolError(f"item {self.key!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")

    def to_json(self) -> dict[str, str]:
        out = {"key": self.key, "src": self.src, "dst": self.dst, "role": self.role}
        if self.origin:
            out["origin"] = self.origin
        return out


@dataclass(frozen=True)
class Job:
    """An upscale job: options and items; ``id`` is filled in by :meth:`WorkerClient.submit` when empty."""

    options: JobOptions
    items: tuple[JobItem, ...]
    id: str | None = None

    def validate(self) -> None:
        self.options.validate()
        seen = set()
        for item in self.items:
            item.validate()
            if item.key in seen:
                raise ProtocolError(f"item key {item.key!r} appears twice in the job")
            seen.add(item.key)


@dataclass(frozen=True)
class TrainJob:
    """A fine-tuning job: train on the images under ``data_dir``, write checkpoint, logs and
    ``model.safetensors`` to ``out_dir`` (absolute paths).

    ``steps``: optimisation steps (at least 1). ``stage``: "psnr" (L1 only) or "gan" (ESRGAN's
    pixel + perceptual + adversarial). ``pretrained``: the model to start from (name or weights file;
    ``None``: the trainer's default). ``config_file``: an optional ``.json``/``.toml`` training config
    for every other setting (crop size, batch size, discriminator...); the fields here override it.
    """

    data_dir: str
    out_dir: str
    steps: int = 300
    stage: str = "gan"
    pretrained: str | None = None
    config_file: str | None = None
    device: str = "auto"
    precision: str = "auto"
    id: str | None = None

    def validate(self) -> None:
        """Raise :class:`ProtocolError` naming the first bad field."""
        for name in ("data_dir", "out_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"{name} must be a folder path")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ProtocolError(f"steps must be an integer of at least 1, got {self.steps!r}")
        if self.stage not in STAGES:
            raise ProtocolError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("pretrained", "config_file"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ProtocolError(f"{name} must be a non-empty string or None, got {value!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ProtocolError(f"device must be a device name such as auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ProtocolError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line, UTF-8, ending in a newline."""
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


def upscale_message(job_id: str, job: Job) -> dict[str, Any]:
    job.validate()
    return {
        "type": "upscale",
        "id": job_id,
        "options": job.options.to_json(),
        "items": [item.to_json() for item in job.items],
    }


def train_message(job_id: str, job: TrainJob) -> dict[str, Any]:
    """The ``train`` message for ``job`` (validated first)."""
    job.validate()
    message: dict[str, Any] = {
        "type": "train",
        "id": job_id,
        "data_dir": job.data_dir,
        "out_dir": job.out_dir,
        "steps": int(job.steps),
        "stage": job.stage,
        "device": job.device,
        "precision": job.precision,
    }
    if job.pretrained is not None:
        message["pretrained"] = job.pretrained
    if job.config_file is not None:
        message["config_file"] = job.config_file
    return message


def cancel_message(job_id: str) -> dict[str, Any]:
    return {"type": "cancel", "id": job_id}


def ping_message(request_id: str) -> dict[str, Any]:
    return {"type": "ping", "id": request_id}


def models_message(request_id: str) -> dict[str, Any]:
    return {"type": "models", "id": request_id}


def info_message(request_id: str) -> dict[str, Any]:
    """Ask what the worker is and runs on; an :class:`Info` event with this id answers."""
    return {"type": "info", "id": request_id}


def shutdown_message() -> dict[str, Any]:
    return {"type": "shutdown"}


# --- what the worker sends ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    protocol: int
    texup: str
    torch: str | None  # None: the worker has no torch (ncnn only)
    device: str
    pid: int
    type: str = field(default="hello", init=False)
    id: str | None = field(default=None, init=False)


@dataclass(frozen=True)
class Progress:
    """Tiles of the current item: ``done`` of ``total``; the item is number ``index`` (0-based) of ``count``.

    A training job sends the same event with ``item`` "train", ``done`` steps of ``total``, the
    generator's ``loss`` and ``eta_s`` (seconds left, estimated); both are ``None`` for upscale jobs.
    """

    id: str
    item: str
    index: int
    count: int
    done: int
    total: int
    loss: float | None = None
    eta_s: float | None = None
    tile_fraction: float | None = None  # how much of the next tile is done (0..1), when the worker says
    type: str = field(default="progress", init=False)

    @property
    def fraction(self) -> float:
        """How far the whole job is, 0..1, counting finished items and this item's tiles."""
        if self.count <= 0:
            return 0.0
        within = self.done / self.total if self.total > 0 else 0.0
        return min(1.0, (self.index + within) / self.count)


@dataclass(frozen=True)
class Result:
    """An item was written: ``dst`` holds a ``width`` x ``height`` image.

    A training job's result (``item`` "train") has ``dst`` the exported ``.safetensors``, width and
    height 0, ``steps`` run and the held-out PSNR in dB before and after (``None`` when not evaluated).
    """

    id: str
    item: str
    dst: str
    width: int
    height: int
    seconds: float
    steps: int | None = None
    psnr_before: float | None = None
    psnr_after: float | None = None
    reason: str | None = None  # why it was made ("new", "source changed", ...) or "up to date" (nothing done)
    type: str = field(default="result", init=False)


@dataclass(frozen=True)
class Error:
    """Something failed: one item (``item`` set; the job goes on), a whole job or a message (``item`` None).

    ``kind`` is the exception class name in the worker (e.g. "ImageReadError"), ``message`` one line.
    """

    id: str | None
    item: str | None
    kind: str
    message: str
    traceback: str = ""
    type: str = field(default="error", init=False)


@dataclass(frozen=True)
class Done:
    """A job ended: ``ok`` items written, ``failed`` items not; ``cancelled`` when it was stopped early."""

    id: str
    ok: int
    failed: int
    cancelled: bool
    type: str = field(default="done", init=False)


@dataclass(frozen=True)
class Message:
    """One line for the user about a running job (a training run's notes: data found, files skipped)."""

    id: str | None
    text: str
    type: str = field(default="message", init=False)


@dataclass(frozen=True)
class Pong:
    id: str | None
    type: str = field(default="pong", init=False)


@dataclass(frozen=True)
class Models:
    id: str | None
    models: tuple[dict[str, Any], ...]
    type: str = field(default="models", init=False)


@dataclass(frozen=True)
class Crashed:
    """Made by the client, not sent by the worker: the worker process ended without being asked to.

    ``returncode`` is the exit status (negative: killed by that signal); ``stderr_tail`` its last log lines.
    """

    returncode: int | None
    stderr_tail: str
    type: str = field(default="crashed", init=False)
    id: str | None = field(default=None, init=False)

    @property
    def message(self) -> str:
        last = [line for line in self.stderr_tail.splitlines() if line.strip()]
        reason = f": {last[-1].strip()}" if last else ""
        return f"the texup worker stopped unexpectedly (exit code {self.returncode}){reason}"


@dataclass(frozen=True)
class Unknown:
    """An event type this add-on does not know (from a newer worker); kept, not dropped."""

    type: str
    id: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class DeviceInfo:
    """One device the worker can see: ``key`` as jobs name it ("cpu", "cuda:0", "mps", "vulkan:0"), ``name``
    (the CPU model or the GPU's name), the ``engines`` that run on it, ``software`` for a CPU implementation
    of Vulkan such as llvmpipe (auto never picks one)."""

    key: str
    name: str
    engines: tuple[str, ...]
    software: bool = False


@dataclass(frozen=True)
class Info:
    """The answer to :func:`info_message`: versions (``torch`` ``None`` without PyTorch), the worker's
    interpreter, the candidate ``engines`` (``engine/device/precision``), the ``devices``, and ``auto``:
    the candidate auto uses for ``auto_model`` (``None``: nothing can run), ``auto_measured`` true when
    that was timed on this machine, false when it is the first guess before measuring."""

    id: str | None
    texup: str
    torch: str | None
    python: str
    engines: tuple[str, ...]
    devices: tuple[DeviceInfo, ...]
    auto: str | None
    auto_measured: bool
    auto_model: str | None = None
    type: str = field(default="info", init=False)


Event = Hello | Progress | Result | Error | Done | Message | Pong | Models | Info | Crashed | Unknown


def _get(data: dict[str, Any], key: str, kinds: type | tuple[type, ...], *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        value = None  # JSON true is not an integer count
    if not isinstance(value, kinds):
        raise ProtocolError(f"{data.get('type')} event: field {key!r} is missing or has the wrong type ({value!r})")
    return value


def _opt_float(data: dict[str, Any], key: str) -> float | None:
    value = _get(data, key, (int, float), optional=True)
    return None if value is None else float(value)


def _opt_id(data: dict[str, Any]) -> str | None:
    value = data.get("id")
    return None if value is None else str(value)


def parse_event(line: str | bytes) -> Event:
    """Parse one worker line into an event dataclass; raises :class:`ProtocolError` for anything else."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(f"worker line is not UTF-8: {err}") from None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        shown = line.strip()
        shown = shown if len(shown) <= 200 else shown[:200] + "..."
        raise ProtocolError(f"worker line is not JSON ({err.msg}): {shown}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(f"worker line is not an event object: {line.strip()[:200]}")
    kind = data["type"]
    if kind == "hello":
        return Hello(
            protocol=_get(data, "protocol", int),
            texup=str(data.get("texup", "?")),
            torch=None if data.get("torch") is None else str(data["torch"]),
            device=str(data.get("device", "?")),
            pid=_get(data, "pid", int),
        )
    if kind == "progress":
        return Progress(
            id=str(_get(data, "id", (str, int))),
            item=_get(data, "item", str),
            index=_get(data, "index", int),
            count=_get(data, "count", int),
            done=_get(data, "done", int),
            total=_get(data, "total", int),
            loss=_opt_float(data, "loss"),
            eta_s=_opt_float(data, "eta_s"),
            tile_fraction=_opt_float(data, "tile_fraction"),
        )
    if kind == "result":
        training = data.get("item") == "train"
        return Result(
            id=str(_get(data, "id", (str, int))),
            item=_get(data, "item", str),
            dst=_get(data, "dst", str),
            width=_get(data, "width", int, optional=training) or 0,
            height=_get(data, "height", int, optional=training) or 0,
            seconds=float(_get(data, "seconds", (int, float))),
            steps=_get(data, "steps", int, optional=True),
            psnr_before=_opt_float(data, "psnr_before"),
            psnr_after=_opt_float(data, "psnr_after"),
            reason=_get(data, "reason", str, optional=True),
        )
    if kind == "error":
        return Error(
            id=_opt_id(data),
            item=_get(data, "item", str, optional=True),
            kind=str(data.get("kind") or "Error"),
            message=str(data.get("message") or ""),
            traceback=str(data.get("traceback") or ""),
        )
    if kind == "done":
        return Done(
            id=str(_get(data, "id", (str, int))),
            ok=_get(data, "ok", int),
            failed=_get(data, "failed", int),
            cancelled=_get(data, "cancelled", bool),
        )
    if kind == "message":
        return Message(id=_opt_id(data), text=_get(data, "text", str))
    if kind == "pong":
        return Pong(id=_opt_id(data))
    if kind == "models":
        models = _get(data, "models", list)
        return Models(id=_opt_id(data), models=tuple(m for m in models if isinstance(m, dict)))
    if kind == "info":
        return _parse_info(data)
    return Unknown(type=kind, id=_opt_id(data), data=data)


def _parse_info(data: dict[str, Any]) -> Info:
    devices = []
    for entry in _get(data, "devices", list):
        if not isinstance(entry, dict):
            raise ProtocolError(f"info event: a device must be an object, got {entry!r}")
        engines = _get(entry, "engines", list)
        devices.append(
            DeviceInfo(
                key=_get(entry, "key", str),
                name=str(entry.get("name") or "?"),
                engines=tuple(str(e) for e in engines),
                software=bool(entry.get("software")),
            )
        )
    auto = data.get("auto")
    if not isinstance(auto, dict):
        raise ProtocolError(f"info event: field 'auto' is missing or has the wrong type ({auto!r})")
    torch_version = data.get("torch")
    return Info(
        id=_opt_id(data),
        texup=_get(data, "texup", str),
        torch=None if torch_version is None else str(torch_version),
        python=str(data.get("python") or ""),
        engines=tuple(str(e) for e in _get(data, "engines", list)),
        devices=tuple(devices),
        auto=_get(auto, "key", str, optional=True),
        auto_measured=bool(auto.get("measured")),
        auto_model=_get(auto, "model", str, optional=True),
    )
