"""Files that hold more than one image (issue 21 item 9): refused with one line, never cut to their first image.

A multi-page TIFF used to keep page 1 silently (the class of the earlier animated-WebP defect); so did a
multi-part EXR (its first part) and a 3D TIFF volume (an error that called it corrupt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from texup.errors import ImageReadError
from texup.imageio import probe_image, read_image, write_image


def _rgb(h: int = 16, w: int = 18, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _multi_page_tiff(path: Path, pages: int) -> Path:
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for index in range(pages):
            tif.write(_rgb(seed=index), photometric="rgb")
    return path


def _multi_part_exr(path: Path, parts: int) -> Path:
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    planes = np.random.default_rng(1).random((3, 8, 9)).astype(np.float32)
    channels = {"R": planes[0], "G": planes[1], "B": planes[2]}
    OpenEXR.File([OpenEXR.Part({**header, "name": f"part{i}"}, channels, name=f"part{i}") for i in range(parts)]).write(
        str(path)
    )
    return path


@pytest.mark.parametrize("pages", [2, 3, 70])
def test_a_multi_page_tiff_is_refused_not_cut_to_its_first_page(tmp_path: Path, pages: int) -> None:
    path = _multi_page_tiff(tmp_path / "pages.tif", pages)
    for read in (probe_image, read_image):
        with pytest.raises(ImageReadError, match=rf"multi-page TIFF \({pages} pages\) is not supported"):
            read(path)


def test_a_tiff_with_reduced_resolution_copies_of_its_image_reads_as_that_image(tmp_path: Path) -> None:
    import tifffile

    image = _rgb()
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(image, photometric="rgb")
        tif.write(image[::2, ::2], photometric="rgb", subfiletype=1)  # a thumbnail: not another image
        tif.write(image[::4, ::4], photometric="rgb", subfiletype=1)
    assert np.array_equal(read_image(tmp_path / "thumb.tif").pixels, image)


def test_a_3d_tiff_volume_is_refused_as_such(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "volume.tif"
    tifffile.imwrite(path, np.zeros((4, 16, 16), np.uint8), volumetric=True, tile=(4, 16, 16), photometric="minisblack")
    with pytest.raises(ImageReadError, match=r"3D TIFF volume \(4 slices\)"):
        read_image(path)


def test_a_multi_part_exr_is_refused_not_cut_to_its_first_part(tmp_path: Path) -> None:
    path = _multi_part_exr(tmp_path / "parts.exr", 3)
    for read in (probe_image, read_image):
        with pytest.raises(ImageReadError, match=r"multi-part EXR \(3 parts\) is not supported"):
            read(path)
    one = _multi_part_exr(tmp_path / "one.exr", 1)  # a single part reads as before
    assert read_image(one).pixels.shape == (8, 9, 3)


def test_single_image_files_still_read(tmp_path: Path) -> None:
    write_image(tmp_path / "one.tif", _rgb())
    write_image(tmp_path / "one.exr", _rgb().astype(np.float32) / 255)
    assert read_image(tmp_path / "one.tif").pixels.shape == (16, 18, 3)
    assert read_image(tmp_path / "one.exr").pixels.shape == (16, 18, 3)


def test_texup_upscale_names_each_multi_image_file_in_one_line_and_goes_on(tmp_path: Path, capsys) -> None:
    from texup.cli.main import main

    src = tmp_path / "in"
    src.mkdir()
    _multi_page_tiff(src / "pages.tif", 2)
    _multi_part_exr(src / "parts.exr", 2)
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", "realesr-animevideov3"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "pages.tif: multi-page TIFF (2 pages)" in err and "parts.exr: multi-part EXR (2 parts)" in err
    assert not any(p.suffix in (".tif", ".exr") for p in (tmp_path / "out").glob("*"))


def test_a_multi_view_exr_is_refused_not_cut_to_its_default_view(tmp_path: Path) -> None:
    """A stereo EXR (views "right", "left" in one part) used to read as its default view's R, G, B only."""
    import OpenEXR

    planes = np.random.default_rng(2).random((3, 8, 9)).astype(np.float32)
    eye = {"R": planes[0], "G": planes[1], "B": planes[2]}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    channels = eye | {f"left.{c}": p.copy() for c, p in eye.items()}
    OpenEXR.File({**header, "multiView": ["right", "left"]}, channels).write(str(tmp_path / "stereo.exr"))
    with pytest.raises(ImageReadError, match=r"multi-view EXR \(2 views: right, left\) is not supported"):
        probe_image(tmp_path / "stereo.exr")
    OpenEXR.File({**header, "multiView": ["right"]}, dict(eye)).write(str(tmp_path / "one_view.exr"))
    assert read_image(tmp_path / "one_view.exr").pixels.shape == (8, 9, 3)
