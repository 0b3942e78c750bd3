"""DDS in and out (issue 24): every format read and written back, mip chains, normal maps, cut-out alpha, the sRGB
flag, headers from another writer (Pillow), hostile headers, and `texup upscale` over a game folder.

Every file is made here from real photographs (tests/realdata.py) at sizes that are not multiples of 4."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from realdata import real_image

from texup.errors import ImageReadError, ImageWriteError
from texup.imageio import ImageInfo, _bc, _dds, probe_image, read_image, write_image

H, W = 37, 53  # odd, not multiples of 4


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(peak**2 / mse)


def photo(h: int = H, w: int = W) -> np.ndarray:
    return real_image("astronaut.png", (120, 150, h, w))


def with_alpha(rgb: np.ndarray, cutout: bool = False) -> np.ndarray:
    h, w = rgb.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    ramp = ((x + y) * 255 // (h + w)).astype(np.uint8)
    alpha = np.where(ramp > 100, 255, 0).astype(np.uint8) if cutout else ramp
    return np.ascontiguousarray(np.dstack([rgb, alpha]))


def like(fmt: str, **extra: object) -> ImageInfo:
    return ImageInfo(None, "dds", 1, 1, 4, "uint8", "srgb", {"dds_format": fmt, **extra})


def normal_map(h: int = 64, w: int = 64) -> np.ndarray:
    """A bumpy tangent-space normal map (heights from a photo), encoded v * 0.5 + 0.5, uint8 RGB."""
    height = real_image("gravel.png", (0, 0, h + 1, w + 1))[:, :, 0].astype(np.float32) / 255 * 6
    dx = height[:-1, 1:] - height[:-1, :-1]
    dy = height[1:, :-1] - height[:-1, :-1]
    n = np.dstack([-dx, -dy, np.ones_like(dx)])
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    return np.rint((n * 0.5 + 0.5) * 255).astype(np.uint8)


def levels_of(path: Path) -> tuple[dict[str, object], list[np.ndarray]]:
    """Every mip level of a DDS file written by texup, decoded with the module's decoders (not the writer's)."""
    data = path.read_bytes()
    info = probe_image(path)
    header = _dds._parse(path, data[:148], len(data))
    layout, offset = header.layout, header.data_offset
    out = []
    for i in range(header.levels):
        w, h = max(1, header.width >> i), max(1, header.height >> i)
        size = layout.level_bytes(w, h)
        chunk = data[offset : offset + size]
        offset += size
        if layout.block:
            out.append(_bc.decode(chunk, header.decode_as, w, h))
        else:
            out.append(np.frombuffer(chunk, layout.dtype).reshape(h, w, -1))
    assert offset == len(data), "the file holds exactly the levels its header declares"
    return info.extra, out


# --- formats --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "channels", "floor"),
    [
        ("bc1", 4, 30.0),
        ("bc2", 4, 30.0),
        ("bc3", 4, 30.0),
        ("bc7", 4, 40.0),
        ("rgba8", 4, 99.0),
        ("bgra8", 4, 99.0),
        ("bgrx8", 3, 99.0),
        ("bgr8", 3, 99.0),
    ],
)
def test_colour_formats_round_trip(tmp_path, fmt, channels, floor):
    src = with_alpha(photo()) if channels == 4 else photo()
    if fmt == "bc1":
        src = with_alpha(photo(), cutout=True)
    path = write_image(tmp_path / "t.dds", src, like=like(fmt))
    image = read_image(path)
    info = image.info
    assert (info.format, info.width, info.height, info.channels, info.dtype) == ("dds", W, H, channels, "uint8")
    assert info.extra["dds_format"] == fmt and info.extra["dds_mipmaps"] == 6  # 53 -> 26 -> 13 -> 6 -> 3 -> 1
    opaque = src[:, :, 3] > 127 if fmt == "bc1" else np.ones((H, W), bool)
    assert psnr(image.pixels[:, :, :3][opaque], src[:, :, :3][opaque]) >= floor
    if fmt == "bc1":  # 1-bit alpha kept exactly
        assert np.array_equal(image.pixels[:, :, 3] > 127, src[:, :, 3] > 127)
    elif channels == 4:
        assert psnr(image.pixels[:, :, 3], src[:, :, 3]) >= {"bc2": 33.0, "bc3": 35.0, "bc7": 35.0}.get(fmt, floor)


def test_bc1_and_bc3_colour_blocks_are_refined_beyond_etcpaks(tmp_path):
    """Least-squares endpoints: at least 1 dB over etcpak's own BC1 blocks on a real photo (the test can fail)."""
    import etcpak

    rgba = with_alpha(photo(128, 128))
    rgba[:, :, 3] = 255
    raw = _bc.decode(etcpak.compress_bc1(rgba.tobytes(), 128, 128), "BC1", 128, 128)
    for fmt in ("BC1", "BC3"):
        ours = _bc.decode(_bc.ENCODERS[fmt](rgba), fmt, 128, 128)
        assert psnr(ours[:, :, :3], rgba[:, :, :3]) >= psnr(raw[:, :, :3], rgba[:, :, :3]) + 1.0, fmt


