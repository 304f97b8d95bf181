"""Bone metrics graph builder, and the metrics table joined with MiceMediRec.

:func:`bone_metrics` maps :func:`bonemet_dask.kernels.metrics.slice_metrics` over slabs of a RoI
(composite or greyscale) and returns a lazy Dataset: per-slice areas and per-scan volumes and
fractions.  :func:`metrics_table` flattens per-scan values to one row per scan;
:func:`join_records` and :func:`write_metrics_csv` add the MiceMediRec columns by mouse and week.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr

from bonemet_dask._backend import meta_like
from bonemet_dask.io.records import animal_id_column, find_column
from bonemet_dask.kernels.metrics import SLICE_METRICS, slice_metrics
from bonemet_dask.naming import SIDES
from bonemet_dask.ops.composite import _as_dataarray, voxel_size_um
from bonemet_dask.ops.roi import volume_kind

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SCAN_METRICS",
    "bone_metrics",
    "join_records",
    "metrics_table",
    "sort_scan_rows",
    "write_metrics_csv",
]

logger = logging.getLogger(__name__)

SCAN_METRICS = (
    "bone_volume_mm3",
    "tissue_volume_mm3",
    "bv_tv",
    "baseline_bone_volume_mm3",
    "formed_volume_mm3",
    "resorbed_volume_mm3",
    "formed_fraction",
    "resorbed_fraction",
    "cortical_thickness_mm",
    "cortical_area_mm2",
    "cortical_slices",
)
"""Per-scan variables of :func:`bone_metrics` (the CSV's metric columns)."""

_UNITS = {"mm2": "mm^2", "mm3": "mm^3", "mm": "mm"}


def bone_metrics(
    roi: xr.DataArray,
    *,
    kind: str = "auto",
    threshold: float = 75,
    voxel_size: tuple[float, float, float] | None = None,
    min_cavity: float = 0.05,
) -> xr.Dataset:
    """Per-slice and per-scan bone metrics of a RoI (lazy).

    Parameters
    ----------
    roi : xarray.DataArray
        Dims ``(..., slice, y, x)``: one RoI (``crop_roi`` output, an ``roi_ct`` image) or a
        stack of them (``bm.stack(tree, "roi_ct")``).  A composite (codes 0/60/180/240) or
        greyscale.
    kind : {"auto", "composite", "greyscale"}, optional
        How to read ``roi`` (:func:`~bonemet_dask.ops.roi.volume_kind`); converted RoI-CT
        stacks need ``"composite"``.
    threshold : float, optional
        Bone threshold of greyscale input.
    voxel_size : (float, float, float), optional
        ``(dz, dy, dx)`` in micrometres; default from the coordinates
        (:func:`~bonemet_dask.ops.composite.voxel_size_um`).
    min_cavity : float, optional
        Smallest marrow cavity (fraction of the filled cortex) for the cortex to count.

    Returns
    -------
    xarray.Dataset
        Dask-backed.  Per slice (dims ``(..., slice)``): ``bone_area_mm2``,
        ``tissue_area_mm2``, ``baseline_bone_area_mm2``, ``formed_area_mm2``,
        ``resorbed_area_mm2``, ``cortical_area_mm2``, ``cortical_thickness_mm`` (definitions in
        :mod:`bonemet_dask.kernels.metrics`).  Per scan (dims ``(...)``): ``bone_volume_mm3``
        (BV), ``tissue_volume_mm3`` (TV: the periosteal envelope), ``bv_tv``,
        ``baseline_bone_volume_mm3``, ``formed_volume_mm3``, ``resorbed_volume_mm3``,
        ``formed_fraction`` and ``resorbed_fraction`` (of the baseline bone volume),
        ``cortical_thickness_mm`` and ``cortical_area_mm2`` (means over the slices where the
        cortex is identifiable), ``cortical_slices`` (their count).  Composite-only variables
        are NaN for greyscale input.  Coordinates of ``roi`` except ``y``/``x`` are kept.

    Notes
    -----
    Volumes are per-slice areas summed times the slice spacing ``dz``.
    """
    roi = _as_dataarray(roi, "roi")
    if roi.ndim < 3:
        raise ValueError(f"roi.dims={roi.dims}: pass (..., slice, y, x)")
    kind = volume_kind(roi, kind)
    dz, dy, dx = voxel_size if voxel_size is not None else voxel_size_um(roi)
    data = roi.data if isinstance(roi.data, da.Array) else da.from_array(roi.data)
    if any(len(c) > 1 for c in data.chunks[-2:]):
        data = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})
    nd = data.ndim
    per_slice = da.map_blocks(
        slice_metrics,
        data,
        kind=kind,
        level=threshold,
        pixel_mm=(dy * 1e-3, dx * 1e-3),
        min_cavity=min_cavity,
        dtype=np.float64,
        drop_axis=[nd - 1],
        chunks=(*data.chunks[:-2], (len(SLICE_METRICS),)),
        meta=meta_like(data, np.float64, nd - 1),
    )
    slice_dims = roi.dims[:-2]
    coords = {
        name: coord
        for name, coord in roi.coords.items()
        if not set(coord.dims) & set(roi.dims[-2:])
    }
    variables = {
        name: xr.Variable(slice_dims, per_slice[..., i], {"units": _unit(name)})
        for i, name in enumerate(SLICE_METRICS)
    }
    ds = xr.Dataset(variables, coords=coords)
    dz_mm = dz * 1e-3
    axis = roi.dims[-3]
    bone = ds.bone_area_mm2.sum(axis) * dz_mm
    tissue = ds.tissue_area_mm2.sum(axis) * dz_mm
    base = ds.baseline_bone_area_mm2.sum(axis, skipna=False) * dz_mm
    formed = ds.formed_area_mm2.sum(axis, skipna=False) * dz_mm
    resorbed = ds.resorbed_area_mm2.sum(axis, skipna=False) * dz_mm
    scan = {
        "bone_volume_mm3": bone,
        "tissue_volume_mm3": tissue,
        "bv_tv": bone / tissue.where(tissue > 0),
        "baseline_bone_volume_mm3": base,
        "formed_volume_mm3": formed,
        "resorbed_volume_mm3": resorbed,
        "formed_fraction": formed / base.where(base > 0),
        "resorbed_fraction": resorbed / base.where(base > 0),
        "cortical_thickness_mm": ds.cortical_thickness_mm.mean(axis),
        "cortical_area_mm2": ds.cortical_area_mm2.mean(axis),
        "cortical_slices": ds.cortical_area_mm2.notnull().sum(axis),
    }
    for name, value in scan.items():
        ds[name] = value.assign_attrs(units=_unit(name))
    ds.attrs = {
        "kind": kind,
        "threshold": threshold,
        "voxel_size_um": [dz, dy, dx],
        "definitions": "see bonemet_dask.kernels.metrics and bonemet_dask.ops.metrics",
    }
    return ds


