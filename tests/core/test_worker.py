"""The real ``python -m texup worker`` driven by the add-on's WorkerClient (a tiny RRDBNet keeps it fast)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realdata import real_image
from workerutil import collect as collect_events

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge import worker_protocol as bridge_protocol  # noqa: E402
from bridge.client import WorkerClient  # noqa: E402
from bridge.worker_protocol import Done, Error, Job, JobItem, JobOptions, Models, Pong, Progress, Result  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from texup.archs.rrdbnet import RRDBNet
    from texup.weights import save_model

    torch.manual_seed(0)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    return save_model(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def worker():
    client = WorkerClient(sys.executable, args=("-m", "texup", "worker", "--device", "cpu"))
    client.start(timeout=120)
    yield client
    client.stop()


def collect(client: WorkerClient, until, timeout: float = 120.0) -> list:
    """:func:`workerutil.collect` with room for a real model load."""
    return collect_events(client, until, timeout)


def save_png(path: Path, pixels: np.ndarray) -> Path:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    Image.fromarray(pixels).save(path)
    return path


def test_the_add_ons_option_mirrors_match_texup_options():
    """The add-on cannot import texup: its bridge repeats these tuples, and they must stay the same."""
    from texup import options

    assert bridge_protocol.ROLES == options.ROLES
    assert bridge_protocol.SEAMLESS == options.SEAMLESS_MODES
    assert bridge_protocol.PRECISIONS == options.PRECISIONS
    assert bridge_protocol.ENGINES == options.ENGINES
    assert bridge_protocol.LAYOUTS == options.LAYOUTS
    assert bridge_protocol.STAGES == options.STAGES
    assert bridge_protocol.TILE_MIN == options.TILE_MIN
    assert bridge_protocol.COLOR_FIX == options.COLOR_FIX_MODES


def test_the_add_ons_job_options_refuse_unknown_engines_and_layouts_and_stay_readable_by_older_workers():
    for bad in (dict(engine="onnx"), dict(layout="nhwc"), dict(precision="fp64")):
        with pytest.raises(bridge_protocol.ProtocolError, match=next(iter(bad))):
            bridge_protocol.JobOptions(**bad).validate()
    # "auto" is not sent: a protocol-1 worker from before engine/layout (unknown keys refused) still takes the job
    assert not {"engine", "layout"} & set(bridge_protocol.JobOptions().to_json())
    sent = bridge_protocol.JobOptions(engine="ncnn", layout="nchw").to_json()
    assert (sent["engine"], sent["layout"]) == ("ncnn", "nchw")


def test_protocol_versions_of_worker_and_add_on_agree():
    from texup.worker.protocol import PROTOCOL_VERSION

    assert PROTOCOL_VERSION == bridge_protocol.PROTOCOL_VERSION


def test_hello_names_versions_and_device(worker):
    import torch

    import texup

    hello = worker.hello
    assert (hello.protocol, hello.texup, hello.torch, hello.device) == (1, texup.__version__, torch.__version__, "cpu")
    assert hello.pid > 0


def test_two_files_one_missing(worker, tiny_model, tmp_path):
    src = save_png(tmp_path / "coffee crop.png", real_image("coffee.png")[:37, :53])
    out_dir = tmp_path / "out" / "nested"
    job = Job(
        options=JobOptions(model=str(tiny_model), tile=32),
        items=(
            JobItem("gone", str(tmp_path / "gone.png"), str(out_dir / "gone_x4.png")),
            JobItem("coffee", str(src), str(out_dir / "coffee_x4.png")),
        ),
    )
    job_id = worker.submit(job)
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    (err,) = [e for e in events if isinstance(e, Error)]
    assert (err.item, err.kind) == ("gone", "ImageReadError")
    assert "gone.png" in err.message and "\n" not in err.message
    (res,) = [e for e in events if isinstance(e, Result)]
    assert res.item == "coffee" and (res.width, res.height) == (53 * 4, 37 * 4)
    with Image.open(res.dst) as im:
        assert im.size == (212, 148) and im.mode == "RGB"
    assert any(isinstance(e, Progress) and e.item == "coffee" and e.count == 2 and e.index == 1 for e in events)
    done = events[-1]
    assert (done.ok, done.failed, done.cancelled) == (1, 1, False)
    assert not (out_dir / "gone_x4.png").exists()


def test_a_rerun_redoes_nothing_and_a_changed_source_is_redone_in_place(worker, tiny_model, tmp_path):
    """The worker keeps the output folder's manifest as `texup upscale` does: the same job again does no work
    and writes no file; a changed source is redone under the same name; a file texup did not write stays."""
    src = save_png(tmp_path / "wall.png", real_image("brick.png")[:20, :24])
    other = save_png(tmp_path / "other.png", real_image("gravel.png")[:12, :12])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    foreign = out_dir / "other_x4.png"
    foreign.write_bytes(b"an artist's own file")
    job = Job(
        options=JobOptions(model=str(tiny_model), scale=2),
        items=(
            JobItem("wall", str(src), str(out_dir / "wall_x4.png")),
            JobItem("other", str(other), str(foreign)),
        ),
    )

    def run() -> tuple[dict, list]:
        job_id = worker.submit(job)
        events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
        return {e.item: e for e in events if isinstance(e, Result)}, [e for e in events if isinstance(e, Error)]

    results, errors = run()
    assert results["wall"].reason == "new" and [e.item for e in errors] == ["other"]
    assert "not an unchanged earlier texup output" in errors[0].message
    first = (out_dir / "wall_x4.png").stat()
    listing = sorted(p.name for p in out_dir.iterdir())

    results, errors = run()  # the same job again: nothing to do, nothing written
    assert results["wall"].reason == "up to date" and results["wall"].seconds == 0
    assert (results["wall"].width, results["wall"].height) == (48, 40)
    assert (out_dir / "wall_x4.png").stat().st_mtime_ns == first.st_mtime_ns
    assert sorted(p.name for p in out_dir.iterdir()) == listing
    assert foreign.read_bytes() == b"an artist's own file"

    save_png(src, real_image("brick.png")[20:40, :24])  # the artist edits the source
    results, _ = run()
    assert results["wall"].reason == "source changed" and results["wall"].dst == str(out_dir / "wall_x4.png")
    assert sorted(p.name for p in out_dir.iterdir()) == listing  # redone in place: no second name
    entry = json.loads((out_dir / ".texup" / "outputs.json").read_text())["files"]["wall_x4.png"]
    # what the add-on checks by stat alone before it starts a worker
    assert entry["model_ref"] == str(tiny_model) and entry["model_files"][0]["path"] == str(tiny_model)
    assert entry["options"] == {
        "scale": 2.0,
        "size": None,
        "seamless": "auto",
        "role": "color",
        "color_fix": "auto",
        "dds_format": None,
        "alpha": "auto",
    }
    assert entry["source"] == str(src) and entry["size"] == (out_dir / "wall_x4.png").stat().st_size


def test_the_addons_plan_names_outputs_again_and_tells_current_ones_by_stat(worker, tiny_model, tmp_path):
    """The add-on's side of a rerun (bridge.jobs + bridge.manifest, no texup): the plan gives every texture the
    name of its own earlier output, never ``_2``; what the worker recorded lets the add-on tell an up-to-date
    output without a worker, a packed image's (a new temporary copy each run) included; a changed source, model
    file or option is not current."""
    from bridge.jobs import TextureInfo, build_job
    from bridge.manifest import OutputsView, pixel_options

    from texup.library import pixel_options as texup_pixel_options

    assert pixel_options(scale=4, seamless="auto", role="normal") == texup_pixel_options(
        scale=4.0, size=None, seamless="auto", role="normal"
    )
    for fix in ("auto", "on", "off"):
        assert pixel_options(scale=2, seamless="on", role="color", color_fix=fix) == texup_pixel_options(
            scale=2.0, size=None, seamless="on", role="color", color_fix=fix
        )
    wall = save_png(tmp_path / "wall.png", real_image("brick.png")[:20, :24])
    packed_bytes = (save_png(tmp_path / "p.png", real_image("gravel.png")[:12, :12])).read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "wall_x4.png").write_bytes(b"someone else's file")  # never replaced: the texture gets _2 once
    textures = [
        TextureInfo("Wall", str(wall), (24, 20), "color", "sRGB", "file"),
        TextureInfo("Packed", "", (12, 12), "data", "Non-Color", "packed"),
    ]
    options = JobOptions(model=str(tiny_model), scale=2.0)

    def plan_and_run(run: int) -> tuple:
        copy = tmp_path / f"tmp{run}" / "p.png"  # the add-on writes a packed image to a new temporary file
        copy.parent.mkdir()
        copy.write_bytes(packed_bytes)
        earlier = OutputsView(str(out))
        plan = build_job(
            textures,
            options,
            str(out),
            name_scale=4,
            extracted={"Packed": str(copy)},
            origins={"Packed": "scene.blend#Packed"},
            earlier=earlier,
        )
        why = {
            item.key.split(":")[1]: earlier.why_not_current(
                item.dst,
                source=item.src,
                model=str(tiny_model),
                options=pixel_options(scale=2.0, seamless="auto", role=item.role),
                texup=texup.__version__,
            )
            for item in plan.job.items
        }
        job_id = worker.submit(plan.job)
        events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
        return plan, why, {e.item.split(":")[1]: e.reason for e in events if isinstance(e, Result)}

    import texup

    plan, why, reasons = plan_and_run(1)
    assert [o.dst for o in plan.outputs] == [str(out / "wall_x4_2.png"), str(out / "Packed_x4.png")]
    assert why == {"Wall": "no unchanged earlier output", "Packed": "no unchanged earlier output"}
    assert reasons == {"Wall": "new", "Packed": "new"}
    listing = sorted(p.name for p in out.iterdir())

    plan, why, reasons = plan_and_run(2)  # the same scene again: same names, current by stat (and by hash)
    assert [o.dst for o in plan.outputs] == [str(out / "wall_x4_2.png"), str(out / "Packed_x4.png")]
    assert why == {"Wall": None, "Packed": None}
    assert reasons == {"Wall": "up to date", "Packed": "up to date"}
    assert sorted(p.name for p in out.iterdir()) == listing

    save_png(wall, real_image("brick.png")[20:40, :24])
    plan, why, reasons = plan_and_run(3)
    assert plan.outputs[0].dst == str(out / "wall_x4_2.png") and why["Wall"] == "source changed"
    assert reasons == {"Wall": "source changed", "Packed": "up to date"}
    assert sorted(p.name for p in out.iterdir()) == listing
    assert (out / "wall_x4.png").read_bytes() == b"someone else's file"
    earlier = OutputsView(str(out))
    kwargs = {"source": str(wall), "texup": texup.__version__}
    assert (
        earlier.why_not_current(
            str(out / "wall_x4_2.png"),
            model=str(tiny_model),
            options=pixel_options(scale=2, seamless="auto", role="color"),
            **kwargs,
        )
        is None
    )
    assert (
        earlier.why_not_current(
            str(out / "wall_x4_2.png"),
            model=str(tiny_model),
            options=pixel_options(scale=4, seamless="auto", role="color"),
            **kwargs,
        )
        == "options changed"
    )
    assert (
        earlier.why_not_current(
            str(out / "wall_x4_2.png"),
            model="realesrgan-x4plus",
            options=pixel_options(scale=2, seamless="auto", role="color"),
            **kwargs,
        )
        == "model changed"
    )
    assert (
        earlier.why_not_current(
            str(out / "wall_x4_2.png"),
            model=str(tiny_model),
            options=pixel_options(scale=2, seamless="auto", role="color"),
            source=str(wall),
            texup="0.0.1",
        )
        == "texup version changed"
    )


def test_roles_and_alpha_go_through(worker, tiny_model, tmp_path):
    gray = real_image("gravel.png")[:40, :24]
    rgba = np.dstack([real_image("chelsea.png")[:30, :31], np.full((30, 31), 200, np.uint8)])
    items = (
        JobItem("gray", str(save_png(tmp_path / "g.png", gray)), str(tmp_path / "g_x4.png"), role="data"),
        JobItem("rgba", str(save_png(tmp_path / "a.png", rgba)), str(tmp_path / "a_x4.png"), role="color"),
    )
    job_id = worker.submit(Job(options=JobOptions(model=str(tiny_model), scale=2), items=items))
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    assert events[-1].ok == 2, events
    with Image.open(tmp_path / "g_x4.png") as im:
        assert im.size == (48, 80) and im.mode == "L"
    with Image.open(tmp_path / "a_x4.png") as im:
        assert im.size == (62, 60) and im.mode == "RGBA"


def test_cancel_during_a_job_leaves_no_output(worker, tiny_model, tmp_path):
    image = real_image("astronaut.png")[:128, :128]
    items = tuple(
        JobItem(f"i{n}", str(save_png(tmp_path / f"i{n}.png", image)), str(tmp_path / f"i{n}_x4.png")) for n in range(3)
    )
    job_id = worker.submit(Job(options=JobOptions(model=str(tiny_model), tile=16), items=items))
    events = collect(worker, lambda e: isinstance(e, Progress) and e.id == job_id)
    worker.cancel(job_id)
    events += collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    done = events[-1]
    assert done.cancelled is True
    written = {e.item for e in events if isinstance(e, Result)}
    assert len(written) < 3, written
    for item in items:
        assert Path(item.dst).exists() == (item.key in written)
    # no temporary file is left; the manifest lists exactly what was written, and no journal stays behind
    leftovers = [
        p.name for p in tmp_path.iterdir() if p.name != ".texup" and (p.name.startswith(".") or p.suffix == ".tmp")
    ]
    assert leftovers == []
    manifest = json.loads((tmp_path / ".texup" / "outputs.json").read_text()) if written else {"files": {}}
    assert sorted(manifest["files"]) == sorted(Path(i.dst).name for i in items if i.key in written)
    assert not list((tmp_path / ".texup" / "journal").glob("*.jsonl"))
    # the worker stays warm and answers
    worker.ping()
    assert any(isinstance(e, Pong) for e in collect(worker, lambda e: isinstance(e, Pong)))


def test_bad_model_fails_the_job_not_the_worker(worker, tmp_path):
    src = save_png(tmp_path / "x.png", real_image("brick.png")[:20, :20])
    job = Job(
        options=JobOptions(model=str(tmp_path / "nope.safetensors")),
        items=(JobItem("x", str(src), str(tmp_path / "x_x4.png")),),
    )
    job_id = worker.submit(job)
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    errors = [e for e in events if isinstance(e, Error)]
    assert errors and errors[0].item is None and "nope" in errors[0].message
    assert errors[0].traceback == ""  # texup's own error says what is wrong in one line, no traceback for the user
    assert (events[-1].ok, events[-1].failed) == (0, 1)
    assert worker.alive


def test_an_item_whose_values_do_not_fit_gets_one_line_not_a_traceback(worker, tiny_model, tmp_path):
    gray = save_png(tmp_path / "g.png", real_image("gravel.png")[:20, :20])
    job_id = worker.submit(
        Job(
            options=JobOptions(model=str(tiny_model)),
            items=(JobItem("g", str(gray), str(tmp_path / "g_x4.png"), role="normal"),),
        )
    )
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    errors = [e for e in events if isinstance(e, Error)]
    assert len(errors) == 1 and errors[0].item == "g" and "normal map needs 3 or 4 channels" in errors[0].message
    assert errors[0].traceback == ""
    assert (events[-1].ok, events[-1].failed) == (0, 1)


def test_models_request_lists_the_registry(worker):
    request = worker.request_models()
    events = collect(worker, lambda e: isinstance(e, Models) and e.id == request)
    names = [m["name"] for m in events[-1].models]
    assert "realesrgan-x4plus" in names


def _raw_worker() -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "texup", "worker", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    hello = json.loads(proc.stdout.readline())
    assert hello["type"] == "hello"
    return proc


def _send(proc: subprocess.Popen, line: bytes) -> dict:
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_malformed_and_unknown_lines_get_errors_and_shutdown_exits_0():
    proc = _raw_worker()
    try:
        bad = _send(proc, b"{not json")
        assert (bad["type"], bad["id"], bad["item"]) == ("error", None, None)
        unknown = _send(proc, b'{"type": "fly", "id": "t1"}')
        assert unknown["type"] == "error" and unknown["id"] == "t1" and "fly" in unknown["message"]
        invalid_train = _send(proc, b'{"type": "train", "id": "t2"}')
        assert (
            invalid_train["type"] == "error" and invalid_train["id"] == "t2" and "data_dir" in invalid_train["message"]
        )
        assert json.loads(proc.stdout.readline())["type"] == "done"
        invalid = _send(proc, b'{"type": "upscale", "id": "j", "options": {"tile": 4}, "items": []}')
        assert invalid["type"] == "error" and "tile" in invalid["message"]
        assert json.loads(proc.stdout.readline()) == {
            "type": "done",
            "id": "j",
            "ok": 0,
            "failed": 0,
            "cancelled": False,
        }
        assert _send(proc, b'{"type": "ping", "id": 7}') == {"type": "pong", "id": "7"}
        proc.stdin.write(b'{"type": "shutdown"}\n')
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b""  # nothing but protocol lines ever reach stdout
        assert b"shutdown" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stdin_eof_ends_the_worker():
    proc = _raw_worker()
    try:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# --- the worker's own protocol module and server, in-process ------------------------------------


def test_core_protocol_validates_options():
    from texup.worker.protocol import ProtocolError, parse_options, parse_upscale

    opts = parse_options({"model": "m", "scale": 2, "tile": 64, "seamless": "off", "target_size": None})
    assert (opts.model, opts.scale, opts.tile, opts.seamless, opts.overlap) == ("m", 2.0, 64, "off", 16)
    for bad, word in [
        ({"scle": 2}, "unknown option"),
        ({"tile": 8}, "tile"),
        ({"scale": "4"}, "scale"),
        ({"scale": 2, "target_size": [8, 8]}, "either"),
        ({"target_size": [0, 8]}, "target_size"),
        ({"seamless": "maybe"}, "seamless"),
        ({"precision": "fp64"}, "precision"),
        ({"layout": "nhwc"}, "layout"),
        ({"engine": "onnx"}, "engine"),
    ]:
        with pytest.raises(ProtocolError, match=word):
            parse_options(bad)
    with pytest.raises(ProtocolError, match="twice"):
        parse_upscale({"type": "upscale", "id": "j", "items": [{"key": "a", "src": "s", "dst": "d"}] * 2})
    with pytest.raises(ProtocolError, match="role"):
        parse_upscale({"type": "upscale", "id": "j", "items": [{"key": "a", "src": "s", "dst": "d", "role": "x"}]})


class _Pipe:
    """stdin for WorkerServer: lines fed by the test, EOF on close."""

    def __init__(self) -> None:
        import queue

        self.lines: queue.Queue = queue.Queue()

    def __iter__(self):
        while (line := self.lines.get()) is not None:
            yield line

    def send(self, message: dict) -> None:
        self.lines.put(json.dumps(message).encode() + b"\n")


class _Out:
    def __init__(self) -> None:
        import threading

        self.events: list[dict] = []
        self.cond = threading.Condition()

    def write(self, text: str) -> None:
        with self.cond:
            self.events += [json.loads(line) for line in text.splitlines()]
            self.cond.notify_all()

    def flush(self) -> None:
        pass

    def wait_for(self, pred, timeout: float = 30.0) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: any(pred(e) for e in self.events), timeout), self.events
            return next(e for e in self.events if pred(e))


def test_server_cancels_a_queued_job_before_it_starts_and_keeps_one_upscaler(tmp_path, monkeypatch):
    """In-process server with a stand-in upscaler: job order, queued cancel, upscaler reuse, EOF."""
    import threading

    from texup.worker import server as server_mod
    from texup.worker.server import WorkerServer

    released: list[int] = []
    monkeypatch.setattr(server_mod, "release_freed_memory", lambda: released.append(1) or True)

    gate = threading.Event()
    made: list[tuple] = []

    class SlowUpscaler:
        def upscale_file(self, src, dst, options, *, progress, cancel, format=None):
            progress(0, 2)
            gate.wait(30)
            progress(1, 2)
            Image.new("RGB", (8, 4)).save(dst, format="PNG")
            progress(2, 2)
            return Path(dst)

    def factory(model, *, choice):
        made.append((model, choice.engine, choice.device, choice.precision, choice.layout))
        return SlowUpscaler()

    src = save_png(tmp_path / "s.png", real_image("brick.png")[:4, :4])
    stdin, out = _Pipe(), _Out()
    server = WorkerServer(stdin, out, device="cpu", get_upscaler=factory)
    runner = threading.Thread(target=server.serve)
    runner.start()
    item = {"key": "k", "src": str(src), "dst": str(tmp_path / "o1.png")}
    # the add-on's own job options, as its bridge writes them: engine and layout reach get_upscaler
    chosen = bridge_protocol.JobOptions(model="m", engine="torch", layout="channels_last")
    chosen.validate()
    stdin.send({"type": "upscale", "id": "first", "options": chosen.to_json(), "items": [item]})
    out.wait_for(lambda e: e["type"] == "progress")
    stdin.send(
        {
            "type": "upscale",
            "id": "second",
            "options": {"model": "m"},
            "items": [dict(item, dst=str(tmp_path / "o2.png"))],
        }
    )
    stdin.send({"type": "cancel", "id": "second"})
    stdin.send({"type": "ping", "id": "p"})
    out.wait_for(lambda e: e["type"] == "pong")  # answered while a job runs
    gate.set()
    second = out.wait_for(lambda e: e["type"] == "done" and e["id"] == "second")
    first = out.wait_for(lambda e: e["type"] == "done" and e["id"] == "first")
    assert (first["ok"], first["cancelled"]) == (1, False)
    assert (second["ok"], second["failed"], second["cancelled"]) == (0, 0, True)
    assert not (tmp_path / "o2.png").exists()
    result = out.wait_for(lambda e: e["type"] == "result")
    assert (result["width"], result["height"]) == (8, 4)
    assert made == [("m", "torch", "cpu", "auto", "channels_last")]  # the second job never asked for a model
    stdin.lines.put(None)  # EOF
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert len(released) == 2  # freed memory goes back to the system after every job


def test_unusable_device_is_a_clear_start_error():
    from bridge.client import WorkerStartError

    client = WorkerClient(sys.executable, args=("-m", "texup", "worker", "--device", "tpu"))
    with pytest.raises(WorkerStartError, match="exited with code 2.*tpu"):
        client.start(timeout=120)
    assert not client.alive


# --- fine-tuning through the worker ("train" messages) ---------------------------------------------

TINY_TRAIN_CONFIG = {
    "data": {"hr_crop": 32, "batch_size": 2, "val_fraction": 0.25, "val_crop": 32},
    "discriminator": {"kind": "vgg19", "hparams": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8]}},
    "eval_every": 0,
    "checkpoint_every": 0,
    "tensorboard": False,
    "seed": 3,
}


@pytest.fixture(scope="module")
def texture_folder(tmp_path_factory) -> Path:
    """Four small real textures of odd sizes: gray, RGB and RGBA."""
    root = tmp_path_factory.mktemp("textures")
    save_png(root / "gravel.png", real_image("gravel.png")[:37, :53, :1])
    save_png(root / "brick.png", real_image("brick.png")[100:148, 60:101].repeat(3, axis=2))
    save_png(root / "coffee.png", real_image("coffee.png")[150:190, 250:300])
    rgba = np.concatenate(
        [real_image("grass.png")[:41, :45].repeat(3, axis=2), np.full((41, 45, 1), 180, np.uint8)], axis=2
    )
    Image.fromarray(rgba, "RGBA").save(root / "grass_alpha.png")
    return root


def test_core_and_add_on_agree_on_train_messages_and_events():
    from texup.worker import protocol as core

    job = bridge_protocol.TrainJob(
        data_dir="/d",
        out_dir="/o",
        steps=5,
        stage="gan",
        pretrained="x4.safetensors",
        config_file="/c.json",
        precision="bf16",
    )
    request = core.parse_train(bridge_protocol.train_message("t", job))
    assert (
        request.id,
        request.data_dir,
        request.out_dir,
        request.steps,
        request.stage,
        request.pretrained,
        request.config_file,
        request.precision,
    ) == ("t", "/d", "/o", 5, "gan", "x4.safetensors", "/c.json", "bf16")
    with pytest.raises(core.ProtocolError, match="not both"):
        core.parse_train({**bridge_protocol.train_message("t", job), "config": {}})
    with pytest.raises(core.ProtocolError, match="stpes"):
        core.parse_train({"type": "train", "id": "t", "data_dir": "/d", "out_dir": "/o", "steps": 1, "stpes": 2})
    progress = bridge_protocol.parse_event(core.encode(core.train_progress("t", 3, 9, float("nan"), 12.34)))
    assert isinstance(progress, Progress) and progress.loss is None and progress.eta_s == 12.3
    result = bridge_protocol.parse_event(
        core.encode(core.train_result("t", "/o/model.safetensors", 9, 1.0, 21.5, float("inf")))
    )
    assert isinstance(result, Result) and (result.psnr_before, result.psnr_after, result.steps) == (21.5, None, 9)
    note = bridge_protocol.parse_event(core.encode(core.message("t", "skipping /d/a.png:\n too small")))
    assert note == bridge_protocol.Message("t", "skipping /d/a.png: too small")


def _train(worker: WorkerClient, job: bridge_protocol.TrainJob, config: dict) -> str:
    """Send a train message with an inline ``config`` (what config_file holds for the add-on)."""
    job_id = f"train-{time.monotonic_ns()}"
    message = bridge_protocol.train_message(job_id, job)
    message["config"] = config
    worker._write(message)
    return job_id


@pytest.mark.parametrize("stage", ["psnr", "gan"])
def test_train_fine_tunes_and_exports_a_loadable_model(worker, tiny_model, texture_folder, tmp_path, stage):
    from texup.weights import load_model

    job = bridge_protocol.TrainJob(
        data_dir=str(texture_folder), out_dir=str(tmp_path / "run"), steps=6, stage=stage, pretrained=str(tiny_model)
    )
    job_id = _train(worker, job, TINY_TRAIN_CONFIG)
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    mine = [e for e in events if getattr(e, "id", None) == job_id]
    assert not [e for e in mine if isinstance(e, Error)], mine
    notes = [e.text for e in mine if isinstance(e, bridge_protocol.Message)]
    assert any(n.startswith("data: 3 training and 1 held-out images") for n in notes), notes
    steps = [e for e in mine if isinstance(e, Progress)]
    assert steps and steps[-1].done == 6 and steps[-1].total == 6 and steps[-1].item == "train"
    assert all(e.loss is not None and e.loss >= 0 for e in steps)
    assert steps[-1].fraction == 1.0
    results = [e for e in mine if isinstance(e, Result)]
    assert len(results) == 1 and results[0].steps == 6
    assert results[0].psnr_before is not None and results[0].psnr_after is not None
    model_path = Path(results[0].dst)
    assert model_path.suffix == ".safetensors" and model_path.parent == tmp_path / "run"
    model = load_model(model_path)
    assert model.scale == 4  # the pretrained tiny x4 network, fine-tuned
    done = mine[-1]
    assert (done.ok, done.failed, done.cancelled) == (1, 0, False)


def test_train_config_file_and_cancel(worker, tiny_model, texture_folder, tmp_path):
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(TINY_TRAIN_CONFIG), encoding="utf-8")
    job = bridge_protocol.TrainJob(
        data_dir=str(texture_folder),
        out_dir=str(tmp_path / "run"),
        steps=100000,
        stage="psnr",
        pretrained=str(tiny_model),
        config_file=str(config_file),
    )
    job_id = worker.submit_train(job)
    collect(worker, lambda e: isinstance(e, Progress) and e.id == job_id)
    worker.cancel(job_id)
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    done = events[-1]
    assert done.cancelled and done.failed == 0
    results = [e for e in events if isinstance(e, Result) and e.id == job_id]
    assert results and results[0].steps < 100000  # stopped early; the model so far is still exported
    # The worker serves on after a cancelled training run.
    ping = worker.ping()
    assert any(isinstance(e, Pong) and e.id == ping for e in collect(worker, lambda e: isinstance(e, Pong)))


def test_train_errors_end_the_job_not_the_worker(worker, tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    job = bridge_protocol.TrainJob(
        data_dir=str(empty), out_dir=str(tmp_path / "run"), steps=2, stage="psnr", pretrained=str(tiny_model)
    )
    job_id = _train(worker, job, TINY_TRAIN_CONFIG)
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    errors = [e for e in events if isinstance(e, Error) and e.id == job_id]
    assert errors and str(empty) in errors[0].message and "no usable training images" in errors[0].message
    assert (events[-1].ok, events[-1].failed, events[-1].cancelled) == (0, 1, False)

    # A data folder that is not there: one line naming it, no traceback (found by scripts/fuzz.py).
    missing = tmp_path / "no-data"
    job_id = _train(worker, replace(job, data_dir=str(missing)), TINY_TRAIN_CONFIG)
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    (error,) = [e for e in events if isinstance(e, Error) and e.id == job_id]
    assert str(missing) in error.message and "no such folder" in error.message and not error.traceback

    # A malformed train message: an error naming the field, then done, and the worker goes on.
    worker._write({"type": "train", "id": "bad", "data_dir": str(empty), "out_dir": str(tmp_path), "steps": 0})
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == "bad")
    assert any(isinstance(e, Error) and "'steps'" in e.message for e in events)
    job_id = _train(worker, job, {"data": {"hr_crop": 16, "no_such_setting": 1}})
    events = collect(worker, lambda e: isinstance(e, Done) and e.id == job_id)
    assert any(isinstance(e, Error) and "no_such_setting" in e.message for e in events)


# --- reliability (issue 11): hostile lines, bad paths, stale cancels -----------------------------------------


def _pipe_server(tmp_path, monkeypatch, upscaler):
    """An in-process WorkerServer reading a real OS pipe (so its bounded ``readline`` is what runs)."""
    import os
    import threading

    from texup.worker import server as server_mod
    from texup.worker.server import WorkerServer

    monkeypatch.setattr(server_mod, "release_freed_memory", lambda: True)
    read_fd, write_fd = os.pipe()
    stdin, writer, out = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb"), _Out()
    server = WorkerServer(stdin, out, device="cpu", get_upscaler=lambda model, **kw: upscaler)
    runner = threading.Thread(target=server.serve, daemon=True)
    runner.start()

    def send(line: bytes | dict) -> None:
        writer.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")
        writer.flush()

    return server, runner, send, writer, out


class _GatedUpscaler:
    def __init__(self) -> None:
        import threading

        self.gate = threading.Event()

    def upscale_file(self, src, dst, options, *, progress, cancel, format=None):
        progress(0, 2)
        self.gate.wait(30)
        progress(2, 2)
        Image.new("RGB", (8, 4)).save(dst, format="PNG")
        return Path(dst)


def test_too_deep_and_too_long_lines_get_errors_and_the_running_job_goes_on(tmp_path, monkeypatch):
    from texup.worker import server as server_mod

    monkeypatch.setattr(server_mod, "MAX_LINE_BYTES", 4096)
    monkeypatch.setattr(server_mod, "_DISCARD_CHUNK", 1000)
    upscaler = _GatedUpscaler()
    src = save_png(tmp_path / "s.png", real_image("brick.png")[:4, :4])
    server, runner, send, writer, out = _pipe_server(tmp_path, monkeypatch, upscaler)
    send(
        {
            "type": "upscale",
            "id": "run",
            "options": {"model": "m"},
            "items": [{"key": "k", "src": str(src), "dst": str(tmp_path / "o.png")}],
        }
    )
    out.wait_for(lambda e: e["type"] == "progress")
    send(b'{"type": "ping", "id": "deep", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}\n")
    send(b'{"type": "ping", "id": "long", "pad": "' + b"x" * 50_000 + b'"}\n')
    send({"type": "ping", "id": "after"})
    out.wait_for(lambda e: e["type"] == "pong" and e["id"] == "after")
    errors = [e for e in out.events if e["type"] == "error"]
    assert len(errors) == 2, out.events
    assert "deeply" in errors[0]["message"] and "longer than 4096 bytes" in errors[1]["message"]
    assert not [e for e in out.events if e["type"] == "pong" and e["id"] in ("deep", "long")]
    upscaler.gate.set()
    done = out.wait_for(lambda e: e["type"] == "done")
    assert (done["ok"], done["cancelled"]) == (1, False)  # the job that was running is not dropped
    writer.close()
    runner.join(timeout=10)
    assert not runner.is_alive()


def test_deeply_nested_line_does_not_kill_the_real_worker():
    proc = _raw_worker()
    try:
        deep = _send(proc, b'{"type": "ping", "id": "d", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}")
        assert deep["type"] == "error" and "deeply" in deep["message"]
        assert _send(proc, b'{"type": "ping", "id": "p"}') == {"type": "pong", "id": "p"}
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_fifo_relative_and_dotdot_paths_fail_their_item_only(tmp_path, monkeypatch):
    import os

    work = tmp_path / "work" / "dir"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # where a relative or ".." path would land (never the checkout)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    src = save_png(tmp_path / "s.png", real_image("brick.png")[:4, :4])
    upscaler = _GatedUpscaler()
    upscaler.gate.set()
    server, runner, send, writer, out = _pipe_server(tmp_path, monkeypatch, upscaler)
    items = [
        {"key": "fifo", "src": str(fifo), "dst": str(tmp_path / "f_x4.png")},
        {"key": "rel-src", "src": "s.png", "dst": str(tmp_path / "r_x4.png")},
        {"key": "rel-dst", "src": str(src), "dst": "escape.png"},
        {"key": "dotdot", "src": str(src), "dst": str(work / ".." / "escape.png")},
        {"key": "good", "src": str(src), "dst": str(tmp_path / "good.png")},
    ]
    send({"type": "upscale", "id": "j", "options": {"model": "m"}, "items": items})
    done = out.wait_for(lambda e: e["type"] == "done")
    errors = {e["item"]: e for e in out.events if e["type"] == "error"}
    assert sorted(errors) == ["dotdot", "fifo", "rel-dst", "rel-src"], out.events
    assert "not a file" in errors["fifo"]["message"]
    assert all("absolute" in errors[k]["message"] for k in ("rel-src", "rel-dst", "dotdot"))
    assert (done["ok"], done["failed"]) == (1, 4)
    assert (tmp_path / "good.png").is_file()
    assert not (work / "escape.png").exists() and not (work.parent / "escape.png").exists()
    writer.close()
    runner.join(timeout=10)


def test_overlap_larger_than_tile_is_refused():
    from texup.worker.protocol import ProtocolError, parse_options

    assert parse_options({"tile": 32, "overlap": 32}).overlap == 32
    with pytest.raises(ProtocolError, match="overlap"):
        parse_options({"tile": 16, "overlap": 200})


def test_cancel_of_an_unknown_id_is_not_kept_for_a_later_job(tmp_path, monkeypatch):
    src = save_png(tmp_path / "s.png", real_image("brick.png")[:4, :4])
    upscaler = _GatedUpscaler()
    upscaler.gate.set()
    server, runner, send, writer, out = _pipe_server(tmp_path, monkeypatch, upscaler)
    send({"type": "cancel", "id": "later"})
    send({"type": "ping", "id": "p"})
    out.wait_for(lambda e: e["type"] == "pong")
    send(
        {
            "type": "upscale",
            "id": "later",
            "options": {"model": "m"},
            "items": [{"key": "k", "src": str(src), "dst": str(tmp_path / "o.png")}],
        }
    )
    done = out.wait_for(lambda e: e["type"] == "done")
    assert (done["ok"], done["cancelled"]) == (1, False)
    assert not [e for e in out.events if e["type"] == "error"]  # ignored (logged), not an error event
    assert server._cancelled == set() and server._pending == {}
    writer.close()
    runner.join(timeout=10)


def test_info_request_names_engines_devices_and_the_auto_pick():
    import texup
    from texup.engines.select import candidates, torch_available

    proc = _raw_worker()
    try:
        info = _send(proc, b'{"type": "info", "id": "i1"}')
        assert _send(proc, b'{"type": "ping", "id": "p"}') == {"type": "pong", "id": "p"}  # still serving
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert info["type"] == "info" and info["id"] == "i1" and info["texup"] == texup.__version__
    assert info["python"] == sys.executable
    assert info["engines"] == [c.key for c in candidates()]
    devices = {d["key"]: d for d in info["devices"]}
    assert devices["cpu"]["name"] and devices["cpu"]["software"] is False
    assert ("torch" in devices["cpu"]["engines"]) == torch_available()
    assert all(d["software"] for d in info["devices"] if "llvmpipe" in d["name"].lower())
    # --device cpu: auto picks among the CPU candidates, the first one until something was measured
    cpu_first = next(c.key for c in candidates() if c.device == "cpu")
    assert info["auto"]["key"] in {c.key for c in candidates() if c.device == "cpu"}
    if not info["auto"]["measured"]:
        assert info["auto"]["key"] == cpu_first
    parsed = bridge_protocol.parse_event(json.dumps(info))
    assert parsed.texup == texup.__version__ and {d.key for d in parsed.devices} == set(devices)


def test_info_reports_a_recorded_engine_choice_as_measured(tmp_path, monkeypatch):
    from texup.engines import select
    from texup.worker.server import machine_info

    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    pool = select.candidates()
    before = machine_info(model="some-model")
    assert before["auto"] == {"key": pool[0].key, "measured": False, "model": "some-model"}

    recorded = pool[-1]
    select._write_calibration(
        {
            select.machine_key(): {
                select._request_key("some-model", "auto", "auto"): {
                    "choice": recorded.key,
                    "seconds_per_mpx": {recorded.key: 1.0},
                    "rounds": select.CALIBRATION_ROUNDS,
                    "busy": False,
                }
            }
        }
    )
    after = machine_info(model="some-model")
    assert after["auto"] == {"key": recorded.key, "measured": True, "model": "some-model"}

    from texup.worker.protocol import REQUEST_TYPES

    assert "info" in REQUEST_TYPES


def test_the_worker_never_replaces_an_existing_file_unless_the_item_says_overwrite(tmp_path, monkeypatch):
    upscaler = _GatedUpscaler()
    upscaler.gate.set()
    src = save_png(tmp_path / "s.png", real_image("brick.png")[:4, :4])
    kept = tmp_path / "artist.png"
    kept.write_bytes(b"an artist's own file")
    replaced = tmp_path / "old_result.png"
    replaced.write_bytes(b"an earlier result")
    server, runner, send, writer, out = _pipe_server(tmp_path, monkeypatch, upscaler)
    items = [
        {"key": "kept", "src": str(src), "dst": str(kept)},
        {"key": "replaced", "src": str(src), "dst": str(replaced), "overwrite": True},
    ]
    send({"type": "upscale", "id": "j", "options": {"model": "m"}, "items": items})
    done = out.wait_for(lambda e: e["type"] == "done")
    assert (done["ok"], done["failed"]) == (1, 1)
    error = next(e for e in out.events if e["type"] == "error")
    assert error["item"] == "kept" and str(kept) in error["message"] and "overwrite" in error["message"]
    assert kept.read_bytes() == b"an artist's own file"
    assert Image.open(replaced).size == (8, 4)
    send({"type": "upscale", "id": "bad", "options": {}, "items": [dict(items[0], overwrite="yes")]})
    assert (
        "'overwrite' must be true or false"
        in out.wait_for(lambda e: e["type"] == "error" and e["id"] == "bad")["message"]
    )
    writer.close()
    runner.join(timeout=10)
