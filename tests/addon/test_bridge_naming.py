"""Output names: <stem>_x<scale>.<ext>, UDIM tokens and tile numbers kept in place, no collisions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge.naming import (  # noqa: E402
    output_filename,
    output_name,
    safe_stem,
    scale_label,
    tile_of,
    udim_tile_path,
    unique_output_path,
)


@pytest.mark.parametrize("scale, label", [(4, "4"), (2.0, "2"), (1.5, "1.5"), (8, "8")])
def test_scale_label(scale, label):
    assert scale_label(scale) == label


@pytest.mark.parametrize("bad", [0, -2, True, "4", None])
def test_scale_label_refuses_non_positive_numbers(bad):
    with pytest.raises(ValueError):
        scale_label(bad)


@pytest.mark.parametrize(
    "stem, ext, expected",
    [
        ("wall", "png", "wall_x4.png"),
        ("wall", ".EXR", "wall_x4.EXR"),  # the original's extension, case kept
        ("wall.diffuse", "tga", "wall.diffuse_x4.tga"),
        ("wall.<UDIM>", "png", "wall_x4.<UDIM>.png"),
        ("wall_<UDIM>", "png", "wall_x4_<UDIM>.png"),
        ("wall<UDIM>", "png", "wall_x4<UDIM>.png"),
        ("wall.<UVTILE>", "png", "wall_x4.<UVTILE>.png"),
        ("wall_<UDIM>_color", "png", "wall_<UDIM>_color_x4.png"),
    ],
)
def test_output_name(stem, ext, expected):
    assert output_name(stem, 4, ext) == expected


def test_output_filename_keeps_udim_tokens_and_tile_numbers():
    assert output_filename("/tex/wall.<UDIM>.png", 2) == "wall_x2.<UDIM>.png"
    assert output_filename("wall.1001.png", 4, udim_file=True) == "wall_x4.1001.png"
    assert output_filename("wall.u1_v2.png", 4, udim_file=True) == "wall_x4.u1_v2.png"
    # without udim_file a number at the end is just part of the name
    assert output_filename("brick.1001.png", 4) == "brick.1001_x4.png"
    with pytest.raises(ValueError, match="no extension"):
        output_filename("wall", 4)


def test_counter_names_for_collisions():
    assert output_name("wall", 4, "png", counter=2) == "wall_x4_2.png"
    assert output_name("wall.<UDIM>", 4, "png", counter=3) == "wall_x4_3.<UDIM>.png"


def test_udim_tile_paths():
    assert udim_tile_path("/t/wall.<UDIM>.png", 1001) == "/t/wall.1001.png"
    assert udim_tile_path("/t/wall.<UVTILE>.png", 1001) == "/t/wall.u1_v1.png"
    assert udim_tile_path("/t/wall.<UVTILE>.png", 1012) == "/t/wall.u2_v2.png"
    assert udim_tile_path("/t/wall.<UVTILE>.png", 1010) == "/t/wall.u10_v1.png"
    with pytest.raises(ValueError):
        udim_tile_path("wall.<UDIM>.png", 1000)
    assert tile_of("/t/wall_x4.1013.png") == 1013 and tile_of("/t/wall.png") is None


def test_safe_stem_for_datablock_names():
    assert safe_stem('Bricks: "old"/wet?') == "Bricks_ _old__wet_"
    assert safe_stem("wall.<UDIM>") == "wall.<UDIM>"
    assert safe_stem("..") == "image" and safe_stem("  ") == "image"
    assert safe_stem("Ziegel Ä") == "Ziegel Ä"


def test_unique_path_skips_existing_files_and_taken_names(tmp_path):
    (tmp_path / "wall_x4.png").write_bytes(b"earlier result")
    first = unique_output_path(str(tmp_path), "wall", 4, "png")
    assert first == str(tmp_path / "wall_x4_2.png")
    second = unique_output_path(str(tmp_path), "wall", 4, "png", taken={first.upper()})  # case-insensitive
    assert second == str(tmp_path / "wall_x4_3.png")
    assert unique_output_path(str(tmp_path / "new"), "wall", 4, "png") == str(tmp_path / "new" / "wall_x4.png")


def test_unique_path_for_udim_checks_every_tile(tmp_path):
    (tmp_path / "wall_x4.1002.png").write_bytes(b"one tile of an earlier result")
    assert unique_output_path(str(tmp_path), "wall.<UDIM>", 4, "png", tiles=(1001,)) == str(
        tmp_path / "wall_x4.<UDIM>.png"
    )
    assert unique_output_path(str(tmp_path), "wall.<UDIM>", 4, "png", tiles=(1001, 1002)) == str(
        tmp_path / "wall_x4_2.<UDIM>.png"
    )
    # tiles unknown: any existing tile file counts
    assert unique_output_path(str(tmp_path), "wall.<UDIM>", 4, "png") == str(tmp_path / "wall_x4_2.<UDIM>.png")
