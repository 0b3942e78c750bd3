"""Plan a batch over a texture library: which outputs to make, which are up to date, and why; no model needed.

The plan is the first half of ``texup upscale`` (the second runs the model): inputs are expanded, a farm
task's share is taken (``--shard K/N``), each input gets its output name, and each output is compared with
the folder's manifest (:mod:`texup.outputs`): it is *up to date* when texup wrote it, it has not changed
since, and it was made from the same source content (SHA-256), the same model
(:meth:`texup.weights.ref.ModelRef.identity`), the same texup version and the same pixel-changing options
(:data:`PIXEL_OPTIONS`).

What counts as pixel-changing: ``scale``/``size``, ``seamless`` and ``role`` (each changes the image
beyond rounding), and the output's format (part of its name). Not counted: ``tile`` and ``overlap`` (the
blend is exact, tiles change pixels only within float rounding), ``engine``, ``device``, ``precision`` and
``layout`` (every engine gives the same pixels within 50 dB; a farm whose nodes differ, CUDA fp16 on one and
ncnn on the CPU on another, must not redo each other's outputs). They are recorded (``engine``) but not
compared; ``--force`` redoes everything.

Imports no torch and loads no model.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import stat
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from texup import options as schema
from texup.imageio.types import SUPPORTED_EXTENSIONS
from texup.outputs import CLAIMED_AFTER_OTHER, HELD, RACY_NS, ManifestError, OutputRecord
from texup.weights.cache import sha256_file

GLOB_CHARS = set("*?[")

#: The options whose change changes an output's pixels (see the module docstring for what is left out).
PIXEL_OPTIONS = schema.PIXEL_OPTIONS  # texup.options.RUN_OPTIONS with pixels=True

NEW = "new"
UP_TO_DATE = "up to date"
SOURCE_CHANGED = "source changed"
MODEL_CHANGED = "model changed"
OPTIONS_CHANGED = "options changed"
VERSION_CHANGED = "texup version changed"
NOT_RECORDED = "inputs not recorded"  # written by a texup that kept no inputs in the manifest
FORCED = "forced"
OVERWRITE = "replaces a file texup did not write"
EXISTS = "exists, skipped"


@dataclass(frozen=True)
class WorkItem:
    src: Path
    rel_parent: Path  # sub-folder below OUTDIR (non-empty only for folder inputs with --recursive)

    @property
    def rel_path(self) -> str:
        """The input's path relative to the folder it was found in (its name for a file or glob input)."""
        return (self.rel_parent / self.src.name).as_posix()


@dataclass(frozen=True)
class InputProblem:
    arg: str
    reason: str
    warning: bool = False  # left out with a warning (a link to a folder, a loop of links): the batch does not fail


def path_reason(err: BaseException, kind: str = "file or folder") -> str:
    """Why a path cannot be used as a ``kind``, in words: a loop of symbolic links (Python 3.11's ``resolve`` raises
    RuntimeError for it, later versions OSError ELOOP), a name the system refuses, a folder that cannot be searched."""
    if isinstance(err, RuntimeError) or getattr(err, "errno", None) == errno.ELOOP:
        return f"a loop of symbolic links (a link that leads back to itself can never be a {kind})"
    return f"cannot be used as a {kind} ({getattr(err, 'strerror', None) or err})"


