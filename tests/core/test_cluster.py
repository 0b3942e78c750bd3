"""texup.cluster without a Ray cluster: the split rule, placements on a faked node list, the pipeline with tiles
in flight (a TileQueue engine gives the same pixels as one tile at a time), RayTiles against a fake Ray (spread,
lost actors, out of memory), and a Ray driver killed around the commit of an output (part 2 of issue 13).
The same code against a real local Ray cluster: tests/core/test_cluster_ray.py (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from realdata import real_image

from texup.cluster import IN_FLIGHT_PER_ACTOR, TILES_PER_ACTOR, RayTiles, split_width
from texup.engines.base import Cancelled, Engine, EngineOutOfMemory, TileQueue
from texup.inference.pipeline import UpscaleOptions, Upscaler

# --- the split rule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idle", "actors", "pixels", "after", "tiles", "width"),
    [
        (2, 2, 100, 0, 9, 2),  # one large file, two idle actors: split over both
        (2, 2, 100, 0, 3, 0),  # fewer tiles than two actors' worth (TILES_PER_ACTOR each): whole
        (2, 2, 100, 100, 9, 0),  # an equal file after it: the two run whole, side by side
        (2, 2, 100, 60, 9, 2),  # a large file and small ones: it would finish last, so it is split
        (1, 2, 100, 0, 9, 1),  # the last file, the other actor still busy: split, that actor joins when free
        (6, 6, 100, 0, 7, 3),  # as many actors as get two tiles each
        (4, 4, 100, 250, 40, 4),  # more than a quarter of what is left: split over all four
        (4, 4, 100, 400, 40, 0),  # less: whole (largest first spreads the rest evenly)
        (1, 1, 100, 0, 40, 0),  # one actor: nothing to split over
        (4, 4, 0, 0, 0, 0),  # size unknown (unreadable header): whole, the actor reports the error
    ],
)
def test_split_width_only_for_a_file_that_would_finish_last_with_tiles_for_two(
    idle, actors, pixels, after, tiles, width
):
    assert TILES_PER_ACTOR == 2
    assert split_width(idle, actors, pixels, after, tiles) == width


# --- placements on a faked node list ----------------------------------------------------------------------------


def _fake_nodes(*nodes: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(nodes=lambda: list(nodes))


def test_placements_one_actor_per_cpu_node_or_per_gpu():
    pytest.importorskip("ray")
    from texup.cluster import _placements

    cpu_nodes = _fake_nodes(
        {"NodeID": "a" * 56, "Alive": True, "Resources": {"CPU": 8.0}},
        {"NodeID": "b" * 56, "Alive": True, "Resources": {"CPU": 2.0}},
        {"NodeID": "d" * 56, "Alive": False, "Resources": {"CPU": 64.0}},
        {"NodeID": "c" * 56, "Alive": True, "Resources": {"memory": 1e9}},
    )
    placed = _placements(cpu_nodes, "auto")
    assert [p["num_cpus"] for p in placed] == [8.0, 2.0]
    assert [p["scheduling_strategy"].node_id for p in placed] == ["a" * 56, "b" * 56]
    assert all(p["scheduling_strategy"].soft is False and "num_gpus" not in p for p in placed)

    gpu_nodes = _fake_nodes(
        {"NodeID": "e" * 56, "Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
        {"NodeID": "9" * 56, "Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}},
    )
    for device in ("auto", "cuda", "cuda:1"):
        assert _placements(gpu_nodes, device) == [{"num_gpus": 1, "num_cpus": 1}] * 3
    for device in ("cpu", "vulkan:0", "mps"):  # devices that cannot use Ray's GPUs: one actor per node, its CPUs
        assert [p["num_cpus"] for p in _placements(gpu_nodes, device)] == [16.0, 16.0]
    assert _placements(_fake_nodes(), "auto") == []


# --- a stand-in engine and a queued wrapper ---------------------------------------------------------------------


class BlurUp:
    """x4 nearest after a 3x3 box blur with zero padding (like a convolution): each output depends on its
    neighbours, so the tile plan and the blend show. Raises EngineOutOfMemory above ``limit`` pixels."""

    name, precision, scale, input_multiple, model_name = "stand-in", "fp32", 4, 1, "blur-up"
    device = "cpu"

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.calls: list[tuple[int, int]] = []

    def run_tile(self, x, *, cancel=None, step=None):
        if self.limit is not None and x.shape[0] * x.shape[1] > self.limit:
            raise EngineOutOfMemory(f"{x.shape[0]}x{x.shape[1]} does not fit")
        self.calls.append(x.shape[:2])
        padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
        blurred = sum(padded[dy : dy + x.shape[0], dx : dx + x.shape[1]] for dy in range(3) for dx in range(3)) / 9
        return np.clip(blurred.repeat(4, axis=0).repeat(4, axis=1), 0, 1).astype(np.float32)

    def auto_tile(self, *, overlap=16, out_width=None):
        return 16

    def free_cached_memory(self):
        pass

    def describe(self):
        return {"engine": self.name}


class Queued(BlurUp):
    """BlurUp as a TileQueue: tiles are computed when collected, in the order the pipeline collects them."""

    def __init__(self, limit: int | None = None, in_flight: int = 3) -> None:
        super().__init__(limit)
        self.in_flight = in_flight
        self.pending: dict[int, np.ndarray] = {}
        self.submitted: list[tuple[int, int]] = []
        self.most = 0

    def tiles_in_flight(self):
        return self.in_flight

    def submit_tile(self, x):
        handle = len(self.submitted)
        self.submitted.append(x.shape[:2])
        self.pending[handle] = x
        self.most = max(self.most, len(self.pending))
        return handle

    def collect_tile(self, handle):
        return BlurUp.run_tile(self, self.pending.pop(handle))


def _rgba16() -> np.ndarray:
    """An odd-sized 16-bit RGBA texture with a varying alpha (a real photo, a cut-out matte)."""
    rgb = real_image("coffee.png", crop=(90, 150, 37, 29)).astype(np.uint16) * 257
    yy, xx = np.mgrid[:37, :29]
    alpha = np.where((yy - 18) ** 2 + (xx - 13) ** 2 < 120, 65535, (yy * 1500 + xx * 300) % 65536).astype(np.uint16)
    return np.dstack([rgb, alpha])


def _rgb8() -> np.ndarray:
    return real_image("astronaut.png", crop=(40, 60, 31, 43))


def test_the_stand_ins_are_engines_and_only_the_queue_is_a_tile_queue():
    assert isinstance(BlurUp(), Engine) and not isinstance(BlurUp(), TileQueue)
    assert isinstance(Queued(), Engine) and isinstance(Queued(), TileQueue)


@pytest.mark.parametrize(
    "options",
    [
        UpscaleOptions(tile=16, overlap=4),
        UpscaleOptions(tile=16, overlap=4, seamless="on"),
        UpscaleOptions(tile=16, overlap=4, scale=8),  # two passes, the second reading the first's rows
        UpscaleOptions(tile=16, overlap=4, scale=3),  # through the row resampler
        UpscaleOptions(tile=16, overlap=4, role="data"),
    ],
    ids=["plain", "seamless", "x8-two-passes", "x3", "data"],
)
@pytest.mark.parametrize("image", ["rgba16", "rgb8"])
def test_tiles_in_flight_give_the_same_pixels_as_one_at_a_time(image, options):
    pixels = _rgba16() if image == "rgba16" else _rgb8()
    local, queued = BlurUp(), Queued(in_flight=3)
    progress: list[tuple[float, int]] = []
    one = Upscaler(local).upscale_array(pixels, options)
    many = Upscaler(queued).upscale_array(pixels, options, progress=lambda done, total: progress.append((done, total)))
    assert many.dtype == one.dtype and many.shape == one.shape
    assert np.array_equal(many, one)
    assert sorted(queued.submitted) == sorted(local.calls)  # the same tiles
    if options.scale != 8:  # one pass: in plan order too (two passes interleave as the second pulls rows)
        assert queued.submitted == local.calls
    # Several in flight (per pass: the first pass's tiles are submitted as the second pulls its rows), none left.
    assert (3 < queued.most <= 6 if options.scale == 8 else queued.most == 3) and not queued.pending
    done = [d for d, _ in progress]
    assert done == sorted(done) and progress[-1][0] == progress[-1][1] > 0  # every tile counted, in order


def _large() -> np.ndarray:
    return real_image("astronaut.png", crop=(100, 120, 70, 58))


def test_out_of_memory_in_flight_splits_like_one_at_a_time():
    options = UpscaleOptions(tile=32, overlap=4)  # contexts up to 40x40; 1,000 pixels fit
    local, queued = BlurUp(limit=1000), Queued(limit=1000, in_flight=4)
    one = Upscaler(local).upscale_array(_large(), options)
    many = Upscaler(queued).upscale_array(_large(), options)
    assert np.array_equal(many, one)
    assert max(h * w for h, w in local.calls) <= 1000 and sorted(queued.calls) == sorted(local.calls)


def test_cancel_stops_submitting():
    queued = Queued(in_flight=2)
    with pytest.raises(Cancelled):
        Upscaler(queued).upscale_array(
            _rgb8(), UpscaleOptions(tile=16, overlap=4), cancel=lambda: len(queued.submitted) >= 3
        )
    assert len(queued.submitted) == 3


# --- RayTiles against a fake Ray ----------------------------------------------------------------------------------


class _RayError(Exception):
    pass


class _RayTaskError(_RayError):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Ref:
    def __init__(self, compute) -> None:
        self.compute = compute


class _Method:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        return _Ref(lambda: self.fn(*args))


class _Actor:
    """An actor of a fake Ray: calls run when their result is asked for; ``dies_after`` tiles, it is lost."""

    def __init__(self, node: str, engine: BlurUp, dies_after: int | None = None) -> None:
        self.node, self.engine, self.dies_after, self.tiles = node, engine, dies_after, 0
        self.run_tile = _Method(self._run_tile)
        self.auto_tile = _Method(lambda overlap, out_width: 16)

    def _run_tile(self, x):
        if self.dies_after is not None and self.tiles >= self.dies_after:
            raise _RayError("actor died")
        self.tiles += 1
        try:
            y = self.engine.run_tile(x)
        except EngineOutOfMemory:
            return self.node, None
        y.flags.writeable = False  # as Ray's zero-copy arrays are
        return self.node, y


def _fake_ray() -> SimpleNamespace:
    def get(ref):
        try:
            return ref.compute()
        except (_RayError, EngineOutOfMemory):
            raise
        except Exception as err:
            raise _RayTaskError(err) from err

    return SimpleNamespace(
        get=get,
        wait=lambda refs, num_returns, timeout: ([], list(refs)),
        exceptions=SimpleNamespace(RayError=_RayError, RayTaskError=_RayTaskError),
    )


_INFO = {
    "name": "stand-in",
    "precision": "fp32",
    "scale": 4,
    "input_multiple": 1,
    "model_name": "blur-up",
    "device": "cpu",
}


def test_ray_tiles_spread_over_actors_and_give_the_local_pixels():
    actors = [_Actor("n1", BlurUp()), _Actor("n2", BlurUp())]
    tiles = RayTiles(_fake_ray(), actors, _INFO)
    assert isinstance(tiles, Engine) and isinstance(tiles, TileQueue)
    assert tiles.tiles_in_flight() == IN_FLIGHT_PER_ACTOR * 2 and tiles.auto_tile(overlap=4) == 16
    options = UpscaleOptions(overlap=4)  # the tile from the actors' engine, as a local run takes its engine's
    local = BlurUp()
    expected = Upscaler(local).upscale_array(_rgba16(), options)
    assert np.array_equal(Upscaler(tiles).upscale_array(_rgba16(), options), expected)
    assert actors[0].tiles > 0 and actors[1].tiles > 0 and actors[0].tiles + actors[1].tiles == len(local.calls)
    assert tiles.used() == (2, ["n1", "n2"])


def test_ray_tiles_a_lost_actor_s_tiles_go_to_the_others_and_out_of_memory_splits():
    actors = [_Actor("n1", BlurUp(limit=1000), dies_after=2), _Actor("n2", BlurUp(limit=1000))]
    tiles = RayTiles(_fake_ray(), actors, _INFO)
    options = UpscaleOptions(tile=32, overlap=4)
    expected = Upscaler(BlurUp(limit=1000)).upscale_array(_large(), options)
    assert np.array_equal(Upscaler(tiles).upscale_array(_large(), options), expected)
    assert tiles.lost == [actors[0]] and tiles.actors() == [actors[1]]
    assert actors[0].tiles == 2

    gone = RayTiles(_fake_ray(), [_Actor("n1", BlurUp(), dies_after=1)], _INFO)
    with pytest.raises(RuntimeError, match="every Ray worker"):
        Upscaler(gone).upscale_array(_large(), options)


def test_ray_tiles_an_engine_error_fails_the_file_in_one_line():
    class Broken(BlurUp):
        def run_tile(self, x, *, cancel=None, step=None):
            raise ValueError("run_tile expects an (h, w, 3) array")

    tiles = RayTiles(_fake_ray(), [_Actor("n1", Broken())], _INFO)
    with pytest.raises(RuntimeError, match=r"^a Ray worker failed on a tile: run_tile expects"):
        Upscaler(tiles).upscale_array(_rgb8(), UpscaleOptions(tile=16, overlap=4))


# --- run_on_ray's scheduling against a fake Ray ---------------------------------------------------------------------


class _LazyRef:
    """A call that runs (once) when its result is first waited for or asked for."""

    def __init__(self, compute) -> None:
        self.compute, self.lock, self.result, self.error, self.ran = compute, threading.Lock(), None, None, False

    def run(self):
        with self.lock:
            if not self.ran:
                try:
                    self.result = self.compute()
                except BaseException as err:  # noqa: BLE001 - handed to get()
                    self.error = err
                self.ran = True
        if self.error is not None:
            raise self.error
        return self.result


class _Handle:
    """A fake actor handle: ``handle.method.remote(*args)`` calls the body's method lazily; a dead one raises."""

    def __init__(self, body, dead: bool) -> None:
        self.body, self.dead = body, dead

    def __getattr__(self, name):
        method = getattr(self.body, name)

        def call(*args):
            if self.dead:
                raise _RayError("actor died")
            return method(*args)

        return SimpleNamespace(remote=lambda *args: _LazyRef(lambda: call(*args)))


