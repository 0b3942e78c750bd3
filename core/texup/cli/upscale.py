"""``texup upscale IN... -o OUTDIR``: files, folders and globs, one failure never stops the batch.

Exit code: 0 when every input was upscaled (or skipped with ``--skip-existing``), 1 when any input
failed, 2 for a usage error. Each failure is one line on stderr: ``texup: error: <file>: <reason>``.
Each result is one line on stdout: ``<input> -> <output>``.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from texup.errors import FileError, ImageReadError, ImageWriteError, TexupError
from texup.imageio import SUPPORTED_EXTENSIONS, Image, format_for_path, read_image, write_image
from texup.outputs import OutputRecord
from texup.weights.cache import remove_stale_temp_files
from texup.inference.pipeline import refuse_overwrite

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class WorkItem:
    src: Path
    rel_parent: Path  # sub-folder below OUTDIR (non-empty only for folder inputs with --recursive)


@dataclass(frozen=True)
class InputProblem:
    arg: str
    reason: str


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale image files, folders or globs",
        description="Upscale textures with an ESRGAN model. Outputs keep the input's format, bit depth, "
        "channels and colour space, and are written atomically, never over an input.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out-dir", required=True, type=Path, help="folder for the results (created if needed)")
    p.add_argument("--model", default=None, help="known model name (see `texup models list`) or a weights file "
                   "(default: realesrgan-x4plus)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=None, help="output scale, e.g. 2, 3, 4 (default: the model's)")
    size.add_argument("--size", default=None, metavar="WxH", help="exact output size, e.g. 2048x2048")
    p.add_argument("--suffix", default="_x{scale}", help="added to each output's stem; {scale} is replaced "
                   "(default: %(default)s; use '' for none)")
    p.add_argument("--format", default=None, help="write this format instead of the input's (png, tiff, exr, ...)")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output file already exists")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files at output paths even when texup did not write them (never this "
                        "run's inputs); without it only texup's own, unchanged earlier outputs are replaced")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders of folder inputs "
                   "(the output keeps the sub-folder layout)")
    p.add_argument("--tile", type=int, default=None, help="input tile size in pixels (default: automatic)")
    p.add_argument("--overlap", type=int, default=16, help="context pixels around each tile (default: %(default)s)")
    p.add_argument("--seamless", choices=("auto", "on", "off"), default="auto",
                   help="wrap-around context for tileable textures (auto: detect)")
    p.add_argument("--role", choices=("color", "normal", "data"), default="color",
                   help="normal: renormalise to unit vectors; data: no colour transform (default: color)")
    p.add_argument("--engine", choices=("auto", "torch", "ncnn"), default="auto",
                   help="what runs the network: auto = the fastest measured on this machine (once per model; "
                   "see `texup engines`), torch (CPU, CUDA, MPS), ncnn (CPU, any Vulkan GPU)")
    p.add_argument("--device", type=_device_arg, default="auto", metavar="{auto,cpu,cuda[:N],mps,vulkan[:N]}",
                   help="where it runs (vulkan implies --engine ncnn; cuda and mps imply torch)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--layout", choices=("auto", "nchw", "channels_last"), default="auto",
                   help="memory layout of the network (auto: measured per CPU/GPU kind; see docs/benchmarks.md)")
    p.add_argument("--max-pixels", type=_pixels_arg, default=None, metavar="N|WxH",
                   help="largest input to decode, checked from the header (default 8192x8192, or TEXUP_MAX_PIXELS)")
    p.add_argument("--debug", action="store_true", help="print a traceback for unexpected errors")
    p.set_defaults(func=run)


def _device_arg(text: str) -> str:
    key = text.strip().lower()
    base, _, index = key.partition(":")
    if base in ("auto", "cpu", "mps") and not index:
        return key
    if base in ("cuda", "vulkan") and (not index or index.isdigit()):
        return key
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda[:N], mps or vulkan[:N], not {text!r}")


def parse_size(text: str) -> tuple[int, int]:
    """``"2048x1024"`` -> (2048, 1024); raises ValueError with a readable message."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size must look like WIDTHxHEIGHT, e.g. 2048x2048, not {text!r}")
    w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise ValueError(f"--size must be at least 1x1, not {text!r}")
    return w, h


