"""Damaged cache records under TEXUP_HOME (issue 21, "the rest of each kind"): the model cache's manifest and the
ncnn export records never hang on a FIFO nor end in a traceback for deep nesting, bad UTF-8 or wrong types."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from texup.errors import FileError


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    from texup.weights import cache

    cache.manifest_path().parent.mkdir(parents=True, exist_ok=True)
    return cache.manifest_path()


@pytest.mark.parametrize(
    "content, said",
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"files": {"\xff\xfe": {}}}', "not UTF-8"),
        (b"{truncated", "corrupt model manifest"),
    ],
)
def test_a_damaged_model_manifest_is_one_line_naming_it(home, content, said):
    from texup.weights import cache

    home.write_bytes(content)
    with pytest.raises(FileError) as err:
        cache.read_manifest()
    assert said in str(err.value) and str(home) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_place_of_the_model_manifest_does_not_block(home):
    from texup.weights import cache

    os.mkfifo(home)
    outcome: list = []

    def read() -> None:
        try:
            cache.read_manifest()
        except FileError as err:
            outcome.append(str(err))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading the model manifest blocked on a FIFO"
    assert outcome and "not a regular file" in outcome[0]


@pytest.mark.parametrize(
    "record",
    [
        b"[" * 100_000,
        b"\xff\xfe not utf-8",
        json.dumps({"digest": "d", "export_version": None, "scale": "4"}).encode(),
        None,  # a FIFO
    ],
)
def test_a_damaged_ncnn_export_record_means_export_again(tmp_path, record):
    from texup.engines import ncnn_models

    param, weights, info = tmp_path / "m.param", tmp_path / "m.bin", tmp_path / "m.json"
    param.write_text("7767517\n0 0\n")
    weights.write_bytes(b"\0" * 8)
    if record is None:
        os.mkfifo(info)
    else:
        info.write_bytes(record)
    done: list = []
    reader = threading.Thread(
        target=lambda: done.append(ncnn_models._read_export(param, weights, info, "d")), daemon=True
    )
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and done == [None]


def test_an_ncnn_export_record_with_wrong_types_is_not_a_traceback(tmp_path):
    from texup.engines import ncnn_models

    param, weights, info = tmp_path / "m.param", tmp_path / "m.bin", tmp_path / "m.json"
    param.write_text("7767517\n0 0\n")
    weights.write_bytes(b"\0" * 8)
    record = {
        "digest": "d",
        "export_version": ncnn_models.EXPORT_VERSION,
        "bin_size": 8,
        "scale": [4],
        "input_multiple": 1,
        "checkpoints": ["a"],
    }
    info.write_text(json.dumps(record))
    assert ncnn_models._read_export(param, weights, info, "d") is None
