"""decode_png against imagecodecs, Pillow and an independent per-row-filter PNG encoder."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from bonemet_dask.kernels.png_decode import PngDecodeError, decode_png

SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- an independent reference encoder: every row uses the filter the test asks for ---------------


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + ctype
        + payload
        + struct.pack(">I", zlib.crc32(ctype + payload))
    )


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a, b, c = (v.astype(np.int32) for v in (a, b, c))
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_row(kind: int, row: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    """PNG spec section 9.2 filters of one row of bytes (int arithmetic, modulo 256)."""
    x = row.astype(np.int32)
    left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
    up = prior.astype(np.int32)
    upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
    predictor = {
        0: np.zeros_like(x),
        1: left,
        2: up,
        3: (left + up) >> 1,
        4: _paeth(left, up, upleft) if len(x) else np.zeros_like(x),
    }[kind]
    return ((x - predictor) % 256).astype(np.uint8)


def encode_png(
    image: np.ndarray,
    *,
    filters: list[int] | int | None = None,
    idat_size: int | None = None,
    colour: int = 0,
    interlace: int = 0,
) -> bytes:
    """Tiny PNG encoder: row ``y`` uses ``filters[y % len(filters)]``, IDAT cut every idat_size."""
    height, width = image.shape[:2]
    depth = 8 * image.dtype.itemsize
    big = image.astype(image.dtype.newbyteorder(">"))
    rows = np.ascontiguousarray(big).view(np.uint8).reshape(height, -1)
    bpp = rows.shape[1] // width
    kinds = [filters] if isinstance(filters, int) else (filters or list(range(5)))
    prior = np.zeros(rows.shape[1], np.uint8)
    lines = []
    for y in range(height):
        kind = kinds[y % len(kinds)]
        lines.append(bytes([kind]) + _filter_row(kind, rows[y], prior, bpp).tobytes())
        prior = rows[y]
    stream = zlib.compress(b"".join(lines), 6)
    size = idat_size or len(stream)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    body = [_chunk(b"IHDR", ihdr), _chunk(b"tEXt", b"Software\x00test")]
    body += [_chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size)]
    return SIGNATURE + b"".join(body) + _chunk(b"IEND", b"")


# --- images --------------------------------------------------------------------------------------


def ct_like(shape: tuple[int, int], dtype: type, seed: int = 0) -> np.ndarray:
    """Smooth bone-like content plus noise inside a disc, zero background outside."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    top = np.iinfo(dtype).max
    smooth = 0.4 + 0.2 * np.sin(x / 7.0) * np.cos(y / 11.0)
    image = top * np.clip(smooth + rng.normal(0, 0.05, shape), 0, 1)
    disc = np.hypot(y - h / 2, x - w / 2) < 0.45 * max(h, w)
    return np.where(disc, image, 0).astype(dtype)


def random_image(shape: tuple[int, int], dtype: type, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True
    )


SHAPES = [(1, 1), (1, 17), (5, 1), (3, 3), (17, 17), (9, 1001), (64, 100)]
DTYPES = [np.uint8, np.uint16]


# --- agreement with imagecodecs and Pillow -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [random_image, ct_like])
def test_matches_imagecodecs_and_pillow(make, shape, dtype) -> None:
    image = make(shape, dtype)
    data = imagecodecs.png_encode(image, level=6)
    decoded = decode_png(data)
    assert decoded.dtype == np.dtype(dtype) and decoded.dtype.isnative
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, image)
    np.testing.assert_array_equal(decoded, imagecodecs.png_decode(data))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_png(buffer.getvalue()), image)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (6, 3), (7, 1001), (33, 64)])
