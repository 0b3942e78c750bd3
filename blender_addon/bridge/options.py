"""texup's run options, one schema: names, kinds, bounds, defaults, help, and whether an option changes pixels.

Standard library only (no texup, numpy or torch imports): the Blender add-on carries this very file as
``blender_addon/bridge/options.py`` (copied by scripts/build_addon.py, compared byte for byte by
tests/core/test_options.py), so the add-on, the CLI, the worker protocol and the output folder's manifest read
one definition. What is derived from :data:`RUN_OPTIONS`:

- the ``texup upscale`` flags (:meth:`Option.cli_kwargs`, every kind; texup.cli.upscale writes by hand only
  ``--model``, ``--scale`` and ``--size``) and ``UpscaleOptions``' checks (texup.inference.pipeline);
- the worker protocol's job options: the keys it knows, how each is checked (:func:`check`) and the records that
  carry them (:func:`option_record`: texup.worker.protocol's and the add-on's ``JobOptions``, the add-on's
  ``RunSettings``);
- the add-on's scene properties of the options its panel has no hand-made property for
  (:meth:`Option.property_kwargs`; blender_addon/bridge/scene_options.py);
- the manifest's pixel options, the options an output records because they change its pixels
  (:data:`PIXEL_OPTIONS`, :func:`pixel_options`, :func:`same_pixel_options`; texup.library and the add-on's
  bridge/manifest.py).

Adding a pixel-changing option: its :class:`Option` here (``pixels=True``, ``before`` = what outputs made before
it existed were made with; then copy this file to blender_addon/bridge/options.py), its field in
``texup.inference.pipeline.UpscaleOptions`` and its use in the pipeline, and its row in the add-on's panel
(ARCHITECTURE.md, "Add a run option"; tests/core/test_option_reach.py shows a made-up one reach everything else).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any

#: The engines (texup.engines registers one spec per name, checked at import).
ENGINES: tuple[str, ...] = ("auto", "torch", "ncnn", "openvino")
#: How the add-on's Engine preference shows each of :data:`ENGINES`, in its order (the bundled engine before the one
#: that needs PyTorch): name -> (label, description).
ENGINE_LABELS: dict[str, tuple[str, str]] = {
    "auto": ("Auto", "The faster engine for the device, measured on this machine once per model"),
    "ncnn": ("ncnn", "ncnn: CPU and Vulkan GPUs, no PyTorch needed"),
    "torch": ("PyTorch", "PyTorch: CPU, CUDA, Apple MPS (Install PyTorch below)"),
    "openvino": ("OpenVINO", "OpenVINO: CPU (bf16 where native), Intel GPUs and NPUs (pip install openvino)"),
}
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
LAYOUTS: tuple[str, ...] = ("auto", "nchw", "channels_last")
SEAMLESS_MODES: tuple[str, ...] = ("auto", "on", "off")
ROLES: tuple[str, ...] = ("color", "normal", "data")
STAGES: tuple[str, ...] = ("psnr", "gan")
#: The colour fix (:mod:`texup.inference.colorfix`): "auto" = where the benchmark found it helps (per role).
COLOR_FIX_MODES: tuple[str, ...] = ("auto", "on", "off")
#: How a varying alpha channel is upscaled (:mod:`texup.inference.alpha`): "auto" = the network where it keeps hard
#: edges, resampling where the alpha is soft or the network's alpha does not match the source.
ALPHA_MODES: tuple[str, ...] = ("auto", "model", "resample")
#: DDS output formats (texup.imageio's DDS layouts, lower case; a test compares them).
DDS_FORMATS: tuple[str, ...] = (
    "bc1", "bc2", "bc3", "bc4", "bc5", "bc6h", "bc6h_sf16", "bc7",
    "rgba8", "bgra8", "bgrx8", "bgr8", "r8", "rg8", "r16", "rgba16f", "rgba32f",
)  # fmt: skip

#: The smallest tile a user can ask for (CLI, worker, panel; 0 or none: automatic). Smaller tiles only add
#: per-tile overhead; the library's own ``UpscaleOptions`` accepts any positive tile, for tests of the tiling.
TILE_MIN = 16
#: Context pixels around each tile unless told otherwise.
OVERLAP_DEFAULT = 16
#: Output scales a user can ask for (``--scale`` and the protocol): above 0, at most this.
SCALE_MAX = 16.0
SCALE_MIN = 0.01

#: An option's ``before`` when outputs made before it existed are no different from its default.
SAME_AS_DEFAULT: Any = object()


@dataclass(frozen=True)
class Option:
    """One run option.

    ``name``: the key everywhere (``UpscaleOptions`` field, protocol key, CLI flag ``--name``, the add-on's scene
    property; the manifest's key is ``record``).
    ``kind``: "choice" (one of ``choices``), "int", "float" (``low``..``high``), "bool", "size" ([width, height] of
    positive integers), "device" (auto, cpu, mps, cuda[:N], vulkan[:N]), "text" (a non-empty string).
    ``default``: the value when not given (``None``: automatic / none). ``pixels``: it changes an output's pixels,
    so outputs record it (:data:`PIXEL_OPTIONS`). ``before``: the value outputs recorded before the option existed
    were made with (a manifest entry without the key reads as this). ``protocol``: a key of the worker's job
    options (``role`` is per item instead). ``help``: the CLI's and the docs' sentence.
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    pixels: bool = False
    before: Any = SAME_AS_DEFAULT
    protocol: bool = True
    record: str = ""

    @property
    def key(self) -> str:
        """The option's key in the output folder's manifest."""
        return self.record or self.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def recorded_before(self) -> Any:
        return self.default if self.before is SAME_AS_DEFAULT else self.before

    def check(self, value: Any) -> Any:
        """``value`` as the option holds it (``None`` -> the default); ``ValueError`` naming the option and what
        it accepts, in one line."""
        if value is None:
            return self.default
        kind = self.kind
        if kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {_shown(value)}")
        if kind in ("int", "float"):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value))
                or (kind == "int" and isinstance(value, float) and not value.is_integer())
            ):
                raise ValueError(
                    f"{self.name} must be {'an integer' if kind == 'int' else 'a number'}, got {_shown(value)}"
                )
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise ValueError(f"{self.name} must be {self.bounds()}, got {_shown(value)}")
            return int(value) if kind == "int" else float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError(f"{self.name} must be true or false, got {_shown(value)}")
        if kind == "size":
            if (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            ):
                return (int(value[0]), int(value[1]))
            raise ValueError(f"{self.name} must be [width, height] of positive integers, got {_shown(value)}")
        if kind == "device":
            if isinstance(value, str) and device_problem(value) is None:
                return value
            raise ValueError(f"{self.name} must be auto, cpu, mps, cuda[:N] or vulkan[:N], got {_shown(value)}")
        if isinstance(value, str) and value:  # text
            return value
        raise ValueError(f"{self.name} must be a non-empty string, got {_shown(value)}")

    def require(self, value: Any) -> Any:
        """:meth:`check` for a record that holds the value itself (``UpscaleOptions``, ``EngineChoice``): None is
        accepted only where it is the option's default ("automatic" / "none"), not read as "use the default"."""
        if value is None and self.default is not None:
            raise ValueError(f"{self.name} must be given, got None")
        return self.check(value)

    def bounds(self) -> str:
        if self.high is None:
            return f"at least {_num(self.low)}"
        return f"between {_num(self.low)} and {_num(self.high)}"

    def parse(self, text: str) -> Any:
        """A command line's ``text`` as the option's value, checked (``ValueError`` naming the option)."""
        kind, text = self.kind, text.strip()
        if kind in ("choice", "device"):
            return self.check(text.lower())
        if kind in ("int", "float"):
            try:
                number: float = int(text) if kind == "int" else float(text)
            except ValueError:
                raise ValueError(
                    f"{self.name} must be {'an integer' if kind == 'int' else 'a number'}, got {_shown(text)}"
                ) from None
            return self.check(number)
        if kind == "bool":
            words = dict.fromkeys(("on", "true", "yes", "1"), True) | dict.fromkeys(("off", "false", "no", "0"), False)
            if text.lower() not in words:
                raise ValueError(f"{self.name} must be on or off, got {_shown(text)}")
            return words[text.lower()]
        if kind == "size":
            width, sep, height = text.lower().partition("x")
            if not (sep and width.strip().isdigit() and height.strip().isdigit()):
                raise ValueError(f"{self.name} must look like WIDTHxHEIGHT, got {_shown(text)}")
            return self.check([int(width), int(height)])
        return self.check(text)

    def cli_kwargs(self, error: type[Exception] = ValueError) -> dict[str, Any]:
        """``argparse`` keyword arguments for the option's flag (:attr:`flag`), any kind: the text parsed and checked
        by :meth:`parse`, a bad value raising ``error`` with the option's one line (pass
        ``argparse.ArgumentTypeError``, so argparse prints that line), the default and the help."""

        def parsed(text: str) -> Any:
            try:
                return self.parse(text)
            except ValueError as err:
                raise error(str(err)) from None

        parsed.__name__ = self.name  # argparse names the type in some of its messages
        kwargs: dict[str, Any] = {"default": self.default, "help": self.help, "type": parsed}
        if self.kind == "choice":
            kwargs["choices"] = self.choices
            kwargs["type"] = str.lower  # --engine NCNN is --engine ncnn
            if len(self.choices) > 6:  # a long list reads better in the help sentence than in the usage line
                kwargs["metavar"] = "NAME"
        elif self.kind == "device":
            kwargs["metavar"] = "{auto,cpu,cuda[:N],mps,vulkan[:N]}"
        elif self.kind == "size":
            kwargs["metavar"] = "WxH"
        elif self.kind in ("int", "float", "bool") and self.default is not None:
            kwargs["help"] = f"{self.help} (default: %(default)s)"
        return kwargs

    def property_kwargs(self) -> tuple[str, dict[str, Any]]:
        """The Blender property that holds the option on a scene (the add-on's panel settings it has no hand-made
        property for): the ``bpy.props`` function's name and its keyword arguments (name, description = the help,
        default, bounds, the choices as enum items). ``ValueError`` for an option no property holds as it is (an
        exact size, a device, a number or choice without a default)."""
        label = self.name.replace("_", " ").title()
        base: dict[str, Any] = {"name": label, "description": self.help}
        if self.kind == "text":
            return "StringProperty", {**base, "default": self.default or ""}
        if self.kind == "bool":
            return "BoolProperty", {**base, "default": bool(self.default)}
        if self.kind in ("choice", "int", "float") and self.default is not None:
            if self.kind == "choice":
                items = [(c, c.replace("_", " ").title(), f"{label}: {c}") for c in self.choices]
                return "EnumProperty", {**base, "items": items, "default": self.default}
            bounds = {k: v for k, v in (("min", self.low), ("max", self.high)) if v is not None}
            kind = int if self.kind == "int" else float
            bounds = {k: kind(v) for k, v in bounds.items()}
            prop = "IntProperty" if self.kind == "int" else "FloatProperty"
            return prop, {**base, "default": kind(self.default), **bounds}
        raise ValueError(f"{self.name}: a Blender property cannot hold a {self.kind} option without a default")

    def from_property(self, value: Any) -> Any:
        """A scene property's value (:meth:`property_kwargs`) as the option's: an empty text is none."""
        return None if self.kind == "text" and value == "" else self.check(value)


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def device_problem(text: str) -> str | None:
    """Why ``text`` is not a device name (auto, cpu, mps, npu, cuda[:N], vulkan[:N], gpu[:N]), or None."""
    base, _, index = text.strip().lower().partition(":")
    if base in ("auto", "cpu", "mps", "npu") and not index:
        return None
    if base in ("cuda", "vulkan", "gpu") and (not index or (index.isdigit() and len(index) <= 4)):
        return None
    return f"expected auto, cpu, cuda[:N], mps, vulkan[:N], gpu[:N] or npu, not {text!r}"


