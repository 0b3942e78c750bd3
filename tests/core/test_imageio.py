"""texup.imageio: round trips per format, bit depth from the file, bad inputs, atomic writes, conversions."""

from __future__ import annotations

import io
import struct
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from realdata import real_image, real_image_path

from texup.errors import ImageReadError, ImageWriteError
from texup.imageio import (
    SUPPORTED_EXTENSIONS,
    ImageInfo,
    _png,
    extension_for,
    format_for_path,
    from_float32,
    linear_to_srgb,
    probe_image,
    read_image,
    srgb_to_linear,
    to_float32,
    write_image,
)

H, W = 37, 53  # odd on purpose


def _content(channels: int, dtype: str) -> np.ndarray:
    """Real photo/texture content, 37x53, with the requested channels and sample type.

    16-bit content carries low bits an 8-bit round trip would lose; float content carries HDR
    values above 1 and a negative value, which only a float format keeps.
    """
    color = real_image("coffee.png", crop=(100, 200, H, W))
    gray = real_image("gravel.png", crop=(50, 70, H, W))
    alpha = real_image("brick.png", crop=(10, 300, H, W))
    base = {1: gray, 2: np.concatenate([gray, alpha], 2), 3: color, 4: np.concatenate([color, alpha], 2)}[channels]
    if dtype == "uint8":
        return np.ascontiguousarray(base)
    rng = np.random.default_rng(channels)
    if dtype == "uint16":
        return (base.astype(np.uint16) * 257 + rng.integers(0, 257, base.shape)).astype(np.uint16)
    hdr = to_float32(base) * np.float32(6.0) - np.float32(0.25)
    return hdr.astype(dtype)


LOSSLESS_CASES = (
    [("png", "uint8", c) for c in (1, 2, 3, 4)]
    + [("png", "uint16", c) for c in (1, 2, 3, 4)]
    + [("tga", "uint8", c) for c in (1, 2, 3, 4)]
    + [("tiff", d, c) for d in ("uint8", "uint16", "float32") for c in (1, 3, 4)]
    + [("tiff", "uint16", 2), ("tiff", "float16", 3)]
    + [("bmp", "uint8", c) for c in (1, 3, 4)]
    + [("webp", "uint8", c) for c in (3, 4)]
    + [("exr", d, c) for d in ("float16", "float32") for c in (1, 3, 4)]
    + [("exr", "float16", 2)]
)


@pytest.mark.parametrize(("fmt", "dtype", "channels"), LOSSLESS_CASES)
def test_lossless_round_trip_keeps_dtype_channels_size_and_values(tmp_path, fmt, dtype, channels):
    pixels = _content(channels, dtype)
    path = write_image(tmp_path / f"t{extension_for(fmt)}", pixels)
    image = read_image(path)
    assert image.info.format == fmt
    assert (image.info.width, image.info.height, image.info.channels) == (W, H, channels)
    assert image.info.dtype == dtype
    assert image.pixels.dtype == np.dtype(dtype) and image.pixels.flags.c_contiguous
    assert image.pixels.flags.writeable  # callers edit pixels in place (alpha split, normal decode)
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.info.has_alpha == (channels in (2, 4))
    expected_space = "linear" if dtype.startswith("float") else "srgb"
    assert image.info.colorspace == expected_space
    probed = probe_image(path)
    assert probed == image.info


def test_exr_keeps_hdr_and_negative_values_and_compression(tmp_path):
    pixels = _content(4, "float32")
    assert pixels.max() > 1 and pixels.min() < 0
    src = write_image(tmp_path / "src.exr", pixels, like=None)
    info = read_image(src).info
    assert info.extra["exr_compression"] == "zip"  # default
    piz_like = ImageInfo(None, "exr", W, H, 4, "float32", "linear", {"exr_compression": "piz"})
    out = write_image(tmp_path / "piz.exr", pixels, like=piz_like)
    again = read_image(out)
    assert again.info.extra["exr_compression"] == "piz"
    np.testing.assert_array_equal(again.pixels, pixels)


