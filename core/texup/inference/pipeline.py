"""Image in, image out: role and alpha policies around tiled, blended model passes.

:class:`Upscaler` is what the CLI, the Python API, the Blender worker and the Ray driver call. One call of
:meth:`Upscaler.upscale_array`: pixels -> float32; colour and alpha split (gray replicated to RGB), colour bled
under fully transparent pixels, the role's transform into the model's sRGB [0, 1] domain (:mod:`.policy`); one
or more tiled model passes (overlap, exact blend weights, wrap-around when seamless, out-of-memory -> smaller
tiles), antialiased resampling to the exact output size; the inverse transform; alpha upscaled separately
(passed through when constant; through the model or resampled as :mod:`.alpha` decides); back to the input's
dtype. Every whole-image decision is made here, once; an engine only turns one tile into its upscaled tile (one at
a time, or several in flight for a :class:`~texup.engines.base.TileQueue` engine, collected in plan order: the
same pixels).

Memory: the last pass streams blended tile rows into the output array of the input's dtype (a band one tile
row high); extra passes read the previous pass's rows as they come (:class:`_RowWindow`), except with
wrap-around (a float32 canvas of the intermediate image). With the colour fix (:mod:`.colorfix`, on by default
for every role) the last pass's colour is collected in a float32 canvas of the output's size first (12 bytes per
output pixel, counted by the memory check), given the source's low frequencies, then decoded into the output row
block by row block. Figures, and the alpha measurements: docs/benchmarks.md (sections 2, 9, 10).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from texup import options as schema
from texup.engines.base import Cancelled, Engine, EngineOutOfMemory, TileQueue
from texup.errors import ImageWriteError, TexupError
from texup.imageio import chosen_dds_format, from_float32, read_image, to_float32, write_image
from texup.inference import alpha as alpha_rule
from texup.inference import colorfix, policy
from texup.inference.resample import RowResampler
from texup.inference.tiling import Tile, add_wrapped, blend_weights, is_tileable, plan_tiles, take_wrapped
from texup.limits import check_output_memory
from texup.options import OVERLAP_DEFAULT

#: ``progress(done, total)``: ``done`` tiles of ``total`` (a float between tile boundaries, see Upscaler).
ProgressCallback = Callable[[float, int], None]
CancelCallback = Callable[[], bool]
#: Receives finished output rows: ``sink(block, row0)``, ``block`` (n, W, 3) float32 = output rows row0:row0+n.
RowSink = Callable[[np.ndarray, int], None]

#: Smallest core tile the out-of-memory fallback will try before giving up.
MIN_TILE = 16
_DTYPES = ("uint8", "uint16", "float16", "float32")

#: Most output rows handed to a sink at once (bounds the temporaries of the final decode and conversion).
_ROW_BLOCK = 256


class TileOutOfMemoryError(TexupError):
    """The device ran out of memory even with the smallest tiles."""


@dataclass(frozen=True)
class UpscaleOptions:
    """What to produce. Every field is validated on construction (ValueError with the reason).

    Attributes:
        scale: output size / input size (2, 3, 4, 1.5 ...); None = the model's scale. Output size is
            ``round(in * scale)`` per axis (at least 1).
        target_size: exact output ``(width, height)``; overrides ``scale`` (aspect may change).
        tile: core tile side in input pixels (the model sees ``tile + 2 * overlap``); None = automatic
            (the engine's ``auto_tile``: up to 256 on a CPU within a memory budget, from free memory on CUDA).
        overlap: context pixels on each side of a tile; tiles cross-fade over ``overlap`` pixels.
        seamless: "on" = wrap-around context and resampling (keeps a tileable texture tileable); "off";
            "auto" = "on" when :func:`~texup.inference.tiling.is_tileable` says the input is seamless.
        role: "color", "normal" or "data" (see :mod:`texup.inference.policy`).
        color_fix: "on" = the output keeps the source's low frequencies (:mod:`texup.inference.colorfix`; costs a
            float32 copy of the output), "off", "auto" = as :data:`texup.inference.colorfix.AUTO` says for the role.
        alpha: how a varying alpha channel is upscaled: "model" (the network), "resample" (cubic), "auto" (the network
            where it keeps the alpha's hard edges, else resampling; :mod:`texup.inference.alpha`).
        dds_format: the block format of DDS outputs (:data:`texup.imageio.DDS_FORMATS`); None = ``TEXUP_DDS_FORMAT``
            when set, else each input's own (:func:`texup.imageio.chosen_dds_format`). Other outputs ignore it.
    """

    scale: float | None = None
    target_size: tuple[int, int] | None = None
    tile: int | None = None
    overlap: int = OVERLAP_DEFAULT
    seamless: str = "auto"
    role: str = "color"
    color_fix: str = "auto"
    alpha: str = "auto"
    dds_format: str | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale}")
        if self.target_size is not None:
            if len(self.target_size) != 2 or any(int(v) != v or v < 1 for v in self.target_size):
                raise ValueError(f"target_size must be (width, height) of positive integers, got {self.target_size}")
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"tile must be at least 1 pixel, got {self.tile}")
        if self.overlap < 0:
            raise ValueError(f"overlap must not be negative, got {self.overlap}")
        if self.tile is not None and self.overlap > self.tile:
            raise ValueError(f"overlap ({self.overlap}) must not be larger than tile ({self.tile})")
        # every other field of the schema checked as the schema checks it (one line naming the option): the
        # choices, and any option added to texup.options with its field here
        names = {f.name for f in fields(self)} - _CHECKED_HERE
        for option in schema.options_in(names, schema.KINDS):
            option.require(getattr(self, option.name))


#: The fields :class:`UpscaleOptions` checks itself: the library takes more than a user may ask for (any positive
#: tile and scale, for tests of the tiling and resampling).
_CHECKED_HERE = frozenset({"scale", "target_size", "tile", "overlap"})


def options_from(values: Mapping[str, Any], **overrides: Any) -> UpscaleOptions:
    """:class:`UpscaleOptions` from a run's values by option name (the CLI's parsed arguments, the worker's job
    options): the fields found there, then ``overrides``; the rest keep their defaults. A new option of the schema
    that is an ``UpscaleOptions`` field reaches the pipeline from the CLI and the worker without another edit."""
    names = {f.name for f in fields(UpscaleOptions)}
    chosen = {name: value for name, value in values.items() if name in names}
    return UpscaleOptions(**{**chosen, **overrides})


def write_options(options: UpscaleOptions) -> dict[str, str | None]:
    """What the image writer learns from a run's options (``write_image(..., **write_options(options))``): the
    texture's role (a normal map's DDS mips are renormalised) and the DDS format asked for (``TEXUP_DDS_FORMAT`` when
    the options name none). Raises ``ValueError`` for an unknown format in the variable."""
    return {"role": options.role, "dds_format": chosen_dds_format(options.dds_format)}


@dataclass
class _Job:
    """Per-call state (kept off the Upscaler so one Upscaler can serve calls one after another)."""

    total: int
    progress: ProgressCallback | None
    cancel: CancelCallback | None
    done: int = 0
    # Largest model input side known to fit in memory, and the core size to split larger inputs into.
    max_side: float = math.inf
    split_tile: int = 0
    overlap: int = 0
    _next_step: float = 0.0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"cancelled after {self.done} of {self.total} tiles")

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def step(self, fraction: float) -> None:
        """Progress inside the current tile (at most every 0.1 s): ``progress(done + fraction, total)``."""
        now = time.monotonic()
        if self.progress is None or now < self._next_step or fraction >= 1.0:
            return
        self._next_step = now + 0.1
        self.progress(self.done + fraction, self.total)


def output_size(height: int, width: int, options: UpscaleOptions, model_scale: int) -> tuple[int, int]:
    """(out_height, out_width) for an input of ``height`` x ``width`` under ``options``."""
    if options.target_size is not None:
        width_out, height_out = options.target_size
        return int(height_out), int(width_out)
    scale = model_scale if options.scale is None else options.scale
    return max(1, round(height * scale)), max(1, round(width * scale))


def count_passes(height: int, width: int, out_height: int, out_width: int, model_scale: int) -> int:
    """How many model passes reach at least the output size (at least one; one for x1 models)."""
    if model_scale <= 1:
        return 1
    need = max(out_height / height, out_width / width)
    passes = 1
    while model_scale**passes < need - 1e-9:
        passes += 1
    return passes


class _RowWindow:
    """A model pass's output read by the next pass while it is produced (no wrap-around), holding few rows.

    ``rows`` yields ``(block, row0)`` in row order (:meth:`Upscaler._pass_rows` without wrap). The next pass
    slices this like an array, ``window[y0:y1, x0:x1]``, its tile rows asking for non-decreasing ``y0``:
    rows are pulled from ``rows`` up to ``y1`` and rows above ``y0`` are dropped, so about one tile row's
    context (plus one block) is held instead of the whole pass output.
    """

    def __init__(self, rows: Iterator[tuple[np.ndarray, int]], height: int, width: int) -> None:
        self.shape = (height, width, 3)
        self._rows = rows
        self._blocks: list[tuple[int, np.ndarray]] = []
        self._produced = 0
        self._floor = 0

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        y0, y1 = ys.start or 0, self.shape[0] if ys.stop is None else ys.stop
        if y0 < self._floor:
            raise RuntimeError(f"rows from {y0} were asked for after rows above {self._floor} were dropped")
        while self._produced < y1:
            block, row0 = next(self._rows)
            if row0 != self._produced:
                raise RuntimeError(f"pass rows out of order: got {row0}, expected {self._produced}")
            self._blocks.append((row0, block.copy()))
            self._produced = row0 + block.shape[0]
        self._floor = y0
        self._blocks = [(r0, b) for r0, b in self._blocks if r0 + b.shape[0] > y0]
        parts = [b[max(0, y0 - r0) : y1 - r0, xs] for r0, b in self._blocks if r0 < y1]
        return np.concatenate(parts, axis=0)


ArrayLike = np.ndarray | _RowWindow


def _context(x: ArrayLike, t: Tile) -> np.ndarray:
    """What the model sees of tile ``t``: its context, as an (h, w, 3) float32 array of its own."""
    if isinstance(x, _RowWindow):  # never wraps (see Upscaler._upscale_rgb): the context lies inside the image
        context = x[t.cy0 : t.cy1, t.cx0 : t.cx1]
    else:
        context = take_wrapped(x, t.cy0, t.cy1, t.cx0, t.cx1)
    return np.repeat(context, 3, axis=2) if context.shape[2] == 1 else context


def refuse_overwrite(src: Path, dst: Path) -> None:
    """:class:`~texup.errors.ImageWriteError` when ``dst`` is ``src`` (same path after links, or the same file)."""
    same = src.resolve() == dst.resolve()
    if not same and dst.exists() and src.exists():
        same = os.path.samefile(src, dst)
    if same:
        raise ImageWriteError(dst, f"refusing to overwrite the input image {src}; choose another output")


class Upscaler:
    """Upscales images with one model on one device (see the module docstring for the steps).

    Holds only its :class:`~texup.engines.base.Engine` (which runs the network on one tile); calls do not
    share state, so an Upscaler can be kept and reused for many images (calls are not meant to run
    concurrently). ``model`` is an Engine, or what :func:`texup.engines.select.open_engine` opens (a registry
    name, a weights file, a :class:`~texup.weights.LoadedModel`) with ``engine``/``device``/``precision``/
    ``layout``; ``status`` receives one line per step of a first-use engine measurement.
    """

    def __init__(
        self,
        model: object,
        *,
        engine: str = "auto",
        device: str = "auto",
        precision: str = "auto",
        layout: str = "auto",
        status: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(model, Engine):
            self.engine: Engine = model
        else:
            from texup.engines.select import open_engine

            self.engine = open_engine(
                model, engine=engine, device=device, precision=precision, layout=layout, status=status
            )
        #: What the last :meth:`upscale_array` call did with a varying alpha: "model", "resample" or "resample (...)"
        #: saying why the network's was replaced; None when the image had no varying alpha.
        self.last_alpha: str | None = None

    @property
    def device(self) -> str:
        """Where the network runs: "cpu", "cuda:0", "mps", "vulkan:0"."""
        return self.engine.device

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def scale(self) -> int:
        """The model's own scale."""
        return self.engine.scale

    def __repr__(self) -> str:
        e = self.engine
        return f"Upscaler({e.model_name!r}, engine={e.name}, device={e.device}, precision={e.precision})"

    # --- public API --------------------------------------------------------------------------------------

    def upscale_array(
        self,
        pixels: np.ndarray,
        options: UpscaleOptions = UpscaleOptions(),
        *,
        colorspace: str = "srgb",
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> np.ndarray:
        """Upscale an image array.

        Args:
            pixels: (H, W, C) with C in 1..4 (gray, gray+alpha, RGB, RGBA) or (H, W); dtype uint8, uint16,
                float16 or float32. Integers span their full range; floats are taken as stored
                (HDR and negative values allowed, see :mod:`texup.inference.policy`).
            options: output size, tiling, seamless mode and role.
            colorspace: "srgb" or "linear": how the colour channels are encoded (alpha is always linear).
            progress: called as ``progress(tiles_done, tiles_total)``, first with 0, then after every tile.
            cancel: polled before every tile; when it returns True, :class:`Cancelled` is raised.

        Returns:
            A new array with the same number of dimensions, channels and dtype, of the size
            :func:`output_size` gives. Raises ValueError for unsupported shapes, dtypes or option values,
            :class:`Cancelled`, :class:`TileOutOfMemoryError`, or :class:`~texup.limits.MemoryBudgetError`
            before anything is allocated when the output would not fit in memory (:mod:`texup.limits`).
        """
        if not isinstance(options, UpscaleOptions):
            raise TypeError(f"options must be an UpscaleOptions, got {type(options).__name__}")
        squeeze = pixels.ndim == 2
        image = pixels[:, :, None] if squeeze else pixels
        if image.ndim != 3 or not 1 <= image.shape[2] <= 4:
            raise ValueError(f"expected an (H, W) or (H, W, C) array with C in 1..4, got shape {pixels.shape}")
        if image.dtype.name not in _DTYPES:
            raise ValueError(f"unsupported sample type {image.dtype.name}: expected one of {', '.join(_DTYPES)}")
        height, width, channels = image.shape
        if height < 1 or width < 1:
            raise ValueError(f"image is empty: {width}x{height}")
        if options.role == "normal" and channels < 3:
            raise ValueError(f"a normal map needs 3 or 4 channels, got {channels}")
        if colorspace not in policy.COLORSPACES:
            raise ValueError(f"unknown colour space {colorspace!r}: expected one of {', '.join(policy.COLORSPACES)}")

        self.last_alpha = None
        scale = self.engine.scale
        out_h, out_w = output_size(height, width, options, scale)
        fix_colour = colorfix.enabled(options.color_fix, options.role)
        check_output_memory(
            height, width, channels, image.dtype.itemsize, out_h, out_w, working=out_h * out_w * 12 if fix_colour else 0
        )
        passes = count_passes(height, width, out_h, out_w, scale)
        wrap = options.seamless == "on" or (options.seamless == "auto" and is_tileable(image))
        # Context beyond the image, or beyond a tile, adds nothing but work (and an absurd overlap asked for an
        # absurd buffer: docs/reliability.md): capped at both.
        overlap = min(options.overlap, max(height, width))
        tile = options.tile or self.engine.auto_tile(overlap=overlap, out_width=width * scale**passes)
        overlap = min(overlap, tile)

        has_alpha = channels in (2, 4)
        alpha_src = image[:, :, -1] if has_alpha else None
        alpha_varies = alpha_src is not None and not policy.is_constant(alpha_src)
        # Float copies exist at the input size only; the output is filled in its own dtype, row band by row
        # band, straight from the model passes (see _stream_pass), so peak memory is the output plus bands.
        # Convert channel groups separately: no float copy of all channels at once.
        alpha = np.clip(to_float32(image[:, :, -1]), 0.0, 1.0) if alpha_varies else None
        alpha_by_model = alpha is not None and (
            options.alpha == "model" or (options.alpha == "auto" and alpha_rule.wants_model(alpha))
        )
        model_runs = 2 if alpha_by_model else 1
        tiles_per_run = sum(
            len(plan_tiles(height * scale**p, width * scale**p, tile, overlap, wrap=wrap)) for p in range(passes)
        )
        job = _Job(total=model_runs * tiles_per_run, progress=progress, cancel=cancel, overlap=overlap)
        if progress is not None:
            progress(0, job.total)

        colour = to_float32(image[:, :, :3]) if channels >= 3 else np.repeat(to_float32(image[:, :, :1]), 3, axis=2)
        if alpha is not None:
            colour = policy.bleed_colour(colour, alpha)
        encoded, decode = policy.encode_for_model(colour, options.role, colorspace)
        del colour
        out = np.empty((out_h, out_w, channels), image.dtype)
        dtype_name = image.dtype.name

        def colour_sink(block: np.ndarray, row0: int) -> None:
            rows = slice(row0, row0 + block.shape[0])
            decoded = decode(block, row0, out_h)  # the HDR curve's knee depends on where a pixel is
            if channels >= 3:
                out[rows, :, :3] = from_float32(decoded, dtype_name)
            else:
                out[rows, :, 0] = from_float32(decoded.mean(axis=2), dtype_name)

        if fix_colour:  # the whole float output first: its low frequencies are the source's (colorfix)
            canvas = np.empty((out_h, out_w, 3), np.float32)

            def canvas_sink(block: np.ndarray, row0: int) -> None:
                canvas[row0 : row0 + block.shape[0]] = block

            self._upscale_rgb(encoded, out_h, out_w, passes, tile, overlap, wrap, job, canvas_sink)
            corr = colorfix.correction(encoded, canvas, wrap=wrap)
            for rows, row0 in colorfix.transfer_rows(corr, canvas, wrap=wrap):
                colour_sink(np.clip(rows, 0.0, 1.0, out=rows), row0)
            del canvas
        else:
            self._upscale_rgb(encoded, out_h, out_w, passes, tile, overlap, wrap, job, colour_sink)
        del encoded
        if alpha is not None:

            def alpha_sink(block: np.ndarray, row0: int) -> None:
                out[row0 : row0 + block.shape[0], :, -1] = from_float32(block, dtype_name)

            self.last_alpha = "resample"
            if alpha_by_model:
                check = alpha_rule.SourceCheck(height, width, out_h, wrap) if options.alpha == "auto" else None

                def model_alpha_sink(block: np.ndarray, row0: int) -> None:
                    mean = np.clip(block.mean(axis=2), 0.0, 1.0)
                    alpha_sink(mean, row0)
                    if check is not None:
                        check(mean, row0)

                # One channel in; each tile is replicated to RGB only when it goes to the model.
                self._upscale_rgb(alpha[:, :, None], out_h, out_w, passes, tile, overlap, wrap, job, model_alpha_sink)
                self.last_alpha = "model"
                if check is not None and not alpha_rule.keeps_model(
                    check.error(alpha), alpha_rule.resampled_error(alpha, out_h, out_w, wrap)
                ):
                    self.last_alpha = "resample (the network's alpha did not match the source)"
                    alpha_by_model = False
            if not alpha_by_model:
                alpha_rule.resample_rows(alpha, out_h, out_w, wrap, alpha_sink)
        elif alpha_src is not None:
            out[:, :, -1] = alpha_src.flat[0]  # constant alpha: the exact stored value
        return out[:, :, 0] if squeeze else out

    def upscale_file(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        options: UpscaleOptions = UpscaleOptions(),
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        format: str | None = None,
    ) -> Path:
        """Read ``src``, upscale it (colour space from the file) and write ``dst`` atomically.

        The output keeps the input's format, bit depth, channels and metadata (``like=info``) unless
        ``dst``'s suffix (or ``format``, for a temporary ``dst`` whose suffix says nothing) names another format.
        Refuses to write over ``src`` (same path after resolving links, or the same file) with
        :class:`~texup.errors.ImageWriteError`. Returns ``dst`` as a Path. Read and write errors are
        :class:`~texup.errors.ImageReadError` / ``ImageWriteError`` naming the file.
        """
        src_path, dst_path = Path(src), Path(dst)
        refuse_overwrite(src_path, dst_path)
        image = read_image(src_path)
        result = self.upscale_array(
            image.pixels, options, colorspace=image.info.colorspace, progress=progress, cancel=cancel
        )
        write_image(dst_path, result, like=image.info, format=format, **write_options(options))
        return dst_path

    # --- model passes ------------------------------------------------------------------------------------

    def _upscale_rgb(
        self,
        x: np.ndarray,
        out_h: int,
        out_w: int,
        passes: int,
        tile: int,
        overlap: int,
        wrap: bool,
        job: _Job,
        sink: RowSink,
    ) -> None:
        """Model passes, then resampling: (H, W, 3 or 1) float32 in [0, 1] -> rows of (out_h, out_w, 3) to ``sink``.

        The last model pass streams its blended rows into ``sink``: straight when it lands exactly on the
        output size (the model's own scale), else through a :class:`RowResampler` (other scales: x2 or x3
        from a x4 model), so no full-size float buffer of the last pass exists. Earlier passes (x16 from a
        x4 model) feed the next pass through a :class:`_RowWindow` of their rows, pulled as the next pass's
        tiles need them; with wrap-around the next pass's first tiles need the last rows, so there the
        earlier pass's whole output is kept (a float32 canvas).
        """
        s = self.engine.scale
        source: ArrayLike = x
        for _ in range(passes - 1):
            h, w = source.shape[:2]
            if wrap:  # the next pass's first tiles need this pass's last rows: keep all of it
                source = self._tiled_pass(source, tile, overlap, wrap, job, top_level=True)
            else:  # the next pass reads this one's rows as they are blended
                source = _RowWindow(self._pass_rows(source, tile, overlap, wrap, job, top_level=True), h * s, w * s)
        h, w = source.shape[:2]
        if (h * s, w * s) == (out_h, out_w):
            self._stream_pass(source, tile, overlap, wrap, job, sink, top_level=True)
            return

        def clipped(block: np.ndarray, row0: int) -> None:
            np.clip(block, 0.0, 1.0, out=block)
            sink(block, row0)

        resampler = RowResampler(h * s, out_h, out_w, clipped, wrap=wrap, block=_ROW_BLOCK)
        self._stream_pass(source, tile, overlap, wrap, job, resampler, top_level=True)
        resampler.finish()

    def _tiled_pass(
        self, x: ArrayLike, tile: int, overlap: int, wrap: bool, job: _Job, *, top_level: bool
    ) -> np.ndarray:
        """One model pass over ``x`` in blended tiles, collected into a float32 canvas of the pass's output size."""
        s = self.engine.scale
        h, w = x.shape[:2]
        canvas = np.empty((h * s, w * s, 3), np.float32)

        def fill(block: np.ndarray, row0: int) -> None:
            canvas[row0 : row0 + block.shape[0]] = block

        self._stream_pass(x, tile, overlap, wrap, job, fill, top_level=top_level)
        return canvas

    def _stream_pass(
        self, x: ArrayLike, tile: int, overlap: int, wrap: bool, job: _Job, sink: RowSink, *, top_level: bool
    ) -> None:
        """One model pass over ``x`` in blended tiles, finished output rows to ``sink`` (see :meth:`_pass_rows`)."""
        for block, row0 in self._pass_rows(x, tile, overlap, wrap, job, top_level=top_level):
            sink(block, row0)

    def _pass_rows(
        self, x: ArrayLike, tile: int, overlap: int, wrap: bool, job: _Job, *, top_level: bool
    ) -> Iterator[tuple[np.ndarray, int]]:
        """One model pass over ``x`` (H, W, 3 or 1) in blended tiles; yields finished output rows ``(block, row0)``.

        Tiles run in raster order. The blend weights of a plan add up to exactly 1 at every output pixel
        (see :mod:`texup.inference.tiling`), and a tile row only shares output rows with its neighbours in
        the cross-fade bands, so one float32 accumulator the height of a tile row's blend region (times the
        scale) and the full output width is enough: when the next tile row starts, every row above its blend
        region is final and is handed to ``sink``; the cross-fade rows move to the top of the accumulator.
        With wrap-around and several tile rows, the first rows (which the last tile row fades into across
        the seam) wait in a small seam buffer until the end. Each yielded ``block`` is (n, W*s, 3) float32
        rows ``row0:row0+n`` of the output, each row exactly once, in order except the seam rows (last); the
        consumer may modify it but must be done with it before asking for the next (it is a view of the band).
        """
        s = self.engine.scale
        h, w = x.shape[:2]
        out_h, out_w = h * s, w * s
        tile_rows: list[list[Tile]] = []
        for t in plan_tiles(h, w, tile, overlap, wrap=wrap):
            if tile_rows and tile_rows[-1][0].y0 == t.y0:
                tile_rows[-1].append(t)
            else:
                tile_rows.append([t])
        band = np.zeros((max((r[0].by1 - r[0].by0) * s for r in tile_rows), out_w, 3), np.float32)
        # Wrap: the first tile row's blend region starts rs rows above the image, i.e. at the bottom.
        rs = -tile_rows[0][0].by0 * s
        seam = np.zeros((2 * rs, out_w, 3), np.float32) if rs > 0 else None

        def emit(block: np.ndarray, u0: int) -> Iterator[tuple[np.ndarray, int]]:
            # Unwrapped rows u0.. of the output; rows within rs of the wrap seam collect in `seam`, whose index
            # k stands for output row (out_h - rs + k) mod out_h.
            pos, stop = u0, u0 + block.shape[0]
            while pos < stop:
                if seam is not None and pos < rs:
                    end = min(stop, rs)
                    seam[pos + rs : end + rs] += block[pos - u0 : end - u0]
                elif seam is not None and pos >= out_h - rs:
                    end = min(stop, out_h + rs)
                    seam[pos - out_h + rs : end - out_h + rs] += block[pos - u0 : end - u0]
                else:
                    end = min(stop, out_h - rs) if seam is not None else stop
                    for r in range(pos, end, _ROW_BLOCK):  # bounds the sink's temporaries
                        yield block[r - u0 : min(end, r + _ROW_BLOCK) - u0], r
                pos = end

        outputs = self._tile_outputs(x, [t for r in tile_rows for t in r], job, top_level=top_level)
        band_lo = band_hi = tile_rows[0][0].by0 * s  # unwrapped output rows held in band[: band_hi - band_lo]
        for row in tile_rows:
            b0, b1 = row[0].by0 * s, row[0].by1 * s
            done = min(b0, band_hi) - band_lo
            if done > 0:
                yield from emit(band[:done], band_lo)
                keep = band_hi - band_lo - done
                band[:keep] = band[done : done + keep].copy()
                band[keep:] = 0.0
            band_lo, band_hi = b0, b1
            acc = band[: b1 - b0]
            for t in row:
                y = next(outputs)
                oy, ox = (t.by0 - t.cy0) * s, (t.bx0 - t.cx0) * s
                bh, bw = (t.by1 - t.by0) * s, (t.bx1 - t.bx0) * s
                region = y[oy : oy + bh, ox : ox + bw]
                wy, wx = blend_weights(t, s)
                region *= wy[:, None, None]
                region *= wx[None, :, None]
                add_wrapped(acc, region, 0, t.bx0 * s)
                del y, region
                if top_level:
                    job.tick()
        yield from emit(band[: band_hi - band_lo], band_lo)
        if seam is not None:
            yield seam[:rs], out_h - rs
            yield seam[rs:], 0

    def _tile_outputs(self, x: ArrayLike, tiles: list[Tile], job: _Job, *, top_level: bool) -> Iterator[np.ndarray]:
        """The model's output for each tile's context, in plan order (cancel checked before each tile).

        An engine that is a :class:`~texup.engines.base.TileQueue` gets up to ``tiles_in_flight()`` tiles
        submitted ahead (a tile larger than an earlier out-of-memory error allows is not submitted but split when
        its turn comes); any other engine runs one tile at a time.
        """
        engine = self.engine
        if not isinstance(engine, TileQueue):
            for t in tiles:
                job.check_cancel()
                yield self._run_guarded(_context(x, t), job, top_level=top_level)
            return
        queue: TileQueue = engine
        pending: deque[tuple[np.ndarray, object | None]] = deque()
        submitted = 0
        for _ in tiles:
            while submitted < len(tiles) and len(pending) < max(1, queue.tiles_in_flight()):
                job.check_cancel()
                context = _context(x, tiles[submitted])
                submitted += 1
                fits = max(context.shape[:2]) <= job.max_side
                pending.append((context, queue.submit_tile(context) if fits else None))
            context, handle = pending.popleft()
            run = None if handle is None else functools.partial(queue.collect_tile, handle)
            yield self._run_guarded(context, job, top_level=top_level, run=run)

    def _run_guarded(
        self,
        x: np.ndarray,
        job: _Job,
        *,
        top_level: bool = True,
        run: Callable[[], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Run the model on one context tile; on out-of-memory, split it into smaller blended tiles.

        :class:`~texup.engines.base.EngineOutOfMemory` (never a message match) halves the core tile size, down to
        :data:`MIN_TILE`; the smaller size is remembered for the rest of the call, so later tiles are split
        up front instead of failing first. Below the minimum, :class:`TileOutOfMemoryError` is raised. ``run``
        collects a tile already submitted to a :class:`~texup.engines.base.TileQueue` engine instead.
        """
        h, w = x.shape[:2]
        if max(h, w) <= job.max_side:
            try:
                if run is not None:
                    return run()
                step = job.step if top_level else None
                return self.engine.run_tile(x, cancel=job.cancel, step=step)
            except EngineOutOfMemory as err:
                self.engine.free_cached_memory()
                core = min(job.split_tile or max(h, w), max(h, w)) // 2
                if core < MIN_TILE:
                    raise TileOutOfMemoryError(
                        f"out of memory on {self.device} even with {max(h, w)}-pixel tiles; "
                        "try --device cpu, --precision fp16 or closing other programs using the device"
                    ) from err
                overlap = min(job.overlap, core)
                job.split_tile = core
                job.max_side = core + 2 * overlap
        overlap = min(job.overlap, job.split_tile)
        return self._tiled_pass(x, job.split_tile, overlap, False, job, top_level=False)
