"""The ``composite`` stage: composite, RoI and bone metrics of each registered tibia (``roi_ct``).

A unit is one tibia with all its registered weeks.  The tibia-fibula junction is found once, on
week 0; for each selected week k (week 0 included) the composite of week 0 against week k is
cropped to the RoI (fibula removed) and written to ``roi_ct/{mouse}/{side}/week{k}`` as image
``0``, beside the registered greyscale RoI of week k (array ``greyscale``, fibula kept) and a
copy of the composite as the OME-Zarr label image ``labels/composite`` (colours per code).  Week 0
against itself holds only 180 and 0: it is written, as the published RoI-CT has week-0
folders, and gives the baseline row of the metrics (formed and resorbed 0).  Per-scan metrics
are computed in the same graph as the writes, stored in the group's ``bonemet.metrics`` and
collected into a table when every unit is done.  The CSV (joined with MiceMediRec) is the whole
output store's: every complete RoI this stage wrote there, by this run or an earlier one, so a
run over some mice never drops the rows of the others.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bonemet_dask.io.labels import (
    COMPOSITE_LABEL,
    COMPOSITE_LABEL_COLOURS,
    label_array_path,
    label_extra,
)
from bonemet_dask.io.scans import ScanRef, StoreRoots, list_scans
from bonemet_dask.io.store import ImageLayout, get_bonemet_attrs
from bonemet_dask.ops.composite import (
    COMPOSITE_LEGEND,
    MIN_CHANGE_VOXELS,
    composite,
    drop_small_changes,
    voxel_size_um,
)
from bonemet_dask.ops.engine import UnitContext, run_declared
from bonemet_dask.ops.metrics import (
    SCAN_METRICS,
    bone_metrics,
    sort_scan_rows,
    write_metrics_csv,
)
from bonemet_dask.ops.roi import ROI_LENGTH_UM, crop_roi, find_tf_junction
from bonemet_dask.ops.stage import Output, Product, Stage, StageFailure, StageReport, setting
from bonemet_dask.selection import Selection

if TYPE_CHECKING:
    import pandas as pd
    import zarr

    from bonemet_dask.ops.stage import Outcome

__all__ = [
    "GREYSCALE_ARRAY",
    "Composite",
    "composite_store",
    "default_metrics_csv",
    "metrics_of",
    "metrics_table_from_rows",
    "store_metrics",
    "write_store_metrics_csv",
]

logger = logging.getLogger(__name__)

GREYSCALE_ARRAY = "greyscale"
"""Name of the registered greyscale RoI array beside the composite ``0`` in a roi_ct group."""
BASELINE_WEEK = 0


@dataclass(frozen=True, kw_only=True)
class Composite(Stage, name="composite", reads="regist_ct", writes="roi_ct", per_tibia=True):
    """Composite of each week against week 0, cropped to the RoI below the junction; metrics.

    180 kept, 240 formed, 60 resorbed; the RoI is a length below the tibia-fibula junction
    found on week 0 (BoneMet: 300 slices of 10 um), fibula removed; per-scan metrics go to a
    CSV joined with MiceMediRec.
    """

    threshold: float = setting(75.0, "Bone threshold (grey level) of both scans.")
    length_um: float = setting(ROI_LENGTH_UM, "RoI length below the junction, micrometres.")
    offset_um: float = setting(0.0, "RoI start below the junction, micrometres.")
    junction_level: str | float = setting(
        "edge", "Grey level the fibula is seen to part at: 'edge' (halfway to cortex) or a number."
    )
    min_change_voxels: int = setting(
        MIN_CHANGE_VOXELS, "Smallest formed or resorbed cluster counted, voxels (1: all)."
    )
    remove_fibula: bool = setting(True, "Remove the fibula.", cli="--remove-fibula/--keep-fibula")
    metrics_csv: str | None = setting(  # where the table goes changes no group
        None, "Metrics CSV joined with MiceMediRec (CLI default: beside a local OUT).",
        cli="--csv", fingerprint=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.length_um > 0:
            raise ValueError(f"length_um={self.length_um!r} must be > 0 micrometres")
        if self.junction_level != "edge":
            try:
                object.__setattr__(self, "junction_level", float(self.junction_level))
            except (TypeError, ValueError):
                raise ValueError(
                    f"junction_level={self.junction_level!r} is not 'edge' or a grey level"
                ) from None

    @classmethod
    def cli_defaults(cls, store: Any, out: Any) -> dict[str, Any]:
        """The CLI writes the metrics CSV beside a local output store by default."""
        return {"metrics_csv": default_metrics_csv(out or store)}

    def outputs(self, scans: list[ScanRef]) -> list[Output]:
        """Every week of one tibia against its week 0."""
        by_week = {scan.week: scan for scan in scans}
        baseline = by_week.get(BASELINE_WEEK)
        return [
            self.output_for(scan, side=scan.side, baseline=baseline or scan, followup=scan)
            for _, scan in sorted(by_week.items())
        ]

    def build(self, output: Output, context: UnitContext) -> Product:
        """The lazy composite RoI, greyscale RoI and metrics of one week."""
        base_scan, follow_scan = output.inputs["baseline"], output.inputs["followup"]
        if base_scan.week != BASELINE_WEEK:
            raise StageFailure(
                f"no regist_ct week{BASELINE_WEEK} baseline for {base_scan.mouse}/{base_scan.side}"
            )
        baseline = context.open(base_scan)["image"]
        followup = context.open(follow_scan)["image"]
        threshold = self.threshold
        key = ("junction", base_scan.path)
        if key not in context.memo:  # one junction per tibia, found on week 0
            try:
                context.memo[key] = find_tf_junction(baseline, threshold,
                                                     level=self.junction_level)  # fmt: skip
            except ValueError as err:
                context.memo[key] = StageFailure(f"{base_scan.path}: {err}")
        junction = context.memo[key]
        if isinstance(junction, StageFailure):
            raise junction
        try:
            comp = crop_roi(
                composite(baseline, followup, threshold), junction, length_um=self.length_um,
                offset_um=self.offset_um, remove_fibula=self.remove_fibula, kind="composite",
            )  # fmt: skip
        except ValueError as err:
            raise StageFailure(f"{base_scan.path}: {err}") from None
        first, n = comp.attrs["roi"]["first_slice"], comp.attrs["roi"]["count"]
        if self.min_change_voxels > 1:
            comp = drop_small_changes(comp, self.min_change_voxels)
        grey = followup.isel(slice=slice(first, first + n))
        scale = voxel_size_um(baseline)
        layout = self.output_layout(comp.shape, scale)
        layout = ImageLayout(**{**layout.__dict__, "codec": "blosc-zstd", "level": 1})
        metrics = bone_metrics(comp, kind="composite", voxel_size=scale)
        attrs = {
            "kind": "composite",
            "legend": dict(COMPOSITE_LEGEND),
            "baseline_week": BASELINE_WEEK,
            "min_change_voxels": self.min_change_voxels,
            "junction": junction.to_dict(),
            "junction_slice": junction.slice,
            "junction_confidence": junction.confidence,
            "junction_ambiguous": junction.ambiguous,
            "roi": {
                "length_um": self.length_um,
                "offset_um": self.offset_um,
                "count": n,
                "first_regist_slice": first,
            },
            "arrays": {"0": "composite", GREYSCALE_ARRAY: "registered greyscale, fibula kept"},
        }
        label = label_array_path(COMPOSITE_LABEL)  # a copy of "0" as an OME-Zarr label image
        label_attrs = {"bonemet": {"kind": "composite", "copy_of": "0"}}
        return Product(
            layout,
            {"0": comp.data, GREYSCALE_ARRAY: grey.data, label: comp.data},
            attrs,
            slice_index=np.asarray(comp[comp.dims[0]].values, dtype=np.int64),
            extras={
                GREYSCALE_ARRAY: {"dtype": "uint8"},
                label: label_extra(COMPOSITE_LABEL_COLOURS, attributes=label_attrs),
            },
            measures={name: metrics[name].data for name in SCAN_METRICS},
        )

    def finish(self, report: StageReport, context: UnitContext) -> None:
        """The run's metrics as the report's table; the whole store's in the CSV when asked.

        ``report.table`` holds the selected outputs (written or up to date); the CSV every
        complete RoI of the output store (:func:`write_store_metrics_csv`), so a run over some
        mice rewrites the CSV without losing the rows of the others.
        """
        report.table = metrics_of(report, context.roots.output_root)
        if self.metrics_csv is not None:
            report.csv = write_store_metrics_csv(context.roots, self.metrics_csv)

    def note(self, outcome: Outcome) -> str:
        """Junction slice and confidence, or the reason."""
        junction = outcome.details.get("junction")
        if not junction:
            return outcome.reason
        flag = " (ambiguous)" if junction.get("ambiguous") else ""
        return f"junction {junction['slice']}, confidence {junction['confidence']:.2f}{flag}"


def metrics_of(report: StageReport, root: Any) -> Any:
    """The metrics of every written or up-to-date output of a report, one row per scan.

    Read from each group's ``bonemet.metrics`` (one metadata read per scan), so outputs that an
    earlier run finished are included.  None when there is none.
    """
    rows = []
    for outcome in report.outcomes:
        if outcome.done:
            attrs = get_bonemet_attrs(root[outcome.path])
            rows.append({"mouse": str(attrs.get("mouse")), "side": attrs.get("side"),
                         "week": attrs.get("week"), **(attrs.get("metrics") or {})})  # fmt: skip
    if not rows:
        return None
    import pandas as pd

    return metrics_table_from_rows(pd.DataFrame(rows))


def store_metrics(root: zarr.Group) -> pd.DataFrame | None:
    """The metrics of every complete ``roi_ct`` group the composite stage wrote in a store.

    Read from each group's ``bonemet.metrics`` (one metadata listing per mouse), whichever run
    wrote it.  Groups still incomplete, quarantined, or converted from the published RoI-CT
    (no metrics) are left out.

    Parameters
    ----------
    root : zarr.Group
        The store's root group (``OUT`` when a stage writes elsewhere).

    Returns
    -------
    pandas.DataFrame or None
        :func:`metrics_table_from_rows` form: one row per scan, in
        :func:`~bonemet_dask.ops.metrics.sort_scan_rows` order (mouse numerically, side,
        week); None when the store holds no such group.
    """
    rows = []
    skipped = 0
    for scan in list_scans(root, "roi_ct", Selection()):
        attrs = scan.attrs
        by = (attrs.get("provenance") or {}).get("stage")
        if scan.status != "complete" or by != "composite" or not attrs.get("metrics"):
            skipped += 1
            continue
        rows.append({"mouse": scan.mouse, "side": scan.side, "week": scan.week,
                     **attrs["metrics"]})  # fmt: skip
    if skipped:
        logger.debug("store metrics: %d roi_ct group(s) without finished metrics left out", skipped)
    if not rows:
        return None
    import pandas as pd

    return metrics_table_from_rows(pd.DataFrame(rows))


def write_store_metrics_csv(roots: StoreRoots, path: str | os.PathLike) -> str | None:
    """Write the metrics of the whole output store as CSV, joined with MiceMediRec.

    The rows are :func:`store_metrics` of ``roots.output_root``: every complete RoI there,
    whichever run or selection wrote it, so rewriting the CSV after a run over some mice keeps
    the others' rows, and a rerun adds no duplicate.

    Parameters
    ----------
    roots : StoreRoots
        The stage's stores (records read from ``OUT`` first, then ``STORE``).
    path : str or os.PathLike
        The CSV (local path or fsspec URL).

    Returns
    -------
    str or None
        ``path`` as text, or None (nothing written) when the store holds no finished RoI.
    """
    table = store_metrics(roots.output_root)
    if table is None:
        logger.info("no finished roi_ct metrics in the store: %s not written", path)
        return None
    write_metrics_csv(table, path, store=roots.records_location(),
                      storage_options=roots.storage_options)  # fmt: skip
    return os.fspath(path)


def default_metrics_csv(store: Any) -> str | None:
    """``<store>_roi_metrics.csv`` beside a local store; None for a URL or a store object."""
    if not isinstance(store, str | os.PathLike) or "://" in os.fspath(store):
        return None
    local = os.fspath(store).rstrip("/")
    stem = os.path.splitext(os.path.basename(local))[0]
    return os.path.join(os.path.dirname(local) or ".", f"{stem}_roi_metrics.csv")


def metrics_table_from_rows(frame: Any) -> Any:
    """Rows of per-scan metrics dicts in :func:`~bonemet_dask.ops.metrics.metrics_table` form."""
    frame = frame.astype({name: float for name in SCAN_METRICS if name in frame.columns})
    frame["mouse"] = frame["mouse"].astype(str)
    frame["week"] = frame["week"].astype("Int64")
    cols = ["mouse", "side", "week", *SCAN_METRICS]
    return sort_scan_rows(frame[[c for c in cols if c in frame.columns]])


def composite_store(store: Any, out: Any = None, **options: Any) -> StageReport:
    """Composite, RoI and metrics of every selected registered tibia, written as ``roi_ct``.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        Store holding ``regist_ct`` groups (week 0 needed per tibia; read from ``out``
        first) and optionally ``/medirec``.
    out : str, os.PathLike or zarr Store, optional
        Where the RoIs go (default ``store``).
    **options
        ``mice``, ``weeks`` (of the follow-ups; week 0 is always read as the baseline) and
        ``sides``; the settings of :class:`Composite` (``threshold``, ``length_um`` and
        ``offset_um``: the RoI's length and start below the junction, BoneMet 3000 and 0;
        ``remove_fibula``; ``metrics_csv``: also write there the metrics of every complete
        RoI of the output store, this run's and earlier runs', joined with MiceMediRec;
        ``slices_per_shard``); the engine's (``overwrite``, ``client``,
        ``concurrency``, ``compute``, ``storage_options``, ``progress``).

    Returns
    -------
    StageReport
        ``table`` holds one row of metrics per written or up-to-date scan of this call's
        selection; ``csv`` is where the whole store's metrics were written, if anywhere.
    """
    return run_declared(Composite, store, out, **options)