class OtherEngine(BlurUp):
    """The same network on another engine (as ``--engine auto`` may pick on another node)."""

    name = "other-engine"


def _scheduling_ray(
    dead: set[int], engines: dict[int, type[BlurUp]] | None = None
) -> tuple[SimpleNamespace, list[_Handle]]:
    from texup.cluster import _Upscaling

    handles: list[_Handle] = []

    def make(*_args):
        body = _Upscaling.__new__(_Upscaling)
        engine = (engines or {}).get(len(handles), BlurUp)()
        body.upscaler, body.max_pixels, body.node = Upscaler(engine), None, f"node{len(handles)}"
        handles.append(_Handle(body, len(handles) in dead))
        return handles[-1]

    def get(ref):
        try:
            return ref.run()
        except (_RayError, EngineOutOfMemory):
            raise
        except Exception as err:
            raise _RayTaskError(err) from err

    def wait(refs, num_returns, timeout):
        if timeout == 0:
            return [r for r in refs if r.ran], [r for r in refs if not r.ran]
        first = refs[0]  # the oldest call finishes first
        try:
            first.run()
        except BaseException:  # noqa: BLE001 - get() raises it
            pass
        return [first], refs[1:]

    fake = SimpleNamespace(
        is_initialized=lambda: True,
        nodes=lambda: [],
        remote=lambda cls: SimpleNamespace(options=lambda **_: SimpleNamespace(remote=make)),
        get=get,
        wait=wait,
        kill=lambda actor: None,
        exceptions=SimpleNamespace(RayError=_RayError, RayTaskError=_RayTaskError),
    )
    return fake, handles


