"""The engines' OpenMP threads wait briefly (texup.engines.openmp): spinning threads on a shared CPU made a torch
environment 5-25x slower than it should be (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from texup.engines import openmp

CORE = Path(__file__).resolve().parents[2] / "core"


def test_passive_waiting_is_set_only_when_nobody_chose_and_before_the_engines_load():
    environ: dict[str, str] = {}
    expected = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}
    assert openmp.configure(environ, {}) == expected and environ == expected
    for name in openmp.WAIT_VARIABLES:  # the user's choice stands
        chosen = {name: "1"}
        assert openmp.configure(chosen, {}) == {} and chosen == {name: "1"}
    for module in openmp.OPENMP_MODULES:  # too late to take effect: left alone
        environ = {}
        assert openmp.configure(environ, {module: object()}) == {} and environ == {}
    environ = {}  # a module blocked from importing (as a torch-less process may do) is not loaded
    assert openmp.configure(environ, {"torch": None}) == expected and environ == expected


def _spin_counts(code: str, **extra: str) -> list[str]:
    """GOMP_SPINCOUNT of every GNU OpenMP runtime a fresh Python running ``code`` loads (libgomp prints its
    settings as it starts with OMP_DISPLAY_ENV=VERBOSE)."""
    env = {k: v for k, v in os.environ.items() if k not in openmp.WAIT_VARIABLES}
    env.update(PYTHONPATH=str(CORE), OMP_DISPLAY_ENV="VERBOSE", TEXUP_NCNN_VERBOSE="1", **extra)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line.split("=")[1].strip().strip("'") for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP (libgomp) is torch's and ncnn's on Linux")
def test_neither_engines_threads_spin_in_a_texup_process():
    pytest.importorskip("ncnn")
    load_both = "import ncnn, torch"
    # Without texup's setting, both runtimes spin 300,000 times at every barrier (the measured slowdown) ...
    assert _spin_counts(load_both) == ["300000", "300000"]
    # ... a texup process (the CLI and the worker import texup.engines first) has them sleep after 1,000,
    assert _spin_counts("import texup.engines\n" + load_both) == ["1000", "1000"]
    # and a user's own choice is kept.
    assert _spin_counts("import texup.engines\n" + load_both, OMP_WAIT_POLICY="PASSIVE") == ["0", "0"]
