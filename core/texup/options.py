"""The names, bounds and defaults of texup's run options: one source for the CLI, the API, the worker protocol and
the trainer (torch-free, numpy-free). The Blender add-on cannot import texup: its bridge mirrors these tuples
(``blender_addon/bridge/worker_protocol.py``) and a test compares them.
"""

from __future__ import annotations

ENGINES: tuple[str, ...] = ("auto", "torch", "ncnn")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
LAYOUTS: tuple[str, ...] = ("auto", "nchw", "channels_last")
SEAMLESS_MODES: tuple[str, ...] = ("auto", "on", "off")
ROLES: tuple[str, ...] = ("color", "normal", "data")
STAGES: tuple[str, ...] = ("psnr", "gan")

#: The smallest tile a user can ask for (CLI, worker, panel; 0 or none: automatic). Smaller tiles only add
#: per-tile overhead; the library's own ``UpscaleOptions`` accepts any positive tile, for tests of the tiling.
TILE_MIN = 16
#: Context pixels around each tile unless told otherwise.
OVERLAP_DEFAULT = 16
#: Output scales a user can ask for (``--scale`` and the protocol): above 0, at most this.
SCALE_MAX = 16.0
#: The colour fix (:mod:`texup.inference.colorfix`): "auto" = where the benchmark found it helps (per role).
COLOR_FIX_MODES: tuple[str, ...] = ("auto", "on", "off")
