"""texup.batch: a plan's ``todo`` executed into the output folder's manifest, everything it has to say told through its
callbacks (texup upscale prints them; the batch itself prints nothing)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from texup.batch import Batch
from texup.inference.pipeline import UpscaleOptions
from texup.library import Settings, WorkItem, make_plan, pixel_options
from texup.outputs import OutputRecord


class _Engine:
    name = "stand-in"


class _Doubling:
    """An upscaler that doubles the pixels, or raises ``error`` for a source of ``bad`` rows."""

    scale, engine, device, precision = 2, _Engine(), "cpu", "fp32"

    def __init__(self, error: BaseException, bad: int) -> None:
        self.error, self.bad = error, bad

    def upscale_array(self, pixels, options, *, colorspace=None, progress=None):
        if pixels.shape[0] == self.bad:
            raise self.error
        if progress is not None:
            progress(1, 1)
        return np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1)


def _run(tmp_path: Path, error: BaseException) -> tuple[dict[str, list], OutputRecord]:
    lib, out = tmp_path / "lib", tmp_path / "out"
    lib.mkdir()
    for name, rows in (("good.png", 4), ("bad.png", 6)):
        Image.fromarray(np.full((rows, 4, 3), 90, np.uint8)).save(lib / name)
    settings = Settings(out, "_x2", None, "sha256:m", "1.0", pixel_options(scale=2.0))
    record = OutputRecord(out)
    plan = make_plan([WorkItem(lib / n, Path()) for n in ("good.png", "bad.png")], settings, record)
    told: dict[str, list] = {"fail": [], "done": [], "note": [], "unexpected": [], "bar": []}

    @contextmanager
    def bar(total: int, desc: str):
        told["bar"].append((total, desc))

        class Bar:
            n = 0.0

            def refresh(self) -> None:
                pass

            def set_postfix_str(self, text: str = "") -> None:
                pass

        yield Bar()

    batch = Batch(
        None,
        record,
        settings,
        lambda name, reason: told["fail"].append((Path(str(name)).name, reason)),
        done=told["done"].append,
        note=told["note"].append,
        unexpected=told["unexpected"].append,
        bar=bar,
    )
    record.open_journal()
    batch.execute(plan.todo, _Doubling(error, bad=6), UpscaleOptions(scale=2))
    record.close()
    assert (batch.new, batch.failed) == (1, 1)
    return told, record


def test_a_batch_tells_its_run_everything_through_its_callbacks(tmp_path, capsys):
    told, record = _run(tmp_path, ValueError("the values do not fit"))
    assert told["done"] == [f"{tmp_path / 'lib' / 'good.png'} -> {tmp_path / 'out' / 'good_x2.png'}"]
    assert told["fail"] == [("bad.png", "ValueError: the values do not fit")]
    assert told["unexpected"] and isinstance(told["unexpected"][0], ValueError)  # not texup's: the run may show it
    assert told["bar"] == [(2, "upscaling")] and told["note"] == []
    assert Image.open(tmp_path / "out" / "good_x2.png").size == (8, 8)
    assert record.entry(tmp_path / "out" / "good_x2.png") is not None
    assert record.entry(tmp_path / "out" / "bad_x2.png") is None and not (tmp_path / "out" / "bad_x2.png").exists()
    assert capsys.readouterr() == ("", "")  # library code never prints


def test_texups_own_errors_are_one_line_and_not_unexpected(tmp_path):
    from texup.errors import TexupError

    told, _ = _run(tmp_path, TexupError("the model ran out of tiles"))
    assert told["fail"] == [("bad.png", "the model ran out of tiles")] and told["unexpected"] == []
