"""The add-on's protocol module: messages it sends, events it parses, validation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge.worker_protocol import (  # noqa: E402
    Done,
    Error,
    Hello,
    Job,
    JobItem,
    JobOptions,
    Models,
    Progress,
    ProtocolError,
    Result,
    TrainJob,
    Unknown,
    cancel_message,
    encode,
    parse_event,
    train_message,
    upscale_message,
)


def test_upscale_message_is_one_json_line_with_unicode_paths():
    job = Job(
        JobOptions(model="realesrgan-x4plus", scale=2, tile=128, seamless="on"),
        (JobItem("Ziegel Ä", "/tex/Ziegel Ä.png", "/out/Ziegel Ä_x2.png", "normal"),),
    )
    line = encode(upscale_message("j1", job))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    data = json.loads(line.decode("utf-8"))
    assert data == {
        "type": "upscale",
        "id": "j1",
        "options": {
            "model": "realesrgan-x4plus",
            "scale": 2.0,
            "tile": 128,
            "seamless": "on",
            "device": "auto",
            "precision": "auto",
        },
        "items": [{"key": "Ziegel Ä", "src": "/tex/Ziegel Ä.png", "dst": "/out/Ziegel Ä_x2.png", "role": "normal"}],
    }
    assert json.loads(encode(cancel_message("j1"))) == {"type": "cancel", "id": "j1"}


@pytest.mark.parametrize(
    "options, word",
    [
        (JobOptions(scale=0), "scale"),
        (JobOptions(scale=32), "scale"),
        (JobOptions(tile=15), "tile"),
        (JobOptions(tile=True), "tile"),
        (JobOptions(seamless="yes"), "seamless"),
        (JobOptions(precision="fp8"), "precision"),
        (JobOptions(model=""), "model"),
    ],
)
def test_invalid_options_are_refused(options, word):
    with pytest.raises(ProtocolError, match=word):
        upscale_message("j", Job(options, ()))


def test_invalid_items_are_refused():
    with pytest.raises(ProtocolError, match="role"):
        upscale_message("j", Job(JobOptions(), (JobItem("a", "/a.png", "/b.png", "alpha"),)))
    with pytest.raises(ProtocolError, match="dst"):
        upscale_message("j", Job(JobOptions(), (JobItem("a", "/a.png", ""),)))


def test_events_parse_into_dataclasses():
    hello = parse_event(b'{"type":"hello","protocol":1,"texup":"0.1.0","torch":"2.13.0","device":"cuda","pid":42}')
    assert hello == Hello(protocol=1, texup="0.1.0", torch="2.13.0", device="cuda", pid=42)
    progress = parse_event('{"type":"progress","id":"j","item":"a","index":1,"count":4,"done":3,"total":12}')
    assert isinstance(progress, Progress) and progress.fraction == pytest.approx((1 + 3 / 12) / 4)
    result = parse_event('{"type":"result","id":"j","item":"a","dst":"/o.png","width":8,"height":4,"seconds":1}')
    assert result == Result("j", "a", "/o.png", 8, 4, 1.0)
    error = parse_event('{"type":"error","id":null,"item":null,"kind":"ProtocolError","message":"bad","traceback":""}')
    assert error == Error(None, None, "ProtocolError", "bad", "")
    assert parse_event('{"type":"done","id":"j","ok":1,"failed":0,"cancelled":true}') == Done("j", 1, 0, True)
    models = parse_event('{"type":"models","id":"m","models":[{"name":"x"}]}')
    assert isinstance(models, Models) and models.models == ({"name": "x"},)
    future = parse_event('{"type":"train_progress","id":"t","step":5}')
    assert isinstance(future, Unknown) and future.data["step"] == 5


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"no": "type"}',
        b"\xff\xfe",
        b'{"type":"progress","id":"j","item":"a","index":"1","count":4,"done":3,"total":12}',
        b'{"type":"done","id":"j","ok":true,"failed":0,"cancelled":false}',
        b'{"type":"done","id":"j","ok":1,"failed":0,"cancelled":"no"}',
    ],
)
def test_malformed_events_raise_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse_event(line)


def test_train_message_carries_the_job_and_leaves_out_unset_fields():
    job = TrainJob(
        data_dir="/blend/texup_training/run 1/data",
        out_dir="/blend/texup_training/run 1/model",
        steps=300,
        stage="gan",
        pretrained="/models/mine.safetensors",
    )
    data = json.loads(encode(train_message("t1", job)))
    assert data == {
        "type": "train",
        "id": "t1",
        "data_dir": "/blend/texup_training/run 1/data",
        "out_dir": "/blend/texup_training/run 1/model",
        "steps": 300,
        "stage": "gan",
        "pretrained": "/models/mine.safetensors",
        "device": "auto",
        "precision": "auto",
    }
    with_file = train_message("t2", TrainJob(data_dir="/d", out_dir="/o", stage="psnr", config_file="/c.toml"))
    assert with_file["config_file"] == "/c.toml" and "pretrained" not in with_file and with_file["stage"] == "psnr"


@pytest.mark.parametrize(
    "job, word",
    [
        (TrainJob(data_dir="", out_dir="/o"), "data_dir"),
        (TrainJob(data_dir="/d", out_dir=""), "out_dir"),
        (TrainJob(data_dir="/d", out_dir="/o", steps=0), "steps"),
        (TrainJob(data_dir="/d", out_dir="/o", steps=True), "steps"),
        (TrainJob(data_dir="/d", out_dir="/o", stage="esrgan"), "stage"),
        (TrainJob(data_dir="/d", out_dir="/o", pretrained=""), "pretrained"),
        (TrainJob(data_dir="/d", out_dir="/o", precision="fp8"), "precision"),
    ],
)
def test_invalid_train_jobs_are_refused(job, word):
    with pytest.raises(ProtocolError, match=word):
        train_message("t", job)


def test_training_progress_and_result_events_parse():
    progress = parse_event(
        '{"type":"progress","id":"t","item":"train","index":0,"count":1,"done":30,"total":120,'
        '"loss":0.0125,"eta_s":41.5}'
    )
    assert isinstance(progress, Progress) and progress.fraction == pytest.approx(0.25)
    assert (progress.loss, progress.eta_s) == (0.0125, 41.5)
    warmup = parse_event(
        '{"type":"progress","id":"t","item":"train","index":0,"count":1,"done":1,"total":120,"loss":0.5,"eta_s":null}'
    )
    assert warmup.eta_s is None
    result = parse_event(
        '{"type":"result","id":"t","item":"train","dst":"/o/model.safetensors","steps":120,'
        '"seconds":12.5,"psnr_before":24.1,"psnr_after":25.3}'
    )
    assert isinstance(result, Result) and result.dst == "/o/model.safetensors"
    assert (result.steps, result.psnr_before, result.psnr_after, result.width) == (120, 24.1, 25.3, 0)
    # An upscale result still needs its size; a training loss must be a number.
    with pytest.raises(ProtocolError):
        parse_event('{"type":"result","id":"j","item":"a","dst":"/o.png","seconds":1}')
    with pytest.raises(ProtocolError):
        parse_event('{"type":"progress","id":"t","item":"train","index":0,"count":1,"done":1,"total":2,"loss":"x"}')
