"""A damaged ``TEXUP_HOME/engines.json`` (issue 21 item 8): a broken record is measured again, never fatal.

A deeply nested engines.json used to make every default run (``--engine auto``) fail until the file was deleted.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from texup.engines import select
from texup.engines.select import Candidate, open_engine

MODEL = "realesr-animevideov3"


def _key() -> str:
    return select._request_key(MODEL, "auto", "auto")


def _good() -> dict[str, Any]:
    return {"choice": "ncnn/cpu/auto", "seconds_per_mpx": {"ncnn/cpu/auto": 1.0}, "rounds": 3, "busy": False}


def _cases() -> dict[str, bytes]:
    machine = select.machine_key()

    def doc(value: Any) -> bytes:
        return json.dumps(value).encode()

    bad_records: dict[str, Any] = {
        "choice not a string": {"choice": ["ncnn"], "rounds": 3},
        "choice nested": {"choice": {"a": {"b": 1}}, "rounds": 3},
        "choice unknown engine": {"choice": "tensorflow/cpu/fp32", "rounds": 3},
        "choice odd device": {"choice": "torch/cuda:99999999999999999999/fp32", "rounds": 3},
        "choice with a NUL": {"choice": "torch/cpu\u0000/fp32", "rounds": 3},
        "choice huge": {"choice": "ncnn/cpu/auto" * 100_000, "rounds": 3},
        "seconds a list": {**_good(), "seconds_per_mpx": [1, 2]},
        "seconds strings": {**_good(), "seconds_per_mpx": {"ncnn/cpu/auto": "fast"}},
        "seconds nan": {**_good(), "seconds_per_mpx": {"ncnn/cpu/auto": math.nan}},
        "seconds bool": {**_good(), "seconds_per_mpx": {"ncnn/cpu/auto": True}},
        "record a list": [1, 2, 3],
        "record a number": 7,
        "record null": None,
    }
    cases = {
        "nested 100000 lists": b"[" * 100_000 + b"]" * 100_000,
        "nested 100000 objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "nested under the machine": doc({machine: {_key(): None}}).replace(b"null", b"[" * 50_000 + b"]" * 50_000),
        "invalid utf-8": b'{"\xff\xfe": 1}',
        "truncated": json.dumps({machine: {_key(): _good()}}).encode()[:-7],
        "empty": b"",
        "a list": doc([1, 2]),
        "a string": doc("engines"),
        "machine a list": doc({machine: [1, 2]}),
        "machine a string": doc({machine: "x"}),
        "machine null": doc({machine: None}),
        "larger than 4 MiB": doc({"other": {"k": "x" * (5 << 20)}}),
        "NaN literal": b'{"%s": {"%s": {"choice": NaN}}}' % (machine.encode(), _key().encode()),
    }
    for name, record in bad_records.items():
        cases[f"record: {name}"] = doc({machine: {_key(): record}})
    return cases


@pytest.fixture
def fake_measuring(monkeypatch, tmp_path):
    """Two CPU candidates timed instantly (torch loses), on a quiet machine, with TEXUP_HOME in tmp_path."""
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(select, "others_load", lambda *a, **k: 0.05)
    monkeypatch.setattr(select, "candidates", lambda: [Candidate("torch", "cpu", "fp32"), Candidate("ncnn", "cpu")])
    timed: list[str] = []

    def fake_time(engine, **_):
        timed.append(engine.name)
        return {"torch": 2.0, "ncnn": 0.5}[engine.name]

    monkeypatch.setattr(select, "time_engine", fake_time)
    return timed


@pytest.mark.parametrize("case", sorted(_cases()))
def test_a_broken_engines_json_is_measured_again_never_fatal(case: str, fake_measuring, tmp_path: Path) -> None:
    path = tmp_path / "engines.json"
    path.write_bytes(_cases()[case])
    assert select.cached_choice(MODEL) is None
    engine = open_engine(MODEL)  # --engine auto: measures again instead of failing
    assert engine.name == "ncnn" and fake_measuring  # it measured
    table = json.loads(path.read_text())
    assert table[select.machine_key()][_key()]["choice"] == "ncnn/cpu/auto"  # and recorded the new choice
    fake_measuring.clear()
    assert open_engine(MODEL).name == "ncnn" and fake_measuring == []  # the record is used from now on
    assert isinstance(select.summary()["measured"], dict)


def test_a_well_formed_record_beside_broken_ones_is_kept(fake_measuring, tmp_path: Path) -> None:
    machine = select.machine_key()
    table = {machine: {_key(): _good(), "other|device=auto|precision=auto": {"choice": 5}}, "m2": [1]}
    (tmp_path / "engines.json").write_text(json.dumps(table))
    assert select.cached_choice(MODEL) == Candidate("ncnn", "cpu", "auto")
    assert set(select.read_calibration()) == {machine}


def test_a_fifo_or_folder_in_place_of_engines_json_does_not_block_or_fail(fake_measuring, tmp_path: Path) -> None:
    path = tmp_path / "engines.json"
    os.mkfifo(path)
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(select.read_calibration()), daemon=True)
    reader.start()
    reader.join(10)
    assert result == [{}], "read_calibration blocked on a FIFO"
    path.unlink()
    path.mkdir()
    assert select.read_calibration() == {}
    assert open_engine(MODEL).name == "ncnn"  # measured; the record could not be written, which costs nothing else


def test_texup_engines_prints_a_damaged_file_without_a_traceback(fake_measuring, tmp_path: Path, capsys) -> None:
    from texup.cli.main import main

    machine = select.machine_key()
    record = {**_good(), "seconds_per_mpx": {"ncnn/cpu/auto": "fast"}}
    (tmp_path / "engines.json").write_text(json.dumps({machine: {_key(): record}}))
    assert main(["engines"]) == 0
    assert "measured: nothing yet" in capsys.readouterr().out


def test_random_damage_never_raises(tmp_path: Path, monkeypatch) -> None:
    """Seeded: 300 random documents mixing the shapes texup writes with wrong types, depth and values."""
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(select, "others_load", lambda *a, **k: 0.9)
    rng = random.Random(21)
    machine = select.machine_key()
    leaves: list[Any] = [
        None,
        True,
        0,
        -1,
        1e308,
        "x",
        "ncnn/cpu/auto",
        "torch/cpu/fp32",
        [],
        {},
        "torch/vulkan:1/bf16",
    ]

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 6 or roll < 0.4:
            return rng.choice(leaves)
        if roll < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["choice", "seconds_per_mpx", "rounds", "busy", "x"]): value(depth + 1) for _ in range(3)}

    for _ in range(300):
        record = _good()
        for _ in range(rng.randint(1, 3)):
            record[rng.choice(["choice", "seconds_per_mpx", "rounds", "busy"])] = value(0)
        doc = {machine: {_key(): record}} if rng.random() < 0.8 else value(0)
        text = json.dumps(doc)
        if rng.random() < 0.2:
            text = text[: rng.randrange(len(text) + 1)]
        (tmp_path / "engines.json").write_text(text)
        choice = select.cached_choice(MODEL)
        assert choice is None or choice.engine in ("torch", "ncnn")
        measured = select.summary()["measured"]
        for entry in measured.values():
            assert all(math.isfinite(v) for v in entry.get("seconds_per_mpx", {}).values())
