"""Greyscale PNG decode to (rows, columns) for BoneMet: libdeflate inflate plus a numba unfilter.

BoneMet stores every image as a non-interlaced greyscale PNG of bit depth 8 (reconstructed slices)
or 16 (projections).  For those two formats :func:`decode_png` walks the chunks itself (signature,
IHDR, the CRC of every chunk), inflates the concatenated IDAT payload with the fastest inflater that
imagecodecs exposes (libdeflate, measured at about twice zlib's speed on CT slices), passing the
exact output size the IHDR implies, and undoes the five per-scanline PNG filters in one compiled
pass that also swaps 16-bit samples from big-endian to native order.  Every other PNG format goes
to ``imagecodecs.png_decode`` and is accepted only when it decodes to one channel.

The function is pure and Dask-free: bytes in, one 2-D array out.  It never opens files; a caller
that reads a path adds the path to the :class:`PngDecodeError` it re-raises.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from typing import Final

import numpy as np
from numba import njit

__all__ = ["PngDecodeError", "decode_png"]

logger = logging.getLogger(__name__)

_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_CHUNK_HEAD: Final = struct.Struct(">I4s")
_IHDR: Final = struct.Struct(">IIBBBBB")
_MAX_CHUNK: Final = 2**31 - 1
# A deflate stream expands at most 1032:1 (a 258-byte match in 2 bits); the margin covers the zlib
# header, adler32 and final block.  A larger IHDR size than this allows is a truncated stream or a
# decompression bomb, and is refused before anything is allocated.
_MAX_INFLATE_RATIO: Final = 1032
_INFLATE_SLACK: Final = 1024
_COLOUR_TYPES: Final[dict[int, str]] = {
    0: "greyscale",
    2: "RGB",
    3: "palette (indexed colour)",
    4: "greyscale+alpha",
    6: "RGBA",
}
_ALLOWED_BIT_DEPTHS: Final[dict[int, tuple[int, ...]]] = {
    0: (1, 2, 4, 8, 16),
    2: (8, 16),
    3: (1, 2, 4, 8),
    4: (8, 16),
    6: (8, 16),
}
_MULTI_CHANNEL: Final = frozenset({2, 4, 6})
_SUPPORTED: Final = "single-channel PNG (greyscale, or a palette image that decodes to one channel)"
_LITTLE_ENDIAN: Final = sys.byteorder == "little"

_scratch = threading.local()


def _scratch_buffer(name: str, size: int) -> np.ndarray:
    """A per-thread byte buffer of at least ``size`` bytes, reused from call to call.

    The inflated scanlines and the joined IDAT payload are consumed before the next decode on
    the same thread, so one buffer each serves every slice: no multi-megabyte allocation per
    slice (on a Dask worker, where ``MALLOC_TRIM_THRESHOLD_`` is set, each would be fresh
    pages from the kernel).
    """
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(max(size, 1 << 16), np.uint8)
        setattr(_scratch, name, buffer)
    return buffer[:size]


class PngDecodeError(ValueError):
    """PNG bytes that are corrupt, truncated or of a format :func:`decode_png` does not return.

    Attributes
    ----------
    reason : str
        Short machine-readable cause: ``"not-png"`` (no PNG signature), ``"bad-ihdr"``,
        ``"truncated"`` (the bytes end inside a chunk, or IDAT or IEND is missing), ``"bad-crc"``,
        ``"bad-data"`` (inflate failed, the decompressed size is wrong, a bad filter type, an
        unknown critical chunk) or ``"unsupported"`` (a multi-channel image).
    """

    def __init__(self, message: str, *, reason: str = "bad-data") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep ``reason`` when pickled to and from Dask workers
        return (_rebuild_error, (str(self), self.reason))


def _rebuild_error(message: str, reason: str) -> PngDecodeError:
    return PngDecodeError(message, reason=reason)


def decode_png(
    data: bytes | bytearray | memoryview | np.ndarray,
    *,
    out: np.ndarray | None = None,
    check_crc: bool = True,
) -> np.ndarray:
    """Decode one greyscale PNG to a (rows, columns) array of uint8 or native-order uint16.

    Parameters
    ----------
    data : bytes-like
        The whole PNG file (anything exposing the buffer protocol: ``bytes``, ``bytearray``,
        ``memoryview``, a contiguous ``numpy`` array).
    out : numpy.ndarray, optional
        A C-contiguous, writeable array of shape ``(height, width)`` and the decoded dtype
        (``uint8`` for bit depth 8 or less, native ``uint16`` for 16) to decode into, e.g. one
        plane of a preallocated slab.  When omitted a new array is returned.
    check_crc : bool, default True
        Verify the CRC-32 of every chunk.  It cost 4-6 % of a decode in
        ``benchmarks/bench_png_zarr.py`` (libdeflate's CRC runs at tens of GB/s; most of the
        cost is per-chunk overhead over libpng's 8 KiB IDAT chunks); switch it off only for
        bytes already verified.

    Returns
    -------
    numpy.ndarray
        ``(height, width)``: row 0 is the top of the image (the first scanline in the file),
        column 0 its left edge.  ``out`` itself when given.

    Raises
    ------
    PngDecodeError
        The bytes are not a complete, valid PNG (the message names the problem and the offending
        value; the caller adds the path), or the image has more than one channel (RGB, RGBA,
        greyscale+alpha, a colour palette).
    ValueError
        ``out`` has the wrong shape or dtype, or is not C-contiguous and writeable.

    Notes
    -----
    Non-interlaced greyscale of bit depth 8 or 16 (what BoneMet uses) is decoded here: chunk walk
    and CRC check, libdeflate inflate of the concatenated IDAT payload (with its zlib header and
    Adler-32 checked) into a buffer of exactly ``height * (1 + width * bytes_per_pixel)`` bytes,
    then a numba pass that undoes the None/Sub/Up/Average/Paeth filters and byte-swaps 16-bit
    samples.  Everything else valid (bit depths 1, 2 or 4, Adam7 interlacing, palette images) is
    handed to ``imagecodecs.png_decode``; its result is returned only if it is single-channel
    (low bit depths come back as uint8 with libpng's scaling).  Ancillary chunks (``gAMA``,
    ``tEXt``, ``pHYs``...) are CRC-checked and otherwise ignored; bytes after IEND are ignored.
    """
    buf = memoryview(data)
    if buf.ndim != 1 or buf.itemsize != 1:
        buf = buf.cast("B")
    width, height, depth, colour, interlace, idat = _walk_chunks(buf, check_crc=check_crc)
    if colour in _MULTI_CHANNEL:
        raise PngDecodeError(
            f"PNG is {_COLOUR_TYPES[colour]} ({depth}-bit, colour type {colour}), which has more "
            f"than one channel; only {_SUPPORTED} is supported: convert it to greyscale first",
            reason="unsupported",
        )
    pixel_bytes = height * ((width * depth + 7) // 8)  # a lower bound, filter bytes aside
    if pixel_bytes > _MAX_INFLATE_RATIO * len(idat) + _INFLATE_SLACK:
        raise PngDecodeError(
            f"IDAT holds {len(idat)} compressed bytes, too few to inflate to the {pixel_bytes} "
            f"bytes that a {width}x{height} {depth}-bit image needs: the data is truncated (or "
            "the IHDR size is corrupt)",
            reason="truncated",
        )
    if colour != 0 or depth not in (8, 16) or interlace:
        return _decode_fallback(buf, colour, depth, interlace, out)

    dtype = np.dtype(np.uint8) if depth == 8 else np.dtype(np.uint16)
    out = _check_out(out, (height, width), dtype)
    bpp = depth // 8
    stride = width * bpp
    size = height * (stride + 1)
    raw = np.frombuffer(_inflate(idat, size), dtype=np.uint8)
    if raw.size != size:
        raise PngDecodeError(
            f"IDAT inflates to {raw.size} bytes but a {width}x{height} {depth}-bit image needs "
            f"{size} (height * (1 + width * {bpp})): the image data is truncated or corrupt",
        )
    bad_row = _unfilter(raw, out.view(np.uint8).reshape(height, stride), bpp)
    if bad_row >= 0:
        filter_type = int(raw[bad_row * (stride + 1)])
        raise PngDecodeError(
            f"scanline {bad_row} has filter type {filter_type}; PNG filter types are 0-4 "
            "(None, Sub, Up, Average, Paeth): the image data is corrupt"
        )
    if bpp == 2 and _LITTLE_ENDIAN:
        _swap16(out)
    return out


def _walk_chunks(
    buf: memoryview, *, check_crc: bool
) -> tuple[int, int, int, int, int, bytes | memoryview]:
    """Validate signature, IHDR, chunk lengths and CRCs; return IHDR fields and the IDAT payload."""
    crc32 = _crc32_function()
    total = len(buf)
    if total < 8 or buf[:8] != _SIGNATURE:
        raise PngDecodeError(
            f"not a PNG: the first bytes are {bytes(buf[:8])!r}, not the PNG signature "
            f"{_SIGNATURE!r}",
            reason="not-png",
        )
    pos = 8
    header: tuple[int, int, int, int, int] | None = None
    idat: list[memoryview] = []
    while True:
        if pos + 12 > total:
            raise PngDecodeError(
                f"truncated PNG: {total} bytes end at offset {pos} without an IEND chunk",
                reason="truncated",
            )
        length, ctype = _CHUNK_HEAD.unpack_from(buf, pos)
        end = pos + 8 + length
        if length > _MAX_CHUNK or end + 4 > total:
            raise PngDecodeError(
                f"truncated PNG: chunk {ctype!r} at offset {pos} declares {length} bytes but the "
                f"data ends {total - pos - 12} bytes into it",
                reason="truncated",
            )
        if check_crc:
            (stored,) = struct.unpack_from(">I", buf, end)
            computed = crc32(buf[pos + 4 : end])
            if computed != stored:
                raise PngDecodeError(
                    f"CRC mismatch in chunk {ctype!r} at offset {pos}: stored {stored:#010x}, "
                    f"computed {computed:#010x}: the file is corrupt",
                    reason="bad-crc",
                )
        payload = buf[pos + 8 : end]
        if header is None:
            if ctype != b"IHDR":
                raise PngDecodeError(
                    f"the first chunk is {ctype!r}, not IHDR: the PNG header is corrupt",
                    reason="bad-ihdr",
                )
            header = _parse_ihdr(payload)
        elif ctype == b"IDAT":
            idat.append(payload)
        elif ctype == b"IEND":
            break
        elif ctype == b"IHDR" or (ctype[0] & 0x20 == 0 and ctype != b"PLTE"):
            raise PngDecodeError(
                f"unexpected critical chunk {ctype!r} at offset {pos}: the PNG is corrupt or "
                "uses an extension this decoder does not know",
            )
        pos = end + 4
    if not idat:
        raise PngDecodeError("PNG has no IDAT chunk: there is no image data", reason="truncated")
    if end + 4 < total:
        logger.debug("ignoring %d bytes after the IEND chunk", total - end - 4)
    if len(idat) == 1:
        return (*header, idat[0])
    joined = _scratch_buffer("idat", sum(len(part) for part in idat))
    at = 0
    for part in idat:
        joined[at : at + len(part)] = np.frombuffer(part, np.uint8)
        at += len(part)
    return (*header, memoryview(joined))


def _parse_ihdr(payload: memoryview) -> tuple[int, int, int, int, int]:
    if len(payload) != 13:
        raise PngDecodeError(
            f"IHDR holds {len(payload)} bytes, not 13: the PNG header is corrupt",
            reason="bad-ihdr",
        )
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack(payload)
    problems = []
    if not 0 < width <= _MAX_CHUNK or not 0 < height <= _MAX_CHUNK:
        problems.append(f"size {width}x{height} (each side must be 1 to 2**31-1)")
    if colour not in _ALLOWED_BIT_DEPTHS:
        problems.append(f"colour type {colour} (PNG allows {sorted(_ALLOWED_BIT_DEPTHS)})")
    elif depth not in _ALLOWED_BIT_DEPTHS[colour]:
        problems.append(
            f"bit depth {depth} for colour type {colour} (allowed: {_ALLOWED_BIT_DEPTHS[colour]})"
        )
    if compression or filtering:
        problems.append(f"compression method {compression} / filter method {filtering} (not 0)")
    if interlace not in (0, 1):
        problems.append(f"interlace method {interlace} (0 or 1)")
    if problems:
        raise PngDecodeError(
            "invalid IHDR: " + "; ".join(problems) + ": the PNG header is corrupt",
            reason="bad-ihdr",
        )
    return width, height, depth, colour, interlace


def _check_out(out: np.ndarray | None, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype:
        got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(
            f"out must be a numpy array of shape {shape} and dtype {dtype} for this PNG, got "
            f"{got}: pass a matching array or out=None"
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(
            "out must be C-contiguous and writeable (got "
            f"c_contiguous={out.flags.c_contiguous}, writeable={out.flags.writeable}): pass a "
            "contiguous plane such as slab[i] of a C-ordered slab, or out=None"
        )
    return out


def _decode_fallback(
    buf: memoryview, colour: int, depth: int, interlace: int, out: np.ndarray | None
) -> np.ndarray:
    """Formats outside the fast path: decode with imagecodecs, keep only single-channel results."""
    import imagecodecs

    described = f"{_COLOUR_TYPES[colour]} {depth}-bit{' Adam7-interlaced' if interlace else ''} PNG"
    logger.debug("decoding %s with imagecodecs.png_decode", described)
    try:
        image = imagecodecs.png_decode(buf)
    except Exception as exc:  # imagecodecs.PngError and friends: report as corrupt data
        raise PngDecodeError(f"imagecodecs could not decode the {described}: {exc}") from exc
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise PngDecodeError(
            f"the {described} decodes to {image.shape[-1]} channels; only {_SUPPORTED} is "
            "supported: convert it to greyscale first",
            reason="unsupported",
        )
    if out is None:
        return np.ascontiguousarray(image)
    _check_out(out, image.shape, image.dtype)[...] = image
    return out


def _crc32_function() -> Callable[[memoryview], int]:
    """CRC-32 of libdeflate (PCLMUL, several times zlib's speed) when imagecodecs has it."""
    try:
        import imagecodecs

        if imagecodecs.DEFLATE.available:
            return imagecodecs.deflate_crc32
    except (ImportError, AttributeError):  # pragma: no cover - imagecodecs is a dependency
        pass
    return zlib.crc32  # pragma: no cover


def _inflate(stream: bytes | memoryview, size: int) -> bytes:
    """Inflate a zlib stream that must hold ``size`` bytes: libdeflate, else zlib-ng, else zlib."""
    try:
        import imagecodecs

        if imagecodecs.DEFLATE.available:
            # libdeflate with the zlib wrapper (raw=False): it checks the header and Adler-32 and
            # writes straight into a buffer of the known size; it fails if the stream needs more.
            decode = imagecodecs.deflate_decode
        elif imagecodecs.ZLIBNG.available:  # pragma: no cover - depends on the imagecodecs build
            decode = imagecodecs.zlibng_decode
        else:  # pragma: no cover
            decode = imagecodecs.zlib_decode
    except (ImportError, AttributeError):  # pragma: no cover - imagecodecs is a dependency
        decode = None
    try:
        if decode is None:  # pragma: no cover
            return zlib.decompress(stream, bufsize=size)
        if decode is imagecodecs.deflate_decode:  # into this thread's reused buffer
            return decode(stream, out=_scratch_buffer("inflate", size))
        return decode(stream, out=size)
    except Exception as exc:  # DeflateError / ZlibError / zlib.error
        raise PngDecodeError(
            f"inflating the IDAT stream to {size} bytes failed ({exc}): the image data is "
            "truncated or corrupt"
        ) from exc


@njit(cache=True, nogil=True, inline="always")
def _paeth(a: int, b: int, c: int) -> int:  # pragma: no cover
    """The PNG Paeth predictor of left ``a``, above ``b``, upper-left ``c``, without branches.

    Noisy CT rows make the predictor's choice random, so a branching version mispredicts about
    every other byte; the multiplications by 0/1 below compile to conditional moves.
    """
    pa = abs(b - c)
    pb = abs(a - c)
    pc = abs(a + b - c - c)
    not_c = np.int32(pb <= pc)
    pick = c + (b - c) * not_c
    use_a = np.int32(pa <= pb) & np.int32(pa <= pc)
    return pick + (a - pick) * use_a


@njit(cache=True, nogil=True)
def _unfilter(raw: np.ndarray, out: np.ndarray, bpp: int) -> int:  # pragma: no cover
    """Undo PNG filters of ``raw`` into ``out`` (rows, bytes per row); -1, or the first bad row.

    ``raw`` is the inflated stream: per row one filter-type byte, then the filtered bytes.  The
    left neighbours (one byte for 8-bit, two for 16-bit samples) are carried in registers, so
    the serial filters (Sub, Average, Paeth) run at the latency of their arithmetic rather than of
    a store-to-load round trip; None and Up are plain vectorisable loops.
    """
    height, stride = out.shape
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        cur = raw[start + 1 : start + 1 + stride]
        row = out[y]
        prior = out[y - 1] if y > 0 else row
        if y == 0 and kind == 2:  # Up below the implicit zero row is None
            kind = 0
        elif y == 0 and kind == 4:  # Paeth(left, 0, 0) is left: Sub
            kind = 1
        if kind == 0:
            for p in range(stride):
                row[p] = cur[p]
        elif kind == 2:
            for p in range(stride):
                row[p] = cur[p] + prior[p]
        elif kind > 4:
            return y
        elif bpp == 1:
            _unfilter_serial8(kind, y == 0, cur, prior, row)
        else:
            _unfilter_serial16(kind, y == 0, cur, prior, row)
    return -1


@njit(cache=True, nogil=True, inline="always")
def _unfilter_serial8(
    kind: int, first: bool, cur: np.ndarray, prior: np.ndarray, row: np.ndarray
) -> None:  # pragma: no cover
    """Sub (1), Average (3) or Paeth (4) of one 8-bit row; ``first``: no row above."""
    left = np.int32(0)
    if kind == 1:
        for x in range(row.size):
            left = (cur[x] + left) & 0xFF
            row[x] = left
    elif kind == 3 and first:
        for x in range(row.size):
            left = (cur[x] + (left >> 1)) & 0xFF
            row[x] = left
    elif kind == 3:
        for x in range(row.size):
            left = (cur[x] + ((left + np.int32(prior[x])) >> 1)) & 0xFF
            row[x] = left
    else:
        upleft = np.int32(0)
        for x in range(row.size):
            up = np.int32(prior[x])
            left = (cur[x] + _paeth(left, up, upleft)) & 0xFF
            upleft = up
            row[x] = left


@njit(cache=True, nogil=True, inline="always")
def _unfilter_serial16(
    kind: int, first: bool, cur: np.ndarray, prior: np.ndarray, row: np.ndarray
) -> None:  # pragma: no cover
    """Sub (1), Average (3) or Paeth (4) of one 16-bit row (big-endian byte pairs)."""
    hi = np.int32(0)
    lo = np.int32(0)
    if kind == 1:
        for x in range(0, row.size, 2):
            hi = (cur[x] + hi) & 0xFF
            lo = (cur[x + 1] + lo) & 0xFF
            row[x] = hi
            row[x + 1] = lo
    elif kind == 3 and first:
        for x in range(0, row.size, 2):
            hi = (cur[x] + (hi >> 1)) & 0xFF
            lo = (cur[x + 1] + (lo >> 1)) & 0xFF
            row[x] = hi
            row[x + 1] = lo
    elif kind == 3:
        for x in range(0, row.size, 2):
            hi = (cur[x] + ((hi + np.int32(prior[x])) >> 1)) & 0xFF
            lo = (cur[x + 1] + ((lo + np.int32(prior[x + 1])) >> 1)) & 0xFF
            row[x] = hi
            row[x + 1] = lo
    else:
        uphi = np.int32(0)
        uplo = np.int32(0)
        for x in range(0, row.size, 2):
            up = np.int32(prior[x])
            hi = (cur[x] + _paeth(hi, up, uphi)) & 0xFF
            uphi = up
            up = np.int32(prior[x + 1])
            lo = (cur[x + 1] + _paeth(lo, up, uplo)) & 0xFF
            uplo = up
            row[x] = hi
            row[x + 1] = lo


@njit(cache=True, nogil=True)
def _swap16(samples: np.ndarray) -> None:  # pragma: no cover
    """Swap the bytes of every uint16 of a 2-D array in place (big-endian file order to native)."""
    for y in range(samples.shape[0]):
        row = samples[y]
        for x in range(row.size):
            v = row[x]
            row[x] = (v >> 8) | (v << 8)