def expand_inputs(args: list[str], *, recursive: bool) -> tuple[list[WorkItem], list[InputProblem]]:
    """Files as given; folders -> their image files (sorted); globs -> matches. Missing -> a problem.

    A path that exists but is no regular file (a FIFO, a device, a socket) is a problem, never opened: reading
    a FIFO would wait forever. A file named twice (or found again through a folder or glob) is kept once.
    """
    items: list[WorkItem] = []
    problems: list[InputProblem] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
            if not found:
                problems.append(InputProblem(arg, "folder holds no supported image files"))
            items.extend(WorkItem(p, p.parent.relative_to(path)) for p in found)
        elif path.is_file():
            items.append(WorkItem(path, Path()))
        elif path.exists():
            problems.append(InputProblem(arg, "not a regular file (a pipe, device or socket cannot be upscaled)"))
        elif GLOB_CHARS & set(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append(InputProblem(arg, "no file matches this pattern"))
            items.extend(WorkItem(m, Path()) for m in matches)
        else:
            problems.append(InputProblem(arg, "no such file or folder"))
    unique: dict[tuple[Path, Path], WorkItem] = {}
    for item in items:
        unique.setdefault((item.src.resolve(), item.rel_parent), item)
    return list(unique.values()), problems


def scale_label(scale: float) -> str:
    """4.0 -> "4", 1.5 -> "1.5" (for output names)."""
    return str(int(scale)) if float(scale).is_integer() else f"{scale:g}"


def output_path(item: WorkItem, out_dir: Path, suffix: str, fmt: str | None) -> Path:
    ext = item.src.suffix if fmt is None else "." + fmt.lower().lstrip(".")
    return out_dir / item.rel_parent / f"{item.src.stem}{suffix}{ext}"


def _pixels_arg(text: str) -> int:
    from texup.limits import parse_pixels

    try:
        return parse_pixels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_input(src: Path, dst: Path, max_pixels: int | None = None) -> Image:
    """Decode one input (on the read-ahead thread), refusing an output that is the input itself.

    A path that is no longer a regular file (swapped for a FIFO since it was listed) is refused before it is
    opened, so the batch cannot hang on it.
    """
    if not src.is_file():
        raise ImageReadError(src, "not a regular file" if src.exists() else "no such file")
    refuse_overwrite(src, dst)
    return read_image(src, max_pixels=max_pixels)


def _outside(dst: Path, out_dir: Path) -> bool:
    """True when ``dst`` (after links and ``..``) is not inside ``out_dir``."""
    try:
        dst.resolve().relative_to(out_dir.resolve())
    except ValueError:
        return True
    return False


def _has_separator(text: str) -> bool:
    return any(sep and sep in text for sep in ("/", os.sep, os.altsep))


def _out_dir_problem(out_dir: Path) -> str | None:
    """Why ``out_dir`` cannot be the output folder (an existing file on its way), or None."""
    here = out_dir
    while not here.exists() and here != here.parent:
        here = here.parent
    if here.exists() and not here.is_dir():
        if here == out_dir:
            return f"-o {out_dir} is a file, not a folder"
        return f"-o {out_dir}: {here} is a file, not a folder"
    return None


def _settle(
    writing: tuple[WorkItem, Path, Future[Path]],
    failure: Callable[[BaseException, WorkItem], None],
    expected: tuple[type[BaseException], ...],
    record: OutputRecord,
) -> bool:
    """Wait for one background write; record it and print ``src -> dst``, or its failure. True when written."""
    item, dst, future = writing
    try:
        future.result()
    except expected as err:
        failure(err, item)
        return False
    record.add(dst)
    tqdm_write(f"{item.src} -> {dst}")
    return True


def tqdm_write(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import texup.api as api
    from texup.inference.pipeline import UpscaleOptions

    def fail(name: object, reason: str) -> None:
        tqdm.write(f"texup: error: {name}: {reason}", file=sys.stderr)

    try:
        target = parse_size(args.size) if args.size else None
        if args.format is not None:
            format_for_path(Path("x." + args.format.lower().lstrip(".")))
        if args.tile is not None and args.tile < 16:
            raise ValueError("--tile must be at least 16 pixels")
        if args.overlap < 0:
            raise ValueError("--overlap must not be negative")
        if args.tile is not None and args.overlap > args.tile:
            raise ValueError(f"--overlap ({args.overlap}) must not be larger than --tile ({args.tile})")
        if _has_separator(args.suffix):
            raise ValueError(f"--suffix must not contain a path separator, got {args.suffix!r}")
        if args.format is not None and _has_separator(args.format):
            raise ValueError(f"--format must be a format name such as png, got {args.format!r}")
        problem = _out_dir_problem(args.out_dir)
        if problem:
            raise ValueError(problem)
        if args.scale is not None and not 0 < args.scale <= 16:
            raise ValueError("--scale must be above 0 and at most 16")
    except (ValueError, TexupError) as err:
        print(f"texup upscale: error: {err}", file=sys.stderr)
        return 2

    items, problems = expand_inputs(args.inputs, recursive=args.recursive)
    for problem in problems:
        fail(problem.arg, problem.reason)
    if not items:
        return 1

    try:
        upscaler = api.get_upscaler(
            args.model or api.DEFAULT_MODEL, engine=args.engine, device=args.device, precision=args.precision,
            layout=args.layout, status=lambda line: print(f"texup: {line}", file=sys.stderr),
        )
    except (TexupError, ValueError) as err:
        print(f"texup: error: {err}", file=sys.stderr)
        return 1
    options = UpscaleOptions(
        scale=args.scale, target_size=target, tile=args.tile, overlap=args.overlap,
        seamless=args.seamless, role=args.role,
    )
    label = scale_label(args.scale if args.scale is not None else upscaler.scale)
    suffix = args.suffix.replace("{scale}", label)

    inputs = {item.src.resolve() for item in items}
    record = OutputRecord(args.out_dir)  # what earlier runs wrote here: only those files may be replaced
    claimed: dict[Path, Path] = {}
    failed = skipped = done = 0
    runs: list[tuple[WorkItem, Path]] = []
    for item in items:
        dst = output_path(item, args.out_dir, suffix, args.format)
        key = dst.resolve()
        if _outside(dst, args.out_dir):
            fail(item.src, f"output {dst} would be outside {args.out_dir}; refusing to write it")
            failed += 1
        elif key in inputs:
            fail(item.src, f"output {dst} would overwrite an input; choose another --out-dir or --suffix")
            failed += 1
        elif key in claimed:
            fail(item.src, f"output {dst} is already the output of {claimed[key]}; rename one of them")
            failed += 1
        elif args.skip_existing and dst.exists():
            tqdm.write(f"{item.src} -> {dst} (exists, skipped)")
            skipped += 1
        elif (dst.exists() or dst.is_symlink()) and not args.overwrite and not record.wrote(dst):
            fail(item.src, f"output {dst} exists and is not an unchanged earlier texup output; not replacing it "
                           "(remove it, choose another -o or --suffix, or pass --overwrite)")
            failed += 1
        else:
            claimed[key] = item.src
            runs.append((item, dst))

    def failure(err: BaseException, item: WorkItem) -> None:
        if isinstance(err, FileError):
            fail(err.path, err.reason)
        elif isinstance(err, TexupError):
            fail(item.src, str(err))
        else:
            fail(item.src, f"{type(err).__name__}: {err}")
            if args.debug:
                traceback.print_exception(err)

    expected = (TexupError, OSError, ValueError, RuntimeError, MemoryError)
    swept: set[Path] = set()
    start = time.monotonic()
    # The next input is decoded and the previous output encoded on their own threads while the network runs
    # (both engines release the GIL while computing): file I/O costs no wall time beyond the first read.
    try:
        with tqdm(total=len(runs), unit="file", desc="upscaling", disable=None, file=sys.stderr,
                  bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}] {postfix}") as bar, \
                ThreadPoolExecutor(1, thread_name_prefix="texup-read") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="texup-write") as writer:
            next_read = reader.submit(_read_input, runs[0][0].src, runs[0][1], args.max_pixels) if runs else None
            writing: tuple[WorkItem, Path, Future[Path]] | None = None
            for index, (item, dst) in enumerate(runs):
                reading, next_read = next_read, None
                if index + 1 < len(runs):
                    next_read = reader.submit(_read_input, runs[index + 1][0].src, runs[index + 1][1], args.max_pixels)
                bar.set_postfix_str(item.src.name)

                def on_tiles(done_tiles: float, total_tiles: int, base: int = index) -> None:
                    bar.n = base + (done_tiles / total_tiles if total_tiles else 0.0)
                    bar.refresh()

                written: Future[Path] | None = None
                try:
                    assert reading is not None
                    image = reading.result()
                    reading = None  # the decoded input goes with `image`
                    result = upscaler.upscale_array(image.pixels, options, colorspace=image.info.colorspace,
                                                    progress=on_tiles)
                    try:
                        dst.parent.mkdir(parents=True, exist_ok=True)
                    except OSError as err:
                        raise ImageWriteError(dst.parent, f"cannot create the output folder: {err.strerror or err}") from err
                    if dst.parent not in swept:  # temp files of an earlier run killed mid-write (an hour old or more)
                        swept.add(dst.parent)
                        remove_stale_temp_files(dst.parent)
                    written = writer.submit(write_image, dst, result, like=image.info)
                    del image, result
                except expected as err:
                    failure(err, item)
                    failed += 1
                if writing is not None:
                    ok = _settle(writing, failure, expected, record)
                    done, failed = done + ok, failed + (not ok)
                writing = (item, dst, written) if written is not None else None
                bar.n = index + 1
                bar.refresh()
            if writing is not None:
                ok = _settle(writing, failure, expected, record)
                done, failed = done + ok, failed + (not ok)
    finally:
        record.save()  # also when interrupted: what was written stays known as texup's

    failed += len(problems)
    elapsed = time.monotonic() - start
    summary = f"texup: {done} upscaled into {args.out_dir}"
    if skipped:
        summary += f", {skipped} skipped"
    if failed:
        summary += f", {failed} failed"
    print(f"{summary} ({elapsed:.1f} s)", file=sys.stderr)
    return 1 if failed else 0
