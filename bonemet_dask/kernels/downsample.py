"""2x block downsampling of one block: the pixel maths of the multiscale pyramid.

Both kernels take a block whose origin is aligned to the factors (its extent along an axis
may be odd only at the array's far edge) and return one output pixel per block of
``factors``. A partial block at the far edge is edge-replicated first: with a factor of 2 and a
pad of at most 1, every real pixel of such a block is repeated the same number of times, so
the mean is the mean of the pixels present and the mode counts each present pixel once.
Neither kernel knows anything of Dask or Zarr.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from bonemet_dask.kernels.resample import bin_mean

__all__ = ["METHODS", "block_mean", "block_mode", "downsample_block", "downsampled_shape"]

METHODS: Final = ("mean", "mode")
"""Downsampling methods: ``mean`` for greyscale images, ``mode`` for masks and class maps."""
_MANY_CLASSES: Final = 16
"""Above this many distinct values a block's mode is found by sorting, not class by class."""


def downsampled_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """Shape of a block downsampled by ``factors``: ``ceil(n / f)`` per axis."""
    return tuple(-(-int(n) // int(f)) for n, f in zip(shape, factors, strict=True))


def _padded(block: np.ndarray, factors: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """``block`` edge-padded to whole blocks of ``factors`` (checked: 1 or 2 per axis)."""
    factors = tuple(int(f) for f in factors)
    if len(factors) != block.ndim or min(factors) < 1:
        raise ValueError(
            f"factors={factors!r} must hold one positive int per axis of the {block.ndim}-d block"
        )
    if any(f > 2 for f in factors):
        raise ValueError(f"factors={factors!r}: only 1 or 2 per axis (one pyramid level)")
    pad = [(0, -n % f) for n, f in zip(block.shape, factors, strict=True)]
    if any(p for _, p in pad):
        block = np.pad(block, pad, mode="edge")
    return block, factors


def _blocks(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """``block`` edge-padded to whole blocks, viewed as ``(n0, f0, n1, f1, ...)``."""
    block, factors = _padded(block, factors)
    shape: list[int] = []
    for n, f in zip(block.shape, factors, strict=True):
        shape += [n // f, f]
    return block.reshape(shape)


def block_mean(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Mean of each ``factors`` block of a ``(z, y, x)`` or ``(angle, row, col)`` block.

    Integer images are rounded half up (``floor(mean + 0.5)``) and keep their dtype; floating
    images keep theirs.

    Parameters
    ----------
    block : numpy.ndarray
        Pixels, any dimensionality; its origin on a multiple of ``factors``.
    factors : sequence of int
        1 or 2 per axis.

    Returns
    -------
    numpy.ndarray
        Shape :func:`downsampled_shape`, dtype of ``block``.
    """
    padded, factors = _padded(block, factors)
    # the registration pyramid's binning; with at most 8 pixels of 16 bits a bin, the float32
    # sums and the division by a power of two are exact, so the rounding below is too
    mean = bin_mean(padded, factors)
    if np.issubdtype(block.dtype, np.integer) or block.dtype == np.bool_:
        return np.floor(mean + np.float32(0.5)).astype(block.dtype)
    return mean.astype(block.dtype)


def block_mode(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Most frequent value of each ``factors`` block: masks and class maps keep their classes.

    Ties go to the larger value (a 4-4 split of a bone mask gives bone; a composite's tie
    between none (0) and a class gives the class), so thin structures survive a level.

    Parameters
    ----------
    block : numpy.ndarray
        Labels, any dimensionality; its origin on a multiple of ``factors``.
    factors : sequence of int
        1 or 2 per axis.

    Returns
    -------
    numpy.ndarray
        Shape :func:`downsampled_shape`, dtype of ``block``; every value is one of the
        block's values.
    """
    view = _blocks(block, factors)
    axes = tuple(range(1, view.ndim, 2))
    if block.dtype in (np.uint8, np.bool_):
        classes = np.flatnonzero(np.bincount(block.ravel().view(np.uint8), minlength=2))
        classes = classes.astype(np.uint8).view(block.dtype)
    else:
        classes = np.unique(block)
    if len(classes) <= _MANY_CLASSES:
        out = np.empty(downsampled_shape(block.shape, factors), dtype=block.dtype)
        best = np.full(out.shape, -1, dtype=np.int16)
        for value in classes:  # ascending: ">=" hands ties to the larger value
            count = (view == value).sum(axis=axes, dtype=np.int16)
            better = count >= best
            out[better] = value
            best[better] = count[better]
        return out
    order = tuple(range(0, view.ndim, 2)) + axes
    flat = view.transpose(order).reshape(*view.shape[0::2], -1)
    ranked = np.sort(flat, axis=-1)
    counts = (ranked[..., :, None] == ranked[..., None, :]).sum(axis=-1)
    last = ranked.shape[-1] - 1 - np.argmax(counts[..., ::-1], axis=-1)  # larger value on ties
    return np.take_along_axis(ranked, last[..., None], axis=-1)[..., 0]


def downsample_block(block: np.ndarray, factors: Sequence[int], *, method: str) -> np.ndarray:
    """One pyramid level of ``block``: :func:`block_mean` or :func:`block_mode`.

    Raises
    ------
    ValueError
        If ``method`` is not one of :data:`METHODS`.
    """
    if method == "mean":
        return block_mean(block, factors)
    if method == "mode":
        return block_mode(block, factors)
    raise ValueError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}")