@pytest.mark.parametrize("dead", [set(), {1}], ids=["all-alive", "one-actor-lost"])
def test_run_on_ray_splits_the_file_that_would_finish_last_and_gives_the_local_pixels(tmp_path, monkeypatch, dead):
    import texup.cluster as cluster
    from texup.imageio import read_image, write_image

    fake, handles = _scheduling_ray(dead)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "_placements", lambda ray, device: [{}, {}])
    images = {"small-a": _rgb8()[:10, :12], "big": _large(), "small-b": _rgba16()[:9, :11]}
    tasks = []
    for name, pixels in images.items():
        write_image(tmp_path / f"{name}.png", pixels)
        tasks.append((str(tmp_path / f"{name}.png"), str(tmp_path / "out" / f"{name}_x4.png")))
    seen: list[str] = []
    options = {"tile": 16, "overlap": 4}

    outcomes = cluster.run_on_ray(tasks, model="m", options=options, on_outcome=lambda o: seen.append(Path(o.src).stem))

    assert [Path(o.src).stem for o in outcomes] == list(images) and all(o.ok for o in outcomes), outcomes
    assert seen[0] == "big" or dead  # largest first; it takes every idle actor, the small ones wait for it
    big = outcomes[1]
    assert big.pid == os.getpid() and big.workers == (1 if dead else 2) and big.tmp is None
    assert all(o.workers == 1 and o.node.startswith("node") for o in (outcomes[0], outcomes[2]))
    for (src, dst), name in zip(tasks, images):
        local = Upscaler(BlurUp()).upscale_array(read_image(src).pixels, UpscaleOptions(**options))
        assert np.array_equal(read_image(dst).pixels, local), name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}_x4.png" for n in images)
    assert len(handles) == 2