def test_what_pillow_reads_in_texups_files_matches_texup(tmp_path):
    """An independent decoder (Pillow's DDS plugin) sees the same top level in texup's BC1/BC3/BC7/BGRA8 files."""
    src = with_alpha(photo(), cutout=True)
    for fmt in ("bc1", "bc3", "bc7", "bgra8"):
        path = write_image(tmp_path / f"{fmt}.dds", src, like=like(fmt))
        with PILImage.open(path) as im:
            theirs = np.asarray(im.convert("RGBA"))
        ours = read_image(path).pixels
        # BC1/BC3 colour interpolation is rounded differently by decoders (the D3D spec allows it): within 1
        assert np.abs(theirs.astype(int) - ours).max() <= (1 if fmt in ("bc1", "bc3") else 0), fmt


def test_pillow_written_legacy_files_read_as_pillow_decodes_them(tmp_path):
    """Legacy headers from another writer: DXT1, DXT5, BC5 (DX10) and uncompressed RGBA / luminance masks."""
    rgba = with_alpha(photo())
    cases = [("DXT1", rgba, "bc1"), ("DXT5", rgba, "bc3"), ("BC5", photo(), "bc5"), (None, rgba, "bgra8")]
    for pixel_format, src, fmt in cases:
        path = tmp_path / f"{fmt}.dds"
        mode = "RGBA" if src.shape[2] == 4 else "RGB"
        kwargs = {"pixel_format": pixel_format} if pixel_format else {}
        PILImage.fromarray(src, mode).save(path, "DDS", **kwargs)
        image = read_image(path)
        assert image.info.extra["dds_format"] == fmt
        with PILImage.open(path) as im:
            theirs = np.asarray(im)
        if fmt == "bc5":  # Pillow gives X, Y and 0; texup rebuilds Z
            assert np.array_equal(image.pixels[:, :, :2], theirs[:, :, :2])
            assert image.pixels[:, :, 2].min() >= 127
        else:
            diff = np.abs(image.pixels.astype(int) - theirs[:, :, : image.info.channels])
            assert diff.max() <= (1 if fmt in ("bc1", "bc3") else 0), fmt
    gray = photo()[:, :, 0]
    PILImage.fromarray(gray, "L").save(tmp_path / "l8.dds", "DDS")
    image = read_image(tmp_path / "l8.dds")
    assert image.info.extra["dds_format"] == "r8" and np.array_equal(image.pixels[:, :, 0], gray)


def test_one_channel_formats_stay_one_channel(tmp_path):
    gray = photo()[:, :, :1]
    for fmt, floor in (("bc4", 40.0), ("r8", 99.0)):
        image = read_image(write_image(tmp_path / f"{fmt}.dds", gray, like=like(fmt)))
        assert image.pixels.shape == (H, W, 1) and image.info.dtype == "uint8"
        assert psnr(image.pixels, gray) >= floor
    deep = gray.astype(np.uint16) * 257 + 3
    image = read_image(write_image(tmp_path / "r16.dds", deep, like=like("r16")))
    assert image.info.dtype == "uint16" and np.array_equal(image.pixels, deep)
    # Written without a DDS source, one channel becomes BC4 (R16 for 16-bit)
    assert probe_image(write_image(tmp_path / "a.dds", gray)).extra["dds_format"] == "bc4"
    assert probe_image(write_image(tmp_path / "b.dds", deep)).extra["dds_format"] == "r16"


