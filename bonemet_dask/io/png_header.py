"""PNG headers read without decoding: signature, IHDR fields and CRC from the first 33 bytes.

The catalog checks every slice of a stack before anything is decoded: a truncated file, a bad IHDR
CRC, a mismatched bit depth or a decompression bomb (an IHDR claiming 100000 x 100000 pixels) is
found from 33 bytes per file, fetched in one batched call through fsspec.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "COLOUR_TYPE_NAMES",
    "CONVERTIBLE_COLOUR_TYPES",
    "HEADER_NBYTES",
    "PNG_IEND",
    "PNG_SIGNATURE",
    "PngHeader",
    "PngHeaderError",
    "parse_png_header",
    "read_png_headers",
]

logger = logging.getLogger(__name__)

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
"""The 8-byte signature every PNG starts with."""

PNG_IEND: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"
"""The 12 bytes every complete PNG ends with: an empty IEND chunk and its CRC."""

HEADER_NBYTES: Final = 33
"""Bytes needed to parse a header: signature (8) + IHDR length/type (8) + data (13) + CRC (4)."""

# PNG spec, section 11.2.2: allowed bit depths per colour type, and samples per pixel.
_ALLOWED_BIT_DEPTHS: Final[dict[int, tuple[int, ...]]] = {
    0: (1, 2, 4, 8, 16),  # greyscale
    2: (8, 16),  # truecolour (RGB)
    3: (1, 2, 4, 8),  # indexed (palette)
    4: (8, 16),  # greyscale + alpha
    6: (8, 16),  # truecolour + alpha (RGBA)
}
_CHANNELS: Final[dict[int, int]] = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}

COLOUR_TYPE_NAMES: Final[dict[int, str]] = {
    0: "greyscale",
    2: "RGB",
    3: "palette (indexed colour)",
    4: "greyscale+alpha",
    6: "RGBA",
}
"""The PNG colour types, as :mod:`bonemet_dask.kernels.png_decode` names them in its errors."""

CONVERTIBLE_COLOUR_TYPES: Final = (0,)
"""Colour types ``convert`` decodes: greyscale only.  Its decoder
(:func:`bonemet_dask.kernels.png_decode.decode_png`) refuses RGB, grey+alpha and RGBA, and a
palette image, which libpng always expands to RGB (or RGBA)."""

# What png_decode refuses before inflating (its _MAX_INFLATE_RATIO and _INFLATE_SLACK): deflate
# expands at most 1032:1, so IDAT must hold at least (unfiltered bytes - 1024) / 1032 bytes.
_MAX_INFLATE_RATIO: Final = 1032
_INFLATE_SLACK: Final = 1024
# Bytes of any PNG besides its IDAT data: signature 8, IHDR 25, one IDAT's length/type/CRC 12,
# IEND 12.
_PNG_OVERHEAD: Final = 57
_MAX_DIMENSION: Final = 2**31 - 1
_BATCH: Final = 4096


class PngHeaderError(ValueError):
    """A file's first bytes are not a valid PNG header.

    Attributes
    ----------
    reason : str
        Short machine-readable cause: ``"truncated"``, ``"not-png"``, ``"bad-ihdr"``, ``"bad-crc"``,
        ``"invalid"`` (bad field values) or ``"unreadable"`` (the bytes could not be fetched).
    path : str or None
        The file the bytes came from, when known.
    header : PngHeader or None
        The header, when it was valid but the file is not (a truncated file): lets a caller still
        apply a pixel limit to it.
    """

    def __init__(
        self, message: str, *, reason: str, path: str | None = None, header: PngHeader | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path
        self.header = header

    def __reduce__(self):  # keep the attributes when pickled to Dask workers
        return (_rebuild_error, (str(self), self.reason, self.path, self.header))


def _rebuild_error(
    message: str, reason: str, path: str | None, header: PngHeader | None
) -> PngHeaderError:
    return PngHeaderError(message, reason=reason, path=path, header=header)


@dataclass(frozen=True, slots=True)
class PngHeader:
    """The IHDR fields of a PNG.

    Attributes
    ----------
    width, height : int
        Image size in pixels (both > 0).
    bit_depth : int
        Bits per sample (or per palette index): 1, 2, 4, 8 or 16.
    colour_type : int
        0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA.
    interlace : int
        0 none, 1 Adam7.
    """

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int

    @property
    def channels(self) -> int:
        """Samples per decoded pixel: 1 grey or palette, 2 grey + alpha, 3 RGB, 4 RGBA."""
        return _CHANNELS[self.colour_type]

    @property
    def dtype(self) -> str:
        """Numpy dtype name of the decoded samples: ``"uint16"`` for 16-bit, else ``"uint8"``."""
        return "uint16" if self.bit_depth == 16 else "uint8"

    @property
    def n_pixels(self) -> int:
        """``width * height``: what a decoder allocates per channel (decompression-bomb check)."""
        return self.width * self.height

    @property
    def decoded_nbytes(self) -> int:
        """Bytes of the decoded image: pixels x channels x (1 or 2)."""
        return self.n_pixels * self.channels * (2 if self.bit_depth == 16 else 1)

    def fits_in(self, nbytes: int) -> bool:
        """Whether a PNG file of ``nbytes`` bytes can hold this image.

        Parameters
        ----------
        nbytes : int
            The file's size.

        Returns
        -------
        bool
            False when even the whole file, taken as compressed data, is too small to inflate
            to ``height * ceil(width * bit_depth / 8)`` bytes at deflate's best ratio (1032:1):
            exactly the files :func:`~bonemet_dask.kernels.png_decode.decode_png` refuses as
            truncated before inflating, whatever their IDAT holds.
        """
        least = self.height * ((self.width * self.bit_depth + 7) // 8)
        return least <= _MAX_INFLATE_RATIO * max(0, nbytes - _PNG_OVERHEAD) + _INFLATE_SLACK


def parse_png_header(data: bytes, *, path: str | None = None) -> PngHeader:
    """Parse a PNG header from its first bytes, without decoding any pixel.

    Parameters
    ----------
    data : bytes
        The start of the file; at least :data:`HEADER_NBYTES` (33) bytes, more are ignored.
    path : str, optional
        Name of the file, used in error messages only.

    Returns
    -------
    PngHeader
        The IHDR fields.

    Raises
    ------
    PngHeaderError
        If the data is too short, lacks the PNG signature, the first chunk is not a 13-byte
        IHDR, the IHDR CRC does not match, or the fields are invalid (zero size, a bit depth not
        allowed for the colour type, unknown compression/filter/interlace method).
    """
    where = f"{path}: " if path else ""
    data = bytes(data[:HEADER_NBYTES])
    if len(data) < len(PNG_SIGNATURE) or not data.startswith(PNG_SIGNATURE):
        if len(data) < len(PNG_SIGNATURE) and PNG_SIGNATURE.startswith(data):
            raise PngHeaderError(
                f"{where}file is truncated: {len(data)} bytes, a PNG header needs {HEADER_NBYTES}; "
                "re-copy the file from the source",
                reason="truncated",
                path=path,
            )
        raise PngHeaderError(
            f"{where}not a PNG: starts with {data[:8]!r}, expected the signature "
            f"{PNG_SIGNATURE!r}; remove or replace the file",
            reason="not-png",
            path=path,
        )
    if len(data) < HEADER_NBYTES:
        raise PngHeaderError(
            f"{where}file is truncated: {len(data)} bytes, a PNG header needs {HEADER_NBYTES}; "
            "re-copy the file from the source",
            reason="truncated",
            path=path,
        )
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise PngHeaderError(
            f"{where}first chunk is {chunk_type!r} of length {length}, expected b'IHDR' of "
            "length 13; the file is damaged, re-copy it from the source",
            reason="bad-ihdr",
            path=path,
        )
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    expected = zlib.crc32(data[12:29]) & 0xFFFFFFFF
    if crc != expected:
        raise PngHeaderError(
            f"{where}IHDR CRC is {crc:#010x}, computed {expected:#010x}: the header is corrupt; "
            "re-copy the file from the source",
            reason="bad-crc",
            path=path,
        )
    width, height, bit_depth, colour_type, compression, filter_method, interlace = struct.unpack(
        ">IIBBBBB", body
    )
    problems = []
    if not 0 < width <= _MAX_DIMENSION or not 0 < height <= _MAX_DIMENSION:
        problems.append(f"size {width}x{height} (width x height) must be in 1..{_MAX_DIMENSION}")
    if colour_type not in _ALLOWED_BIT_DEPTHS:
        problems.append(
            f"colour type {colour_type} is not one of {', '.join(map(str, _ALLOWED_BIT_DEPTHS))}"
        )
    elif bit_depth not in _ALLOWED_BIT_DEPTHS[colour_type]:
        allowed = ", ".join(map(str, _ALLOWED_BIT_DEPTHS[colour_type]))
        problems.append(
            f"bit depth {bit_depth} is not allowed for colour type {colour_type} "
            f"(allowed: {allowed})"
        )
    if compression != 0:
        problems.append(f"compression method {compression} is not 0")
    if filter_method != 0:
        problems.append(f"filter method {filter_method} is not 0")
    if interlace not in (0, 1):
        problems.append(f"interlace method {interlace} is not 0 or 1")
    if problems:
        raise PngHeaderError(
            f"{where}invalid IHDR: {'; '.join(problems)}; the file does not follow the PNG "
            "specification, replace it",
            reason="invalid",
            path=path,
        )
    return PngHeader(width, height, bit_depth, colour_type, interlace)


def read_png_headers(
    fs: AbstractFileSystem, paths: Sequence[str], *, sizes: Sequence[int] | None = None
) -> list[PngHeader | PngHeaderError]:
    """Read the headers of many PNG files, fetching only their first 33 (and last 12) bytes.

    The bytes are fetched with ``fs.cat_ranges`` (concurrent on async filesystems such as s3fs),
    in batches of a few thousand files; when a filesystem cannot do ranged batch reads, each file is
    read on its own with ``fs.cat_file``. Nothing is decoded.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The filesystem holding the files (local, ``memory://``, ``s3://``, ...).
    paths : sequence of str
        Paths as that filesystem spells it (e.g. from ``fs.find``).
    sizes : sequence of int, optional
        File sizes (e.g. from ``fs.find(detail=True)``). When given, the last 12 bytes of each file
        are fetched in the same batch and must be the IEND chunk: a file cut short anywhere (an
        interrupted copy) is then reported as truncated, not only one cut inside its header.

    Returns
    -------
    list of PngHeader or PngHeaderError
        One entry per path, in order; a file that is missing, unreadable, truncated or not a valid
        PNG gives a :class:`PngHeaderError` (returned, not raised) whose ``path`` names it.
    """
    paths = list(paths)
    if sizes is not None and len(sizes) != len(paths):
        raise ValueError(
            f"sizes has {len(sizes)} entries but paths has {len(paths)}; pass one size per path"
        )
    results: list[PngHeader | PngHeaderError] = []
    for start in range(0, len(paths), _BATCH):
        batch = paths[start : start + _BATCH]
        batch_sizes = None if sizes is None else list(sizes[start : start + _BATCH])
        blobs = _fetch(fs, batch, batch_sizes)
        for i, path in enumerate(batch):
            results.append(_check(path, blobs[i], blobs[len(batch) + i] if batch_sizes else None))
    return results


def _check(
    path: str, head: bytes | BaseException, tail: bytes | BaseException | None
) -> PngHeader | PngHeaderError:
    for blob in (head, tail):
        if isinstance(blob, BaseException):
            return PngHeaderError(
                f"{path}: could not read the file ({type(blob).__name__}: {blob}); "
                "check that it exists and is readable",
                reason="unreadable",
                path=path,
            )
    try:
        header = parse_png_header(head, path=path)  # type: ignore[arg-type]
    except PngHeaderError as exc:
        return exc
    if tail is not None and tail != PNG_IEND:
        return PngHeaderError(
            f"{path}: file does not end with the PNG IEND chunk (ends with {tail[-12:]!r}): it is "
            "truncated (or has trailing data); re-copy it from the source",
            reason="truncated",
            path=path,
            header=header,
        )
    return header


def _fetch(
    fs: AbstractFileSystem, paths: list[str], sizes: list[int] | None
) -> list[bytes | BaseException]:
    """Heads (then tails, when sizes are given) of the files, or the exception reading raised."""
    starts = [0] * len(paths)
    ends = [HEADER_NBYTES] * len(paths)
    if sizes is not None:
        paths = paths + paths
        starts += [max(0, size - len(PNG_IEND)) for size in sizes]
        ends += [max(0, size) for size in sizes]
    try:
        blobs = fs.cat_ranges(paths, starts, ends, on_error="return")
        if isinstance(blobs, list) and len(blobs) == len(paths):
            return blobs
        logger.debug("cat_ranges returned %s; reading file by file", type(blobs).__name__)
    except Exception as exc:  # a filesystem without (working) batched ranged reads
        logger.debug("cat_ranges failed (%s); reading file by file", exc)
    out: list[bytes | BaseException] = []
    for path, start, end in zip(paths, starts, ends, strict=True):
        try:
            out.append(fs.cat_file(path, start=start, end=end))
        except Exception as exc:
            out.append(exc)
    return out