RUN_OPTIONS: tuple[Option, ...] = (
    Option("model", "text", None, "a known model name, a weights file, or blend:A,B@ALPHA (default: texup's)"),
    Option(
        "scale",
        "float",
        None,
        "output scale, e.g. 2, 3, 4 (default: the model's)",
        low=SCALE_MIN,
        high=SCALE_MAX,
        pixels=True,
    ),
    Option("target_size", "size", None, "exact output size [width, height]", pixels=True, record="size"),
    Option("tile", "int", None, "input tile size in pixels (default: automatic)", low=TILE_MIN),
    Option("overlap", "int", OVERLAP_DEFAULT, "context pixels around each tile", low=0),
    Option(
        "seamless",
        "choice",
        "auto",
        "wrap-around context for tileable textures (auto: detect)",
        choices=SEAMLESS_MODES,
        pixels=True,
    ),
    Option(
        "role",
        "choice",
        "color",
        "normal: renormalise to unit vectors; data: no colour transform (default: color)",
        choices=ROLES,
        pixels=True,
        protocol=False,  # the worker takes it per item
    ),
    Option(
        "color_fix",
        "choice",
        "auto",
        "keep the source's low-frequency colour under the model's detail (auto: per role, where "
        "scripts/bench_quality.py measured that it helps; default: auto)",
        choices=COLOR_FIX_MODES,
        pixels=True,
        before="off",  # outputs from before the colour fix have none
    ),
    Option(
        "dds_format",
        "choice",
        None,
        "the format of every DDS output: bc1..bc7, bc6h, bc6h_sf16, rgba8, ... (default: TEXUP_DDS_FORMAT when set, "
        "else a DDS input's own; for other inputs written with --format dds, BC7, BC4 for one channel, BC6H for "
        "float); recorded in the output folder's manifest, so a rerun with another one redoes its outputs",
        choices=DDS_FORMATS,
        pixels=True,
        protocol=False,  # the worker reads TEXUP_DDS_FORMAT
    ),
    Option(
        "alpha",
        "choice",
        "auto",
        "how a varying alpha channel is upscaled: model (the network, as colour), resample (smooth cubic), auto "
        "(the network where the alpha has hard edges it keeps; resampling for soft edges and gradients, which the "
        "network turns hard, and wherever the network's alpha does not match the source; default: auto)",
        choices=ALPHA_MODES,
        pixels=True,
        before="model",  # outputs from before this choice ran every varying alpha through the network
    ),
    Option(
        "engine",
        "choice",
        "auto",
        "what runs the network: auto = the fastest measured on this machine (once per model; see `texup engines`), "
        "torch (CPU, CUDA, MPS), ncnn (CPU, any Vulkan GPU)",
        choices=ENGINES,
    ),
    Option(
        "device",
        "device",
        "auto",
        "where it runs (vulkan implies ncnn; cuda and mps imply torch; gpu and npu imply openvino)",
    ),
    Option(
        "precision",
        "choice",
        "auto",
        "the network's number format (auto: bf16 on CPUs with native bf16, fp16 on CUDA, else fp32)",
        choices=PRECISIONS,
    ),
    Option(
        "layout",
        "choice",
        "auto",
        "memory layout of the network (auto: measured per CPU/GPU kind; see docs/benchmarks.md)",
        choices=LAYOUTS,
    ),
)
OPTIONS: dict[str, Option] = {option.name: option for option in RUN_OPTIONS}
#: The manifest keys of the options that change an output's pixels, in record order.
PIXEL_OPTIONS: tuple[str, ...] = tuple(option.key for option in RUN_OPTIONS if option.pixels)
#: The worker protocol's job option keys.
PROTOCOL_OPTIONS: tuple[str, ...] = tuple(option.name for option in RUN_OPTIONS if option.protocol)