# --- a Ray driver killed around an output's commit ------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import os, sys
    from dataclasses import replace
    import texup.cluster as cluster
    from texup import api
    from texup.cli.main import main

    MODE = sys.argv[1]

    def nodes(tasks, *, model, options, commit, on_outcome, **_):
        # The real node-side function, on a local upscaler; the kill comes where the mode says.
        upscaler = api.get_upscaler(model, engine="torch", device="cpu")
        for index, (src, dst) in enumerate(tasks):
            tmp = cluster._upscale_to_temp(upscaler, src, dst, options, max_pixels=None)
            outcome = cluster.RayOutcome(index, src, dst, True, None, 0.0, "node", os.getpid(), str(tmp))
            if MODE == "before-commit":
                os._exit(9)
            commit(outcome)
            if MODE == "after-commit":
                os._exit(9)
            on_outcome(replace(outcome, tmp=None))
        return []

    cluster.run_on_ray = nodes
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from texup.archs import RRDBNet
    from texup.weights import save_model

    torch.manual_seed(0)
    return save_model(
        RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), tmp_path_factory.mktemp("m") / "t.safetensors"
    )


def _run(args: list[object], *, driver_mode: str | None = None) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, "-c", _DRIVER, driver_mode] if driver_mode else [sys.executable, "-m", "texup"]
    return subprocess.run([*head, *map(str, args)], capture_output=True, text=True, timeout=300, env=os.environ.copy())


