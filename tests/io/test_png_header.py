import io
import struct
import zlib

import fsspec
import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bonemet_dask.io import png_header
from bonemet_dask.io.png_header import (
    COLOUR_TYPE_NAMES,
    CONVERTIBLE_COLOUR_TYPES,
    HEADER_NBYTES,
    PNG_SIGNATURE,
    PngHeader,
    PngHeaderError,
    parse_png_header,
    read_png_headers,
)


def _pillow_png(mode: str, size=(7, 5), **save) -> bytes:
    image = Image.new(mode, size)
    if mode == "P":
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def ihdr_png(width, height, bit_depth=8, colour_type=0, interlace=0, *, crc=None) -> bytes:
    """Signature + IHDR chunk only (what a crafted decompression bomb starts with)."""
    body = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    chunk = b"IHDR" + body
    crc = zlib.crc32(chunk) if crc is None else crc
    return PNG_SIGNATURE + struct.pack(">I", 13) + chunk + struct.pack(">I", crc & 0xFFFFFFFF)


ENCODED = {
    "grey8": imagecodecs.png_encode(np.arange(35, dtype=np.uint8).reshape(5, 7)),
    "grey16": imagecodecs.png_encode(np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000),
    "rgb8": imagecodecs.png_encode(np.zeros((5, 7, 3), np.uint8)),
    "rgb16": imagecodecs.png_encode(np.zeros((5, 7, 3), np.uint16)),
    "rgba8": imagecodecs.png_encode(np.zeros((5, 7, 4), np.uint8)),
    "grey_alpha": _pillow_png("LA"),
    "palette": _pillow_png("P"),
    "palette_2bit": _pillow_png("P", bits=2),
    "bilevel": _pillow_png("1"),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_header_agrees_with_pillow_and_imagecodecs(name):
    data = ENCODED[name]
    header = parse_png_header(data)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (header.width, header.height) == (7, 5)
        pixels = np.asarray(image)
        mode = image.mode
    # Pillow keeps palette indices and bilevel data as one channel per pixel
    assert (1 if pixels.ndim == 2 else pixels.shape[2]) == header.channels
    assert (mode == "P") == (header.colour_type == 3)
    if header.colour_type != 3:  # imagecodecs expands palettes to RGB
        decoded = imagecodecs.png_decode(data)
        assert decoded.shape[:2] == (header.height, header.width)
        assert decoded.dtype == np.dtype(header.dtype)
        assert (1 if decoded.ndim == 2 else decoded.shape[2]) == header.channels
    assert header.interlace == 0


def test_known_field_values():
    assert parse_png_header(ENCODED["grey16"]).bit_depth == 16
    assert parse_png_header(ENCODED["grey16"]).dtype == "uint16"
    assert parse_png_header(ENCODED["bilevel"]).bit_depth == 1
    assert parse_png_header(ENCODED["bilevel"]).dtype == "uint8"
    assert parse_png_header(ENCODED["palette_2bit"]).bit_depth == 2
    assert parse_png_header(ENCODED["rgba8"]).colour_type == 6
    assert parse_png_header(ENCODED["grey_alpha"]).channels == 2


def test_only_33_bytes_are_needed_and_crafted_header_is_not_decoded():
    header = parse_png_header(ihdr_png(100_000, 100_000, 16, 0))
    assert header == PngHeader(100_000, 100_000, 16, 0, 0)
    assert header.n_pixels == 10**10
    assert parse_png_header(ENCODED["grey8"][:HEADER_NBYTES]) == parse_png_header(ENCODED["grey8"])


@pytest.mark.parametrize("length", [0, 1, 7, 8, 20, 32])
def test_truncated(length):
    with pytest.raises(PngHeaderError, match="truncated") as info:
        parse_png_header(ENCODED["grey8"][:length], path="x.png")
    assert info.value.reason == "truncated"
    assert "x.png" in str(info.value)


@pytest.mark.parametrize(
    "data", [b"GIF89a" + bytes(40), b"\xff\xd8\xff\xe0" + bytes(40), b"hello world" * 4]
)
def test_not_png(data):
    with pytest.raises(PngHeaderError, match="not a PNG") as info:
        parse_png_header(data)
    assert info.value.reason == "not-png"
    assert isinstance(info.value, ValueError)


def test_bad_crc():
    good = bytearray(ENCODED["grey8"])
    bad = bytes(good[:29]) + bytes([good[29] ^ 0xFF]) + bytes(good[30:])
    with pytest.raises(PngHeaderError, match="CRC") as info:
        parse_png_header(bad)
    assert info.value.reason == "bad-crc"
    # a flipped bit in the IHDR body (width) with the old CRC is caught too
    flipped = bytes(good[:19]) + bytes([good[19] ^ 0x01]) + bytes(good[20:])
    with pytest.raises(PngHeaderError, match="CRC"):
        parse_png_header(flipped)


def test_first_chunk_must_be_ihdr():
    data = bytearray(ENCODED["grey8"])
    data[12:16] = b"IDAT"
    with pytest.raises(PngHeaderError, match="IHDR") as info:
        parse_png_header(bytes(data))
    assert info.value.reason == "bad-ihdr"


@pytest.mark.parametrize(
    ("bit_depth", "colour_type"), [(16, 3), (4, 2), (1, 6), (2, 4), (8, 5), (3, 0), (32, 0)]
)
def test_invalid_combinations(bit_depth, colour_type):
    with pytest.raises(PngHeaderError, match="invalid IHDR") as info:
        parse_png_header(ihdr_png(4, 4, bit_depth, colour_type))
    assert info.value.reason == "invalid"


@pytest.mark.parametrize(("width", "height"), [(0, 5), (5, 0), (2**31, 5)])
def test_invalid_size(width, height):
    with pytest.raises(PngHeaderError, match="size"):
        parse_png_header(ihdr_png(width, height))


@pytest.mark.parametrize(
    ("bit_depth", "colour_type"),
    [*[(d, 0) for d in (1, 2, 4, 8, 16)], *[(d, 3) for d in (1, 2, 4, 8)]]
    + [(d, t) for d in (8, 16) for t in (2, 4, 6)],
)
def test_all_valid_combinations(bit_depth, colour_type):
    header = parse_png_header(ihdr_png(3, 2, bit_depth, colour_type, interlace=1))
    assert (header.bit_depth, header.colour_type, header.interlace) == (
        bit_depth,
        colour_type,
        1,
    )
    assert header.dtype == ("uint16" if bit_depth == 16 else "uint8")


def test_read_png_headers_local_and_memory(tmp_path):
    names = ["a.png", "b.png", "short.png", "text.png"]
    blobs = [ENCODED["grey8"], ENCODED["grey16"], ENCODED["grey8"][:20], b"not a png at all" * 3]
    for name, blob in zip(names, blobs, strict=True):
        (tmp_path / name).write_bytes(blob)
    local = fsspec.filesystem("file")
    paths = [str(tmp_path / n) for n in names] + [str(tmp_path / "missing.png")]
    memory = fsspec.filesystem("memory")
    root = f"/png-header-test-{tmp_path.name}"
    try:
        for name, blob in zip(names, blobs, strict=True):
            memory.pipe(f"{root}/{name}", blob)
        mpaths = [f"{root}/{n}" for n in names] + [f"{root}/missing.png"]
        for fs, ps in ((local, paths), (memory, mpaths)):
            result = read_png_headers(fs, ps)
            assert len(result) == 5
            assert result[0] == parse_png_header(ENCODED["grey8"])
            assert result[1].dtype == "uint16"
            assert [r.reason for r in result[2:]] == ["truncated", "not-png", "unreadable"]
            assert all(r.path == p for r, p in zip(result[2:], ps[2:], strict=True))
    finally:
        memory.rm(root, recursive=True)


def test_read_png_headers_falls_back_when_cat_ranges_fails(tmp_path):
    (tmp_path / "a.png").write_bytes(ENCODED["rgb8"])

    class NoRanges(fsspec.implementations.local.LocalFileSystem):
        cachable = False

        def cat_ranges(self, *args, **kwargs):
            raise NotImplementedError

    paths = [str(tmp_path / "a.png"), str(tmp_path / "nope.png")]
    for sizes in (None, [len(ENCODED["rgb8"]), 100]):
        result = read_png_headers(NoRanges(), paths, sizes=sizes)
        assert result[0].colour_type == 2
        assert isinstance(result[1], PngHeaderError) and result[1].reason == "unreadable"


def test_error_pickles_with_reason():
    import pickle

    error = PngHeaderError("boom", reason="bad-crc", path="p.png")
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.reason, again.path) == ("boom", "bad-crc", "p.png")


