"""One explicit key map from the naming schemes ESRGAN weights circulate in to texup's canonical
(BasicSR / Real-ESRGAN) names.

Original ESRGAN (``architecture.py``, most community "old arch" models) builds one ``nn.Sequential``
called ``model`` and flattens its sub-sequences, so parameters are numbered by position::

    model.0                              -> conv_first
    model.1.sub.{i}.RDB{k}.conv{j}.0     -> body.{i}.rdb{k}.conv{j}      (i < num_block)
    model.1.sub.{num_block}              -> conv_body
    then, per 2x upsampling step u = 1..n: [Upsample, Conv, LeakyReLU] at 2+3(u-1) .. 4+3(u-1)
    model.{3u}                           -> conv_up{u}                   (x4: model.3, model.6)
    model.{2+3n}                         -> conv_hr                      (x4: model.8)
    model.{4+3n}                         -> conv_last                    (x4: model.10)

ESRGAN's later ``RRDBNet_arch.py`` (the official ``RRDB_ESRGAN_x4.pth``) names modules::

    RRDB_trunk.{i}.RDB{k}.conv{j} -> body.{i}.rdb{k}.conv{j}
    trunk_conv -> conv_body,  upconv{u} -> conv_up{u},  HRconv -> conv_hr  (conv_first, conv_last kept)

BasicSR / Real-ESRGAN names and SRVGGNetCompact's ``body.{n}`` pass through unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

from texup.errors import ModelLoadError

T = TypeVar("T")

_OLD_RRDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_OLD_BODY_CONV = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")

_ESRGAN_V2_RENAMES = (
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB([123])\."), r"body.\1.rdb\2."),
    (re.compile(r"^trunk_conv\."), "conv_body."),
    (re.compile(r"^upconv(\d+)\."), r"conv_up\1."),
    (re.compile(r"^HRconv\."), "conv_hr."),
)


def naming_style(sd: dict[str, T]) -> str:
    """``"esrgan"`` (``model.N``), ``"esrgan-v2"`` (``RRDB_trunk``) or ``"canonical"`` (anything else)."""
    if "model.0.weight" in sd:
        return "esrgan"
    if any(k.startswith("RRDB_trunk.") for k in sd):
        return "esrgan-v2"
    return "canonical"


def canonicalize(sd: dict[str, T], *, source: str | Path = "<state dict>") -> dict[str, T]:
    """Return ``sd`` with keys renamed to texup's canonical names (values untouched, order kept).

    Raises:
        ModelLoadError: an original-ESRGAN dict whose layer indices do not follow the layout above.
    """
    style = naming_style(sd)
    if style == "esrgan":
        return _from_esrgan(sd, source)
    if style == "esrgan-v2":
        out: dict[str, T] = {}
        for key, value in sd.items():
            for pattern, repl in _ESRGAN_V2_RENAMES:
                key = pattern.sub(repl, key)
            out[key] = value
        return out
    return dict(sd)


def _from_esrgan(sd: dict[str, T], source: str | Path) -> dict[str, T]:
    rrdb_ids = {int(m.group(1)) for k in sd if (m := _OLD_RRDB.match(k))}
    num_block = max(rrdb_ids) + 1 if rrdb_ids else 0
    top = sorted({int(m.group(1)) for k in sd if (m := _OLD_TOP.match(k))} - {0})
    # top = [3, 6, ..., 3n, 2+3n, 4+3n] for n upsampling steps.
    n_up = len(top) - 2
    expected = [3 * u for u in range(1, n_up + 1)] + [2 + 3 * n_up, 4 + 3 * n_up]
    if n_up < 0 or top != expected:
        raise ModelLoadError(
            source,
            f"original-ESRGAN keys with an unexpected layer layout: top-level layers {top}, "
            f"expected [3, 6, ..., 3n, 3n+2, 3n+4]",
        )
    top_names = {3 * u: f"conv_up{u}" for u in range(1, n_up + 1)}
    top_names[0] = "conv_first"
    top_names[2 + 3 * n_up] = "conv_hr"
    top_names[4 + 3 * n_up] = "conv_last"

    out: dict[str, T] = {}
    for key, value in sd.items():
        if m := _OLD_RRDB.match(key):
            i, k, j, kind = m.groups()
            new = f"body.{i}.rdb{k}.conv{j}.{kind}"
        elif (m := _OLD_BODY_CONV.match(key)) and int(m.group(1)) == num_block:
            new = f"conv_body.{m.group(2)}"
        elif (m := _OLD_TOP.match(key)) and int(m.group(1)) in top_names:
            new = f"{top_names[int(m.group(1))]}.{m.group(2)}"
        else:
            raise ModelLoadError(source, f"original-ESRGAN state dict has an unexpected key {key!r}")
        out[new] = value
    return out