@dataclass(frozen=True)
class EngineChoice:
    """What runs the network, as one value: ``engine``, ``device``, ``precision`` and ``layout`` (each "auto" by
    default; checked by the schema on construction, ``ValueError`` naming the option). It travels whole from the
    CLI, the worker and the add-on through the API, the engine selection and the Ray actors."""

    engine: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    layout: str = "auto"

    def __post_init__(self) -> None:
        for name in ENGINE_FIELDS:
            OPTIONS[name].require(getattr(self, name))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> EngineChoice:
        """The choice in ``values`` (parsed arguments, job options: by name; missing ones "auto")."""
        return cls(**{name: values[name] for name in ENGINE_FIELDS if values.get(name) is not None})

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ENGINE_FIELDS}


ENGINE_FIELDS: tuple[str, ...] = ("engine", "device", "precision", "layout")


#: Every kind of option (:attr:`Option.kind`).
KINDS: tuple[str, ...] = ("choice", "int", "float", "bool", "size", "device", "text")


def options_in(names: Iterable[str], kinds: tuple[str, ...] = ("choice",)) -> list[Option]:
    """The options of ``kinds`` among ``names`` (a record's fields, a parser's flags, a property group's
    properties), in schema order: what a record takes from another by name."""
    wanted = set(names)
    return [option for option in RUN_OPTIONS if option.kind in kinds and option.name in wanted]