def test_truncation_after_the_header_is_found_from_the_tail(tmp_path):
    from bonemet_dask.io.png_header import PNG_IEND

    full = ENCODED["grey16"]
    assert full.endswith(PNG_IEND)
    cut = full[:-5]
    bomb = ihdr_png(100_000, 100_000, 16, 0)
    files = {"full.png": full, "cut.png": cut, "bomb.png": bomb, "bomb_end.png": bomb + PNG_IEND}
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    paths = [str(tmp_path / n) for n in files]
    sizes = [len(b) for b in files.values()]
    fs = fsspec.filesystem("file")
    full_h, cut_h, bomb_h, bomb_end_h = read_png_headers(fs, paths, sizes=sizes)
    assert full_h == parse_png_header(full)
    assert cut_h.reason == "truncated" and "IEND" in str(cut_h)
    assert cut_h.header == full_h  # the valid IHDR is kept for pixel-limit checks
    assert bomb_h.reason == "truncated" and bomb_h.header.n_pixels == 10**10
    assert bomb_end_h.n_pixels == 10**10
    # without sizes only the header is read: the cut file looks fine
    assert read_png_headers(fs, paths[:2])[1] == full_h
    with pytest.raises(ValueError, match="sizes"):
        read_png_headers(fs, paths, sizes=sizes[:1])