def test_float_formats(tmp_path):
    rgb = photo().astype(np.float32) / 255
    hdr = rgb**2.2 * 8.0  # linear, up to 8
    hdr_a = np.dstack([hdr, rgb[:, :, :1]])
    for fmt, src in (("rgba16f", hdr_a), ("rgba32f", hdr_a), ("bc6h", hdr)):
        image = read_image(write_image(tmp_path / f"{fmt}.dds", src, like=like(fmt)))
        assert image.info.colorspace == "linear" and image.info.dtype == ("float32" if fmt == "rgba32f" else "float16")
        got = image.pixels.astype(np.float32)
        if fmt == "bc6h":
            assert image.info.channels == 3
            rel = np.abs(got - hdr) / (hdr + 0.05)
            assert float(np.mean(rel)) < 0.05
        else:
            assert np.allclose(got, src, rtol=1e-3, atol=1e-3)
    assert probe_image(write_image(tmp_path / "c.dds", hdr)).extra["dds_format"] == "bc6h"
    assert probe_image(write_image(tmp_path / "d.dds", hdr_a)).extra["dds_format"] == "rgba16f"


def test_a_format_that_cannot_hold_the_samples_is_refused_in_one_line(tmp_path):
    with pytest.raises(ImageWriteError, match="t.dds.*BC7 stores integer samples"):
        write_image(tmp_path / "t.dds", np.zeros((8, 8, 3), np.float32), like=like("bc7"))
    with pytest.raises(ImageWriteError, match="normal map's X and Y"):
        write_image(tmp_path / "t.dds", np.zeros((8, 8, 1), np.uint8), like=like("bc5"))
    with pytest.raises(ImageWriteError, match="unknown DDS format 'bc9'"):
        write_image(tmp_path / "t.dds", np.zeros((8, 8, 3), np.uint8), like=like("bc9"))


def test_texup_dds_format_names_the_format_of_every_dds_output(tmp_path, monkeypatch):
    src = with_alpha(photo())
    monkeypatch.setenv("TEXUP_DDS_FORMAT", "BC3")
    assert probe_image(write_image(tmp_path / "a.dds", src, like=like("bc7"))).extra["dds_format"] == "bc3"
    assert probe_image(write_image(tmp_path / "b.dds", src)).extra["dds_format"] == "bc3"
    monkeypatch.setenv("TEXUP_DDS_FORMAT", "dxt9")
    with pytest.raises(ImageWriteError, match="unknown DDS format 'dxt9'"):
        write_image(tmp_path / "c.dds", src)


def test_srgb_flag_and_header_kind_are_kept(tmp_path):
    src = with_alpha(photo())
    path = write_image(tmp_path / "s.dds", src, like=like("bc7", dds_srgb=True))
    assert struct.unpack_from("<I", path.read_bytes(), 128)[0] == 99  # DXGI_FORMAT_BC7_UNORM_SRGB
    assert probe_image(path).extra["dds_srgb"] is True
    path = write_image(tmp_path / "l.dds", src, like=like("bc3"))  # no DX10 source: the legacy DXT5 header
    assert path.read_bytes()[84:88] == b"DXT5" and probe_image(path).extra["dds_dx10"] is False
    path = write_image(tmp_path / "x.dds", src, like=like("bc3", dds_dx10=True))
    assert struct.unpack_from("<I", path.read_bytes(), 128)[0] == 77
    # sRGB mips are averaged in linear light: a black/white checker's 1x1 level is ~188, not 128
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)[:, :, None].repeat(4, axis=2)
    _, chain = levels_of(write_image(tmp_path / "c.dds", checker, like=like("rgba8", dds_srgb=True)))
    assert 180 <= int(chain[-1][0, 0, 0]) <= 194
    _, chain = levels_of(write_image(tmp_path / "d.dds", checker, like=like("rgba8")))
    assert 126 <= int(chain[-1][0, 0, 0]) <= 129


