"""Spread a batch of files over a Ray cluster: one warm model per node (or per GPU), files on shared storage.

``texup upscale --ray [ADDRESS]`` plans the batch as on one machine and hands the (input, output) pairs to
:func:`run_on_ray`. Its contracts:

- Files go largest first (pixels from the header); an actor gets the next file as soon as it returns one. A
  failed file is one outcome with a one-line error; a lost actor's file goes to another actor once.
- Tile split (:func:`split_width`): a file that would finish last however the rest were spread (more than a
  fair share of the pixels left) runs on the driver through the ordinary pipeline (every whole-image decision
  made there, once) with only its tiles computed by the idle actors, several in flight (:class:`RayTiles`, a
  :class:`~texup.engines.base.TileQueue`): the same tile plan and blend, hence the same pixels as one machine
  with the same engine. Actors that fall idle with nothing queued join the running split with most tiles left.
- Outputs are written to a temporary file beside the output (by the node, or the driver for a split file) and
  renamed by the driver (``commit``: the CLI journals the entry first, :mod:`texup.outputs`), so a driver killed
  at any point leaves a recorded output or a temporary file that a later run sweeps.
- Placement (:func:`_placements`): one actor per GPU when the cluster has GPUs and the device may use them,
  else one per node reserving all its CPUs (the engines use every core themselves).

Paths must mean the same on every node. Ray is optional (``pip install 'texup[ray]'``); importing this module
does not import it. Figures: docs/benchmarks.md sections 7 and 8.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from texup.engines.base import CancelCallback, EngineOutOfMemory, StepCallback
from texup.errors import FileError, ImageWriteError, TexupError
from texup.options import EngineChoice
from texup.weights.ref import ModelLike, ModelRef

if TYPE_CHECKING:
    from texup.inference.pipeline import Upscaler

#: A file is split only over actors that get at least this many of its (first pass's) tiles each.
TILES_PER_ACTOR = 2
#: Tiles kept submitted per actor of a split: one running, one waiting, so no actor waits on a round trip.
IN_FLIGHT_PER_ACTOR = 2
#: How often outputs another run sharing the output folder holds are asked for again (``run_on_ray``'s ``claim``).
CLAIM_POLL_S = 0.2


@dataclass(frozen=True)
class RayOutcome:
    """What happened to one file: ``error`` is one line when ``ok`` is False; where it ran (node id, pid).

    ``tmp``: the finished output beside ``dst`` until the driver renames it (None once renamed, or on failure).
    A split file ran on the driver (its pid) with its tiles on ``workers`` actors; ``node`` then lists the nodes
    of those actors, comma-separated.
    """

    index: int
    src: str
    dst: str
    ok: bool
    error: str | None
    seconds: float
    node: str
    pid: int
    tmp: str | None = None
    workers: int = 1
    settled: bool = False  # never sent: the driver's claim settled it (made by another run, or refused)


def _error_line(err: BaseException) -> str:
    """One line for a file's failure (texup's own errors name the file)."""
    text = " ".join(str(err).split())
    if isinstance(err, (TexupError, OSError, ValueError, RuntimeError, MemoryError)):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}"


def _upscale_to_temp(
    upscaler: Upscaler,
    src: str,
    dst: str,
    options: dict[str, Any],
    *,
    max_pixels: int | None,
    cancel: CancelCallback | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> Path:
    """Upscale ``src`` into a new temporary file beside ``dst`` (flushed, the format ``dst``'s suffix names) and
    return its path; ``dst`` itself is not touched. Errors name ``src`` or ``dst``."""
    from texup._atomic import create_temp
    from texup.imageio import format_for_path, read_image, write_image
    from texup.inference.pipeline import UpscaleOptions, refuse_overwrite, write_options

    src_path, dst_path = Path(src), Path(dst)
    refuse_overwrite(src_path, dst_path)
    image = read_image(src_path, max_pixels=max_pixels)
    run_options = UpscaleOptions(**options)
    result = upscaler.upscale_array(
        image.pixels, run_options, colorspace=image.info.colorspace, progress=progress, cancel=cancel
    )
    try:
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = create_temp(dst_path)
    except OSError as err:
        raise ImageWriteError(dst_path, f"cannot write: {err.strerror or err}") from err
    try:
        write_image(tmp, result, like=image.info, format=format_for_path(dst_path), **write_options(run_options))
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, FileError):
            raise ImageWriteError(dst_path, err.reason) from err
        raise
    return tmp


class _Upscaling:
    """The actor's body (a plain class: ``ray.remote`` wraps it at run time, so importing texup needs no Ray)."""

    def __init__(self, model: ModelRef, choice: EngineChoice, max_pixels: int | None) -> None:
        if max_pixels is not None:
            os.environ["TEXUP_MAX_PIXELS"] = str(max_pixels)
        self.max_pixels = max_pixels
        from texup import api

        self.upscaler = api.get_upscaler(model, choice=choice)
        import ray

        self.node = str(ray.get_runtime_context().get_node_id())

    def upscale(self, index: int, src: str, dst: str, options: dict[str, Any]) -> RayOutcome:
        """One whole file into a temporary file beside ``dst`` (the driver renames it)."""
        start = time.monotonic()
        error = tmp = None
        try:
            tmp = str(_upscale_to_temp(self.upscaler, src, dst, options, max_pixels=self.max_pixels))
        except Exception as err:  # noqa: BLE001 - one file's problem, never the batch's: reported, not raised
            error = _error_line(err)
        elapsed = time.monotonic() - start
        return RayOutcome(index, src, dst, error is None, error, elapsed, self.node, os.getpid(), tmp)

    def engine_info(self) -> dict[str, Any]:
        """What :class:`RayTiles` needs to stand for this actor's engine."""
        e = self.upscaler.engine
        return {
            "name": e.name,
            "device": e.device,
            "precision": e.precision,
            "scale": e.scale,
            "input_multiple": e.input_multiple,
            "model_name": e.model_name,
            "describe": e.describe(),
            "node": self.node,
        }

    def auto_tile(self, overlap: int, out_width: int | None) -> int:
        return self.upscaler.engine.auto_tile(overlap=overlap, out_width=out_width)

    def run_tile(self, x: np.ndarray) -> tuple[str, np.ndarray | None]:
        """One tile through the engine, and this actor's node; None when the device ran out of memory (its
        cache freed)."""
        engine = self.upscaler.engine
        try:
            return self.node, engine.run_tile(x)
        except EngineOutOfMemory:
            engine.free_cached_memory()
            return self.node, None


def engine_key(info: dict[str, Any]) -> tuple[str, str, str, int, str]:
    """What must agree for actors to share one image's tiles (:meth:`_Upscaling.engine_info`): engine, precision,
    device kind, scale and model. ``--engine auto`` may pick different engines on different nodes; tiles of
    engines that differ would differ in their last bits, so such actors never share an image."""
    device = str(info["device"]).split(":", 1)[0]
    return (str(info["name"]), str(info["precision"]), device, int(info["scale"]), str(info["model_name"]))


class _Worker:
    """One actor of a split and its tile calls not known to be finished."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.node = ""
        self.running: list[Any] = []
        self.done = 0


@dataclass
class _Sent:
    """A submitted tile: its input (to send elsewhere if the actor is lost), the actor, Ray's reference."""

    x: np.ndarray
    worker: _Worker
    ref: Any


class RayTiles:
    """An :class:`~texup.engines.base.Engine` whose tiles run on Ray actors (also a
    :class:`~texup.engines.base.TileQueue`: the pipeline keeps ``IN_FLIGHT_PER_ACTOR`` tiles per actor
    submitted and collects them in plan order).

    ``info`` is an actor's :meth:`_Upscaling.engine_info`. Each tile goes to the actor with the fewest
    unfinished tiles; a tile whose actor is lost goes to another one of the group (the lost actor is dropped);
    with none left, :class:`RuntimeError`. An actor's out-of-memory error is :class:`EngineOutOfMemory` here, so
    the pipeline splits the tile as on one machine. Cancel is polled by the pipeline between tiles only.
    :meth:`add_actor` may be called from another thread while tiles run.
    """

    def __init__(self, ray: Any, actors: Sequence[Any], info: dict[str, Any]) -> None:
        self._ray = ray
        self._lock = threading.Lock()
        self._workers = [_Worker(a) for a in actors]
        self._retired: list[_Worker] = []
        self.lost: list[Any] = []
        self.name = str(info["name"])
        self.precision = str(info["precision"])
        self.scale = int(info["scale"])
        self.input_multiple = int(info["input_multiple"])
        self.model_name = str(info["model_name"])
        self._device = str(info["device"])
        self._describe = dict(info.get("describe") or {})
        #: :func:`engine_key` of the actors of this group (an actor joining must have the same).
        self.key = engine_key(info)
        #: Tiles of the image not yet done (from the pipeline's progress): idle actors join the split with most.
        self.left = 0

    @property
    def device(self) -> str:
        return self._device

    def actors(self) -> list[Any]:
        """The group's actors still alive."""
        with self._lock:
            return [w.actor for w in self._workers]

    def add_actor(self, actor: Any) -> None:
        with self._lock:
            self._workers.append(_Worker(actor))

    def used(self) -> tuple[int, list[str]]:
        """How many actors computed tiles, and their nodes (sorted, distinct)."""
        with self._lock:
            workers = [w for w in self._workers + self._retired if w.done]
        return len(workers), sorted({w.node for w in workers if w.node})

    # -- TileQueue ------------------------------------------------------------------------------------------

    def tiles_in_flight(self) -> int:
        with self._lock:
            return IN_FLIGHT_PER_ACTOR * max(1, len(self._workers))

    def submit_tile(self, x: np.ndarray) -> _Sent:
        ray = self._ray
        with self._lock:
            workers = list(self._workers)
        if not workers:
            raise RuntimeError("every Ray worker computing this image's tiles was lost")
        for w in workers:
            if w.running:
                _, w.running = ray.wait(w.running, num_returns=len(w.running), timeout=0)
        worker = min(workers, key=lambda w: len(w.running))
        ref = worker.actor.run_tile.remote(x)
        worker.running.append(ref)
        return _Sent(x, worker, ref)

    def collect_tile(self, handle: object) -> np.ndarray:
        if not isinstance(handle, _Sent):
            raise TypeError(f"not a tile submitted to this engine: {handle!r}")
        ray, sent = self._ray, handle
        while True:
            asked = sent
            try:
                node, y = ray.get(asked.ref)
            except ray.exceptions.RayTaskError as err:  # the engine raised: the file fails, as on one machine
                cause = getattr(err, "cause", None) or err
                raise RuntimeError(f"a Ray worker failed on a tile: {_error_line(cause)}") from err
            except ray.exceptions.RayError:  # the actor (or its node) is gone: the tile goes to another one
                self._drop(asked.worker)
                sent = self.submit_tile(asked.x)
                continue
            finally:
                if asked.ref in asked.worker.running:
                    asked.worker.running.remove(asked.ref)
            if y is None:
                raise EngineOutOfMemory(f"out of memory on {self._device} (a Ray worker)")
            sent.worker.done += 1
            sent.worker.node = str(node)
            return y if y.flags.writeable else y.copy()

    def _drop(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
                self._retired.append(worker)
                self.lost.append(worker.actor)

    # -- Engine ---------------------------------------------------------------------------------------------

    def run_tile(
        self, x: np.ndarray, *, cancel: CancelCallback | None = None, step: StepCallback | None = None
    ) -> np.ndarray:
        return self.collect_tile(self.submit_tile(x))

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        """The first actor's engine's choice (every actor of a group runs the same model and options)."""
        with self._lock:
            if not self._workers:
                raise RuntimeError("every Ray worker computing this image's tiles was lost")
            actor = self._workers[0].actor
        return int(self._ray.get(actor.auto_tile.remote(overlap, out_width)))

    def free_cached_memory(self) -> None:
        """Nothing here: each actor frees its own device memory before it reports running out."""

    def describe(self) -> dict[str, Any]:
        with self._lock:
            workers = len(self._workers)
        return {**self._describe, "ray_workers": workers}


def split_width(idle: int, actors: int, pixels: int, pixels_after: int, tiles: int) -> int:
    """How the next file runs: 0 = whole on one actor; n >= 1 = on the driver, its tiles on n idle actors (more
    join as they fall idle with nothing queued).

    Files go largest first, which spreads whole files evenly at no cost, except a file that would finish last
    however the rest were spread: one whose ``pixels`` are more than a fair share of the work left
    (``pixels * actors > pixels + pixels_after``, the pixels of the files queued after it). Only such a file is
    split, and only when it has tiles for at least two actors (:data:`TILES_PER_ACTOR` each); it takes the idle
    actors, at most one per :data:`TILES_PER_ACTOR` tiles.
    """
    if actors < 2 or tiles < 2 * TILES_PER_ACTOR or pixels * actors <= pixels + pixels_after:
        return 0
    return max(1, min(idle, tiles // TILES_PER_ACTOR))


def _tile_count(ray: Any, actor: Any, size: tuple[int, int], options: dict[str, Any], scale: int) -> int:
    """The number of tiles of the first model pass over an input of ``size`` (height, width), as the pipeline
    plans them (the tile from ``options`` or the actor's engine)."""
    from texup.inference.tiling import plan_tiles

    height, width = size
    if height < 1 or width < 1:
        return 0
    overlap = min(int(options.get("overlap", 16)), max(height, width))
    tile = options.get("tile") or int(ray.get(actor.auto_tile.remote(overlap, width * scale)))
    return len(plan_tiles(height, width, int(tile), min(overlap, int(tile)), wrap=False))


def _split_file(
    engine: RayTiles,
    index: int,
    src: str,
    dst: str,
    options: dict[str, Any],
    max_pixels: int | None,
    cancel: CancelCallback,
) -> RayOutcome:
    """One file through the pipeline on the driver with ``engine``'s actors computing the tiles (on a thread)."""
    from texup.inference.pipeline import Upscaler

    start = time.monotonic()
    error = tmp = None

    def progress(done: float, total: int) -> None:
        engine.left = total - int(done)

    try:
        upscaler = Upscaler(engine)
        tmp = str(
            _upscale_to_temp(upscaler, src, dst, options, max_pixels=max_pixels, cancel=cancel, progress=progress)
        )
    except Exception as err:  # noqa: BLE001 - one file's problem, never the batch's: reported, not raised
        error = _error_line(err)
    elapsed = time.monotonic() - start
    workers, nodes = engine.used()
    return RayOutcome(index, src, dst, error is None, error, elapsed, ",".join(nodes), os.getpid(), tmp, workers)


def _placements(ray: Any, device: str) -> list[dict[str, Any]]:
    """Actor options: one per GPU when the cluster has GPUs and ``device`` may use them, else one per node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = int(sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))
    if gpus and (device == "auto" or device.startswith("cuda")):
        return [{"num_gpus": 1, "num_cpus": 1} for _ in range(gpus)]
    placements = []
    for node in nodes:
        cpus = node.get("Resources", {}).get("CPU", 0)
        if cpus >= 1:
            placements.append(
                {
                    "num_cpus": cpus,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False),
                }
            )
    return placements


def _pixels(path: str) -> tuple[int, int]:
    """(height, width) from the file's header; (0, 0) when it cannot be read (the actor reports why)."""
    from texup.imageio import probe_image

    try:
        info = probe_image(path)
    except (TexupError, OSError, ValueError):
        return 0, 0
    return info.height, info.width


def _rename(outcome: RayOutcome) -> None:
    """The default ``commit``: the temporary file over the output, the folder flushed."""
    from texup._atomic import fsync_folder

    assert outcome.tmp is not None
    os.replace(outcome.tmp, outcome.dst)
    fsync_folder(Path(outcome.dst).parent)


#: How long the driver waits for the cluster's address to accept a connection before saying it cannot reach it.
CONNECT_TIMEOUT_S = 5.0
#: How many times Ray's driver asks an address that answers but is no Ray head (its default, 20, is minutes).
GCS_CONNECT_TRIES = 3
_HOST = r"\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?"
_RAY_ADDRESS = re.compile(rf"(?P<client>ray://)?(?P<host>{_HOST}):(?P<port>[0-9]{{1,5}})")


class RayConnectError(RuntimeError):
    """The Ray cluster's address is malformed or cannot be reached (one line; the CLI's exit 1)."""


def ray_address_parts(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``HOST:PORT``, ``ray://HOST:PORT``, IPv6 in brackets), None for
    ``auto`` / ``local`` (a cluster on this machine); :class:`RayConnectError` for anything else."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    match = _RAY_ADDRESS.fullmatch(text)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        shown = repr(text) if len(text) <= 80 else f"{text[:80]!r}... ({len(text)} characters)"
        raise RayConnectError(
            f"{shown} is not a Ray address: expected HOST:PORT (the head's GCS port, e.g. 10.0.0.5:6379), "
            "ray://HOST:PORT or auto"
        )
    return match["host"].strip("[]"), int(match["port"])


def check_ray_reachable(address: str, timeout: float | None = None) -> None:
    """:class:`RayConnectError` within about ``timeout`` seconds (default :data:`CONNECT_TIMEOUT_S`) unless
    ``address`` is well formed and answers as a gRPC server does (Ray's own driver retries an unreachable address
    for minutes before it gives up)."""
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    parts = ray_address_parts(address)
    if parts is None:
        return
    host, port = parts
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            speaks_grpc = _answers_http2(conn)
    except socket.gaierror as err:
        raise RayConnectError(f"cannot reach the Ray cluster at {address}: unknown host ({err.strerror})") from None
    except TimeoutError:
        raise RayConnectError(
            f"cannot reach the Ray cluster at {address}: no answer within {timeout:g} s (is the head running, "
            "and is the port open to this machine?)"
        ) from None
    except OSError as err:
        raise RayConnectError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None
    if not speaks_grpc:
        # Ray's driver would ask such an address for minutes (40 s per try, 20 tries).
        raise RayConnectError(
            f"{address} answers but is not a Ray cluster (no gRPC there): give the head's GCS port (default 6379) "
            "or a Ray Client address ray://HOST:10001"
        )


#: HTTP/2's connection preface and an empty SETTINGS frame: every gRPC server (Ray's GCS, the Ray Client
#: server) answers with a SETTINGS frame of its own.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the server on ``conn`` answers HTTP/2's preface with a frame header of type SETTINGS (4)."""
    try:
        conn.sendall(_HTTP2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # also a timeout: a server that says nothing is not gRPC
        return False
    return head[3] == 4


def _connect(ray: Any, address: str | None) -> None:
    """``ray.init`` for ``address`` (None: ``RAY_ADDRESS``, else a new local cluster), checked first: a malformed
    address is one line, an unreachable one is one line within :data:`CONNECT_TIMEOUT_S`, an address that
    answers but is no Ray head gives up after :data:`GCS_CONNECT_TRIES` tries."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target:
        check_ray_reachable(target)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(log_to_driver=False, configure_logging=False, include_dashboard=False)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise RayConnectError(
            f"cannot connect to the Ray cluster at {target or 'a new local cluster'}: {first}"
        ) from err


def run_on_ray(
    tasks: Sequence[tuple[str, str]],
    *,
    model: ModelLike,
    options: dict[str, Any],
    choice: EngineChoice | None = None,
    address: str | None = None,
    max_pixels: int | None = None,
    on_outcome: Callable[[RayOutcome], None] | None = None,
    status: Callable[[str], None] | None = None,
    commit: Callable[[RayOutcome], None] | None = None,
    split: bool = True,
    claim: Callable[[int], bool | None] | None = None,
) -> list[RayOutcome]:
    """Upscale ``tasks`` (absolute ``(src, dst)`` paths) on the Ray cluster at ``address`` (None: the one
    ``RAY_ADDRESS`` names, else a new local one); ``options`` are :class:`UpscaleOptions` fields; ``choice`` the
    engine, device, precision and layout every actor opens (``--engine``, ``--device``, ...; None: all auto).

    Each finished output is first a temporary file beside ``dst``; ``commit(outcome)`` (on this thread) must move
    ``outcome.tmp`` over ``outcome.dst`` (default: rename and flush; the CLI journals first). A commit raising
    ``OSError`` or a texup error makes that file a failure (its temporary file removed). ``on_outcome`` then sees
    each outcome as it arrives (``tmp`` None). ``split=False``: never split a file's tiles over actors.
    ``claim(index)`` (on this thread) is asked once before a task first goes out: True sends it, None means another
    run sharing the output folder holds it (asked again once nothing else waits, every :data:`CLAIM_POLL_S` while
    files run), False that the caller settled it (its outcome is ``settled``; ``on_outcome`` never sees it). Returns
    one outcome per task, in task order. Raises ``RuntimeError`` when Ray is missing or the cluster has no node
    that can run a worker.

    The actors are a :class:`_Pool`; :class:`_Schedule` gives them the files.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        # Read when Ray is first imported: how often its driver asks an address that is no Ray head.
        os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", str(GCS_CONNECT_TRIES))
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("--ray needs Ray: pip install 'texup[ray]'") from err
    say = status or (lambda line: None)
    if not ray.is_initialized():
        _connect(ray, address)
    pool = _Pool.start(ray, model, choice or EngineChoice(), max_pixels)
    try:
        say(f"{len(pool.actors)} Ray worker(s) on {len(ray.nodes())} node(s)")
        return _Schedule(
            pool,
            tasks,
            options,
            max_pixels=max_pixels,
            split=split,
            claim=claim,
            commit=commit or _rename,
            on_outcome=on_outcome or (lambda outcome: None),
            say=say,
        ).run()
    finally:
        pool.kill()


class _Pool:
    """The run's actors, one per placement (:func:`_placements`): which are idle, how many still live, and the
    engine each holds (:meth:`_Upscaling.engine_info`, asked once, and only when a split is possible)."""

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self.ray = ray
        self.actors = actors
        self.idle = list(actors)
        self.living = len(actors)
        self._engines: dict[int, dict[str, Any]] = {}  # id(actor) -> its engine_info

    @classmethod
    def start(cls, ray: Any, model: ModelLike, choice: EngineChoice, max_pixels: int | None) -> _Pool:
        """One actor per placement, each opening ``model`` as ``choice`` says."""
        placements = _placements(ray, choice.device)
        if not placements:
            raise RuntimeError("the Ray cluster has no node with a CPU or GPU to run a texup worker on")
        remote: Any = ray.remote(_Upscaling)
        resolved = ModelRef.of(model)  # resolved once here; paths mean the same on every node
        return cls(ray, [remote.options(**p).remote(resolved, choice, max_pixels) for p in placements])

    def engine_of(self, actor: Any) -> dict[str, Any]:
        """``actor``'s engine info (Ray's error when the actor is gone)."""
        if id(actor) not in self._engines:
            self._engines[id(actor)] = self.ray.get(actor.engine_info.remote())
        return self._engines[id(actor)]

    def idle_like(self, key: tuple[str, str, str, int, str], *, skip_lost: bool = False) -> list[Any]:
        """The idle actors whose engines give the same pixels, :func:`engine_key` ``key`` (``--engine auto`` may
        pick different engines on different nodes). Ray's error when one is gone, unless ``skip_lost`` (it is then
        left out: nothing more is given to it)."""
        found = []
        for actor in self.idle:
            try:
                if engine_key(self.engine_of(actor)) == key:
                    found.append(actor)
            except self.ray.exceptions.RayError:
                if not skip_lost:
                    raise
        return found

    def take_one(self) -> Any:
        """An idle actor, busy now."""
        return self.idle.pop()

    def take(self, actors: list[Any]) -> None:
        """``actors`` (idle ones) are busy now."""
        self.idle = [a for a in self.idle if all(a is not t for t in actors)]

    def free(self, actors: list[Any]) -> None:
        self.idle.extend(actors)

    def lost(self, count: int) -> None:
        self.living -= count

    def kill(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


class _Schedule:
    """:func:`run_on_ray`'s loop over a :class:`_Pool`. Files go largest first to idle actors, each claimed first
    (``claim``: held ones are asked again later); a file that would finish last (:func:`split_width`) runs on a
    thread here with its tiles on the idle actors whose engines agree (:class:`RayTiles`), and actors that fall idle
    with nothing queued join the split with most tiles left. A lost actor's file (or a split that lost every actor)
    goes back to the front of the queue once; each file ends in one outcome."""

    def __init__(
        self,
        pool: _Pool,
        tasks: Sequence[tuple[str, str]],
        options: dict[str, Any],
        *,
        max_pixels: int | None,
        split: bool,
        claim: Callable[[int], bool | None] | None,
        commit: Callable[[RayOutcome], None],
        on_outcome: Callable[[RayOutcome], None],
        say: Callable[[str], None],
    ) -> None:
        self.pool, self.ray, self.tasks, self.options = pool, pool.ray, tasks, options
        self.max_pixels, self.split, self.claim, self.say = max_pixels, split, claim, say
        self.commit, self.on_outcome = commit, on_outcome
        self.sizes = [_pixels(src) for src, _ in tasks]
        self.pixels = [h * w for h, w in self.sizes]
        self.queue = deque(sorted(range(len(tasks)), key=lambda i: -self.pixels[i]))  # largest first, stable
        self.queued_pixels = sum(self.pixels)
        self.held: deque[int] = deque()  # tasks another run holds (claim said None): asked again later
        self.claimed: set[int] = set()
        self.tries = [0] * len(tasks)
        self.inflight: dict[Any, tuple[Any, int]] = {}  # Ray reference -> (actor, task) of a whole file
        self.splits: dict[Future[RayOutcome], tuple[RayTiles, int]] = {}
        self.outcomes: dict[int, RayOutcome] = {}
        self.stop = threading.Event()  # a split still running stops at its next tile
        self.threads = ThreadPoolExecutor(max(1, len(pool.actors) // 2), thread_name_prefix="texup-ray-tiles")

    def run(self) -> list[RayOutcome]:
        """Every task to its outcome, in task order."""
        try:
            while self.queue or self.inflight or self.splits or self.held:
                self._ask_held_again()
                self._start_files()
                self._help_splits()
                if not self.inflight and not self.splits and not (self.held and self.pool.idle):
                    self._fail_the_rest()  # every actor died: the rest cannot run
                    break
                self._collect(self._wait())
        finally:
            self.stop.set()
            self.threads.shutdown(wait=True)
        return [self.outcomes[i] for i in range(len(self.tasks))]

    # -- the queue ------------------------------------------------------------------------------------------

    def _requeue(self, indices: list[int], *, front: bool = False) -> None:
        for index in indices:
            if front:
                self.queue.appendleft(index)
            else:
                self.queue.append(index)
            self.queued_pixels += self.pixels[index]

    def _ask_held_again(self) -> None:
        """Once nothing else is queued and an actor is idle (or nothing runs: then after :data:`CLAIM_POLL_S`), the
        files other runs held go back to the queue, to be claimed again."""
        if self.held and not self.queue and (self.pool.idle or not (self.inflight or self.splits)):
            if not (self.inflight or self.splits):
                time.sleep(CLAIM_POLL_S)
            self._requeue(list(self.held))
            self.held.clear()

    def _claimed(self, index: int) -> bool:
        """Whether task ``index`` may go out now (``claim`` asked once per task; held: put aside; settled by the
        caller: its outcome is ``settled``)."""
        if self.claim is None or index in self.claimed:
            return True
        answer = self.claim(index)
        if answer is None:
            self.held.append(index)
        elif answer is False:
            src, dst = self.tasks[index]
            self.outcomes[index] = RayOutcome(index, src, dst, True, None, 0.0, "", 0, settled=True)
        else:
            self.claimed.add(index)
        return bool(answer)

    # -- giving out work ----------------------------------------------------------------------------------------

    def _start_files(self) -> None:
        """Queued files to idle actors, largest first: whole on one actor, or split over several."""
        while self.queue and self.pool.idle:
            index = self.queue.popleft()
            self.queued_pixels -= self.pixels[index]
            if not self._claimed(index):
                continue
            src, dst = self.tasks[index]
            group = self._split_group(index)
            if group is not None:
                actors, info = group
                self.pool.take(actors)
                tiles = RayTiles(self.ray, actors, info)
                future = self.threads.submit(
                    _split_file, tiles, index, src, dst, self.options, self.max_pixels, self.stop.is_set
                )
                self.splits[future] = (tiles, index)
            else:
                actor = self.pool.take_one()
                self.inflight[actor.upscale.remote(index, src, dst, self.options)] = (actor, index)

    def _split_group(self, index: int) -> tuple[list[Any], dict[str, Any]] | None:
        """The idle actors that compute task ``index``'s tiles (:func:`split_width`) and their engine's info; None:
        it goes whole to one actor. Tiles are counted only for a file that would finish last."""
        pixels = self.pixels[index]
        if not self.split or pixels * self.pool.living <= pixels + self.queued_pixels:
            return None
        candidate = self.pool.idle[-1]
        try:
            info = self.pool.engine_of(candidate)
            tiles = _tile_count(self.ray, candidate, self.sizes[index], self.options, int(info["scale"]))
            matching = self.pool.idle_like(engine_key(info))
        except self.ray.exceptions.RayError:  # an actor is gone: the file goes whole (and finds out)
            return None
        width = split_width(len(matching), self.pool.living, pixels, self.queued_pixels, tiles)
        return (matching[-width:], info) if width >= 1 else None

    def _help_splits(self) -> None:
        """Nothing left to start: idle actors whose engines agree join the split with most tiles left."""
        if not (self.pool.idle and not self.queue and self.splits):
            return
        helped = max((tiles for tiles, _ in self.splits.values()), key=lambda tiles: tiles.left)
        joining = self.pool.idle_like(helped.key, skip_lost=True)
        for actor in joining:
            helped.add_actor(actor)
        self.pool.take(joining)

    # -- what comes back ----------------------------------------------------------------------------------------

    def _wait(self) -> list[Any]:
        """Until a whole file or a split is done (or, while splits run or files are held, a short while): the Ray
        references of the whole files that are done."""
        if not self.inflight:
            wait_futures(list(self.splits), return_when=FIRST_COMPLETED)
            return []
        timeout = 0.05 if self.splits else CLAIM_POLL_S if self.held else None
        done, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        return list(done)

    def _collect(self, done: list[Any]) -> None:
        for ref in done:
            self._file_done(ref)
        for future in [f for f in self.splits if f.done()]:
            self._split_done(future)

    def _file_done(self, ref: Any) -> None:
        """A whole file came back: its outcome, its actor idle again; or its actor was lost."""
        actor, index = self.inflight.pop(ref)
        try:
            self._finish(self.ray.get(ref))
            self.pool.free([actor])
        except self.ray.exceptions.RayError as err:  # the actor (or its node) is gone: the file goes elsewhere
            self.pool.lost(1)
            self._lost(index, type(err).__name__)
            left = len(self.pool.idle) + len(self.inflight)
            self.say(f"a Ray worker was lost ({type(err).__name__}); {left} left")

    def _split_done(self, future: Future[RayOutcome]) -> None:
        """A split file ended: its actors that still live are idle again; when it failed for want of any, it is
        tried again."""
        tiles, index = self.splits.pop(future)
        alive = tiles.actors()
        self.pool.free(alive)
        outcome = future.result()
        self.pool.lost(len(tiles.lost))
        if tiles.lost:
            self.say(f"{len(tiles.lost)} Ray worker(s) lost while splitting {outcome.src}")
        if not outcome.ok and not alive:
            self._lost(index, "every worker of its tiles")
        else:
            self._finish(outcome)

    def _finish(self, outcome: RayOutcome) -> None:
        """Commit a finished file (a commit that fails makes it a failure), then report its outcome."""
        tmp = outcome.tmp
        if outcome.ok and tmp is not None:
            try:
                self.commit(outcome)
                outcome = replace(outcome, tmp=None)
            except (OSError, TexupError) as err:
                Path(tmp).unlink(missing_ok=True)
                reason = str(err) if isinstance(err, TexupError) else f"{outcome.dst}: {err.strerror or err}"
                outcome = replace(outcome, ok=False, error=" ".join(reason.split()), tmp=None)
        self.outcomes[outcome.index] = outcome
        self.on_outcome(outcome)

    def _lost(self, index: int, why: str) -> None:
        """Task ``index``'s actor was lost: to the front of the queue, or after a second loss, a failure."""
        self.tries[index] += 1
        if self.tries[index] < 2:
            self._requeue([index], front=True)
        else:
            src, dst = self.tasks[index]
            self._finish(RayOutcome(index, src, dst, False, f"Ray worker lost twice ({why})", 0.0, "", 0))

    def _fail_the_rest(self) -> None:
        for index in [*self.queue, *self.held]:
            src, dst = self.tasks[index]
            self._finish(RayOutcome(index, src, dst, False, "no Ray worker left to run it", 0.0, "", 0))
        self.queue.clear()
        self.held.clear()


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, *, temp_dir: str | None = None) -> Iterator[str]:
    """A Ray cluster of ``nodes`` node processes on this machine (``ray start --head``, then ``ray start
    --address`` for each other node), each offering ``cpus_per_node`` CPUs: for trying ``--ray``, the tests and
    the benchmarks. Yields its address. At the end ``ray stop --force``, which stops every Ray process on this
    machine: do not use it beside another Ray cluster here. Raises ``RuntimeError`` with Ray's output when a
    node does not start.

    Every process of it (the nodes, and this process and its children while it lives) takes one Ray
    authentication mode: the caller's ``RAY_AUTH_MODE``, else "disabled". Ray 2.60+ otherwise decides per
    process: a head finding ``~/.ray/auth_token`` (which any earlier local ``ray.init()`` writes) turns token
    authentication on while the other nodes and the driver keep it off, and every node after the head fails."""
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": auth_mode or "disabled"}
    os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    head = [
        ray_cli,
        "start",
        "--head",
        "--port",
        str(port),
        "--num-cpus",
        str(cpus_per_node),
        "--include-dashboard=false",
        "--disable-usage-stats",
    ] + (["--temp-dir", temp_dir] if temp_dir else [])
    other = [ray_cli, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", str(cpus_per_node)]
    try:
        for command in [head] + [other] * (nodes - 1):
            run = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(command[:3])} failed: {(run.stdout + run.stderr)[-1500:]}")
        yield f"127.0.0.1:{port}"
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
