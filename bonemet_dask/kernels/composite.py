"""Bone change kernels: the four-level composite of two registered scans, and its decoding.

Pure functions on one chunk (numpy or cupy, via :func:`~bonemet_dask._backend.array_namespace`),
no Dask.  The composite codes follow BoneMet's RoI-CT: ``180`` bone in both scans (kept),
``240`` bone in the follow-up only (formed), ``60`` bone in the baseline only (resorbed), ``0``
bone in neither.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from bonemet_dask._backend import array_namespace

__all__ = [
    "FORMED",
    "KEPT",
    "LEVELS",
    "NONE",
    "RESORBED",
    "baseline_bone",
    "composite_from_masks",
    "drop_small_changes",
    "followup_bone",
    "threshold_composite",
    "threshold_mask",
]

NONE: Final = 0
"""Composite code: bone in neither scan."""
RESORBED: Final = 60
"""Composite code: bone in the baseline only (lost bone, resorption)."""
KEPT: Final = 180
"""Composite code: bone in both scans."""
FORMED: Final = 240
"""Composite code: bone in the follow-up only (new bone, formation)."""
LEVELS: Final = (NONE, RESORBED, KEPT, FORMED)
"""The four values a composite holds."""


def threshold_mask(block: Any, *, level: float = 75) -> Any:
    """Bone mask ``block >= level`` of one greyscale chunk (any dims), as bool.

    Parameters
    ----------
    block : numpy.ndarray or cupy.ndarray
        Greyscale values (uint8 NRecon grey, or any real dtype).
    level : float, optional
        Global threshold; BoneMet uses 75 on 8-bit grey.

    Returns
    -------
    ndarray of bool
        Same shape and namespace as ``block``.
    """
    xp = array_namespace(block)
    return xp.greater_equal(block, level)


def threshold_composite(baseline: Any, followup: Any, *, level: float = 75) -> Any:
    """Four-level change map of two registered blocks (same shape, any dims): uint8 codes.

    ``180`` bone in both, ``240`` formed (follow-up only), ``60`` resorbed (baseline only),
    ``0`` neither; bone is ``value >= level``.

    Parameters
    ----------
    baseline, followup : numpy.ndarray or cupy.ndarray
        Co-registered greyscale blocks of one shape (typically uint8, dims ``slice, y, x``).
    level : float, optional
        Global threshold applied to both (BoneMet: 75 of 255).

    Returns
    -------
    ndarray of uint8
        The composite, same shape and namespace as the inputs.

    Raises
    ------
    ValueError
        If the shapes differ.

    Notes
    -----
    numpy uint8 blocks take a one-pass numba loop (branch-free, vectorised; it releases the
    GIL).  Other dtypes and cupy compute ``60 b + 240 f - 120 b f`` in modular uint8
    arithmetic (``b``, ``f`` the 0/1 masks; ``60 + 240 - 120 = 180`` mod 256): a few passes and
    no boolean fancy indexing.  Both are several times faster than masked assignment on noisy
    data (``benchmarks/bench_composite.py``).
    """
    if baseline.shape != followup.shape:
        raise ValueError(
            f"baseline.shape={baseline.shape} differs from followup.shape={followup.shape}; "
            "composite two blocks of the same registered grid"
        )
    xp = array_namespace(baseline, followup)
    if xp is np and _fused_applies(baseline, followup, level):
        out = np.empty(baseline.shape, dtype=np.uint8)
        _fused_composite(_as_3d(baseline), _as_3d(followup), int(np.ceil(level)), _as_3d(out))
        return out
    b = xp.greater_equal(baseline, level).view(xp.uint8)
    f = xp.greater_equal(followup, level).view(xp.uint8)
    out = b * xp.uint8(RESORBED)
    out += f * xp.uint8(FORMED)
    b &= f
    out -= b * xp.uint8(2 * RESORBED)
    return out


def _fused_applies(baseline: Any, followup: Any, level: float) -> bool:
    """Whether the one-pass numba loop serves these numpy blocks (uint8, viewable as 3-D)."""
    if baseline.dtype != np.uint8 or followup.dtype != np.uint8 or baseline.size == 0:
        return False
    if not 1 <= np.ceil(level) <= 255:  # all or no voxels bone: the generic path
        return False
    return all(_as_3d(a) is not None for a in (baseline, followup))


def _as_3d(a: np.ndarray) -> np.ndarray | None:
    """A 3-D view of ``a`` (leading axes added or merged), None where that would copy."""
    if a.ndim <= 3:
        return a.reshape((1,) * (3 - a.ndim) + a.shape)
    view = a.view()
    try:
        view.shape = (-1, *a.shape[-2:])  # raises instead of copying
    except AttributeError:
        return None
    return view


def _make_fused() -> Any:
    import numba

    @numba.njit(cache=True, nogil=True)
    def fused(baseline, followup, level, out):  # pragma: no cover - numba
        lv = np.uint8(level)
        for i in range(baseline.shape[0]):
            for j in range(baseline.shape[1]):
                b_row, f_row, o_row = baseline[i, j], followup[i, j], out[i, j]
                for k in range(b_row.shape[0]):  # branch-free uint8 maths: the loop vectorises
                    b = np.uint8(b_row[k] >= lv)
                    f = np.uint8(f_row[k] >= lv)
                    o_row[k] = np.uint8(
                        b * np.uint8(RESORBED) + f * np.uint8(FORMED) - (b & f) * np.uint8(120)
                    )

    return fused


class _Lazy:
    """Compile the numba loop on first use (importing the module stays cheap)."""

    fn: Any = None

    def __call__(self, *args: Any) -> None:
        if self.fn is None:
            self.fn = _make_fused()
        self.fn(*args)


_fused_composite = _Lazy()


def baseline_bone(composite: Any) -> Any:
    """Baseline bone mask of a composite block: codes 180 (kept) or 60 (resorbed), bool."""
    xp = array_namespace(composite)
    return (composite == xp.uint8(KEPT)) | (composite == xp.uint8(RESORBED))


def followup_bone(composite: Any) -> Any:
    """Follow-up bone mask of a composite block: codes 180 (kept) or 240 (formed), bool."""
    xp = array_namespace(composite)
    return (composite == xp.uint8(KEPT)) | (composite == xp.uint8(FORMED))


def composite_from_masks(baseline: Any, followup: Any) -> Any:
    """The composite codes of two boolean bone masks (the reference rule, for tests and docs)."""
    xp = array_namespace(baseline, followup)
    out = xp.zeros(baseline.shape, dtype=np.uint8)
    out[baseline & followup] = KEPT
    out[~baseline & followup] = FORMED
    out[baseline & ~followup] = RESORBED
    return out


def drop_small_changes(composite: np.ndarray, *, min_voxels: int) -> np.ndarray:
    """Formed and resorbed clusters of fewer than ``min_voxels`` voxels reverted (26-connected).

    A small resorbed cluster becomes kept bone (180), a small formed one no bone (0): change
    that a few voxels of noise or of sub-voxel misregistration at a bone surface can make is
    not counted (time-lapse micro-CT's minimum cluster size, e.g. 5 voxels).  ``(slice, y, x)``
    uint8 block holding a whole RoI (clusters must not be cut by block edges); host only.

    Parameters
    ----------
    composite : ndarray of uint8
        Codes {0, 60, 180, 240}.
    min_voxels : int
        Smallest cluster kept; 1 keeps everything.

    Returns
    -------
    ndarray of uint8
        A new array.
    """
    from scipy import ndimage

    out = np.array(composite, dtype=np.uint8, copy=True)
    if min_voxels <= 1:
        return out
    structure = np.ones((3,) * out.ndim, dtype=bool)
    for code, revert in ((RESORBED, KEPT), (FORMED, NONE)):
        labels, count = ndimage.label(out == code, structure)
        if count:
            sizes = np.bincount(labels.ravel())
            small = sizes < min_voxels
            small[0] = False
            out[small[labels]] = revert
    return out