def test_cube_maps_arrays_volumes_are_refused_in_one_line(tmp_path):
    base = bytearray(write_image(tmp_path / "ok.dds", photo(8, 8), like=like("bc7")).read_bytes())
    cases = {}
    cube = bytearray(base)
    struct.pack_into("<I", cube, 128 + 8, 0x4)
    cases["cube maps are not supported"] = cube
    array = bytearray(base)
    struct.pack_into("<I", array, 128 + 12, 6)
    cases["arrays are not supported"] = array
    volume = bytearray(base)
    struct.pack_into("<I", volume, 128 + 4, 4)
    cases["volume \\(3D\\) textures are not supported"] = volume
    legacy = bytearray(write_image(tmp_path / "ok2.dds", photo(8, 8), like=like("bc1")).read_bytes())
    struct.pack_into("<I", legacy, 112, 0x200 | 0xFC00)
    cases["cube maps are not supported"] = legacy
    for i, (reason, data) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.dds"
        path.write_bytes(bytes(data))
        with pytest.raises(ImageReadError, match=reason) as err:
            read_image(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- hostile headers --------------------------------------------------------------------------------------------


def _hostile(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    ok = write_image(tmp_path / "seed.dds", with_alpha(photo(32, 32)), like=like("bc3")).read_bytes()
    ok10 = write_image(tmp_path / "seed10.dds", with_alpha(photo(32, 32)), like=like("bc7")).read_bytes()

    def put(data: bytes, offset: int, value: int) -> bytes:
        out = bytearray(data)
        struct.pack_into("<I", out, offset, value)
        return bytes(out)

    return {
        "absurd width": (put(ok, 16, 0xFFFFFFFF), "larger than the limit|truncated DDS data"),
        "absurd height": (put(ok, 12, 0x7FFFFFFF), "larger than the limit|truncated DDS data"),
        "zero width": (put(ok, 16, 0), "empty size"),
        "truncated blocks": (ok[: 128 + 100], "truncated DDS data"),
        "truncated mips": (ok[:-10], "mip levels need"),
        "mip count too large": (put(ok, 28, 40), "claims 40 mip levels; a 32x32 texture has at most 6"),
        "header size": (put(ok, 4, 7), "header size 7"),
        "header truncated": (ok[:60], "truncated DDS header"),
        "unknown fourcc": (ok[:84] + b"ZZZZ" + ok[88:], "unsupported DDS pixel format"),
        "premultiplied": (ok[:84] + b"DXT2" + ok[88:], "premultiplied"),
        "unknown dxgi": (put(ok10, 128, 250), "DXGI format 250"),
        "signed": (put(ok10, 128, 84), "signed DDS formats"),
        "dx10 missing": (ok10[:140], "DX10 extension is missing"),
    }


def test_hostile_headers_are_refused_in_one_line_naming_the_file(tmp_path):
    for name, (data, reason) in _hostile(tmp_path).items():
        path = tmp_path / (name.replace(" ", "_") + ".dds")
        path.write_bytes(data)
        with pytest.raises(ImageReadError, match=reason) as err:
            read_image(path, max_pixels=8192 * 8192)
        text = str(err.value)
        assert text.startswith(str(path)) and "\n" not in text, name


def test_a_header_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = write_image(tmp_path / "big.dds", photo(64, 64), like=like("bc1"))
    with pytest.raises(ImageReadError, match="larger than the limit"):
        read_image(path, max_pixels=32 * 32)
    assert probe_image(path).width == 64  # probing applies no limit


# --- mips, normal maps, coverage ----------------------------------------------------------------------------------


def test_full_mip_chain_from_the_top_level_or_none_when_the_source_had_none(tmp_path):
    src = with_alpha(photo())
    extra, chain = levels_of(write_image(tmp_path / "m.dds", src, like=like("bc7")))
    assert [lvl.shape[:2] for lvl in chain] == [(37, 53), (18, 26), (9, 13), (4, 6), (2, 3), (1, 1)]
    # Each level is the box-filtered top (odd sizes included): close to an area resize of the source
    area = np.asarray(PILImage.fromarray(src).resize((13, 9), PILImage.BOX)).astype(int)
    assert np.abs(chain[2].astype(int) - area).mean() < 6
    extra, chain = levels_of(write_image(tmp_path / "n.dds", src, like=like("bc7", dds_mipmaps=1)))
    assert extra["dds_mipmaps"] == 1 and len(chain) == 1


@pytest.mark.parametrize("height", [600, 301])
def test_the_banded_writer_makes_the_same_levels_as_the_whole_image_chain(tmp_path, height):
    """The writer prepares the top level in bands of rows; its levels equal mip_chain's over the whole image."""
    tall = np.ascontiguousarray(real_image("coffee.png")[:70, :height].transpose(1, 0, 2))  # (height, 70, 3)
    rgba = with_alpha(tall, cutout=True)
    path = write_image(tmp_path / "b.dds", rgba, like=like("rgba8", dds_srgb=True))
    _, chain = levels_of(path)
    expected = _dds.mip_chain(rgba.astype(np.float32) / 255, len(chain), srgb=True, normal=False, cutout=True)
    assert len(chain) == height.bit_length()
    for got, want in zip(chain, expected):
        assert np.abs(got.astype(int) - np.rint(want * 255).astype(int)).max() <= 1, got.shape


def test_bc5_normal_map_stays_bc5_with_z_rebuilt_and_every_level_renormalised(tmp_path):
    normals = normal_map(64, 64)
    path = write_image(tmp_path / "n.dds", normals, like=like("bc5"))
    image = read_image(path)
    assert image.info.channels == 3 and image.info.extra["dds_normal"] is True
    v = image.pixels.astype(np.float32) / 255 * 2 - 1
    length = np.linalg.norm(v, axis=2)  # Z rebuilt from X, Y (longer only where X, Y alone exceed 1)
    assert np.abs(length - 1).mean() < 0.01 and np.abs(length - 1).max() < 0.1
    assert np.abs(v[:, :, 2] - (normals.astype(np.float32) / 255 * 2 - 1)[:, :, 2]).mean() < 0.03
    # Level 1 against normalize(mean of the top level's 2x2 normals), computed here: uncompressed RG8 to the
    # rounding, BC5 to its block error
    for fmt, tolerance in (("rg8", 0.02), ("bc5", 0.05)):
        _, chain = levels_of(write_image(tmp_path / f"{fmt}.dds", normals, like=like(fmt)))
        top = chain[0].astype(np.float32) / 255 * 2 - 1
        top3 = np.dstack([top, np.sqrt(np.clip(1 - (top**2).sum(axis=2), 0, 1))])
        averaged = top3.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        expected = averaged / np.linalg.norm(averaged, axis=2, keepdims=True)
        level1 = chain[1].astype(np.float32) / 255 * 2 - 1
        error = np.abs(level1 - expected[:, :, :2])
        assert (error.max() if fmt == "rg8" else error.mean()) < tolerance, fmt
        assert np.abs(level1 - averaged[:, :, :2]).max() > 0.1  # the plain average is shorter: the test can fail
        for level in chain[1:]:
            xy = level.astype(np.float32) / 255 * 2 - 1
            assert (xy**2).sum(axis=2).max() <= 1.03  # unit vectors: X, Y never past the circle


def test_cutout_alpha_keeps_its_coverage_down_the_chain(tmp_path):
    speckles = real_image("gravel.png", (0, 0, 128, 128))[:, :, 0] > 150  # foliage-like holes: 28 % covered
    rgba = with_alpha(photo(128, 128))
    rgba[:, :, 3] = np.where(speckles, 255, 0)
    # as an upscale leaves a mask: soft along its edges (here one pixel of each edge: 12 % of the pixels soft)
    soft = np.pad(rgba[:, :, 3].astype(np.float32), ((0, 0), (0, 1)), mode="edge")
    soft = (soft[:, :-1] + soft[:, 1:]) / 2
    rgba[:, :, 3] = np.where(speckles, np.maximum(soft, 128), np.minimum(soft, 127)).astype(np.uint8)
    top = float(np.mean(speckles))
    for fmt in ("bc1", "bc7"):
        _, chain = levels_of(write_image(tmp_path / f"{fmt}.dds", rgba, like=like(fmt)))
        for level in chain[:5]:  # down to 8x8 (a 4x4 level is one block: its alpha moves with the colours)
            assert abs(float(np.mean(level[:, :, 3] >= 128)) - top) < 0.05, (fmt, level.shape)
    # A plain box filter loses it (the test can fail): at 8x8 under half the coverage is left
    plain = _dds.mip_chain(rgba.astype(np.float32) / 255, 5, srgb=False, normal=False, cutout=False)
    assert float(np.mean(plain[4][:, :, 3] >= 0.5)) < top / 2
    # A blend (a fade across the image) is left as filtered: its coverage is not a property to keep
    fade = with_alpha(photo(128, 128))
    fade[:, :, 3] = np.linspace(0, 255, 128).astype(np.uint8)[None, :]
    _, chain = levels_of(write_image(tmp_path / "fade.dds", fade, like=like("rgba8")))
    expected = _dds.mip_chain(fade.astype(np.float32) / 255, len(chain), srgb=False, normal=False, cutout=False)
    assert np.abs(chain[3][:, :, 3].astype(int) - np.rint(expected[3][:, :, 3] * 255)).max() <= 1


# --- upscaling a game folder ----------------------------------------------------------------------------------------


def test_texup_upscale_keeps_every_files_dds_format(tmp_path):
    torch = pytest.importorskip("torch")
    from texup.archs import RRDBNet
    from texup.cli.main import main
    from texup.weights import save_model

    torch.manual_seed(0)
    model = save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), tmp_path / "tiny_x4.safetensors")
    textures = tmp_path / "Textures"
    (textures / "props").mkdir(parents=True)
    write_image(textures / "wall_albedo.dds", with_alpha(photo(), cutout=True), like=like("bc1"))
    write_image(textures / "wall_normal.dds", normal_map(20, 24), like=like("bc5"))
    write_image(textures / "props" / "crate.dds", photo(), like=like("bc7", dds_srgb=True, dds_dx10=True))
    write_image(textures / "props" / "rough.dds", photo()[:, :, :1], like=like("bc4", dds_mipmaps=1))
    write_image(textures / "props" / "sky.png", photo())
    out = tmp_path / "Textures_x4"
    assert main(["upscale", "-r", str(textures), "-o", str(out), "--model", str(model)]) == 0
    expect = {
        "wall_albedo_x4.dds": ("bc1", 4, 6 + 2, False),
        "wall_normal_x4.dds": ("bc5", 3, 5 + 2, False),
        "props/crate_x4.dds": ("bc7", 4, 6 + 2, True),
        "props/rough_x4.dds": ("bc4", 1, 1, False),
    }
    for name, (fmt, channels, levels, srgb) in expect.items():
        info = probe_image(out / name)
        assert info.extra["dds_format"] == fmt and info.channels == channels, name
        assert info.extra["dds_mipmaps"] == levels and info.extra["dds_srgb"] is srgb, name
    assert probe_image(out / "props" / "sky_x4.png").format == "png"
    # --format dds for the other inputs: a PNG becomes BC7 with its mips
    assert main(["upscale", str(textures / "props" / "sky.png"), "-o", str(tmp_path / "d"), "--model", str(model),
                 "--format", "dds"]) == 0  # fmt: skip
    info = probe_image(tmp_path / "d" / "sky_x4.dds")
    assert info.extra["dds_format"] == "bc7" and (info.width, info.height) == (W * 4, H * 4)
    # --dds-format picks the block format (here for a PNG and a BC7 source alike), for this run only
    crate = textures / "props" / "crate.dds"
    assert main(["upscale", str(textures / "props" / "sky.png"), str(crate), "-o", str(tmp_path / "e"),
                 "--model", str(model), "--format", "dds", "--dds-format", "BC1"]) == 0  # fmt: skip
    assert probe_image(tmp_path / "e" / "sky_x4.dds").extra["dds_format"] == "bc1"
    assert probe_image(tmp_path / "e" / "crate_x4.dds").extra["dds_format"] == "bc1"
    assert "TEXUP_DDS_FORMAT" not in os.environ