def test_gray_webp_is_stored_as_rgb_with_the_same_values(tmp_path):
    gray = _content(1, "uint8")
    image = read_image(write_image(tmp_path / "g.webp", gray))
    assert image.info.channels == 3 and image.info.extra["webp_lossless"] is True
    for c in range(3):
        np.testing.assert_array_equal(image.pixels[:, :, c], gray[:, :, 0])


def test_webp_keeps_colour_under_zero_alpha(tmp_path):
    pixels = _content(4, "uint8").copy()
    pixels[:10, :, 3] = 0  # fully transparent rows still carry texture colour (needed for filtering)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "a.webp", pixels)).pixels, pixels)


def test_palette_png_reads_as_rgb_and_rgba_with_the_palette_colours(tmp_path):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = (real_image("gravel.png", crop=(0, 0, H, W))[:, :, 0] // 16).astype(np.uint8)
    im = PILImage.fromarray(indices, "P")
    im.putpalette(palette.tobytes())
    im.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert (image.info.channels, image.info.dtype, image.info.extra.get("palette")) == (3, "uint8", True)
    np.testing.assert_array_equal(image.pixels, palette[indices])

    alphas = np.arange(16, dtype=np.uint8) * 17
    im.save(tmp_path / "pa.png", transparency=alphas.tobytes())
    image = read_image(tmp_path / "pa.png")
    assert image.info.channels == 4
    np.testing.assert_array_equal(image.pixels[:, :, :3], palette[indices])
    np.testing.assert_array_equal(image.pixels[:, :, 3], alphas[indices])


def test_palette_source_is_written_back_as_rgb(tmp_path):
    im = PILImage.fromarray(np.zeros((H, W), np.uint8), "P")
    im.putpalette(bytes([10, 20, 30] * 256))
    im.save(tmp_path / "p.png")
    src = read_image(tmp_path / "p.png")
    out = read_image(write_image(tmp_path / "o.png", src.pixels, like=src.info))
    assert out.info.channels == 3 and "palette" not in out.info.extra
    assert (out.pixels == [10, 20, 30]).all()


def test_gray_png_colour_key_transparency_becomes_alpha(tmp_path):
    gray = real_image("gravel.png", crop=(0, 0, H, W))[:, :, 0]
    key = int(gray[5, 7])
    PILImage.fromarray(gray, "L").save(tmp_path / "k.png", transparency=key)
    image = read_image(tmp_path / "k.png")
    assert image.info.channels == 2
    np.testing.assert_array_equal(image.pixels[:, :, 1], np.where(gray == key, 0, 255))


def test_bit_depth_comes_from_the_file_not_the_values(tmp_path):
    import imagecodecs

    small16 = np.random.default_rng(1).integers(0, 256, (H, W, 3)).astype(np.uint16)
    (tmp_path / "s16.png").write_bytes(imagecodecs.png_encode(small16))
    image = read_image(tmp_path / "s16.png")
    assert image.info.dtype == "uint16" and image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, small16)

    small8 = np.random.default_rng(2).integers(0, 16, (H, W, 3)).astype(np.uint8)
    PILImage.fromarray(small8).save(tmp_path / "s8.png")
    image = read_image(tmp_path / "s8.png")
    assert image.info.dtype == "uint8"
    np.testing.assert_array_equal(image.pixels, small8)

    full16 = _content(3, "uint16")
    (tmp_path / "f16.png").write_bytes(imagecodecs.png_encode(full16))
    np.testing.assert_array_equal(read_image(tmp_path / "f16.png").pixels, full16)


def test_one_bit_images_read_as_gray_0_255(tmp_path):
    import tifffile

    bits = real_image("gravel.png", crop=(0, 0, H, W))[:, :, 0] > 128
    PILImage.fromarray(bits).save(tmp_path / "b.png")
    tifffile.imwrite(tmp_path / "b.tif", bits, photometric="minisblack")
    for name in ("b.png", "b.tif"):
        image = read_image(tmp_path / name)
        assert (image.info.channels, image.info.dtype) == (1, "uint8")
        np.testing.assert_array_equal(image.pixels[:, :, 0], np.where(bits, 255, 0))