def expand_inputs(args: list[str], *, recursive: bool) -> tuple[list[WorkItem], list[InputProblem]]:
    """Files as given; folders -> their image files (sorted); globs -> matches. Missing -> a problem.

    A path that exists but is no regular file (a FIFO, a device, a socket) is a problem, never opened: reading
    a FIFO would wait forever. A file named twice (or found again through a folder or glob) is kept once.
    Walking a folder (:func:`_folder_files`) or a ``**`` pattern never follows a link to a folder, so a loop of
    links cannot make it endless; what it leaves out is named (``warning``), a folder it cannot list and a broken
    link with an image's name are problems (their files are lost to the batch).
    """
    items: list[WorkItem] = []
    problems: list[InputProblem] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            before = len(problems)
            found = _folder_files(path, recursive, problems)
            if not found and all(p.warning for p in problems[before:]):
                problems.append(InputProblem(arg, "folder holds no supported image files"))
            items.extend(WorkItem(p, p.parent.relative_to(path)) for p in found)
        elif path.is_file():
            items.append(WorkItem(path, Path()))
        elif path.exists():
            problems.append(InputProblem(arg, "not a regular file (a pipe, device or socket cannot be upscaled)"))
        elif GLOB_CHARS & set(arg):
            matches = sorted(m for m in _glob(arg) if m.is_file())
            if not matches:
                problems.append(InputProblem(arg, "no file matches this pattern"))
            items.extend(WorkItem(m, Path()) for m in matches)
        elif path.is_symlink():
            problems.append(InputProblem(arg, _link_reason(path)))
        else:
            problems.append(InputProblem(arg, "no such file or folder"))
    unique: dict[tuple[Path, Path], WorkItem] = {}
    for item in items:
        unique.setdefault((item.src.resolve(), item.rel_parent), item)
    return list(unique.values()), problems


def _link_reason(path: Path) -> str:
    """Why the link ``path`` leads nowhere: a loop of links, or a target that does not exist."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return path_reason(err)
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"a broken symbolic link (its target {target} does not exist)"


def _folder_files(root: Path, recursive: bool, problems: list[InputProblem]) -> list[Path]:
    """The image files in ``root`` (and its sub-folders with ``recursive``), sorted. Links to files are read through;
    links to folders are never followed (a loop of links, or a link to a whole disk, would make the walk endless or
    leave the library): with ``recursive`` each is named in a warning. A folder that cannot be listed and a link
    with an image's name that leads nowhere (broken, a loop) are problems; a loop without one, a warning."""
    found: list[Path] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as err:
            why = err.strerror or str(err)
            problems.append(InputProblem(str(folder), f"cannot list this folder ({why}); its files are left out"))
            continue
        for entry in entries:
            path = Path(entry.path)
            image = path.suffix.lower() in SUPPORTED_EXTENSIONS
            try:
                link = entry.is_symlink()
                if not link:
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            folders.append(path)
                    elif image and entry.is_file(follow_symlinks=False):
                        found.append(path)
                    continue
                mode = os.stat(path).st_mode
            except OSError as err:
                if image or err.errno == errno.ELOOP:  # a link that leads nowhere
                    problems.append(InputProblem(str(path), _link_reason(path), warning=not image))
                continue
            if stat.S_ISDIR(mode):
                if recursive:
                    problems.append(
                        InputProblem(
                            str(path),
                            "a link to a folder is not followed (name that folder as an input to upscale its files)",
                            warning=True,
                        )
                    )
            elif image and stat.S_ISREG(mode):
                found.append(path)
    return sorted(found)


def _glob(pattern: str) -> list[Path]:
    """The paths ``pattern`` matches. A ``**`` pattern never follows links to folders (``glob.glob`` does: two links
    back to their own folder made ``in/**/*.png`` run for ever): it is matched by :meth:`Path.glob` below its
    literal head, and, as ``glob.glob`` does, a wildcard never matches a name that starts with a dot."""
    if "**" not in pattern:
        return [Path(m) for m in glob.glob(pattern, recursive=True)]
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if GLOB_CHARS & set(part))
    head, rest = Path(*parts[:first]) if first else Path(), Path(*parts[first:])
    if rest.name == "**":  # glob.glob's trailing ** matches files too, Path.glob's only folders
        rest = rest / "*"
    dotted = any(part.startswith(".") for part in rest.parts)
    return [
        match
        for match in head.glob(rest.as_posix())
        if dotted or not any(part.startswith(".") for part in match.relative_to(head).parts)
    ]


def scale_label(scale: float) -> str:
    """4.0 -> "4", 1.5 -> "1.5" (for output names)."""
    return str(int(scale)) if float(scale).is_integer() else f"{scale:g}"