def _unit(name: str) -> str:
    suffix = name.rsplit("_", 1)[-1]
    return _UNITS.get(suffix, "1")


def metrics_table(metrics: xr.Dataset | Iterable[xr.Dataset]) -> pd.DataFrame:
    """One row per scan of per-scan metrics (computed), with ``mouse``, ``side``, ``week``.

    Parameters
    ----------
    metrics : xarray.Dataset or iterable of Dataset
        :func:`bone_metrics` results (one scan each with scalar ``mouse``/``side``/``week``
        coords, or stacked along ``mouse``/``side``/``week`` dims).

    Returns
    -------
    pandas.DataFrame
        Columns ``mouse`` (str), ``side``, ``week`` (int), then :data:`SCAN_METRICS`; rows
        in :func:`sort_scan_rows` order; NaN rows of missing stacked scans dropped.
    """
    import pandas as pd

    datasets = [metrics] if isinstance(metrics, xr.Dataset) else list(metrics)
    frames = []
    for ds in datasets:
        scan = ds[[name for name in SCAN_METRICS if name in ds]].compute()
        if scan.bone_volume_mm3.ndim == 0:
            row = {name: scan[name].item() for name in scan.data_vars}
            for key in ("mouse", "side", "week"):
                row[key] = scan[key].item() if key in scan.coords else None
            frame = pd.DataFrame([row])
        else:
            frame = scan.to_dataframe().reset_index()
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if "present" in table.columns:
        table = table[table.pop("present").astype(bool)]
    table["mouse"] = table["mouse"].astype(str)
    table["week"] = pd_to_int(table["week"])
    columns = ["mouse", "side", "week", *[c for c in SCAN_METRICS if c in table.columns]]
    table = table[columns + [c for c in table.columns if c not in columns]]
    return sort_scan_rows(table)


