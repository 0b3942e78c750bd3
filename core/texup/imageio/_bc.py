"""Block compression (BC1 to BC7) for the DDS writer, and BC decoding for the reader.

Decoding is imagecodecs' (bcdec: every BC format, BC6H to float16). Encoding is etcpak's for BC1, BC3, BC4, BC5
and BC7 (bc7enc's BC7 with the settings below), in the calling thread: etcpak holds the GIL, so threads gain nothing
(measured: 2 threads on 2 cores 2.85 s against 2.45 s for one), and worker processes cost more to start than they
save on one texture. What etcpak lacks is done here in numpy: better BC1/BC3 colour blocks (least-squares
endpoints on etcpak's, :func:`refine_colour_blocks`), BC1's 1-bit alpha (blocks with transparent pixels re-indexed
in BC1's three-colour mode), BC2 (the BC3 colour blocks with BC2's explicit 4-bit alpha) and BC6H (unsigned and
signed, mode 11: one region, 10-bit endpoints, 4-bit indices, least-squares endpoints; not a search over the 14 modes).
Why these libraries, with measurements: docs/dds.md.

Every encoder takes a C-contiguous ``(H, W, C)`` array whose height and width are multiples of 4 (the DDS writer
pads) and returns the blocks in row-major order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import etcpak

#: Bytes per 4x4 block.
BLOCK_BYTES: dict[str, int] = {
    "BC1": 8, "BC2": 16, "BC3": 16, "BC4": 8, "BC5": 16, "BC6H": 16, "BC6H_SF16": 16, "BC7": 16
}  # fmt: skip
_BCN_CODE = {"BC1": 1, "BC2": 2, "BC3": 3, "BC4": 4, "BC5": 5, "BC6H": 6, "BC6H_SF16": -6, "BC7": 7}
_DECODED_CHANNELS = {"BC1": 4, "BC2": 4, "BC3": 4, "BC4": 1, "BC5": 2, "BC6H": 3, "BC6H_SF16": 3, "BC7": 4}


def decode(data: bytes, kind: str, width: int, height: int) -> np.ndarray:
    """The ``(height, width, C)`` pixels of ``kind``'s blocks (C: 4 for BC1/2/3/7, 1 for BC4, 2 for BC5, 3 float16
    for BC6H / ``BC6H_SF16``); ``data`` holds exactly the blocks of the padded image."""
    from imagecodecs import bcn_decode

    padded_h, padded_w = -(-height // 4) * 4, -(-width // 4) * 4
    channels = _DECODED_CHANNELS[kind]
    shape = (padded_h, padded_w) if channels == 1 else (padded_h, padded_w, channels)
    pixels = np.asarray(bcn_decode(data, _BCN_CODE[kind], shape=shape))
    if channels == 1:
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels[:height, :width])


def _rgba(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4) from 1 (gray to RGB), 3 or 4 channels."""
    h, w, c = pixels.shape
    if c == 4:
        return np.ascontiguousarray(pixels)
    out = np.empty((h, w, 4), np.uint8)
    out[:, :, :3] = pixels[:, :, :3] if c >= 3 else pixels[:, :, :1]
    out[:, :, 3] = pixels[:, :, 3] if c == 4 else 255
    return out


def _bc7_params() -> etcpak.BC7CompressBlockParams:
    import etcpak

    params = etcpak.BC7CompressBlockParams()
    # bc7enc's uber level 0, 4 of mode 1's 64 partitions, no least-squares refinement: 50.2 dB mean on the x4
    # samples, 0.24 dB under 16 partitions with refinement at 0.6x the time, so a 2048x2048 texture and its mips
    # fit in 3 s on one core (docs/dds.md). Linear RGBA weights: the error is judged on the values as stored.
    params.m_uber_level = 0
    params.m_max_partitions = 4
    params.m_try_least_squares = False
    return params


