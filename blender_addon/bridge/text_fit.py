"""Text that fits Blender's sidebar: widths estimated from the UI font, word wrap, middle ellipsis (stdlib only).

Blender's ``layout.label`` never wraps: a text wider than its button is cut ("groupt...") and the rest is
lost. The panel therefore fits every text itself, from the region's width in pixels and the UI scale:

- :func:`text_width` estimates a label's width in pixels from each character's advance in the UI font at
  11 points, measured with ``blf``: DejaVu Sans (Blender 3.x), Inter (Blender 4.0+), or the wider of the
  two for a font not known; characters outside the table count as one em (CJK glyphs). The estimate is
  never narrower than ``blf.dimensions`` of the whole string (tested in both Blenders).
- :func:`wrap_lines` breaks a text into lines that each fit (at spaces; a word wider than a line, such as
  a path, at ``/``, ``_``, ``-`` or ``.`` where it can); with ``max_lines`` the last line ends in ``…``.
- :func:`fit_middle` shortens a name in the middle so that its distinctive end stays: the last part
  of the stem and the extension (``brick_wall_diffuse_2k.png`` → ``brick_wa…_2k.png``,
  or ``…_2k`` when the extension leaves too little room).
- :class:`Sidebar` turns a region's width into the width a label's text has, for a full-width label, a
  label with an icon, and the name column of the texture list.

Widths are pixels at the given ``scale`` (Blender's ``preferences.system.ui_scale`` times the label font's
points / 11): a region's ``width`` is already in pixels, so constants are multiplied by the scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ELLIPSIS = "…"
UI_POINTS = 11.0
"""The points of Blender's default label font (``ui_styles[0].widget.points``)."""

_ADVANCES = {  # pixels at 11 px (blf, hinted) per character, per UI font
    "dejavu": {  # Blender 2.8 to 3.6
        3.0: " ',-./:;IJ\\fijl|",
        4.0: "!()[]rt",
        5.0: '"*?_`sz',
        6.0: "EFLPSTYabcdeghknopquvxy",
        7.0: "$0123456789ABCKRVXZ{}",
        8.0: "&DGHNOQU",
        9.0: "#+<=>M^w~×",
        10.0: "%Wm",
        11.0: "@" + ELLIPSIS,
    },
    "inter": {  # Blender 4.0 and later
        3.0: " !',.:;ijl",
        4.0: "()/[\\]`frt{|}",
        5.0: '"I^_',
        6.0: "?JLaceksvxyz",
        7.0: "#$&*+-0123456789<=>BEFKPRSTYZbdghnopqu~×",
        8.0: "ACDGHNOQUVX",
        9.0: "w",
        10.0: "Mm" + ELLIPSIS,
        11.0: "%@W",
    },
}
_TABLES = {
    font: {char: advance for advance, chars in groups.items() for char in chars} for font, groups in _ADVANCES.items()
}
_TABLES["any"] = {
    char: max(table.get(char, 0.0) for table in _TABLES.values()) for char in set().union(*_TABLES.values())
}
FONTS = tuple(_TABLES)
"""``"dejavu"`` (Blender 3.x), ``"inter"`` (Blender 4.0+), ``"any"`` (the wider of the two: a font not known)."""
_OTHER = 12.0  # any other character: as wide as a CJK glyph (about one em), wider than every Latin one
_BREAK_AFTER = "/\\_-.,"  # where a word wider than a line is broken, when it can be

DEFAULT_SIDEBAR_WIDTH = 220
"""The sidebar's width in pixels at scale 1 when the region is not known (drawing outside a window)."""


_SLACK = 1.03, 1.0  # the glyphs' advances are rounded to whole pixels at scales such as 1.04 (a 100 dpi screen)


def text_width(text: str, scale: float = 1.0, font: str = "any") -> float:
    """The width in pixels of ``text`` drawn by a label at ``scale`` in ``font`` (one of :data:`FONTS`; an
    upper estimate, see the module)."""
    if not text:
        return 0.0
    table = _TABLES[font]
    factor, extra = _SLACK
    return scale * (factor * sum(table.get(char, _OTHER) for char in text) + extra)


def _prefix_that_fits(text: str, width: float, measure: Callable[[str], float]) -> int:
    """How many leading characters of ``text`` fit in ``width``."""
    for count in range(len(text)):
        if measure(text[: count + 1]) > width:
            return count
    return len(text)


