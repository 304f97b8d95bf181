"""Composite graph builder: the four-level bone change map of two registered scans.

:func:`composite` checks that baseline and follow-up share one grid, aligns their chunks and maps
:func:`bonemet_dask.kernels.composite.threshold_composite` over the blocks; no pixel arithmetic
happens here.
"""

from __future__ import annotations

import logging
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from bonemet_dask import __version__
from bonemet_dask._backend import meta_like
from bonemet_dask.kernels.composite import LEVELS, threshold_composite
from bonemet_dask.kernels.composite import drop_small_changes as drop_small_kernel

__all__ = [
    "GridMismatchError",
    "check_same_grid",
    "composite",
    "drop_small_changes",
    "voxel_size_um",
]

logger = logging.getLogger(__name__)

COMPOSITE_LEGEND = {"0": "no bone", "60": "resorbed", "180": "kept", "240": "formed"}
MIN_CHANGE_VOXELS = 5
"""Smallest formed or resorbed cluster counted by default, voxels (26-connected): removes the
noise and sub-voxel misregistration speckle at bone surfaces (see BENCHMARKS.md, the chain's
accuracy); time-lapse micro-CT studies use 5 voxels."""
"""Meaning of each composite code (stored in the DataArray's and roi_ct groups' attributes)."""


class GridMismatchError(ValueError):
    """Two volumes that must share a voxel grid do not."""


def _as_dataarray(value: Any, argument: str) -> xr.DataArray:
    if isinstance(value, xr.DataArray):
        return value
    if hasattr(value, "shape") and hasattr(value, "dtype") and len(value.shape) == 3:
        return xr.DataArray(value, dims=("slice", "y", "x"))
    raise TypeError(
        f"{argument} is a {type(value).__name__}; pass an xarray.DataArray with dims "
        "(slice, y, x), e.g. bm.open_store(store)['regist_ct/851/left/week0'].image"
    )


def check_same_grid(baseline: xr.DataArray, followup: xr.DataArray) -> None:
    """Raise unless two volumes lie on the same voxel grid: dims, shape and dimension coords.

    Parameters
    ----------
    baseline, followup : xarray.DataArray
        Registered volumes.

    Raises
    ------
    GridMismatchError
        Naming what differs (dims, shape, or which coordinate and where), and how to fix it.
    """
    fix = "register/resample both onto the same grid first (bm.resample)"
    if baseline.dims != followup.dims:
        raise GridMismatchError(
            f"baseline.dims={baseline.dims} differ from followup.dims={followup.dims}; "
            "transpose one to the other's order or " + fix
        )
    if baseline.shape != followup.shape:
        raise GridMismatchError(
            f"baseline.shape={baseline.shape} differs from followup.shape={followup.shape} "
            f"(dims {baseline.dims}); {fix}"
        )
    for dim in baseline.dims:
        a = baseline.coords.get(dim)
        b = followup.coords.get(dim)
        if a is None or b is None:
            continue  # an axis without coordinates is an index on both sides
        if not np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6, atol=1e-9):
            where = int(np.argmax(~np.isclose(np.asarray(a, float), np.asarray(b, float))))
            spacing = ""
            if a.size > 1 and b.size > 1 and dim != "slice":
                spacing = (
                    f"; voxel size along {dim}: {float(a[1] - a[0]):g} vs {float(b[1] - b[0]):g}"
                    f" {a.attrs.get('units', '')}".rstrip()
                )
            raise GridMismatchError(
                f"coordinate {dim!r} differs between baseline and followup (first at index "
                f"{where}: {a.values[where]!r} vs {b.values[where]!r}{spacing}); {fix}"
            )


