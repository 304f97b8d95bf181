"""Sparse-view reconstruction task: fewer projections of the same arc, scored against all of them.

BoneMet's published experiments reconstruct CT from few views and score the result by PSNR and
SSIM against the reconstruction from the full scan (260 views of 0.8 degrees, a 208 degree short
scan).  :func:`sparse_views` keeps every ``k``-th view, the scan a SkyScan would have taken with
a ``k`` times larger rotation step, and rewrites the projections' ``.log`` to say so, so that
:func:`bonemet_dask.reconstruct` weights each view by the new step (the attenuation scale is
kept) and spreads the short-scan (Parker) weights over the new arc.  :func:`sparse_view_scores`
scores a volume against a reference with scikit-image's metrics.

>>> import bonemet_dask as bm
>>> scan = bm.open_store("bonemet.zarr")["rotation_xray/851/both/week0"]  # doctest: +SKIP
>>> full = bm.reconstruct(scan).compute()  # doctest: +SKIP
>>> few = bm.reconstruct(bm.ml.sparse_views(scan, 26)).compute()  # doctest: +SKIP
>>> bm.ml.sparse_view_scores(full, few)  # doctest: +SKIP
{'psnr_db': ..., 'ssim': ..., 'data_range': ..., ...}
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from typing import Any, Final

import numpy as np
import xarray as xr

from bonemet_dask.io.skyscan_log import normalise_key
from bonemet_dask.ops.reconstruct import as_projections, geometry_from_attrs

__all__ = ["SPACINGS", "SSIM_WINDOW", "sparse_view_scores", "sparse_views", "view_counts"]

logger = logging.getLogger(__name__)

SPACINGS: Final = ("uniform",)
"""How :func:`sparse_views` picks views: ``"uniform"``, every ``k``-th view from the first."""

SSIM_WINDOW: Final = 7
"""Side of SSIM's sliding window, voxels (scikit-image's default, along every axis)."""

_COUNT_KEY: Final = normalise_key("Number of Files")
_STEP_KEY: Final = normalise_key("Rotation Step (deg)")


def view_counts(total: int) -> list[int]:
    """The view counts :func:`sparse_views` can take from a scan of ``total`` views, largest first.

    Every ``k``-th view from the first gives ``ceil(total / k)`` views; those of at least 2.
    For BoneMet's 260 views: 260, 130, 87, 65, 52, 44, 38, 33, 29, 26, 24, ...
    """
    return sorted({-(-total // k) for k in range(1, total)} - {1}, reverse=True)


def _stride(n_views: object, total: int) -> int:
    """The ``k`` of every-``k``-th view that gives ``n_views`` of ``total``, or a ValueError."""
    if isinstance(n_views, bool) or not isinstance(n_views, numbers.Integral):
        raise TypeError(
            f"n_views={n_views!r} must be a whole number of views between 2 and {total}"
        )
    n = int(n_views)
    if not 2 <= n <= total:
        raise ValueError(
            f"n_views={n} must be between 2 and {total} (the views of these projections)"
        )
    for k in range(max(1, total // n), total // max(1, n - 1) + 2):
        if -(-total // k) == n:
            return k
    counts = view_counts(total)
    above = min(c for c in counts if c > n)
    below = max((c for c in counts if c < n), default=None)
    nearest = f"{below} or {above}" if below is not None else str(above)
    raise ValueError(
        f"n_views={n} cannot be spaced evenly over {total} views: every k-th view from the "
        f"first gives ceil({total} / k) views; choose n_views={nearest} (spacing='uniform' "
        f"allows {', '.join(map(str, counts[:8]))}, ...)"
    )


def sparse_views(
    projections: xr.DataArray | xr.Dataset | xr.DataTree,
    n_views: int,
    *,
    spacing: str = "uniform",
) -> xr.DataArray:
    """The projections of the same arc with ``n_views`` evenly spaced views, lazily selected.

    Parameters
    ----------
    projections : xarray.DataArray, xarray.Dataset or xarray.DataTree
        ``(angle, row, col)`` projections, as :func:`bonemet_dask.reconstruct` takes them: a
        ``rotation_xray`` scan of :func:`bonemet_dask.open_store` (node, Dataset or its
        ``image``), or a DataArray whose attributes carry the scan's SkyScan ``.log``.
    n_views : int
        Views to keep, ``2 <= n_views <= `` the number of projections, and one of
        :func:`view_counts` (``ceil(total / k)`` for a whole stride ``k``).
    spacing : {"uniform"}
        ``"uniform"``: every ``k``-th view from the first (``projections[::k]``), so the views
        are evenly spaced by ``k`` times the scan's step and cover its arc: the last one lies
        within one new step of the arc's end (BoneMet's 260 x 0.8 degrees: 26 views every 8
        degrees, 0 to 200, each standing for 8 of the 208 degrees).

    Returns
    -------
    xarray.DataArray
        The selected views, with the input's coordinates (``angle`` in degrees and ``index``,
        the source file index, follow the selection) and attributes, in which the ``.log``'s
        ``Number of Files`` and ``Rotation Step (deg)`` and the recorded ``angles_deg``
        describe the selection (the step exactly, with more decimals than a scanner writes),
        and ``sparse_views`` records what was kept: ``bm.reconstruct(result)`` then
        reconstructs the sparse scan with no further argument.  Dask-backed input stays lazy
        (an index selection; no pixel is read).  ``n_views`` equal to the number of
        projections returns them as they are.

    Raises
    ------
    TypeError
        ``n_views`` not a whole number.
    ValueError
        ``n_views`` out of range or not an evenly spaced count (the message names the nearest
        allowed ones), an unknown ``spacing``, or projections without an ``angle`` axis.

    Notes
    -----
    A SkyScan ``.log`` states the angles as a start, a step and a count, so only an evenly
    spaced subset of recorded views is a scan that the log (and :func:`bonemet_dask.reconstruct`)
    can describe exactly.  The arc of the subset, first to last view, is ``(n_views - 1) * k``
    steps: up to ``k - 1`` steps less than the full scan's, which narrows the short-scan
    overscan that Parker weighting has for the fan (a warning from the reconstruction when the
    fan is wider than it).  Projections without a ``.log`` are selected the same way; pass
    ``bm.reconstruct`` a geometry whose ``angles_deg`` are the result's ``angle`` coordinate.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r} is not one of {', '.join(map(repr, SPACINGS))}")
    projections = as_projections(projections)
    if "angle" not in projections.dims:
        raise ValueError(
            f"projections.dims={projections.dims} has no 'angle' axis; pass (angle, row, col) "
            "projections (a rotation_xray scan)"
        )
    total = projections.sizes["angle"]
    if total < 2:
        raise ValueError(f"projections hold {total} view; sparse views need at least 2")
    stride = _stride(n_views, total)
    if stride == 1:
        return projections
    sparse = projections.isel(angle=slice(None, None, stride))
    sparse.attrs = _sparse_attrs(projections.attrs, total=total, stride=stride)
    logger.debug("sparse_views: %d of %d views, every %d-th", sparse.sizes["angle"], total, stride)
    return sparse