def output_path(item: WorkItem, out_dir: Path, suffix: str, fmt: str | None) -> Path:
    ext = item.src.suffix if fmt is None else "." + fmt.lower().lstrip(".")
    return out_dir / item.rel_parent / f"{item.src.stem}{suffix}{ext}"


# -- farm shards --------------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1-based K, 1 <= K <= N) -> (K, N); raises ValueError with a readable message."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"--shard must look like K/N, e.g. 3/8 (task 3 of 8), not {text!r}")
    index, count = int(k), int(n)
    if count < 1 or not 1 <= index <= count:
        raise ValueError(
            f"--shard K/N needs 1 <= K <= N, got {text!r} (K counts from 1: SLURM's array index "
            "with --array=1-N; a 0-based task index needs +1)"
        )
    return index, count


def shard_of(item: WorkItem, count: int) -> int:
    """The 1-based shard of ``item`` among ``count``: a hash of its relative path, so it never depends on
    which other files exist (adding a file moves no other) or on where a farm node mounts the library."""
    digest = hashlib.sha256(item.rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def take_shard(items: list[WorkItem], shard: tuple[int, int] | None) -> list[WorkItem]:
    if shard is None:
        return items
    index, count = shard
    return [item for item in items if shard_of(item, count) == index]


# -- what an output is made from ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything besides the sources that an output depends on, and how outputs are named and replaced."""

    out_dir: Path
    suffix: str  # with {scale} already replaced
    fmt: str | None
    model: str  # ModelRef.identity()
    texup: str
    options: dict[str, Any]  # PIXEL_OPTIONS
    skip_existing: bool = False
    overwrite: bool = False
    force: bool = False


def pixel_options(**values: Any) -> dict[str, Any]:
    """What an output records as the options that made its pixels (:func:`texup.options.pixel_options`: every
    pixel option by its manifest key, defaults for those not given)."""
    return schema.pixel_options(values)


def options_of(options: Any) -> dict[str, Any]:
    """:func:`pixel_options` of an :class:`~texup.inference.pipeline.UpscaleOptions` (what a run passes to the
    pipeline is what its outputs record: the CLI and the worker both derive it here). The DDS format is the one the
    writer will use (``TEXUP_DDS_FORMAT`` when the options name none; ValueError for an unknown one)."""
    from texup.imageio import chosen_dds_format

    values = {option.name: getattr(options, option.name) for option in schema.RUN_OPTIONS if option.pixels}
    values["dds_format"] = chosen_dds_format(values["dds_format"])
    return pixel_options(**values)


def source_state(src: Path, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """The source's path, size, mtime and SHA-256; the hash is taken from ``earlier`` (an output's entry) when
    that recorded the same file with the same size and mtime, well before it was hashed (the racy rule)."""
    st = src.stat()
    absolute = os.path.abspath(src)
    state: dict[str, Any] = {"source": absolute, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}
    if (
        earlier is not None
        and earlier.get("source") == absolute
        and earlier.get("source_size") == st.st_size
        and earlier.get("source_mtime_ns") == st.st_mtime_ns
        and isinstance(earlier.get("source_sha256"), str)
        and type(earlier.get("hashed_ns")) is int
        and earlier["hashed_ns"] - st.st_mtime_ns >= RACY_NS
    ):
        return {**state, "source_sha256": earlier["source_sha256"], "hashed_ns": earlier["hashed_ns"]}
    hashed_ns = time.time_ns()
    return {**state, "source_sha256": sha256_file(src), "hashed_ns": hashed_ns}


def entry_for(settings: Settings, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A manifest entry's inputs (the output's size and mtime are added when it is written)."""
    return {**source, "model": settings.model, "texup": settings.texup, "options": settings.options, **extra}


def changes(entry: dict[str, Any], settings: Settings, source: dict[str, Any]) -> list[str]:
    """Why an output recorded with ``entry`` is not what ``settings`` and ``source`` would make now."""
    if not isinstance(entry.get("source_sha256"), str):
        return [NOT_RECORDED]
    found = []
    if entry["source_sha256"] != source["source_sha256"]:
        found.append(SOURCE_CHANGED)
    if entry.get("model") != settings.model:
        found.append(MODEL_CHANGED)
    if not schema.same_pixel_options(entry.get("options"), settings.options):
        found.append(OPTIONS_CHANGED)
    if entry.get("texup") != settings.texup:
        found.append(VERSION_CHANGED)
    return found


def output_size_problem(src: Path, dst: Path, options: Any, model_scale: int) -> str | None:
    """Why the output ``dst`` of ``src`` cannot be stored in its format (a side beyond the format's largest, e.g. a
    WebP above 16383 pixels), from ``src``'s header and the size ``options`` (an
    :class:`~texup.inference.pipeline.UpscaleOptions`) and the model's scale give it, or None. Checked before any
    upscaling: the writer would refuse it only after the whole upscale. An unreadable header is not a problem here
    (reading the file reports it)."""
    from texup.errors import FileError
    from texup.imageio import format_for_path, probe_image
    from texup.imageio.write import size_problem
    from texup.inference.pipeline import output_size

    try:
        info = probe_image(src)
        fmt = format_for_path(dst)
    except (FileError, ValueError, OSError):
        return None
    height, width = output_size(info.height, info.width, options, model_scale)
    problem = size_problem(fmt, width, height)
    return None if problem is None else f"output {dst}: {problem}"


@dataclass(frozen=True)
class Planned:
    item: WorkItem
    dst: Path
    reason: str
    source: dict[str, Any] | None = None  # source_state() when the plan took it


@dataclass
class Plan:
    todo: list[Planned] = field(default_factory=list)  # to upscale, each with its reason
    current: list[Planned] = field(default_factory=list)  # up to date
    skipped: list[Planned] = field(default_factory=list)  # --skip-existing
    refused: list[tuple[Path, str]] = field(default_factory=list)  # (input, why no output may be written)
    refresh: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # up to date, source re-hashed

    def reasons(self) -> Counter[str]:
        return Counter(p.reason for p in self.todo)


def _outside(dst: Path, out_dir: Path) -> bool:
    """True when ``dst`` (after links and ``..``) is not inside ``out_dir``."""
    try:
        dst.resolve().relative_to(out_dir.resolve())
    except ValueError:
        return True
    return False


@dataclass(frozen=True)
class Verdict:
    """What to do about one output path: ``reason`` is :data:`NEW`, :data:`UP_TO_DATE`, :data:`FORCED`,
    :data:`OVERWRITE` or what changed; ``refused`` says why nothing may be written there (else None)."""

    reason: str
    source: dict[str, Any] | None = None  # source_state() when it was taken
    refresh: dict[str, Any] | None = None  # up to date, but the entry should record the re-hashed source
    refused: str | None = None
    reloaded: bool = False  # the record was read again from disk


def judge(src: Path, dst: Path, settings: Settings, record: OutputRecord, *, may_reload: bool = True) -> Verdict:
    """Compare the output ``dst`` of ``src`` with the folder's manifest: new, up to date, redone (and why), or
    refused (a file texup did not write, unless ``settings.overwrite``). The one rule of ``texup upscale``'s plan
    and of the worker (every client, the Blender add-on included). ``may_reload``: read the manifest again when
    ``dst`` is not in it (another run sharing the folder may have written it since)."""
    if not (dst.exists() or dst.is_symlink()):
        return Verdict(NEW)
    entry = record.entry(dst)
    reloaded = False
    if entry is None and may_reload:
        record.reload()
        reloaded = True
        entry = record.entry(dst)
    elif entry is None:  # a run sharing the folder may have written it since the one reload: its journal says
        record.catch_up()
        entry = record.entry(dst)
    if entry is None:
        if settings.overwrite:
            return Verdict(OVERWRITE, reloaded=reloaded)
        note = f" ({record.damage_note})" if record.damage_note else ""
        return Verdict(
            OVERWRITE,
            refused=(
                f"output {dst} exists and is not an unchanged earlier texup output{note}; not replacing it (remove it, "
                "choose another -o or --suffix, or pass --overwrite)"
            ),
            reloaded=reloaded,
        )
    try:
        source = source_state(src, entry)
    except OSError as err:  # vanished since it was listed: the run reports it when it reads it
        return Verdict(f"{SOURCE_CHANGED} ({err.strerror or err})", reloaded=reloaded)
    if settings.force:
        return Verdict(FORCED, source, reloaded=reloaded)
    why = changes(entry, settings, source)
    if why:
        return Verdict(", ".join(why), source, reloaded=reloaded)
    refresh = None
    if source["hashed_ns"] != entry.get("hashed_ns") or source["source"] != entry.get("source"):
        refresh = {**entry, **source}  # touched, same content: no hashing next time
    return Verdict(UP_TO_DATE, source, refresh, reloaded=reloaded)


#: What claiming an output found (:attr:`Claim.outcome`): make it here (GO), leave it to the live run that holds it
#: and ask again later (:data:`~texup.outputs.HELD`), nothing to make (:data:`UP_TO_DATE`: another run made it
#: meanwhile), or nothing may be written there now (REFUSED).
GO = "go"
REFUSED = "refused"


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_output` found: ``outcome`` (:data:`GO`, :data:`~texup.outputs.HELD`, :data:`UP_TO_DATE` or
    :data:`REFUSED`); for GO, ``planned``: what to make (claimed for this run; its reason and source judged again
    when another run had it first); for REFUSED, ``refused``: why."""

    outcome: str
    planned: Planned | None = None
    refused: str | None = None

    @property
    def held(self) -> bool:
        return self.outcome == HELD


def claim_output(record: OutputRecord, planned: Planned, settings: Settings) -> Claim:
    """Claim ``planned``'s output for this run before making it (:meth:`OutputRecord.claim`; without an open journal
    every output is this run's), so runs sharing an output folder split the work: the one rule of ``texup upscale``,
    its Ray driver and the worker, each through a :class:`Claimant`. An output another run claimed or wrote before
    this one got it, or whose file appeared since it was planned, is judged again (:func:`judge`), so it is not made
    twice; a claim that ends in nothing to make is released. Raises :class:`~texup.outputs.ManifestError` when the
    folder's lock cannot be taken (:class:`Claimant` then goes on without claims)."""
    from dataclasses import replace

    key = record.key(planned.dst)
    if key is None:
        return Claim(GO, planned)
    state = record.claim(key)
    if state == HELD:
        return Claim(HELD)
    if state != CLAIMED_AFTER_OTHER and not (planned.reason == NEW and planned.dst.exists()):
        return Claim(GO, planned)
    if state == CLAIMED_AFTER_OTHER:  # made just now by a run with these settings: --force need not redo it
        settings = replace(settings, force=False)
    verdict = judge(planned.item.src, planned.dst, settings, record)
    if verdict.refused is not None:
        record.release(key)
        return Claim(REFUSED, refused=verdict.refused)
    if verdict.reason == UP_TO_DATE:
        record.release(key)
        return Claim(UP_TO_DATE)
    return Claim(GO, Planned(planned.item, planned.dst, verdict.reason, verdict.source))


class Claimant:
    """One run's claims (``texup upscale``'s batch, its Ray driver, a worker job): :func:`claim_output` for each output
    until a folder's lock cannot be taken once; ``warn`` is then told so in one line and every later output is made
    without claims (GO), as a run that cannot claim still has work to do."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.active = True  # False once a folder's lock could not be taken

    def claim(self, record: OutputRecord, planned: Planned, settings: Settings) -> Claim:
        if not self.active:
            return Claim(GO, planned)
        try:
            return claim_output(record, planned, settings)
        except ManifestError as err:
            self.warn(f"{err}; outputs are made without claims from now on")
            self.active = False
            return Claim(GO, planned)


def make_plan(items: list[WorkItem], settings: Settings, record: OutputRecord) -> Plan:
    """Decide per input: refuse (output outside -o, over an input, claimed twice, over a file texup did not
    write without ``overwrite``), skip (``skip_existing``: by name only), up to date, or upscale and why."""
    plan = Plan()
    inputs = {item.src.resolve() for item in items}
    claimed: dict[Path, Path] = {}
    reloaded = False
    for item in items:
        dst = output_path(item, settings.out_dir, settings.suffix, settings.fmt)
        try:
            key = dst.resolve()
        except (RuntimeError, OSError) as err:  # a loop of links on its way (RuntimeError in Python 3.11)
            plan.refused.append((item.src, f"output {dst}: {path_reason(err, 'file')}; refusing to write it"))
            continue
        if _outside(dst, settings.out_dir):
            plan.refused.append((item.src, f"output {dst} would be outside {settings.out_dir}; refusing to write it"))
            continue
        if key in inputs:
            plan.refused.append(
                (item.src, f"output {dst} would overwrite an input; choose another --out-dir or --suffix")
            )
            continue
        if key in claimed:
            plan.refused.append((item.src, f"output {dst} is already the output of {claimed[key]}; rename one of them"))
            continue
        claimed[key] = item.src
        if settings.skip_existing and dst.exists():
            plan.skipped.append(Planned(item, dst, EXISTS))
            continue
        verdict = judge(item.src, dst, settings, record, may_reload=not reloaded)
        reloaded = reloaded or verdict.reloaded
        if verdict.refused is not None:
            plan.refused.append((item.src, verdict.refused))
        elif verdict.reason == UP_TO_DATE:
            plan.current.append(Planned(item, dst, UP_TO_DATE, verdict.source))
            if verdict.refresh is not None:
                plan.refresh.append((dst, verdict.refresh))
        else:
            plan.todo.append(Planned(item, dst, verdict.reason, verdict.source))
    return plan


def commit_output(record: OutputRecord, dst: Path, info: dict[str, Any], fill: Callable[[Path], object]) -> None:
    """Commit one output: the one way ``texup upscale``, its Ray driver and the worker put a finished output in
    place. ``fill(tmp)`` makes the output in a temporary file beside ``dst`` (encodes the pixels, moves a Ray node's
    file there, or upscales into it); its manifest entry (``info`` plus the file's size and mtime, which the rename
    keeps) then goes into the run's journal and the file is renamed over ``dst`` (:meth:`OutputRecord.writing`): a
    kill at any moment leaves a temporary file (swept by a later run) or an output the next run knows as texup's.
    When ``fill`` raises, nothing is journalled and the temporary file is removed. The caller then records it with
    ``record.add(dst, **info)`` on the thread that owns the record (the CLI's batch commits on a writer thread)."""
    with record.writing(dst, info) as tmp:
        fill(tmp)


def write_output(record: OutputRecord, dst: Path, pixels: Any, like: Any, info: dict[str, Any], **write: Any) -> None:
    """Write one output safely (:func:`commit_output`): encode it into the temporary file (the format named by
    ``dst``'s suffix, the bit depth and metadata of ``like``, ``write_image``'s ``write`` options: the pipeline's
    ``write_options``), journal and rename it. The caller then records it with ``record.add(dst, **info)``. Raises
    :class:`~texup.errors.ImageWriteError` naming ``dst``."""
    from texup.errors import FileError, ImageWriteError
    from texup.imageio import format_for_path, write_image

    try:
        commit_output(
            record, dst, info, lambda tmp: write_image(tmp, pixels, like=like, format=format_for_path(dst), **write)
        )
    except FileError as err:
        raise ImageWriteError(dst, err.reason) from err
    except OSError as err:
        raise ImageWriteError(dst, err.strerror or str(err)) from err
