"""The blend reference syntax: ``blend:A,B@ALPHA`` names a blend of models A and B wherever a model is named
(:mod:`texup.weights.blend` makes and caches the blend; :class:`texup.weights.ref.ModelRef` recognises the kind).

``ALPHA`` (0..1) follows the last ``@``; A and B are split at the comma that leaves a model (a known name or an
existing file) on both sides, and a reference in which more than one comma does so is refused as ambiguous. An
existing file whose name starts with ``blend:`` is that file, not a blend. Every name here is importable from
:mod:`texup.weights.blend` too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from texup.errors import TexupError
from texup.weights.catalog import KNOWN_MODELS

__all__ = ["BLEND_PREFIX", "BlendError", "BlendRef", "check_alpha", "format_blend", "is_blend", "parse_blend"]

BLEND_PREFIX = "blend:"


class BlendError(TexupError):
    """Two models that cannot be blended, or a blend reference that does not parse (one line)."""


@dataclass(frozen=True)
class BlendRef:
    """A parsed blend reference: parents ``a`` and ``b`` (model references) and ``alpha`` (B's share, 0..1)."""

    a: str
    b: str
    alpha: float

    def __str__(self) -> str:
        return format_blend(self.a, self.b, self.alpha)


def _alpha_text(alpha: float) -> str:
    text = repr(float(alpha))
    return text[:-2] if text.endswith(".0") else text


def check_alpha(alpha: float | str) -> float:
    """``alpha`` as a float in [0, 1]; BlendError otherwise (ESRGAN interpolates, it does not extrapolate)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise BlendError(f"alpha must be a number from 0 to 1, got {alpha!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BlendError(f"alpha must be from 0 to 1, got {alpha!r}")
    return value


def format_blend(a: str | os.PathLike[str], b: str | os.PathLike[str], alpha: float) -> str:
    """The blend reference of ``a`` and ``b`` at ``alpha`` (``blend:A,B@ALPHA``)."""
    return f"{BLEND_PREFIX}{os.fspath(a)},{os.fspath(b)}@{_alpha_text(check_alpha(alpha))}"


def is_blend(model: object) -> bool:
    """Whether ``model`` is a blend reference (a string starting ``blend:`` that is not an existing file)."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    text = os.fspath(model)
    if not isinstance(text, str) or not text.startswith(BLEND_PREFIX):
        return False
    try:
        return not Path(text).expanduser().is_file()
    except OSError:
        return True


def _names_a_model(ref: str) -> bool:
    if ref in KNOWN_MODELS:
        return True
    try:
        return Path(ref).expanduser().is_file()
    except OSError:
        return False


def parse_blend(ref: str) -> BlendRef:
    """Parse ``blend:A,B@ALPHA`` (see the module docstring); BlendError with the reason in one line."""
    if not ref.startswith(BLEND_PREFIX):
        raise BlendError(f"not a blend reference (blend:A,B@ALPHA): {ref!r}")
    body = ref[len(BLEND_PREFIX) :]
    parents, at, alpha_text = body.rpartition("@")
    if not at:
        raise BlendError(f"{ref!r}: no @ALPHA (write blend:A,B@ALPHA, alpha from 0 to 1)")
    alpha = check_alpha(alpha_text.strip())
    commas = [i for i, c in enumerate(parents) if c == ","]
    splits = [(parents[:i].strip(), parents[i + 1 :].strip()) for i in commas]
    splits = [(a, b) for a, b in splits if a and b]
    if not splits:
        raise BlendError(f"{ref!r}: needs two models separated by a comma (blend:A,B@ALPHA)")
    if len(splits) > 1:
        fitting = [(a, b) for a, b in splits if _names_a_model(a) and _names_a_model(b)]
        if len(fitting) != 1:
            why = "more than one comma" if fitting else "no comma"
            raise BlendError(f"{ref!r}: {why} splits it into two existing models; rename the files without commas")
        splits = fitting
    a, b = splits[0]
    return BlendRef(a, b, alpha)