def test_every_filter_type(kind, shape, dtype) -> None:
    for make in (random_image, ct_like):
        image = make(shape, dtype, seed=kind)
        data = encode_png(image, filters=kind)
        np.testing.assert_array_equal(imagecodecs.png_decode(data), image)  # reference is valid
        np.testing.assert_array_equal(decode_png(data), image)
        # a dirty out catches any read of an output byte before it is written
        dirty = np.full(shape, np.iinfo(dtype).max // 3, dtype)
        np.testing.assert_array_equal(decode_png(data, out=dirty), image)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_filters_and_many_idat_chunks(dtype) -> None:
    image = ct_like((40, 123), dtype, seed=3)
    data = encode_png(image, filters=[4, 3, 0, 2, 1, 3, 3, 4], idat_size=97)
    assert data.count(b"IDAT") > 10
    np.testing.assert_array_equal(decode_png(data), image)
    np.testing.assert_array_equal(decode_png(data, check_crc=False), image)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_filled_in_place(dtype) -> None:
    image = ct_like((20, 31), dtype)
    slab = np.zeros((3, 20, 31), dtype)
    result = decode_png(imagecodecs.png_encode(image), out=slab[1])
    assert np.shares_memory(result, slab)
    np.testing.assert_array_equal(slab[1], image)
    assert not slab[0].any() and not slab[2].any()


def test_accepts_any_buffer() -> None:
    image = ct_like((8, 9), np.uint16)
    data = encode_png(image)
    for wrapped in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(decode_png(wrapped), image)


@pytest.mark.parametrize(
    ("out", "match"),
    [
        (np.zeros((20, 30), np.uint8), r"shape \(20, 31\) and dtype uint8"),
        (np.zeros((20, 31), np.uint16), "dtype uint8"),
        (np.zeros((20, 62), np.uint8)[:, ::2], "C-contiguous"),
        ([[0] * 31] * 20, "got list"),
    ],
)
def test_bad_out_names_the_argument(out, match) -> None:
    data = imagecodecs.png_encode(ct_like((20, 31), np.uint8))
    with pytest.raises(ValueError, match=match) as info:
        decode_png(data, out=out)
    assert "out" in str(info.value)
    assert not isinstance(info.value, PngDecodeError)


def test_read_only_out_refused() -> None:
    out = np.zeros((4, 5), np.uint8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        decode_png(imagecodecs.png_encode(np.ones((4, 5), np.uint8)), out=out)


# --- formats outside the fast path ---------------------------------------------------------------


def test_rgb_is_unsupported() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(PngDecodeError, match="RGB") as info:
        decode_png(imagecodecs.png_encode(rgb))
    assert info.value.reason == "unsupported"
    assert "greyscale" in str(info.value)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P"])
def test_other_multichannel_formats_are_unsupported(mode) -> None:
    buffer = io.BytesIO()
    image = Image.new(mode, (6, 4))
    if mode == "P":
        image.putpalette([255, 0, 0, 0, 255, 0])
    image.save(buffer, format="PNG")
    with pytest.raises(PngDecodeError, match="only single-channel") as info:
        decode_png(buffer.getvalue())
    assert info.value.reason == "unsupported"


def test_low_bit_depth_greyscale_falls_back() -> None:
    image = np.random.default_rng(0).integers(0, 2, (7, 13)).astype(bool)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # mode "1": 1-bit greyscale
    data = buffer.getvalue()
    assert data[24] == 1  # bit depth byte in IHDR
    expected = imagecodecs.png_decode(data)
    decoded = decode_png(data)
    assert decoded.ndim == 2
    np.testing.assert_array_equal(decoded, expected.reshape(decoded.shape))
    out = np.empty_like(decoded)
    assert decode_png(data, out=out) is out
    np.testing.assert_array_equal(out, decoded)


ADAM7 = [
    (0, 0, 8, 8),
    (0, 4, 8, 8),
    (4, 0, 8, 4),
    (0, 2, 4, 4),
    (2, 0, 4, 2),
    (0, 1, 2, 2),
    (1, 0, 2, 1),
]


def encode_adam7(image: np.ndarray) -> bytes:
    """Adam7-interlaced greyscale PNG, filter None: each pass is a sub-image in scanline order."""
    height, width = image.shape
    big = image.astype(image.dtype.newbyteorder(">"))
    lines = []
    for y0, x0, dy, dx in ADAM7:
        sub = np.ascontiguousarray(big[y0::dy, x0::dx])
        if sub.size:
            lines += [b"\x00" + row.tobytes() for row in sub]
    ihdr = struct.pack(">IIBBBBB", width, height, 8 * image.dtype.itemsize, 0, 0, 0, 1)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(lines)))
    return SIGNATURE + body + _chunk(b"IEND", b"")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (13, 21)])
def test_interlaced_greyscale_falls_back(dtype, shape) -> None:
    image = ct_like(shape, dtype)
    data = encode_adam7(image)
    np.testing.assert_array_equal(imagecodecs.png_decode(data), image)  # the reference is valid
    decoded = decode_png(data)
    assert decoded.dtype == np.dtype(dtype) and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, image)


# --- corrupt data --------------------------------------------------------------------------------


@pytest.fixture
def good() -> bytes:
    return encode_png(ct_like((16, 19), np.uint16), filters=[1, 2, 3, 4], idat_size=200)


def _chunks(data: bytes) -> list[tuple[int, bytes]]:
    pos, found = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        found.append((pos, data[pos + 4 : pos + 8]))
        pos += 12 + length
    return found


def test_bad_crc(good) -> None:
    pos = next(p for p, ctype in _chunks(good) if ctype == b"IDAT")
    corrupt = bytearray(good)
    corrupt[pos + 20] ^= 0x40
    with pytest.raises(PngDecodeError, match="CRC mismatch in chunk b'IDAT'") as info:
        decode_png(bytes(corrupt))
    assert info.value.reason == "bad-crc"
    with pytest.raises(PngDecodeError):  # the flipped bit also breaks inflate or Adler-32
        decode_png(bytes(corrupt), check_crc=False)