def test_a_hostile_dds_in_a_folder_is_one_error_line_and_the_rest_is_done(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from texup.archs import RRDBNet
    from texup.cli.main import main
    from texup.weights import save_model

    torch.manual_seed(0)
    model = save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), tmp_path / "tiny_x4.safetensors")
    folder = tmp_path / "Textures"
    folder.mkdir()
    for name, (data, _) in _hostile(tmp_path).items():
        (folder / (name.replace(" ", "_") + ".dds")).write_bytes(data)
    write_image(folder / "good.dds", photo(), like=like("bc7"))
    hostile = sorted(p.name for p in folder.iterdir() if p.name != "good.dds")
    code = main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model)])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("texup: error:")]
    assert len(errors) == len(hostile), errors
    for name in hostile:
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert probe_image(tmp_path / "out" / "good_x4.dds").extra["dds_format"] == "bc7"


# --- issue 24's leftovers: the DDS format as a pixel option, the role to the writer, DDS in FORMATS, signed BC6H ---


def _tiny_model(tmp_path: Path) -> Path:
    torch = pytest.importorskip("torch")
    from texup.archs import RRDBNet
    from texup.weights import save_model

    torch.manual_seed(0)
    return save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), tmp_path / "tiny_x4.safetensors")


def test_a_rerun_with_another_dds_format_redoes_the_output_and_the_same_is_current(tmp_path, capsys, monkeypatch):
    """--dds-format / TEXUP_DDS_FORMAT is a pixel option of the output folder's manifest: a rerun with another
    format redoes the output (without --force), a rerun with the same one leaves it alone."""
    from texup.cli.main import main

    model = _tiny_model(tmp_path)
    src = write_image(tmp_path / "crate.dds", photo(), like=like("bc7"))
    out = tmp_path / "out"
    monkeypatch.delenv("TEXUP_DDS_FORMAT", raising=False)

    def run(*extra: str) -> str:
        capsys.readouterr()
        assert main(["upscale", str(src), "-o", str(out), "--model", str(model), *extra]) == 0
        return capsys.readouterr().err.splitlines()[-1]

    assert run().startswith("texup: 1 upscaled")
    assert probe_image(out / "crate_x4.dds").extra["dds_format"] == "bc7"
    assert run().startswith("texup: 0 upscaled, 1 up to date")
    assert run("--dds-format", "bc1").startswith("texup: 0 upscaled, 0 up to date, 1 changed and redone (1 options")
    assert probe_image(out / "crate_x4.dds").extra["dds_format"] == "bc1"
    assert run("--dds-format", "BC1").startswith("texup: 0 upscaled, 1 up to date")
    monkeypatch.setenv("TEXUP_DDS_FORMAT", "bc3")  # the variable counts as the option does
    assert "1 changed and redone (1 options changed)" in run()
    assert probe_image(out / "crate_x4.dds").extra["dds_format"] == "bc3"
    assert run("--dds-format", "bc3").startswith("texup: 0 upscaled, 1 up to date")
    monkeypatch.delenv("TEXUP_DDS_FORMAT")
    assert "1 changed and redone (1 options changed)" in run()  # back to the input's own format
    assert probe_image(out / "crate_x4.dds").extra["dds_format"] == "bc7"
    manifest = (out / ".texup" / "outputs.json").read_text()
    assert '"dds_format": null' in manifest