def encode_bc7(pixels: np.ndarray) -> bytes:
    import etcpak

    params = _bc7_params()
    return etcpak.compress_bc7(pixels.tobytes(), pixels.shape[1], pixels.shape[0], params)


def encode_bc3(pixels: np.ndarray) -> bytes:
    """BC3 from (H, W, 4) uint8: etcpak's blocks, colour halves refined (:func:`refine_colour_blocks`)."""
    import etcpak

    blocks = np.frombuffer(etcpak.compress_bc3(pixels.tobytes(), pixels.shape[1], pixels.shape[0]), np.uint8)
    blocks = blocks.reshape(-1, 16).copy()
    colour = np.ascontiguousarray(blocks[:, 8:])
    refine_colour_blocks(colour, _blocks_of(pixels[:, :, :3]).astype(np.float32))
    blocks[:, 8:] = colour
    return blocks.tobytes()


def encode_bc4(pixels: np.ndarray) -> bytes:
    """``pixels``: (H, W, 1) uint8 (etcpak reads BC4 from the red byte of RGBA)."""
    import etcpak

    rgba = np.zeros((*pixels.shape[:2], 4), np.uint8)
    rgba[:, :, 0] = pixels[:, :, 0]
    return etcpak.compress_bc4(rgba.tobytes(), rgba.shape[1], rgba.shape[0])


def encode_bc5(pixels: np.ndarray) -> bytes:
    """``pixels``: (H, W, 2) uint8, the two channels stored (red and green)."""
    import etcpak

    rgba = np.zeros((*pixels.shape[:2], 4), np.uint8)
    rgba[:, :, :2] = pixels[:, :, :2]
    return etcpak.compress_bc5(rgba.tobytes(), rgba.shape[1], rgba.shape[0])


def _blocks_of(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H/4 * W/4, 16, C), blocks row-major, pixels row-major inside a block."""
    h, w, c = pixels.shape
    return pixels.reshape(h // 4, 4, w // 4, 4, c).transpose(0, 2, 1, 3, 4).reshape(-1, 16, c)


def _expand565(color: np.ndarray) -> np.ndarray:
    """uint16 RGB565 -> (N, 3) float32 in 0..255 as decoders expand it (bit replication)."""
    r = (color >> 11) & 31
    g = (color >> 5) & 63
    b = color & 31
    return np.stack([(r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)], axis=-1).astype(np.float32)


_BC1_SHARE = np.array([0.0, 1.0, 1 / 3, 2 / 3], np.float32)  # four-colour mode: each index's share of colour1


def _pack565(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) float 0..255 -> uint16 RGB565, rounded."""
    q = np.rint(np.clip(rgb, 0, 255) * (np.array([31, 63, 31], np.float32) / 255)).astype(np.uint16)
    return (q[:, 0] << 11) | (q[:, 1] << 5) | q[:, 2]


_BC1_ORDER = np.array([0, 2, 3, 1])  # the index of the colour at 0, 1/3, 2/3 and 1 of the way to colour1


