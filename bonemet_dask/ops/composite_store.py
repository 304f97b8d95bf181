"""The ``composite`` stage: composite, RoI and bone metrics of each registered tibia (``roi_ct``).

A unit is one tibia with all its registered weeks.  The tibia-fibula junction is found once, on
week 0; for each selected week k (week 0 included) the composite of week 0 against week k is
cropped to the RoI (fibula removed) and written to ``roi_ct/{mouse}/{side}/week{k}`` as image
``0``, beside the registered greyscale RoI of week k (array ``greyscale``, fibula kept).  Week 0
against itself holds only 180 and 0: it is written, as the published RoI-CT has week-0
folders, and gives the baseline row of the metrics (formed and resorbed 0).  Per-scan metrics
are computed in the same graph as the writes, stored in the group's ``bonemet.metrics`` and
collected into a table (and a CSV joined with MiceMediRec) when every unit is done.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from bonemet_dask.io.scans import ScanRef
from bonemet_dask.io.store import ImageLayout, get_bonemet_attrs
from bonemet_dask.ops.composite import COMPOSITE_LEGEND, composite, voxel_size_um
from bonemet_dask.ops.convert import default_slices_per_shard
from bonemet_dask.ops.engine import UnitContext, run_stage
from bonemet_dask.ops.metrics import SCAN_METRICS, bone_metrics, write_metrics_csv
from bonemet_dask.ops.roi import crop_roi, find_tf_junction
from bonemet_dask.ops.stage import Outcome, Output, Product, Stage, StageFailure, StageReport
from bonemet_dask.selection import Selection

__all__ = [
    "GREYSCALE_ARRAY",
    "Composite",
    "composite_store",
    "default_metrics_csv",
    "metrics_of",
    "metrics_table_from_rows",
]

logger = logging.getLogger(__name__)

GREYSCALE_ARRAY = "greyscale"
"""Name of the registered greyscale RoI array beside the composite ``0`` in a roi_ct group."""
BASELINE_WEEK = 0


class Composite(Stage):
    """Four-level change map against week 0, cropped to the RoI below the junction; metrics."""

    name = "composite"
    reads = "regist_ct"
    writes = "roi_ct"
    per_tibia = True
    produced_by = (
        "register the tibiae (bonemet-dask register STORE) or convert the published Regist-CT "
        "(bonemet-dask convert SRC STORE --components regist_ct)"
    )

    def __init__(
        self,
        *,
        threshold: float = 75,
        offset: int = 0,
        count: int = 300,
        remove_fibula: bool = True,
        metrics_csv: str | None = None,
        slices_per_shard: int | None = None,
    ) -> None:
        if int(count) < 1:
            raise ValueError(f"count={count!r} must be >= 1 slices")
        super().__init__(
            threshold=float(threshold),
            offset=int(offset),
            count=int(count),
            remove_fibula=bool(remove_fibula),
            slices_per_shard=slices_per_shard,
        )
        self.metrics_csv = metrics_csv  # where the table goes changes no group: not fingerprinted

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
        threshold = self.parameters["threshold"]
        key = ("junction", base_scan.path)
        if key not in context.memo:  # one junction per tibia, found on week 0
            try:
                context.memo[key] = find_tf_junction(baseline, threshold)
            except ValueError as err:
                context.memo[key] = StageFailure(f"{base_scan.path}: {err}")
        junction = context.memo[key]
        if isinstance(junction, StageFailure):
            raise junction
        n = min(self.parameters["count"], baseline.shape[0])
        try:
            comp = crop_roi(
                composite(baseline, followup, threshold), junction,
                offset=self.parameters["offset"], count=n,
                remove_fibula=self.parameters["remove_fibula"], kind="composite",
            )  # fmt: skip
        except ValueError as err:
            raise StageFailure(str(err)) from None
        first = comp.attrs["roi"]["first_slice"]
        grey = followup.isel(slice=slice(first, first + n))
        scale = voxel_size_um(baseline)
        sps = self.parameters["slices_per_shard"] or default_slices_per_shard(
            "ct", comp.shape, "uint8"
        )
        layout = ImageLayout.default_for("ct", comp.shape, "uint8", voxel_size_um=scale,
                                         slices_per_shard=sps)  # fmt: skip
        layout = ImageLayout(**{**layout.__dict__, "codec": "blosc-zstd", "level": 1})
        metrics = bone_metrics(comp, kind="composite", voxel_size=scale)
        attrs = {
            "kind": "composite",
            "legend": dict(COMPOSITE_LEGEND),
            "baseline_week": BASELINE_WEEK,
            "junction": junction.to_dict(),
            "junction_slice": junction.slice,
            "junction_confidence": junction.confidence,
            "junction_ambiguous": junction.ambiguous,
            "roi": {"offset": self.parameters["offset"], "count": n, "first_regist_slice": first},
            "arrays": {"0": "composite", GREYSCALE_ARRAY: "registered greyscale, fibula kept"},
        }
        return Product(
            layout,
            {"0": comp.data, GREYSCALE_ARRAY: grey.data},
            attrs,
            slice_index=np.asarray(comp[comp.dims[0]].values, dtype=np.int64),
            extras={GREYSCALE_ARRAY: {"dtype": "uint8"}},
            measures={name: metrics[name].data for name in SCAN_METRICS},
        )

    def finish(self, report: StageReport, context: UnitContext) -> None:
        """The metrics of every done output as a table; the CSV when asked for."""
        report.table = metrics_of(report, context.roots.output_root)
        if report.table is not None and self.metrics_csv is not None:
            records = context.roots.records_location()
            write_metrics_csv(report.table, self.metrics_csv, store=records,
                              storage_options=context.roots.storage_options)  # fmt: skip
            report.csv = str(self.metrics_csv)

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
    return (
        frame[[c for c in cols if c in frame.columns]]
        .sort_values(["mouse", "side", "week"], kind="stable")
        .reset_index(drop=True)
    )


def composite_store(
    store: Any,
    out: Any = None,
    *,
    mice: Any = None,
    weeks: Any = None,
    sides: Any = None,
    threshold: float = 75,
    offset: int = 0,
    count: int = 300,
    remove_fibula: bool = True,
    metrics_csv: str | None = None,
    slices_per_shard: int | None = None,
    **run_options: Any,
) -> StageReport:
    """Composite, RoI and metrics of every selected registered tibia, written as ``roi_ct``.

    Parameters
    ----------
    store, out : str, os.PathLike or zarr Store
        Store holding ``regist_ct`` groups (week 0 needed per tibia; read from ``out``
        first) and optionally ``/medirec``; where to write (default ``store``).
    mice, weeks, sides : optional
        Selection (weeks of the follow-ups; week 0 is always read as the baseline).
    threshold : float, optional
        Bone threshold of both scans.
    offset, count : int, optional
        RoI start relative to the junction and its length in slices (BoneMet: 0, 300).
    remove_fibula : bool, optional
        Remove the fibula from the composite (the greyscale RoI keeps it).
    metrics_csv : str, optional
        Also write the per-scan metrics here, joined with MiceMediRec (``out`` first).
    slices_per_shard : int, optional
        Slices per shard (= per writing task).
    **run_options
        ``overwrite``, ``client``, ``concurrency``, ``compute``, ``storage_options``,
        ``progress``: see :func:`~bonemet_dask.ops.engine.run_stage`.

    Returns
    -------
    StageReport
        ``table`` holds one row of metrics per written or up-to-date scan.
    """
    stage = Composite(threshold=threshold, offset=offset, count=count,
                      remove_fibula=remove_fibula, metrics_csv=metrics_csv,
                      slices_per_shard=slices_per_shard)  # fmt: skip
    selection = Selection.of(mice=mice, weeks=weeks, sides=sides)
    return run_stage(stage, store, out, selection=selection, **run_options)