def test_jpeg_round_trip_on_the_real_photo(tmp_path):
    photo = real_image("coffee.png")
    image = read_image(write_image(tmp_path / "c.jpg", photo))
    assert (image.info.format, image.info.channels, image.info.dtype) == ("jpeg", 3, "uint8")
    assert image.pixels.shape == photo.shape
    mse = np.mean((image.pixels.astype(np.float64) - photo) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
    assert image.info.extra["jpeg_quality"] == 95 and image.info.extra["jpeg_subsampling"] == 0


def test_jpeg_quality_and_subsampling_are_kept_through_like(tmp_path):
    photo = real_image("coffee.png")
    PILImage.fromarray(photo).save(tmp_path / "q80.jpg", quality=80, subsampling=2)
    src = read_image(tmp_path / "q80.jpg")
    assert src.info.extra["jpeg_quality"] == 80 and src.info.extra["jpeg_subsampling"] == 2
    out = probe_image(write_image(tmp_path / "out.jpg", src.pixels, like=src.info))
    assert out.extra["jpeg_quality"] == 80 and out.extra["jpeg_subsampling"] == 2


def test_gray_and_cmyk_jpegs(tmp_path):
    gray = real_image("gravel.png", crop=(0, 0, H, W))
    PILImage.fromarray(gray[:, :, 0]).save(tmp_path / "g.jpg", quality=95)
    assert read_image(tmp_path / "g.jpg").pixels.shape == (H, W, 1)
    photo = real_image("coffee.png", crop=(0, 0, H, W))
    PILImage.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.pixels.shape == (H, W, 3) and image.info.extra["converted_from"] == "cmyk"
    assert np.abs(image.pixels.astype(int) - photo).mean() < 8


def test_icc_profile_survives_8_and_16_bit_png_and_tiff(tmp_path):
    profile = b"\x00\x00\x02\x0cfake-icc-profile" * 20
    for dtype in ("uint8", "uint16"):
        for suffix in (".png", ".tif"):
            like = ImageInfo(None, "png", W, H, 3, dtype, "srgb", {"icc_profile": profile})  # type: ignore[arg-type]
            out = read_image(write_image(tmp_path / f"icc_{dtype}{suffix}", _content(3, dtype), like=like))
            assert out.info.extra["icc_profile"] == profile
            np.testing.assert_array_equal(out.pixels, _content(3, dtype))


def test_tga_rle_is_kept_through_like(tmp_path):
    pixels = _content(4, "uint8")
    src = read_image(write_image(tmp_path / "plain.tga", pixels))
    assert src.info.extra["tga_rle"] is False
    rle_info = ImageInfo(None, "tga", W, H, 4, "uint8", "srgb", {"tga_rle": True})
    out = read_image(write_image(tmp_path / "rle.tga", pixels, like=rle_info))
    assert out.info.extra["tga_rle"] is True
    np.testing.assert_array_equal(out.pixels, pixels)


def test_format_is_recognised_by_content_not_suffix(tmp_path):
    PILImage.fromarray(real_image("coffee.png", crop=(0, 0, H, W))).save(tmp_path / "really_jpeg.png", format="JPEG")
    assert read_image(tmp_path / "really_jpeg.png").info.format == "jpeg"


# ---------------------------------------------------------------- bad inputs


def _assert_read_error(path: Path, *words: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for word in words:
        assert word in message.lower()
    return caught.value


def test_missing_file_directory_and_empty_file(tmp_path):
    _assert_read_error(tmp_path / "nope.png", "not found")
    _assert_read_error(tmp_path, "folder")
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_read_error(tmp_path / "empty.png", "empty", "0 bytes")
    with pytest.raises(ImageReadError, match="not found"):
        probe_image(tmp_path / "nope.exr")


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png"])
def test_truncated_real_png(tmp_path, name):
    data = real_image_path(name).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    _assert_read_error(path, "truncated png data")


def test_truncated_16_bit_png(tmp_path):
    import imagecodecs

    data = bytes(imagecodecs.png_encode(_content(4, "uint16")))
    path = tmp_path / "cut16.png"
    path.write_bytes(data[: len(data) // 2])
    _assert_read_error(path, "truncated png data")


def test_truncated_real_jpeg(tmp_path):
    buf = io.BytesIO()
    PILImage.fromarray(real_image("coffee.png")).save(buf, format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _assert_read_error(path, "truncated jpeg data")


@pytest.mark.parametrize("fmt", ["exr", "tiff", "webp", "tga", "bmp"])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_files_of_other_formats(tmp_path, fmt, keep):
    dtype = {"exr": "float16", "tiff": "uint16"}.get(fmt, "uint8")
    src = write_image(tmp_path / f"full{extension_for(fmt)}", _content(3, dtype))
    data = src.read_bytes()
    path = tmp_path / f"cut{extension_for(fmt)}"
    path.write_bytes(data[: int(len(data) * keep)])
    _assert_read_error(path, "truncated")


def test_random_bytes_and_text_named_png(tmp_path):
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_read_error(tmp_path / "noise.png", "not an image file")
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    _assert_read_error(tmp_path / "notes.png", "not an image file")


def test_corrupt_png_body(tmp_path):
    data = bytearray(real_image_path("coffee.png").read_bytes())
    data[2000:6000] = bytes(4000)  # zero out compressed pixel data inside IDAT
    (tmp_path / "bad.png").write_bytes(bytes(data))
    err = _assert_read_error(tmp_path / "bad.png")
    assert "corrupt" in err.reason or "truncated" in err.reason


def _png_header_only(width: int, height: int) -> bytes:
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def test_absurd_dimensions_fail_fast_without_allocating(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(100000, 100000))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        err = _assert_read_error(path, "100000x100000", "larger than the limit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 5_000_000
    assert err.path == path


def test_zero_dimensions_and_max_pixels(tmp_path):
    (tmp_path / "zero.png").write_bytes(_png_header_only(0, 10))
    _assert_read_error(tmp_path / "zero.png", "0x10")
    path = write_image(tmp_path / "small.png", _content(3, "uint8"))
    with pytest.raises(ImageReadError, match="larger than the limit of 1,000 pixels"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=H * W).pixels.shape == (H, W, 3)


def test_unsupported_modes_and_formats_give_a_reason(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "cmyk.tif", np.zeros((H, W, 4), np.uint8), photometric="separated")
    _assert_read_error(tmp_path / "cmyk.tif", "unsupported tiff colour model")
    tifffile.imwrite(tmp_path / "f64.tif", np.zeros((H, W), np.float64))
    _assert_read_error(tmp_path / "f64.tif", "float64")
    PILImage.fromarray(real_image("coffee.png", crop=(0, 0, H, W))).save(tmp_path / "anim.gif")
    (tmp_path / "anim.gif").rename(tmp_path / "gif_named.png")
    _assert_read_error(tmp_path / "gif_named.png", "gif files are not supported")
    import OpenEXR

    OpenEXR.File({}, {"Z": np.zeros((H, W), np.float32), "ID": np.zeros((H, W), np.uint32)}).write(
        str(tmp_path / "data.exr")
    )
    _assert_read_error(tmp_path / "data.exr", "no r,g,b or y channels")


# ---------------------------------------------------------------- writing


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_into_missing_folder(tmp_path):
    target = tmp_path / "missing" / "out.png"
    with pytest.raises(ImageWriteError) as caught:
        write_image(target, _content(3, "uint8"))
    assert str(caught.value).startswith(str(target)) and "folder does not exist" in str(caught.value)
    assert not (tmp_path / "missing").exists()
    assert _leftovers(tmp_path) == []


def test_failing_encoder_leaves_previous_file_intact(tmp_path, monkeypatch):
    target = write_image(tmp_path / "out.png", _content(3, "uint8"))
    before = target.read_bytes()

    def broken_encode(path: Path, pixels: np.ndarray, extra: dict) -> None:
        path.write_bytes(b"\x89PNG half written")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_png, "encode", broken_encode)
    with pytest.raises(ImageWriteError, match="No space left on device") as caught:
        write_image(target, _content(4, "uint8"))
    assert caught.value.path == target
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_the_file(tmp_path):
    target = write_image(tmp_path / "out.tif", _content(3, "uint8"))
    write_image(target, _content(1, "uint16"))
    image = read_image(target)
    assert (image.info.channels, image.info.dtype) == (1, "uint16")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "dtype", "channels", "words"),
    [
        ("f.png", "float32", 3, "png cannot hold float32"),
        ("u16.jpg", "uint16", 3, "jpeg cannot hold uint16"),
        ("a.jpg", "uint8", 4, "no alpha"),
        ("u8.exr", "uint8", 3, "exr cannot hold uint8"),
        ("h.webp", "float16", 3, "webp cannot hold float16"),
        ("x.psd", "uint8", 3, "unsupported image file suffix .psd"),
    ],
)
def test_unwritable_combinations_are_refused_before_touching_disk(tmp_path, name, dtype, channels, words):
    with pytest.raises(ImageWriteError) as caught:
        write_image(tmp_path / name, _content(channels, dtype))
    assert words in str(caught.value).lower()
    assert list(tmp_path.iterdir()) == []


def test_explicit_format_overrides_suffix(tmp_path):
    path = write_image(tmp_path / "texture.bin", _content(3, "uint8"), format="tga")
    assert read_image(path).info.format == "tga"


# ---------------------------------------------------------------- conversions and names


def test_srgb_curve_known_points_and_round_trip():
    assert srgb_to_linear(np.float32(0.0)) == 0.0
    assert srgb_to_linear(np.float32(1.0)) == pytest.approx(1.0, abs=1e-6)
    assert srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.214041, abs=1e-6)
    assert srgb_to_linear(np.array([0.04045]))[0] == pytest.approx(0.04045 / 12.92, rel=1e-6)
    assert linear_to_srgb(np.array([0.214041]))[0] == pytest.approx(0.5, abs=1e-6)
    x = to_float32(_content(3, "uint16"))
    linear = srgb_to_linear(x)
    assert linear.dtype == np.float32 and linear.shape == x.shape
    assert np.all(linear <= x + 1e-7)  # the decode curve lies below the identity on [0, 1]
    np.testing.assert_allclose(linear_to_srgb(linear), x, atol=2e-6)


def test_float_conversions():
    u8 = _content(4, "uint8")
    f = to_float32(u8)
    assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
    np.testing.assert_array_equal(from_float32(f, "uint8"), u8)
    u16 = _content(3, "uint16")
    np.testing.assert_array_equal(from_float32(to_float32(u16), "uint16"), u16)
    edge = np.array([-0.5, np.nan, 1.5, 0.5], np.float32)
    np.testing.assert_array_equal(from_float32(edge, "uint8"), [0, 0, 255, 128])
    np.testing.assert_array_equal(from_float32(edge, "uint16"), [0, 0, 65535, 32768])
    hdr = np.array([3.5, -2.0], np.float32)
    np.testing.assert_array_equal(from_float32(hdr, "float16"), hdr)
    half = np.array([0.1, 7.0], np.float16)
    np.testing.assert_array_equal(to_float32(half), half.astype(np.float32))
    with pytest.raises(TypeError):
        to_float32(np.zeros(3, np.int32))


def test_names_and_suffixes():
    assert format_for_path("a/b.TIF") == "tiff" and format_for_path("x.jpeg") == "jpeg"
    assert {format_for_path("x" + s) for s in SUPPORTED_EXTENSIONS} == {
        "png",
        "jpeg",
        "tga",
        "tiff",
        "bmp",
        "webp",
        "exr",
        "dds",
    }
    for s in SUPPORTED_EXTENSIONS:
        assert format_for_path("x" + extension_for(format_for_path("x" + s))) == format_for_path("x" + s)
    with pytest.raises(ValueError, match=".ktx"):
        format_for_path("t.ktx")
    with pytest.raises(ValueError):
        extension_for("gif")


def test_imageio_does_not_import_torch():
    import subprocess

    code = "import sys, texup.imageio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_exr_from_other_writers_tiled_layered_multipart(tmp_path):
    import OpenEXR

    rgb = _content(3, "float32")
    planes = {c: np.ascontiguousarray(rgb[:, :, i]) for i, c in enumerate("RGB")}
    tiles = OpenEXR.TileDescription()
    tiles.xSize, tiles.ySize, tiles.mode = 16, 16, OpenEXR.ONE_LEVEL
    OpenEXR.File({"type": OpenEXR.tiledimage, "tiles": tiles}, {"RGB": rgb}).write(str(tmp_path / "tiled.exr"))
    layered = {f"diffuse.{c}": p for c, p in planes.items()} | {"depth.Z": planes["R"]}
    OpenEXR.File({}, layered).write(str(tmp_path / "layered.exr"))
    OpenEXR.File([OpenEXR.Part({}, {"RGB": rgb}), OpenEXR.Part({}, {"Z": planes["G"]})]).write(
        str(tmp_path / "multi.exr")
    )
    for name in ("tiled.exr", "layered.exr"):
        image = read_image(tmp_path / name)
        assert (image.info.channels, image.info.dtype) == (3, "float32"), name
        np.testing.assert_array_equal(image.pixels, rgb)
    # Two parts are two images: refused, not cut to the first (issue 21 item 9; tests/core/test_multi_image.py).
    _assert_read_error(tmp_path / "multi.exr", "multi-part exr (2 parts) is not supported")
    height = np.ascontiguousarray(_content(1, "float16")[:, :, 0])
    OpenEXR.File({}, {"H": height}).write(str(tmp_path / "height.exr"))  # (the bindings replace dict values)
    image = read_image(tmp_path / "height.exr")
    assert (image.info.channels, image.info.dtype) == (1, "float16")
    np.testing.assert_array_equal(image.pixels[:, :, 0], height)

    cut = (tmp_path / "tiled.exr").read_bytes()
    (tmp_path / "tiled_cut.exr").write_bytes(cut[: len(cut) - 10])
    _assert_read_error(tmp_path / "tiled_cut.exr", "truncated exr data")


@pytest.mark.parametrize("ext, name", [(".webp", "WebP"), (".png", "PNG")])
def test_animated_images_are_refused_not_cut_to_their_first_frame(tmp_path: Path, ext: str, name: str) -> None:
    frames = [PILImage.new("RGB", (13, 9), (60 * i, 20, 200 - 60 * i)) for i in range(3)]
    animated = tmp_path / f"anim{ext}"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=80)
    with pytest.raises(ImageReadError, match=f"animated {name} \\(3 frames\\) is not supported"):
        read_image(animated)
    still = tmp_path / f"still{ext}"
    frames[1].save(still, save_all=True, append_images=[], duration=80)  # one frame: an ordinary image
    assert read_image(still).pixels.shape == (9, 13, 3)


def test_tifffile_log_lines_about_a_damaged_file_do_not_reach_the_user(tmp_path: Path, caplog) -> None:
    """A fuzzed tag made tifffile log lines besides texup's one error line (issue 11, cosmetic)."""
    import logging

    import tifffile

    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.zeros((16, 16, 3), np.uint8))
    data = bytearray(good.read_bytes())
    offset = struct.unpack("<I", data[4:8])[0]  # first IFD (little-endian classic TIFF, as tifffile writes here)
    data[offset + 2 + 2 : offset + 2 + 4] = struct.pack("<H", 54276)  # first entry: an invalid data type
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="tifffile")
    with tifffile.TiffFile(bad) as tif:  # tifffile itself logs about this file...
        _ = tif.pages.first
    assert any(r.name == "tifffile" for r in caplog.records)
    caplog.clear()
    try:  # ...but not while texup reads it: one ImageReadError (or the pixels) and nothing else
        read_image(bad)
    except ImageReadError as err:
        assert "bad.tif" in str(err)
    assert not [r for r in caplog.records if r.name == "tifffile"]