@pytest.mark.parametrize("mode", ["after-commit", "before-commit"])
def test_a_ray_driver_killed_around_the_commit_leaves_an_output_the_next_run_accepts(tmp_path, tiny_model, mode):
    from texup.imageio import read_image, write_image
    from texup.outputs import OutputRecord

    src = tmp_path / "in" / "photo.png"
    src.parent.mkdir()
    write_image(src, _rgba16())
    out = tmp_path / "out"
    dst = out / "photo_x4.png"
    upscale = ["upscale", src, "-o", out, "--model", tiny_model, "--engine", "torch", "--device", "cpu"]

    killed = _run([*upscale, "--ray", "127.0.0.1:1"], driver_mode=mode)
    assert killed.returncode == 9, killed.stderr[-2000:]
    temps = list(out.glob(".*.tmp"))
    if mode == "after-commit":  # journalled and renamed, then killed before the record: the journal says texup's
        assert dst.exists() and not temps
        assert OutputRecord(out).wrote(dst)
        made = read_image(dst).pixels
        again = _run(upscale)
        assert again.returncode == 0 and "0 upscaled, 1 up to date" in again.stderr, again.stderr[-2000:]
        forced = _run([*upscale, "--force"])  # texup's own: replaced without --overwrite
        assert forced.returncode == 0 and "1 changed and redone" in forced.stderr, forced.stderr[-2000:]
        assert np.array_equal(read_image(dst).pixels, made)
    else:  # the node's file never reached the journal: only a temporary file, swept once stale
        assert not dst.exists() and len(temps) == 1
        old = time.time() - 2 * 3600
        os.utime(temps[0], (old, old))
        again = _run(upscale)
        assert again.returncode == 0 and "1 upscaled" in again.stderr, again.stderr[-2000:]
        assert not temps[0].exists() and OutputRecord(out).wrote(dst)
    assert read_image(dst).pixels.shape == (37 * 4, 29 * 4, 4) and read_image(dst).pixels.dtype == np.uint16
    assert sorted(p.name for p in out.iterdir()) == [".texup", "photo_x4.png"]