# ------------------------------------- what convert's decoder refuses, known from the header


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _single_idat_png(width: int, height: int, bit_depth: int, idat: bytes) -> bytes:
    body = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", body) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_convertible_colour_types_are_what_the_decoder_accepts(name):
    """The catalog quarantines exactly the colour types ``convert``'s decoder refuses."""
    from bonemet_dask.kernels.png_decode import PngDecodeError, decode_png

    header = parse_png_header(ENCODED[name])
    try:
        decoded = decode_png(ENCODED[name])
    except PngDecodeError as err:
        assert err.reason == "unsupported"
        assert header.colour_type not in CONVERTIBLE_COLOUR_TYPES
        assert COLOUR_TYPE_NAMES[header.colour_type] in str(err)
    else:
        assert header.colour_type in CONVERTIBLE_COLOUR_TYPES
        assert decoded.shape == (header.height, header.width)


def test_inflate_limits_match_the_decoder():
    from bonemet_dask.kernels import png_decode

    assert png_header._MAX_INFLATE_RATIO == png_decode._MAX_INFLATE_RATIO
    assert png_header._INFLATE_SLACK == png_decode._INFLATE_SLACK
    assert len(_single_idat_png(1, 1, 8, b"")) == png_header._PNG_OVERHEAD


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    bit_depth=st.sampled_from([1, 2, 4, 8, 16]),
    idat=st.binary(max_size=40),
)
def test_too_small_is_exactly_what_the_decoder_refuses_as_truncated(width, height, bit_depth, idat):
    """``fits_in`` is False exactly for the files ``decode_png`` refuses before inflating."""
    from bonemet_dask.kernels.png_decode import PngDecodeError, decode_png

    data = _single_idat_png(width, height, bit_depth, idat)
    header = parse_png_header(data)
    refused_unread = False
    try:
        decode_png(data)
    except PngDecodeError as err:
        refused_unread = err.reason == "truncated" and "too few" in str(err)
    assert header.fits_in(len(data)) is not refused_unread