def test_the_addons_pixel_options_mirror_the_dds_format(monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "blender_addon"))
    from bridge.manifest import ENV_DDS_FORMAT, dds_format_setting, pixel_options

    from texup.imageio import ENV_DDS_FORMAT as TEXUP_ENV
    from texup.imageio import chosen_dds_format
    from texup.inference.pipeline import UpscaleOptions
    from texup.library import PIXEL_OPTIONS, options_of

    assert ENV_DDS_FORMAT == TEXUP_ENV
    for value in ("", " BC7 ", "bc6h_sf16"):
        monkeypatch.setenv(TEXUP_ENV, value)
        assert dds_format_setting() == chosen_dds_format()
        ours = pixel_options(scale=4, seamless="auto", role="normal", dds_format=dds_format_setting())
        assert ours == options_of(UpscaleOptions(scale=4.0, role="normal"))
        assert tuple(ours) == PIXEL_OPTIONS


def _unit_error(level: np.ndarray) -> float:
    """Mean |length - 1| of a mip level's normals (X, Y, Z as stored, 8-bit)."""
    v = level[:, :, :3].astype(np.float32) / 255 * 2 - 1
    return float(np.abs(np.linalg.norm(v, axis=2) - 1).mean())


@pytest.mark.parametrize("fmt", ["bc7", "bc3", "rgba8"])
def test_a_normal_maps_role_renormalises_every_level_in_any_format(tmp_path, fmt):
    """The writer learns the texture's role: a normal map written as BC7, BC3 or uncompressed gets unit normals at
    every mip level (as BC5 ones do); the same pixels as a colour texture get plain box-filtered levels."""
    normals = normal_map(64, 64)
    _, plain = levels_of(write_image(tmp_path / "c.dds", normals, like=like(fmt)))
    _, renormalised = levels_of(write_image(tmp_path / "n.dds", normals, like=like(fmt), role="normal"))
    assert max(_unit_error(level) for level in plain[1:]) > 0.1  # the plain average is shorter: the test can fail
    _renormalised_below_the_top(renormalised)