def test_actors_whose_engines_differ_never_share_one_image(tmp_path, monkeypatch):
    """Two nodes whose auto engines differ: the large file is not split across them (its tiles would come from two
    engines); it runs whole, and the small one on the other actor."""
    import texup.cluster as cluster
    from texup.imageio import write_image

    fake, handles = _scheduling_ray(set(), engines={0: OtherEngine})
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "_placements", lambda ray, device: [{}, {}])
    tasks = []
    for name, pixels in {"big": _large(), "small": _rgb8()[:10, :12]}.items():
        write_image(tmp_path / f"{name}.png", pixels)
        tasks.append((str(tmp_path / f"{name}.png"), str(tmp_path / "out" / f"{name}_x4.png")))
    outcomes = cluster.run_on_ray(tasks, model="m", options={"tile": 16, "overlap": 4})
    assert all(o.ok for o in outcomes), outcomes
    assert [o.workers for o in outcomes] == [1, 1]
    assert cluster.engine_key({**_INFO, "device": "cuda:1"}) == cluster.engine_key({**_INFO, "device": "cuda:0"})
    assert cluster.engine_key(_INFO) != cluster.engine_key({**_INFO, "precision": "fp16"})


# --- the cluster's address (issue 21 item 7) ---------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MALFORMED_ADDRESSES = [
    "foo",
    "http://10.0.0.5:6379",
    "10.0.0.5",
    "10.0.0.5:",
    "10.0.0.5:99999",
    "10.0.0.5:0",
    ":6379",
    "host:port",
    "ray://",
    "a b:1",
    "10.0.0.5:6379/x",
    "x" * 100_000 + ":1",
    "\x00:1",
]


@pytest.mark.parametrize("address", MALFORMED_ADDRESSES, ids=range(len(MALFORMED_ADDRESSES)))
def test_a_malformed_ray_address_is_one_line_before_ray_is_asked(address, monkeypatch):
    import texup.cluster as cluster

    calls: list[Any] = []
    fake = SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(cluster.RayConnectError) as err:
        cluster.run_on_ray([], model="m", options={}, address=address)
    assert "not a Ray address" in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 400
    assert calls == []
    if "\x00" in address:  # an environment variable cannot hold it
        return
    monkeypatch.setenv("RAY_ADDRESS", address)  # the same from the environment
    with pytest.raises(cluster.RayConnectError):
        cluster.run_on_ray([], model="m", options={})
    assert calls == []


