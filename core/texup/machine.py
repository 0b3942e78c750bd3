"""What machine this is, in words: the CPU model and the SIMD flags that decide engine speed (torch- and numpy-free).

Used to key the engine measurements (:func:`texup.engines.select.machine_key`), by the worker's ``info`` event,
and by every benchmark, so each printed figure names the machine it was measured on.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: CPU feature-flag prefixes that change how fast the engines run (x86 AVX/AMX/FMA, Arm SVE/ASIMD/BF16).
_SPEED_FLAGS = ("avx", "amx", "fma", "sve", "asimd", "bf16")  # part of engines.json's machine key: keep stable


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), else what the platform module knows."""
    for line in _cpuinfo_lines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def simd_flags() -> list[str]:
    """The CPU's speed-relevant feature flags, sorted ([] where /proc/cpuinfo does not exist)."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return sorted({f for f in line.split(":", 1)[1].split() if f.startswith(_SPEED_FLAGS)})
    return []


#: The CPU flags that mean bfloat16 is computed natively (x86 AVX512-BF16, AMX-BF16; Arm BF16, SVE-BF16): one list
#: for :func:`native_bf16` (cpuinfo) and :func:`texup.devices.cpu_has_native_bf16` (torch's view of the same flags).
NATIVE_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively, from /proc/cpuinfo's flags (torch-free, for the ncnn engine;
    False where there is no /proc/cpuinfo: ncnn then stays fp32, while torch asks its own probe)."""
    return bool(set(simd_flags()) & set(NATIVE_BF16_FLAGS))


def describe() -> str:
    """One line for benchmark output: "AMD EPYC, 2 logical CPUs, flags avx avx2 fma; Linux, Python 3.11.7"."""
    flags = " ".join(simd_flags()) or "unknown"
    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, flags {flags}; "
        f"{platform.system()}, Python {platform.python_version()}"
    )