def _renormalised_below_the_top(chain: list[np.ndarray]) -> None:
    """No mip level's normals stray from unit length more than the top level's do (its block error, 0.2 % to 6 %)."""
    errors = [_unit_error(level) for level in chain]
    assert max(errors[1:]) <= errors[0] + 0.005, errors


def test_the_role_reaches_the_writer_through_the_cli_and_the_api(tmp_path):
    """`texup upscale --role normal` and ``texup.upscale_file(role="normal")`` (the worker's path: the pipeline's
    ``upscale_file``) write a normal map's mips renormalised, here uncompressed (RGBA8) so no block error hides it:
    this output's plain levels are 0.016 to 0.085 short."""
    import texup
    from texup.cli.main import main

    model = _tiny_model(tmp_path)
    src = write_image(tmp_path / "wall_n.dds", normal_map(16, 16), like=like("bc7"))
    assert main(["upscale", str(src), "-o", str(tmp_path / "cli"), "--model", str(model), "--role", "normal",
                 "--dds-format", "rgba8"]) == 0  # fmt: skip
    texup.upscale_file(src, tmp_path / "api.dds", model=str(model), role="normal", dds_format="rgba8")
    for path in (tmp_path / "cli" / "wall_n_x4.dds", tmp_path / "api.dds"):
        _renormalised_below_the_top(levels_of(path)[1])