def test_bad_crc_in_ancillary_chunk(good) -> None:
    pos = next(p for p, ctype in _chunks(good) if ctype == b"tEXt")
    corrupt = bytearray(good)
    corrupt[pos + 9] ^= 1
    with pytest.raises(PngDecodeError, match="tEXt"):
        decode_png(bytes(corrupt))
    np.testing.assert_array_equal(decode_png(bytes(corrupt), check_crc=False), decode_png(good))


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_file(good, keep) -> None:
    with pytest.raises(PngDecodeError, match="truncated") as info:
        decode_png(good[: int(len(good) * keep)])
    assert info.value.reason == "truncated"


def test_truncated_idat_stream() -> None:
    """A complete file whose single IDAT holds only part of the zlib stream, with valid CRCs."""
    image = random_image((30, 40), np.uint8)
    stream = zlib.compress(b"".join(b"\x00" + r.tobytes() for r in image))
    ihdr = struct.pack(">IIBBBBB", 40, 30, 8, 0, 0, 0, 0)
    data = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream[: len(stream) // 2])
    data += _chunk(b"IEND", b"")
    with pytest.raises(PngDecodeError, match="truncated"):
        decode_png(data)


def test_missing_iend(good) -> None:
    with pytest.raises(PngDecodeError, match="without an IEND chunk"):
        decode_png(good[:-12])


def test_missing_idat() -> None:
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    data = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    with pytest.raises(PngDecodeError, match="no IDAT"):
        decode_png(data)


@pytest.mark.parametrize(("height", "width"), [(16, 20), (17, 19), (15, 19), (16, 18)])
def test_wrong_ihdr_size(good, height, width) -> None:
    ihdr = bytearray(good[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    corrupt = good[:8] + _chunk(b"IHDR", bytes(ihdr)) + good[33:]
    with pytest.raises(PngDecodeError, match=r"IDAT inflates to|inflating the IDAT stream"):
        decode_png(corrupt)


def test_huge_ihdr_refused_before_allocating(good) -> None:
    ihdr = bytearray(good[16:29])
    ihdr[0:8] = struct.pack(">II", 2**31 - 1, 2**31 - 1)
    corrupt = good[:8] + _chunk(b"IHDR", bytes(ihdr)) + good[33:]
    with pytest.raises(PngDecodeError, match="too few to inflate"):
        decode_png(corrupt)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (8, 12, "bit depth 12"),
        (9, 5, "colour type 5"),
        (10, 1, "compression"),
        (12, 2, "interlace"),
    ],
)
def test_invalid_ihdr_fields(good, field, value, match) -> None:
    ihdr = bytearray(good[16:29])
    ihdr[field] = value
    corrupt = good[:8] + _chunk(b"IHDR", bytes(ihdr)) + good[33:]
    with pytest.raises(PngDecodeError, match=match) as info:
        decode_png(corrupt)
    assert info.value.reason == "bad-ihdr"


def test_not_png_and_bad_first_chunk(good) -> None:
    with pytest.raises(PngDecodeError, match="signature") as info:
        decode_png(b"GIF89a" + good[6:])
    assert info.value.reason == "not-png"
    with pytest.raises(PngDecodeError, match="not IHDR"):
        decode_png(good[:8] + _chunk(b"gAMA", b"\x00\x00\xb1\x8f") + good[8:])
    with pytest.raises(PngDecodeError, match="13"):
        decode_png(good[:8] + _chunk(b"IHDR", good[16:28]) + good[33:])


def test_bad_filter_type() -> None:
    image = random_image((5, 6), np.uint8)
    lines = [b"\x00" + r.tobytes() for r in image]
    lines[3] = b"\x07" + image[3].tobytes()
    ihdr = struct.pack(">IIBBBBB", 6, 5, 8, 0, 0, 0, 0)
    data = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(lines)))
    with pytest.raises(PngDecodeError, match="scanline 3 has filter type 7"):
        decode_png(data + _chunk(b"IEND", b""))


def test_unknown_critical_chunk(good) -> None:
    pos = next(p for p, ctype in _chunks(good) if ctype == b"IDAT")
    corrupt = good[:pos] + _chunk(b"ABCD", b"x") + good[pos:]
    with pytest.raises(PngDecodeError, match="critical chunk b'ABCD'"):
        decode_png(corrupt)
    ancillary = good[:pos] + _chunk(b"abCD", b"x") + good[pos:]
    np.testing.assert_array_equal(decode_png(ancillary), decode_png(good))


def test_trailing_bytes_after_iend_are_ignored(good) -> None:
    np.testing.assert_array_equal(decode_png(good + b"junk"), decode_png(good))


def test_error_pickles_with_reason(good) -> None:
    with pytest.raises(PngDecodeError) as info:
        decode_png(good[:-12])
    clone = pickle.loads(pickle.dumps(info.value))
    assert clone.reason == "truncated" and str(clone) == str(info.value)
    assert isinstance(clone, ValueError)