def voxel_size_um(volume: xr.DataArray) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in micrometres of a ``(slice, y, x)`` volume.

    ``dy`` and ``dx`` come from the spacing of the ``y``/``x`` coordinates (micrometres, as
    :func:`~bonemet_dask.open_store` writes them); ``dz`` from ``attrs["voxel_size_um"]`` (a
    float or 3 floats) when present, else ``dy``: BoneMet's registered products are isotropic.
    Without coordinates or attribute, 1.0 um with a warning in the log.
    """
    attr = volume.attrs.get("voxel_size_um")
    if attr is not None:
        values = np.atleast_1d(np.asarray(attr, dtype=float))
        if values.size == 1:
            return (float(values[0]),) * 3
        if values.size == 3:
            return tuple(float(v) for v in values)  # type: ignore[return-value]
    spacing = []
    for dim in volume.dims[-2:]:
        coord = volume.coords.get(dim)
        if coord is not None and coord.size > 1:
            spacing.append(float(coord[1] - coord[0]))
    if len(spacing) == 2 and min(spacing) > 0:
        return (spacing[0], spacing[0], spacing[1])
    logger.warning("volume %r has no y/x coordinates or voxel_size_um: assuming 1 um", volume.name)
    return (1.0, 1.0, 1.0)


def composite(
    baseline: xr.DataArray,
    followup: xr.DataArray,
    threshold: float = 75,
) -> xr.DataArray:
    """Lazy four-level change map of two registered scans: uint8 {0, 60, 180, 240}.

    Parameters
    ----------
    baseline : xarray.DataArray
        Registered baseline (BoneMet: week 0), dims ``(slice, y, x)``, greyscale.
    followup : xarray.DataArray
        The follow-up on the same grid.
    threshold : float, optional
        Bone is ``grey >= threshold`` in both (BoneMet: 75 of 255).

    Returns
    -------
    xarray.DataArray
        Named ``composite``, uint8, Dask-backed with the baseline's chunks (the follow-up is
        rechunked when its chunks differ): ``180`` bone in both (kept), ``240`` bone in the
        follow-up only (formed), ``60`` bone in the baseline only (resorbed), ``0`` neither.
        The follow-up's coordinates (so its ``week``), attrs ``kind="composite"``,
        ``legend``, ``threshold``, ``baseline_week`` and ``provenance``.

    Raises
    ------
    GridMismatchError
        If the two are not on one grid (dims, shape or coordinates differ).
    TypeError
        If an input is not a DataArray (or a 3-D array).
    """
    baseline = _as_dataarray(baseline, "baseline")
    followup = _as_dataarray(followup, "followup")
    check_same_grid(baseline, followup)
    base = baseline.data if isinstance(baseline.data, da.Array) else da.from_array(baseline.data)
    follow = followup.data if isinstance(followup.data, da.Array) else None
    if follow is None:
        follow = da.from_array(followup.data, chunks=base.chunks)
    if follow.chunks != base.chunks:
        logger.debug("composite: rechunking followup %s to %s", follow.chunksize, base.chunksize)
        follow = follow.rechunk(base.chunks)
    data = da.map_blocks(
        threshold_composite,
        base,
        follow,
        level=threshold,
        dtype=np.uint8,
        chunks=base.chunks,
        meta=meta_like(base, np.uint8),
        name="composite-" + tokenize(base.name, follow.name, threshold),
    )
    attrs = {
        "kind": "composite",
        "legend": dict(COMPOSITE_LEGEND),
        "levels": list(LEVELS),
        "threshold": threshold,
        "baseline_week": _scalar(baseline, "week"),
        "provenance": {
            "package": "bonemet-dask",
            "version": __version__,
            "stage": "composite",
            "threshold": threshold,
        },
    }
    for key in ("voxel_size_um",):
        if key in followup.attrs:
            attrs[key] = followup.attrs[key]
    return xr.DataArray(
        data, coords=followup.coords, dims=followup.dims, name="composite", attrs=attrs
    )


def drop_small_changes(change: xr.DataArray, min_voxels: int = MIN_CHANGE_VOXELS) -> xr.DataArray:
    """A composite with formed and resorbed clusters below ``min_voxels`` reverted (lazy).

    See :func:`bonemet_dask.kernels.composite.drop_small_changes`.  The whole composite is one
    task (a RoI: 82 MB at full size), so clusters are whole; the input's chunks come back.

    Parameters
    ----------
    change : xarray.DataArray
        A composite (:func:`composite`, usually cropped by :func:`bonemet_dask.crop_roi`).
    min_voxels : int, optional
        Smallest formed or resorbed cluster counted (26-connected voxels); 1 keeps all.
    """
    if isinstance(min_voxels, bool) or int(min_voxels) < 1:
        raise ValueError(f"min_voxels={min_voxels!r} must be an int >= 1")
    data = change.data if isinstance(change.data, da.Array) else da.from_array(change.data)
    whole = data.rechunk(-1)
    cleaned = whole.map_blocks(
        drop_small_kernel, min_voxels=int(min_voxels), dtype=np.uint8,
        meta=np.empty((0, 0, 0), np.uint8),
        name="composite-clusters-" + tokenize(whole.name, min_voxels),
    ).rechunk(data.chunks)  # fmt: skip
    attrs = {**change.attrs, "min_change_voxels": int(min_voxels)}
    return change.copy(data=cleaned).assign_attrs(attrs)


def _scalar(array: xr.DataArray, name: str) -> Any:
    coord = array.coords.get(name)
    if coord is None or coord.ndim:
        return None
    value = coord.item()
    return value.item() if isinstance(value, np.generic) else value
