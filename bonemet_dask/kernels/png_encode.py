"""Encode slices as greyscale PNG and check PNG files against recorded digests: the export kernels.

Pure and Dask-free: arrays and bytes in, bytes and booleans out; no file is opened here.  The
digest is the one ``convert`` and every stage record per slice (XXH3-128 of the decoded pixels,
:func:`bonemet_dask.kernels.slab.slice_digest`), so a PNG is known to hold a slice exactly
when its decoded pixels hash to the slice's recorded digest, whatever its compression.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bonemet_dask.kernels.slab import SlabDecodeError, decode_slab

__all__ = ["PNG_DTYPES", "encode_png_slab", "png_matches"]

PNG_DTYPES = ("uint8", "uint16")
"""Dtypes a greyscale PNG holds losslessly (bit depth 8 and 16)."""


def encode_png_slab(slab: np.ndarray, *, level: int = 1) -> list[bytes]:
    """Greyscale PNG files of every slice of a ``(slices, height, width)`` block.

    Parameters
    ----------
    slab : numpy.ndarray
        ``uint8`` (bit depth 8) or ``uint16`` (bit depth 16) block, axis 0 the slice.
    level : int
        zlib level, 0 (none) to 9 (smallest); the pixels are the same at every level.

    Returns
    -------
    list of bytes
        One PNG per slice, in slab order.

    Raises
    ------
    ValueError
        If the block is not 3-D or its dtype has no PNG greyscale form.
    """
    import imagecodecs

    if slab.ndim != 3:
        raise ValueError(f"slab of shape {slab.shape} must be 3-D (slices, height, width)")
    if slab.dtype.name not in PNG_DTYPES:
        raise ValueError(
            f"slab dtype {slab.dtype} has no greyscale PNG form; pass one of {PNG_DTYPES}"
        )
    if not 0 <= level <= 9:
        raise ValueError(f"level={level} must be in 0..9")
    return [imagecodecs.png_encode(np.ascontiguousarray(image), level=level) for image in slab]


def png_matches(
    blobs: Sequence[bytes | None],
    digests: np.ndarray,
    *,
    shape: tuple[int, int],
    dtype: str,
) -> np.ndarray:
    """Which PNG files decode to exactly the slices whose digests are given.

    Parameters
    ----------
    blobs : sequence of bytes or None
        The files' content, None for a file that does not exist.
    digests : numpy.ndarray
        ``(len(blobs), 16)`` uint8 recorded digests of the slices.
    shape : tuple of int
        ``(height, width)`` of a slice.
    dtype : str
        ``"uint8"`` or ``"uint16"``.

    Returns
    -------
    numpy.ndarray
        ``(len(blobs),)`` bool: True where the file decodes, has the slice's shape and dtype
        (bit depth) and its pixels hash to the recorded digest.  A truncated or corrupt file,
        or one of another size or bit depth, is False, never an error.
    """
    found = np.zeros(len(blobs), dtype=bool)
    for position, blob in enumerate(blobs):
        if not blob:
            continue
        try:
            _, digest = decode_slab([blob], shape=shape, dtype=dtype)
        except SlabDecodeError:
            continue
        found[position] = np.array_equal(digest[0], digests[position])
    return found