def _break_word(word: str, width: float, measure: Callable[[str], float]) -> list[str]:
    """``word`` (wider than ``width``) in pieces that each fit, broken after ``/_-.,`` where possible."""
    pieces = []
    while word and measure(word) > width:
        count = max(1, _prefix_that_fits(word, width, measure))
        cut = max((word.rfind(char, 0, count) for char in _BREAK_AFTER), default=-1) + 1
        if cut >= max(2, count // 2):  # a break character in the second half of what fits
            count = cut
        pieces.append(word[:count])
        word = word[count:]
    if word:
        pieces.append(word)
    return pieces


def _with_ellipsis(line: str, width: float, measure: Callable[[str], float]) -> str:
    """``line`` shortened at its end until ``line + "…"`` fits in ``width``."""
    line = line.rstrip()
    while line and measure(line + ELLIPSIS) > width:
        line = line[:-1].rstrip()
    return line + ELLIPSIS


def wrap_lines(
    text: str,
    width: float,
    scale: float = 1.0,
    max_lines: int | None = None,
    *,
    measure: Callable[[str], float] | None = None,
    font: str = "any",
) -> list[str]:
    """``text`` as lines of at most ``width`` pixels each (whitespace collapsed; no word is lost unless
    ``max_lines`` cuts: then the last line ends in ``…``). An empty text gives no lines.

    ``measure`` replaces the width estimate (``len`` wraps by characters, ``width`` is then a count).
    """
    measure = measure or (lambda piece: text_width(piece, scale, font))
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        pieces = _break_word(word, width, measure)
        lines.extend(pieces[:-1])
        current = pieces[-1] if pieces else ""
    if current:
        lines.append(current)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[: max(1, max_lines)]
        lines[-1] = _with_ellipsis(lines[-1], width, measure)
    return lines


def _distinctive_ends(text: str) -> list[str]:
    """The ends of a name that tell it from its siblings, longest first: the stem's last part with the
    extension, then without it (``_2k.png``, ``_2k`` of ``brick_wall_diffuse_2k.png``; ``.001`` of
    ``Material.001``)."""
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or len(ext) > 5 or " " in ext or ext.isdigit():  # ".001": Blender's copies
        stem, ext = text, ""
    start = max(stem.rfind(char) for char in "_- .")
    if start <= 0:
        start = max(0, len(stem) - 4)
    ends = [text[start:]]
    if ext:
        ends.append(stem[start:])
    return ends


def fit_middle(text: str, width: float, scale: float = 1.0, font: str = "any") -> str:
    """``text`` if it fits in ``width`` pixels, else its beginning, ``…`` and its distinctive end.

    The end (see :func:`_distinctive_ends`: with the extension if that fits, else without) gets at most
    60 % of the room, else the last characters of the stem that fit in half of it; the rest goes to the
    beginning.
    Returns ``"…"`` alone when not even that fits, and ``""`` when not even ``"…"`` fits.
    """

    def measure(piece: str) -> float:
        return text_width(piece, scale, font)

    if measure(text) <= width:
        return text
    room = width - measure(ELLIPSIS)
    if room < 0:
        return ""
    ends = _distinctive_ends(text)
    end = next((end for end in ends if measure(end) <= 0.6 * room), None)
    if end is None:  # the last characters of the stem's last part (the extension tells least)
        keep = _prefix_that_fits(ends[-1][::-1], 0.5 * room, measure)
        end = ends[-1][len(ends[-1]) - keep :] if keep else ""
    head = text[: text.rfind(end) if end else len(text)]
    head = head[: _prefix_that_fits(head, room - measure(end), measure)]
    return f"{head}{ELLIPSIS}{end}"


# Blender's sidebar at scale 1, measured in screenshots of Blender 3.4.1 (the default sidebar: a 220 px region
# whose panel content is 166 px wide, a list row 148 px, an icon label's text 26 px in), rounded up a little.
_PANEL_CHROME = 56.0  # region width minus the panel's content width: tab strip, panel margins
_LABEL_PAD = 8.0  # a label's text inset and the room Blender keeps before it clips (left and right together)
_ICON = 24.0  # an icon and its gap before the text
_BOX = 12.0  # a box's border and padding (left and right together)
_LIST_CHROME = 20.0  # a UIList's border, row inset and scrollbar
_CHECKBOX = 21.0  # a checkbox without text


@dataclass(frozen=True)
class Sidebar:
    """The pixel budget of a panel in a region ``region_width`` pixels wide at ``scale``, its labels drawn
    in ``font`` (one of :data:`FONTS`)."""

    region_width: float = DEFAULT_SIDEBAR_WIDTH
    scale: float = 1.0
    font: str = "any"

    def width_of(self, text: str) -> float:
        """:func:`text_width` in this sidebar's scale and font."""
        return text_width(text, self.scale, self.font)

    def fit(self, text: str, width: float) -> str:
        """:func:`fit_middle` in this sidebar's scale and font."""
        return fit_middle(text, width, self.scale, self.font)

    def lines(self, text: str, width: float, max_lines: int | None = None) -> list[str]:
        """:func:`wrap_lines` in this sidebar's scale and font."""
        return wrap_lines(text, width, self.scale, max_lines, font=self.font)

    @property
    def content(self) -> float:
        """The width of the panel's layout (what a full-width button gets)."""
        return max(0.0, self.region_width - _PANEL_CHROME * self.scale)

    def label(self, *, icon: bool = False, boxed: bool = False, factor: float = 1.0) -> float:
        """The width a label's text has: full width, or ``factor`` of it (a split), in a box or not, with
        an icon or not."""
        outer = self.content - (_BOX * self.scale if boxed else 0.0)
        return max(0.0, outer * factor - (_LABEL_PAD + (_ICON if icon else 0.0)) * self.scale)

    @property
    def list_row(self) -> float:
        """The width of a texture list row right of its checkbox."""
        return max(0.0, self.content - (_LIST_CHROME + _CHECKBOX) * self.scale)

    def list_split(self, size_text: str) -> tuple[float, float]:
        """``(factor, name_width)`` of a list row whose right column shows ``size_text``: the split's
        factor (the name's share of the row right of the checkbox) and the name text's width (icon
        included in the name's share)."""
        row = self.list_row
        size = self.width_of(size_text) + _LABEL_PAD * self.scale
        factor = min(0.9, max(0.5, (row - size) / row)) if row > 0 else 0.5
        return factor, max(0.0, row * factor - (_ICON + _LABEL_PAD) * self.scale)

    def wrap(self, text: str, *, icon: bool = False, boxed: bool = False, max_lines: int | None = None) -> list[str]:
        """``text`` wrapped to a full-width label's text width."""
        return self.lines(text, self.label(icon=icon, boxed=boxed), max_lines)