def sort_scan_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a per-scan table in scan order: mouse (numerically), side, week.

    Numeric animal ids sort as numbers (``9`` before ``10``) and before other ids, which sort
    as text; sides in :data:`~bonemet_dask.naming.SIDES` order (left, right, both), then any
    other side as text; weeks as numbers, missing weeks last.  Ties keep their order.

    Parameters
    ----------
    table : pandas.DataFrame
        With columns ``mouse``, ``side`` and ``week``.

    Returns
    -------
    pandas.DataFrame
        The same rows reordered, with a fresh ``RangeIndex``.
    """
    import pandas as pd

    def key(mouse: Any, side: Any, week: Any) -> tuple:
        text = str(mouse).strip()
        number = int(text) if text.isdigit() else 0
        side_rank = SIDES.index(side) if side in SIDES else len(SIDES)
        missing = week is None or bool(pd.isna(week))
        return (not text.isdigit(), number, text, side_rank, str(side),
                missing, 0 if missing else int(week))  # fmt: skip

    keys = [key(*values) for values in zip(table["mouse"], table["side"], table["week"],
                                           strict=True)]  # fmt: skip
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)


def join_records(table: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Left-join MiceMediRec records onto a metrics table by mouse and week.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`metrics_table` output.
    records : pandas.DataFrame
        The records (``bonemet_dask.io.records.read_records``); the animal id column is found
        by name (:func:`~bonemet_dask.io.records.animal_id_column`: ``Animal ID``...), compared
        as stripped text (mouse ids are strings everywhere), the week column likewise
        (``Week``, ``Time point``); without a week column the join is by mouse only.

    Returns
    -------
    pandas.DataFrame
        ``table``'s rows and columns, then the record columns (prefixed ``record_`` where a
        name clashes), plus ``injected_side`` (bool) when the records name the injected limb:
        tumour labels are per tibia.

    Raises
    ------
    ValueError
        If no animal id column is found; the message lists the record columns.
    """
    mouse_col = animal_id_column(records.columns)
    if mouse_col is None:
        raise ValueError(
            f"records have no animal id column among {list(records.columns)}; rename it to "
            "'Animal ID' (MiceMediRec's name)"
        )
    week_col = find_column(records.columns, ("week", "weeks", "timepoint", "timepointweek"))
    right = records.copy()
    right["mouse"] = right[mouse_col].astype(str).str.strip()
    keys = ["mouse"]
    if week_col is not None:
        right["week"] = pd_to_int(right[week_col])
        keys.append("week")
    clash = {c: f"record_{c}" for c in right.columns if c in table.columns and c not in keys}
    right = right.rename(columns=clash)
    left = table.copy()
    left["week"] = pd_to_int(left["week"])
    joined = left.merge(right, on=keys, how="left", validate="many_to_one")
    limb = find_column(records.columns, ("injectedlimb", "injectedside", "injection", "limb"))
    if limb is not None and "side" in joined.columns:
        limb = clash.get(limb, limb)
        injected = joined[limb].astype("string").str.strip().str.lower()
        joined["injected_side"] = (
            (injected == joined["side"].astype(str)).fillna(False).astype(bool)
        )
    return joined


def pd_to_int(series: pd.Series) -> pd.Series:
    """Integers (nullable ``Int64``) of a column of numbers or text such as ``"week 2"``."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series):
        return series.astype("Int64")
    text = series.astype("string").str.extract(r"(\d+)", expand=False)
    return pd.to_numeric(text, errors="coerce").astype("Int64")


def write_metrics_csv(
    metrics: pd.DataFrame | xr.Dataset | Iterable[xr.Dataset],
    path: str | os.PathLike[str],
    *,
    records: pd.DataFrame | None = None,
    store: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Write per-scan metrics as CSV, joined with MiceMediRec by mouse and week.

    Parameters
    ----------
    metrics : DataFrame, Dataset or iterable of Dataset
        A :func:`metrics_table` or what it takes.
    path : str or os.PathLike
        CSV file (local path or fsspec URL).
    records : pandas.DataFrame, optional
        MiceMediRec records; default: the store's ``/medirec`` table when ``store`` is given.
    store : str or zarr Store, optional
        Where to read the records from.
    storage_options : mapping, optional
        fsspec options for ``store`` and ``path``.

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    import fsspec
    import pandas as pd

    table = metrics if isinstance(metrics, pd.DataFrame) else metrics_table(metrics)
    if records is None and store is not None:
        records = _store_records(store, storage_options)
    if records is not None:
        table = join_records(table, records)
    with fsspec.open(os.fspath(path), "w", newline="", **dict(storage_options or {})) as handle:
        table.to_csv(handle, index=False)
    logger.info("wrote %d metric rows to %s", len(table), path)
    return table


def _store_records(store: Any, storage_options: Mapping[str, Any] | None) -> pd.DataFrame | None:
    import zarr

    from bonemet_dask.io.records import read_records
    from bonemet_dask.io.store import open_zarr_store

    root = zarr.open_group(
        open_zarr_store(store, mode="r", storage_options=storage_options), mode="r"
    )
    try:
        records = read_records(root)  # warns when record.csv was imported with problems
    except KeyError:
        logger.warning("store %s has no /medirec records: the CSV is not joined", store)
        return None
    if animal_id_column(records.columns) is None:  # a bad record.csv never stops the metrics
        logger.warning("store %s: /medirec has no animal id column (columns %s): the CSV is not "
                       "joined; add 'Animal ID' to record.csv and convert again", store,
                       list(records.columns))  # fmt: skip
        return None
    return records