def _four_colour_fit(c0: np.ndarray, c1: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's nearest of the four colours (n, 16) and each block's squared error (n,). The four lie on one
    line, so the nearest is the nearest along it: the pixel's projection, rounded to thirds."""
    e0, e1 = _expand565(c0), _expand565(c1)
    direction = e1 - e0  # (n, 3)
    length = (direction * direction).sum(axis=1)
    along = ((colours - e0[:, None, :]) * direction[:, None, :]).sum(axis=2) / np.maximum(length, 1e-6)[:, None]
    step = np.clip(np.rint(along * np.float32(3)), 0, 3)
    fitted = e0[:, None, :] + direction[:, None, :] * (step[:, :, None] * np.float32(1 / 3))
    fitted -= colours
    error = np.einsum("nij,nij->n", fitted, fitted)
    return _BC1_ORDER[step.astype(np.int64)], error


def refine_colour_blocks(blocks: np.ndarray, colours: np.ndarray) -> None:
    """:func:`_refine_colour_blocks` in slices of 4096 blocks (the temporaries stay in the CPU's caches)."""
    for start in range(0, blocks.shape[0], 4096):
        part = blocks[start : start + 4096]
        _refine_colour_blocks(part, np.ascontiguousarray(colours[start : start + 4096]))


def _refine_colour_blocks(blocks: np.ndarray, colours: np.ndarray) -> None:
    """Improve BC1-style colour blocks in place (``blocks``: (n, 8) uint8, ``colours``: the (n, 16, 3) pixels):
    re-index in four-colour mode, then fit the endpoints by least squares to those indices (rounded to RGB565) and
    re-index; a block takes the new endpoints only where its error falls. Written in four-colour order (colour0 >
    colour1), which BC1, BC2 and BC3 decoders all read as four colours."""
    c0 = blocks[:, 0].astype(np.uint16) | (blocks[:, 1].astype(np.uint16) << 8)
    c1 = blocks[:, 2].astype(np.uint16) | (blocks[:, 3].astype(np.uint16) << 8)
    index, error = _four_colour_fit(c0, c1, colours)
    for _ in range(2):
        b = _BC1_SHARE[index]  # (n, 16)
        a = 1.0 - b
        aa, ab, bb = (a * a).sum(axis=1), (a * b).sum(axis=1), (b * b).sum(axis=1)
        det = aa * bb - ab * ab
        solvable = det > 1e-6
        safe = np.where(solvable, det, 1.0)[:, None]
        at, bt = (a[:, :, None] * colours).sum(axis=1), (b[:, :, None] * colours).sum(axis=1)
        n0 = _pack565((bb[:, None] * at - ab[:, None] * bt) / safe)
        n1 = _pack565((aa[:, None] * bt - ab[:, None] * at) / safe)
        new_index, new_error = _four_colour_fit(n0, n1, colours)
        better = solvable & (new_error < error)
        c0, c1 = np.where(better, n0, c0), np.where(better, n1, c1)
        index = np.where(better[:, None], new_index, index)
        error = np.where(better, new_error, error)
    swap = c0 < c1  # four-colour order: colour0 > colour1 (indices 0 <-> 1 and 2 <-> 3 follow)
    c0, c1 = np.where(swap, c1, c0), np.where(swap, c0, c1)
    index = np.where(swap[:, None], index ^ 1, index)
    index = np.where((c0 == c1)[:, None], 0, index)  # one colour: index 0 reads the same in either mode
    bits = (index.astype(np.uint32) << (2 * np.arange(16, dtype=np.uint32))).sum(axis=1, dtype=np.uint32)
    blocks[:, 0], blocks[:, 1] = c0 & 0xFF, c0 >> 8
    blocks[:, 2], blocks[:, 3] = c1 & 0xFF, c1 >> 8
    blocks[:, 4:8] = bits.astype("<u4").view(np.uint8).reshape(-1, 4)


def encode_bc1(pixels: np.ndarray) -> bytes:
    """BC1 from (H, W, 4) uint8 (or 3 channels: opaque). Pixels with alpha below 128 come out transparent: their
    blocks are re-indexed in BC1's three-colour mode (endpoints swapped so colour0 <= colour1; index 3 =
    transparent), keeping the refined endpoints for the opaque pixels."""
    import etcpak

    rgba = _rgba(pixels)
    data = etcpak.compress_bc1(rgba.tobytes(), rgba.shape[1], rgba.shape[0])
    blocks = np.frombuffer(data, np.uint8).reshape(-1, 8).copy()
    refine_colour_blocks(blocks, _blocks_of(rgba[:, :, :3]).astype(np.float32))
    if pixels.shape[2] < 4:
        return blocks.tobytes()
    alpha = _blocks_of(rgba[:, :, 3:])[:, :, 0]
    holes = alpha < 128
    which = np.flatnonzero(holes.any(axis=1))
    if which.size == 0:
        return blocks.tobytes()
    colours = _blocks_of(rgba[:, :, :3])[which].astype(np.float32)
    c0 = blocks[which, 0].astype(np.uint16) | (blocks[which, 1].astype(np.uint16) << 8)
    c1 = blocks[which, 2].astype(np.uint16) | (blocks[which, 3].astype(np.uint16) << 8)
    lo, hi = np.minimum(c0, c1), np.maximum(c0, c1)
    e0, e1 = _expand565(lo), _expand565(hi)
    palette = np.stack([e0, e1, (e0 + e1) / 2], axis=1)  # (n, 3, 3)
    distance = ((colours[:, :, None, :] - palette[:, None, :, :]) ** 2).sum(axis=-1)  # (n, 16, 3)
    index = distance.argmin(axis=2).astype(np.uint32)
    index[holes[which]] = 3
    bits = (index << (2 * np.arange(16, dtype=np.uint32))).sum(axis=1, dtype=np.uint32)
    blocks[which, 0] = lo & 0xFF
    blocks[which, 1] = lo >> 8
    blocks[which, 2] = hi & 0xFF
    blocks[which, 3] = hi >> 8
    blocks[which, 4:8] = bits.astype("<u4").view(np.uint8).reshape(-1, 4)
    return blocks.tobytes()


def encode_bc2(pixels: np.ndarray) -> bytes:
    """BC2 from (H, W, 4) uint8: etcpak's BC3 colour blocks (always read in four-colour mode, as BC2's are) after
    explicit 4-bit alpha."""
    rgba = _rgba(pixels)
    bc3 = np.frombuffer(encode_bc3(rgba), np.uint8).reshape(-1, 16)
    alpha = _blocks_of(rgba[:, :, 3:])[:, :, 0].astype(np.uint32)
    nibbles = (alpha * 15 + 127) // 255  # (n, 16), pixel 0 in the low nibble of byte 0
    packed = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
    out = np.empty_like(bc3)
    out[:, :8] = packed
    out[:, 8:] = bc3[:, 8:]
    return out.tobytes()


_BC6_WEIGHTS = np.array([0, 4, 9, 13, 17, 21, 26, 30, 34, 38, 43, 47, 51, 55, 60, 64], np.int64)


def _bc6_unquantize(q: np.ndarray, signed: bool) -> np.ndarray:
    """10-bit endpoint -> the decoder's 16-bit value: unsigned 0..1023 (BC6H_UF16), or two's complement -512..511
    whose magnitude is scaled with its sign kept (BC6H_SF16)."""
    q = q.astype(np.int64)
    if not signed:
        out: np.ndarray = ((q << 16) + 0x8000) >> 10
        out = np.where(q == 0, 0, out)
        return np.where(q == 1023, 0xFFFF, out)
    magnitude = np.abs(q)
    out = ((magnitude << 15) + 0x4000) >> 9
    out = np.where(magnitude == 0, 0, np.where(magnitude >= 511, 0x7FFF, out))
    return np.where(q < 0, -out, out)


def _bc6_finish(interpolated: np.ndarray, signed: bool) -> np.ndarray:
    """The decoder's last step, interpolated value -> half: unsigned ``(v * 31) >> 6`` is the half's bit pattern;
    signed ``|v| * 31 >> 5`` is the magnitude's pattern, returned here with the value's sign (as :func:`_as_signed`)."""
    if not signed:
        return np.asarray((interpolated * 31) >> 6)
    magnitude = (np.abs(interpolated) * 31) >> 5
    return np.asarray(np.where(interpolated < 0, -magnitude, magnitude))


def _as_signed(half_bits: np.ndarray) -> np.ndarray:
    """Half-float bit patterns -> integers ordered as the values are: the magnitude's pattern with the sign."""
    magnitude = half_bits & 0x7FFF
    return np.asarray(np.where(half_bits & 0x8000, -magnitude, magnitude))


def _put(lo: np.ndarray, hi: np.ndarray, value: np.ndarray, pos: int, bits: int) -> None:
    """OR ``bits`` bits of ``value`` into the 128-bit blocks (``lo``: bits 0-63, ``hi``: 64-127) at ``pos``."""
    v = value.astype(np.uint64) & np.uint64((1 << bits) - 1)
    if pos + bits <= 64:
        lo |= v << np.uint64(pos)
    elif pos >= 64:
        hi |= v << np.uint64(pos - 64)
    else:
        low_bits = 64 - pos
        lo |= (v & np.uint64((1 << low_bits) - 1)) << np.uint64(pos)
        hi |= v >> np.uint64(low_bits)


def _signed_values(ordered: np.ndarray) -> np.ndarray:
    """:func:`_as_signed` integers -> their half-float values (float64)."""
    magnitude = np.abs(ordered).astype(np.uint16).view(np.float16).astype(np.float64)
    return np.asarray(np.where(ordered < 0, -magnitude, magnitude))


def _bc6_assign(blocks: np.ndarray, q0: np.ndarray, q1: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """For endpoints ``q0``, ``q1`` (n, 3): each pixel's nearest of the 16 colours the decoder makes (n, 16) and the
    block's squared error (n,). Unsigned: in half-float bit patterns (``blocks`` holds them; about a log scale, so
    highlights and shadows weigh alike). Signed: in values (``blocks`` holds them): around zero the patterns of -x
    and +x lie far apart, and an error measured on them picks endpoints that decode to wild values."""
    u0, u1 = _bc6_unquantize(q0, signed), _bc6_unquantize(q1, signed)
    weight = _BC6_WEIGHTS[None, :, None]
    palette = np.right_shift(u0[:, None, :] * (64 - weight) + u1[:, None, :] * weight + 32, 6)
    palette = _bc6_finish(palette, signed)  # (n, 16 colours, 3): the halves the decoder returns
    if signed:
        palette = _signed_values(palette)
    distance = np.zeros((blocks.shape[0], 16, 16), np.float64)
    for ch in range(3):
        distance += (blocks[:, :, None, ch] - palette[:, None, :, ch]).astype(np.float64) ** 2
    index = distance.argmin(axis=2)
    error = np.take_along_axis(distance, index[:, :, None], axis=2)[:, :, 0].sum(axis=1)
    return index.astype(np.int64), error


def _bc6_quantize(unquantized: np.ndarray, signed: bool) -> np.ndarray:
    if not signed:
        return np.clip(np.rint((unquantized - 32.0) / 64.0), 0, 1023).astype(np.int64)
    magnitude = np.clip(np.rint((np.abs(unquantized) - 32.0) / 64.0), 0, 511)
    return (np.sign(unquantized) * magnitude).astype(np.int64)


def encode_bc6h(pixels: np.ndarray, signed: bool = False) -> bytes:
    """BC6H (mode 11) from (H, W, 3) float16/float32 linear RGB: BC6H_UF16, or with ``signed`` BC6H_SF16 (negative
    values kept). Values beyond half's largest (65504) become 65504; unsigned, negative values become 0 (the DDS
    writer refuses such an image instead).

    Works in half-float bit patterns, the domain the decoder interpolates in (signed: the patterns as ordered
    integers, :func:`_as_signed`): first endpoints are each block's per-channel extremes (the box diagonal that
    follows the block's main direction), indices the nearest of the 16 colours the decoder will make; then two rounds
    of least-squares endpoints for those indices, kept per block where they lower the error."""
    low = -65504.0 if signed else 0.0
    rgb = np.clip(np.nan_to_num(pixels[:, :, :3].astype(np.float32), nan=0.0), low, 65504.0)
    half_bits = rgb.astype(np.float16).view(np.uint16).astype(np.int64)
    blocks = _blocks_of(_as_signed(half_bits) if signed else half_bits)  # (n, 16, 3)
    compared = _signed_values(blocks) if signed else blocks  # what _bc6_assign measures the error on
    # The decoder's finish: unsigned (unquantized * 31) >> 6, signed (|unquantized| * 31) >> 5 with its sign; a half
    # pattern h needs unquantized ~ h * 64/31 (signed: h * 32/31).
    target = blocks.astype(np.float64) * ((32.0 if signed else 64.0) / 31.0)
    lo_px, hi_px = target.min(axis=1), target.max(axis=1)  # (n, 3)
    # Follow the block's main direction: a channel that falls while the brightest channel rises is flipped.
    lead = (hi_px - lo_px).argmax(axis=1)
    centred = target - target.mean(axis=1, keepdims=True)
    lead_values = np.take_along_axis(centred, lead[:, None, None], axis=2)  # (n, 16, 1)
    falling = (centred * lead_values).sum(axis=1) < 0  # (n, 3)
    q0 = _bc6_quantize(np.where(falling, hi_px, lo_px), signed)
    q1 = _bc6_quantize(np.where(falling, lo_px, hi_px), signed)
    index, error = _bc6_assign(compared, q0, q1, signed)
    for _ in range(2):
        b = _BC6_WEIGHTS[index].astype(np.float64) / 64.0  # (n, 16): each pixel's share of endpoint 1
        a = 1.0 - b
        aa, ab, bb = (a * a).sum(axis=1), (a * b).sum(axis=1), (b * b).sum(axis=1)
        det = aa * bb - ab * ab
        solvable = det > 1e-9
        safe = np.where(solvable, det, 1.0)[:, None]
        at, bt = (a[:, :, None] * target).sum(axis=1), (b[:, :, None] * target).sum(axis=1)  # (n, 3)
        e0 = (bb[:, None] * at - ab[:, None] * bt) / safe
        e1 = (aa[:, None] * bt - ab[:, None] * at) / safe
        n0, n1 = _bc6_quantize(e0, signed), _bc6_quantize(e1, signed)
        new_index, new_error = _bc6_assign(compared, n0, n1, signed)
        better = solvable & (new_error < error)
        q0 = np.where(better[:, None], n0, q0)
        q1 = np.where(better[:, None], n1, q1)
        index = np.where(better[:, None], new_index, index)
        error = np.where(better, new_error, error)
    # Pixel 0's index has 3 bits: its top bit must be 0, so swap the endpoints where it is 1 (weights are symmetric).
    swap = index[:, 0] >= 8
    q0, q1 = np.where(swap[:, None], q1, q0), np.where(swap[:, None], q0, q1)
    index = np.where(swap[:, None], 15 - index, index)
    n = blocks.shape[0]
    lo = np.zeros(n, np.uint64)
    hi = np.zeros(n, np.uint64)
    _put(lo, hi, np.full(n, 0x03), 0, 5)
    for ch in range(3):
        _put(lo, hi, q0[:, ch], 5 + 10 * ch, 10)
    for ch in range(3):
        _put(lo, hi, q1[:, ch], 35 + 10 * ch, 10)
    _put(lo, hi, index[:, 0], 65, 3)
    for i in range(1, 16):
        _put(lo, hi, index[:, i], 68 + 4 * (i - 1), 4)
    return np.stack([lo, hi], axis=1).astype("<u8").tobytes()


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "BC1": encode_bc1,
    "BC2": encode_bc2,
    "BC3": lambda pixels: encode_bc3(_rgba(pixels)),
    "BC4": encode_bc4,
    "BC5": encode_bc5,
    "BC6H": encode_bc6h,
    "BC6H_SF16": lambda pixels: encode_bc6h(pixels, signed=True),
    "BC7": lambda pixels: encode_bc7(_rgba(pixels)),
}
