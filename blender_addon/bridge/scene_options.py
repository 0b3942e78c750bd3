"""Which of texup's run options the add-on carries, and how a scene holds them (stdlib only, no bpy).

Every job option of texup's schema (options.py, :data:`~.options.RUN_OPTIONS`) except :data:`NOT_SENT` is a field
of the add-on's ``RunSettings`` (upscale_run.py) and travels into the job's ``JobOptions`` (worker_protocol.py) as
it is, except :data:`CONVERTED`. The panel's scene settings (properties.py ``TexupSettings``) hold each of them
but :data:`CONVERTED` and :data:`ELSEWHERE`; one without a hand-made property gets the property the schema
describes (:meth:`~.options.Option.property_kwargs`), so a new option of the schema reaches the scene, the run and
the job without an edit in the add-on but its panel row (ui.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import options as schema

#: Job options the add-on never sets: outputs are named by their scale (no exact size); tiles keep texup's context.
NOT_SENT = frozenset({"target_size", "overlap"})
#: Options whose run value the operator makes from other settings: the model (the panel's Model, the preferences'
#: default, the Detail dial), the scale (an enum of 2x and 4x), the tile (0 for automatic).
CONVERTED = frozenset({"model", "scale", "tile"})
#: Options the scene does not hold: the preferences' (engine, device) and the ones the panel leaves automatic
#: (precision, layout; upscale_blend.py has flags for them).
ELSEWHERE = frozenset({"engine", "device", "precision", "layout"})


def run_options() -> list[schema.Option]:
    """The schema's options a run of the add-on carries (``RunSettings``' fields and the job's), in schema order."""
    return [o for o in schema.RUN_OPTIONS if o.protocol and o.name not in NOT_SENT]


def sent_as_they_are(names: Iterable[str] | None = None) -> list[schema.Option]:
    """The run options that go into the job as ``RunSettings`` holds them (all but :data:`CONVERTED`), among
    ``names`` when given."""
    wanted = None if names is None else set(names)
    return [o for o in run_options() if o.name not in CONVERTED and (wanted is None or o.name in wanted)]


def scene_options(names: Iterable[str] | None = None) -> list[schema.Option]:
    """The run options a scene holds as they are (among ``names``, a property group's properties, when given)."""
    return [o for o in sent_as_they_are(names) if o.name not in ELSEWHERE]


def generated_properties(existing: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The scene properties to generate: name -> (``bpy.props`` function name, its keyword arguments) for each
    scene option without a hand-made property among ``existing`` (a property group's annotations)."""
    have = set(existing)
    return {o.name: o.property_kwargs() for o in scene_options() if o.name not in have}


def scene_values(get: Callable[[str], Any], names: Iterable[str]) -> dict[str, Any]:
    """The scene's run options as the run takes them (``RunSettings(**...)``): ``get(name)`` of each scene option
    among ``names`` (the scene's properties), as the option holds it (an empty text is none)."""
    return {o.name: o.from_property(get(o.name)) for o in scene_options(names)}