def test_dds_is_one_of_the_formats():
    from texup.imageio import FORMATS, extension_for
    from texup.imageio.write import FORMAT_DTYPES

    assert "dds" in FORMATS and set(FORMATS) == set(FORMAT_DTYPES)
    assert extension_for("DDS") == ".dds"


def _signed_hdr() -> np.ndarray:
    """Linear float RGB from -1.5 to 4.5 (a vector or displacement map, say), whole blocks of each sign too."""
    rgb = photo(36, 52).astype(np.float32) / 255
    values = rgb**2.2 * 6.0 - 1.5
    values[:8, :8] = -(values[:8, :8] ** 2) - 0.25  # blocks all negative
    return np.ascontiguousarray(values)


def test_a_signed_bc6h_keeps_its_sign(tmp_path):
    """BC6H_SF16 is read as its own format and written back signed: negative values survive (decoded by imagecodecs,
    not the writer); with no format named, a float image with negative values is written signed."""
    values = _signed_hdr()
    path = write_image(tmp_path / "s.dds", values, like=like("bc6h_sf16"))
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 128)[0] == 96  # DXGI_FORMAT_BC6H_SF16
    image = read_image(path)
    assert image.info.extra["dds_format"] == "bc6h_sf16" and image.info.dtype == "float16"
    got = image.pixels.astype(np.float32)
    assert got.min() < -1.0
    assert float(np.mean(np.abs(got - values))) < 0.1  # values span 9 (mode 11 only: blocks crossing 0 are coarse)
    inside = values[:8, :8]  # the negative blocks: within a few percent
    assert float(np.mean(np.abs(got[:8, :8] - inside) / np.abs(inside))) < 0.05
    again = write_image(tmp_path / "again.dds", image.pixels, like=image.info)  # the read format is kept
    assert probe_image(again).extra["dds_format"] == "bc6h_sf16"
    assert probe_image(write_image(tmp_path / "auto.dds", values)).extra["dds_format"] == "bc6h_sf16"
    assert probe_image(write_image(tmp_path / "pos.dds", np.abs(values))).extra["dds_format"] == "bc6h"


def test_an_unsigned_bc6h_refuses_negative_values_in_one_line(tmp_path):
    with pytest.raises(ImageWriteError, match=r"u\.dds.*BC6H \(unsigned\) cannot store negative values.*bc6h_sf16"):
        write_image(tmp_path / "u.dds", _signed_hdr(), like=like("bc6h"))
    assert not (tmp_path / "u.dds").exists()