def test_an_unreachable_or_foreign_address_is_refused_within_seconds(monkeypatch):
    """A closed port, an unknown host, a server that accepts and says nothing, one that answers something other
    than gRPC: each is one line within the connect timeout, before Ray's driver (which retries for minutes)."""
    import socket

    import texup.cluster as cluster

    fake = SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: pytest.fail("ray.init was called"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    silent, talker = socket.socket(), socket.socket()
    for server in (silent, talker):
        server.bind(("127.0.0.1", 0))
        server.listen(4)

    def answer() -> None:
        conn, _ = talker.accept()
        conn.sendall(b"-ERR not redis\r\n" * 4)  # something, but no HTTP/2 SETTINGS frame
        time.sleep(2)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    cases = {
        f"127.0.0.1:{_closed_port()}": "Connection refused",
        "no-such-host.invalid:6379": "unknown host",
        f"127.0.0.1:{silent.getsockname()[1]}": "not a Ray cluster",
        f"ray://127.0.0.1:{talker.getsockname()[1]}": "not a Ray cluster",
    }
    try:
        for address, reason in cases.items():
            start = time.monotonic()
            with pytest.raises(cluster.RayConnectError, match=reason):
                cluster.run_on_ray([], model="m", options={}, address=address)
            assert time.monotonic() - start < 5, address
    finally:
        silent.close()
        talker.close()


def test_ray_init_errors_are_one_line(monkeypatch):
    import texup.cluster as cluster

    def init(**kw: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to")

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: False, init=init))
    with pytest.raises(cluster.RayConnectError, match="Could not find any running Ray instance.$"):
        cluster.run_on_ray([], model="m", options={}, address="auto")


@pytest.mark.parametrize("address", ["not-an-address", "127.0.0.1:PORT"])
def test_texup_upscale_ray_with_a_bad_address_is_one_line_and_quick(address, tmp_path):
    from texup.imageio import write_image

    src = tmp_path / "in.png"
    write_image(src, _rgb8())
    address = address.replace("PORT", str(_closed_port()))
    env = {**os.environ, "TEXUP_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "texup", "upscale", str(src), "-o", str(tmp_path / "out"), "--ray", address],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert address in proc.stderr and time.monotonic() - start < 60


def test_every_ray_actor_opens_the_runs_whole_engine_choice(tmp_path, monkeypatch):
    """texup upscale --ray with --engine, --device, --precision and --layout: each actor gets all four as one
    EngineChoice (the layout was dropped on the way to the actors before)."""
    import texup.cluster as cluster
    from texup.cli.main import main
    from texup.imageio import write_image
    from texup.options import EngineChoice
    from texup.weights.ref import ModelRef

    fake, _handles = _scheduling_ray(set())
    make = fake.remote(None).options().remote
    opened: list[tuple] = []

    def remember(*args):
        opened.append(args)
        return make(*args)

    fake.remote = lambda cls: SimpleNamespace(options=lambda **_: SimpleNamespace(remote=remember))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "_placements", lambda ray, device: [{}, {}])
    write_image(tmp_path / "a.png", np.full((6, 5, 3), 9, np.uint8))
    flags = ["--engine", "torch", "--device", "cpu", "--precision", "fp32", "--layout", "channels_last"]
    code = main(
        ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", "m", "--scale", "4"]
        + flags
        + ["--ray"]
    )
    assert code == 0 and (tmp_path / "out" / "a_x4.png").is_file()
    wanted = EngineChoice(engine="torch", device="cpu", precision="fp32", layout="channels_last")
    assert [args[:2] for args in opened] == [(ModelRef.of("m"), wanted)] * 2  # the model resolved once, here