def option_record(name: str, options: Iterable[Option], doc: str) -> type:
    """A frozen dataclass named ``name`` with one field per option (its default): the base of a record that carries
    a run's options by name (the worker protocol's ``JobOptions``, the add-on's ``RunSettings``), so a new option
    of the schema is a field of each without another edit. A subclass may redefine a field (another type or
    default) and add its own methods."""
    fields = [(option.name, Any, field(default=option.default)) for option in options]
    return make_dataclass(name, fields, frozen=True, namespace={"__doc__": doc})


def check(name: str, value: Any) -> Any:
    """``OPTIONS[name].check(value)``."""
    return OPTIONS[name].check(value)


def pixel_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """What an output records as the options that made its pixels: every pixel option under its manifest key,
    checked, from ``values`` (keyed by option name or manifest key; missing ones take their defaults; an exact
    size is recorded as a [width, height] list). ``ValueError`` for a bad value or a key that is no pixel option."""
    known = {option.key: option for option in RUN_OPTIONS if option.pixels}
    by_name = {option.name: option for option in known.values()}
    unknown = sorted(set(values) - set(known) - set(by_name))
    if unknown:
        raise ValueError(f"not pixel options: {', '.join(unknown)} (known: {', '.join(known)})")
    out: dict[str, Any] = {}
    for key, option in known.items():
        value = option.check(values.get(option.name, values.get(key)))
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def same_pixel_options(recorded: Any, current: Mapping[str, Any]) -> bool:
    """Whether an output that recorded ``recorded`` (a manifest entry's ``options``) was made with ``current``
    (:func:`pixel_options`). A key the entry lacks reads as what outputs were made with before that option existed
    (``Option.before``), so adding an option redoes only the outputs it changes."""
    if not isinstance(recorded, dict):
        return False
    known = {option.key: option for option in RUN_OPTIONS if option.pixels}
    if set(recorded) - set(known):
        return False  # recorded by a texup that knew other pixel options
    for key, option in known.items():
        value = recorded[key] if key in recorded else option.recorded_before
        if value != current.get(key, option.default):
            return False
    return True
