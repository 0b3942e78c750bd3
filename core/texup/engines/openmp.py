"""How the engines' OpenMP threads wait: briefly, so that a busy machine slows texup by its share, not tenfold.

torch and ncnn both run their CPU kernels on OpenMP thread pools (on Linux two separate copies of GNU libgomp in
one process: torch's and the one vendored into the ncnn wheel). By default a libgomp thread that reaches the end
of a parallel region spins for about 300,000 iterations (milliseconds) before it sleeps, and an x4plus tile is
thousands of short regions. On a machine where another program also wants the cores (Blender, a render, a second
job, another OpenMP program doing the same), a spinning thread keeps the core its partner needs, and every region
waits for a scheduler time slice: measured on a 2-vCPU AMD EPYC (Zen 4) under other users' load, one x4plus tile
took 4.5x longer through ncnn (whole process, paired runs) and up to 25x longer through torch bf16 than with
``OMP_WAIT_POLICY=PASSIVE`` (docs/benchmarks.md, section 11). Fully passive threads cost about 10 % on an idle
machine (every region wakes its partner through the kernel); a short spin of 1,000 iterations (tens of
microseconds) kept the idle speed and, under load, stayed within about 10 % of passive (paired runs, same
section). So libgomp spins that long (``GOMP_SPINCOUNT``, which libgomp takes over the policy's default) and
other OpenMP runtimes are passive.

OpenMP runtimes read these variables once, when the library loads, so :func:`configure` must run before torch or
ncnn is imported: importing :mod:`texup.engines` calls it (the CLI and the worker import it before either). A
variable the user set is left as it is (``OMP_WAIT_POLICY=ACTIVE`` restores spinning), and nothing changes once
torch or ncnn is already loaded (a Python caller that imported torch first keeps its own setting).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

#: What texup sets when none of :data:`WAIT_VARIABLES` is set. PASSIVE is the OpenMP standard's name (LLVM/Intel
#: OpenMP, torch on macOS and Windows: block time 0); GNU libgomp (torch and ncnn on Linux) spins GOMP_SPINCOUNT
#: times before it sleeps.
WAIT_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}
#: Any of these set by the user means they chose how OpenMP waits.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: Modules whose OpenMP runtime has read the environment once they are imported.
OPENMP_MODULES = ("torch", "ncnn")


def configure(
    environ: MutableMapping[str, str] | None = None, modules: Mapping[str, object] | None = None
) -> dict[str, str]:
    """Set :data:`WAIT_SETTINGS` unless the user chose how OpenMP waits or an OpenMP engine is already loaded
    (then they could not take effect); return what was set (empty: nothing)."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    # A None entry is a module blocked from importing (``sys.modules['torch'] = None``), not a loaded one.
    loaded = any(modules.get(name) is not None for name in OPENMP_MODULES)
    if loaded or any(name in environ for name in WAIT_VARIABLES):
        return {}
    environ.update(WAIT_SETTINGS)
    return dict(WAIT_SETTINGS)