def _sparse_attrs(attrs: dict[str, Any], *, total: int, stride: int) -> dict[str, Any]:
    """A deep copy of ``attrs`` whose ``.log`` and ``angles_deg`` describe ``[::stride]``."""
    attrs = copy.deepcopy(dict(attrs))
    holder = attrs["bonemet"] if isinstance(attrs.get("bonemet"), dict) else attrs
    n_views = -(-total // stride)
    angles = holder.get("angles_deg")
    if angles is not None and len(angles) == total:
        holder["angles_deg"] = list(angles)[::stride]
    rewritten: list[str] = []
    log = (holder.get("source") or {}).get("log")
    if log:
        step = _exact_step(attrs)
        for section in log.values():
            for key, value in list(section.items()):
                if normalise_key(key) == _COUNT_KEY:
                    section[key] = str(n_views).rjust(len(str(value)))
                    rewritten.append(key)
                elif normalise_key(key) == _STEP_KEY:
                    written = _number(value) if step is None else step
                    if written is not None:
                        section[key] = f"{stride * written:.12g}"
                        rewritten.append(key)
    holder["sparse_views"] = {
        "spacing": "uniform",
        "n_views": n_views,
        "of_views": total,
        "stride": stride,
        "positions": list(range(0, total, stride)),
        "log_keys_rewritten": rewritten,
    }
    return attrs


def _number(value: object) -> float | None:
    """A log value as a finite float, or None."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _exact_step(attrs: dict[str, Any]) -> float | None:
    """The scan's angular step as its geometry reads it (a full turn's refined step), degrees.

    None when the log cannot give a geometry (the written step is then scaled as written).
    """
    try:
        angles = geometry_from_attrs(attrs).angles_deg
    except ValueError as exc:
        logger.info(
            "sparse_views: the .log gives no geometry (%s); its step is scaled as written", exc
        )
        return None
    return abs(float(angles[-1] - angles[0])) / (angles.size - 1) if angles.size > 1 else None


def sparse_view_scores(
    reference: xr.DataArray | np.ndarray,
    volume: xr.DataArray | np.ndarray,
    *,
    mask: xr.DataArray | np.ndarray | None = None,
    data_range: float | None = None,
) -> dict[str, Any]:
    """PSNR and SSIM of ``volume`` against ``reference`` (scikit-image's metrics), eagerly.

    Parameters
    ----------
    reference : xarray.DataArray or numpy.ndarray
        The volume reconstructed from every view (or any reference), any number of dims >= 2,
        each at least :data:`SSIM_WINDOW` long.  Dask-backed input is computed.
    volume : xarray.DataArray or numpy.ndarray
        The volume to score, same shape.
    mask : xarray.DataArray or numpy.ndarray, optional
        Boolean, same shape: score only these voxels (e.g. the object's support or the bone).
        PSNR's error is averaged over them; SSIM's local map (computed on the whole volume,
        each voxel from its window) is averaged over them, less the border strip scikit-image
        leaves out.
    data_range : float, optional
        The range of the data, in the volumes' units (PSNR's peak, SSIM's constants).  Default
        ``reference.max() - reference.min()`` over the whole reference, so that volumes scored
        against one reference share one range whatever the mask.

    Returns
    -------
    dict
        ``psnr_db`` (float; ``inf`` for identical volumes), ``ssim`` (float), ``data_range``
        (the one used), ``data_range_from`` (``"reference max - min"`` or ``"given"``),
        ``voxels`` (voxels scored by PSNR), ``ssim_window`` and ``masked`` (bool).

    Raises
    ------
    ValueError
        Shapes that differ, an empty or misshaped mask, or a data range that is not positive.

    Notes
    -----
    Without a mask the values are exactly ``skimage.metrics.peak_signal_noise_ratio`` and
    ``structural_similarity`` of the two volumes (float64, ``data_range`` as above, default
    uniform 7-voxel window): a 3-D SSIM for a volume.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = np.asarray(reference, dtype=np.float64)
    test = np.asarray(volume, dtype=np.float64)
    if ref.shape != test.shape:
        raise ValueError(
            f"reference.shape={ref.shape} and volume.shape={test.shape} differ; reconstruct both "
            "on the same grid"
        )
    if data_range is None:
        data_range, origin = float(ref.max() - ref.min()), "reference max - min"
    else:
        data_range, origin = float(data_range), "given"
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(
            f"data_range={data_range!r} must be a positive finite number (a constant reference "
            "has none: pass data_range=)"
        )
    pad = (SSIM_WINDOW - 1) // 2
    inner = tuple(slice(pad, n - pad) for n in ref.shape)
    if mask is None:
        keep = None
        voxels = ref.size
    else:
        keep = np.asarray(mask)
        if keep.shape != ref.shape or keep.dtype != bool:
            raise ValueError(
                f"mask must be a boolean array of shape {ref.shape}, got {keep.dtype} {keep.shape}"
            )
        voxels = int(keep.sum())
        if not keep[inner].any():
            raise ValueError(
                f"mask selects no voxel at least {pad} voxels inside the volume's border; "
                "pass a mask of the object"
            )
    a, b = (ref, test) if keep is None else (ref[keep], test[keep])
    if np.array_equal(a, b):
        psnr = math.inf  # scikit-image divides by a zero error
    else:
        psnr = float(peak_signal_noise_ratio(a, b, data_range=data_range))
    ssim, local = structural_similarity(
        ref, test, data_range=data_range, win_size=SSIM_WINDOW, full=True
    )
    if keep is not None:
        ssim = local[inner][keep[inner]].mean(dtype=np.float64)
    return {
        "psnr_db": psnr,
        "ssim": float(ssim),
        "data_range": data_range,
        "data_range_from": origin,
        "voxels": voxels,
        "ssim_window": SSIM_WINDOW,
        "masked": keep is not None,
    }
