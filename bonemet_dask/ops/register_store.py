"""The ``register`` stage: each selected Seg-CT tibia onto the vertical reference (``regist_ct``).

A unit is one tibia (mouse, side) with all its weeks.  Its baseline (the earliest Seg-CT week)
is registered to the vertical reference ("sample registration"); each later week to the
registered baseline read back from ``OUT`` ("time registration"), so a unit's outputs are
written one after the other.  The search runs on small downsampled volumes in one task; the
full-resolution resampling is output-driven, one shard per task.  The transform, metric and
quality flag go into each group's attributes; an unfinished group is resumed with the transform
it recorded, without searching again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bonemet_dask.io.scans import ScanRef
from bonemet_dask.io.store import ImageLayout
from bonemet_dask.ops.engine import UnitContext, run_stage
from bonemet_dask.ops.register import LEVELS_UM, finish, plan_registration
from bonemet_dask.ops.resample import resample
from bonemet_dask.ops.stage import Outcome, Output, Product, Stage, StageFailure, StageReport
from bonemet_dask.selection import Selection
from bonemet_dask.transform import RigidTransform

__all__ = ["Register", "register_store"]

logger = logging.getLogger(__name__)


class Register(Stage):
    """Rigid registration: the baseline week to the vertical reference, later weeks to it."""

    name = "register"
    reads = "seg_ct"
    writes = "regist_ct"
    per_tibia = True
    chained = True
    produced_by = (
        "segment the reconstructions (bonemet-dask segment STORE) or convert the published "
        "Seg-CT (bonemet-dask convert SRC STORE --components seg_ct)"
    )

    def __init__(
        self,
        *,
        threshold: float = 75.0,
        roll_starts: str | Sequence[float] = "full",
        levels_um: Sequence[float] = LEVELS_UM,
        keep_starts: int = 3,
        min_metric: float | None = None,
        max_evals: int = 600,
        reference: Any = None,
        slices_per_shard: int | None = None,
    ) -> None:
        if isinstance(roll_starts, str) and roll_starts not in ("full", "bonemet"):
            raise ValueError(
                f"roll_starts={roll_starts!r} is not one of 'full', 'bonemet' or a list of radians"
            )
        super().__init__(
            threshold=float(threshold),
            roll_starts=roll_starts if isinstance(roll_starts, str) else list(roll_starts),
            levels_um=[float(v) for v in levels_um],
            keep_starts=int(keep_starts),
            min_metric=min_metric,
            max_evals=int(max_evals),
            reference=None if reference is None else "user-supplied",
            slices_per_shard=slices_per_shard,
        )
        self.reference = reference

    def outputs(self, scans: list[ScanRef]) -> list[Output]:
        """Every week of one tibia, baseline (earliest week) first."""
        ordered = sorted(scans, key=lambda s: s.week)
        baseline = ordered[0]
        return [
            self.output_for(scan, side=scan.side, input=scan)
            if scan is baseline
            else self.output_for(scan, side=scan.side, input=scan, baseline=baseline)
            for scan in ordered
        ]

    def build(self, output: Output, context: UnitContext) -> Product:
        """Search (or reuse the recorded transform), then the lazy resampled volume."""
        moving = context.open(output.inputs["input"])["image"]
        baseline = output.inputs.get("baseline")
        fixed_path = None
        recorded = (output.resume or {}).get("registration")
        if recorded:
            transform = RigidTransform.from_dict(recorded["transform"])
            shape, spacing = tuple(recorded["output_shape"]), tuple(recorded["output_spacing_um"])
            record = recorded
        else:
            fixed = None
            if baseline is not None:
                fixed_path = f"{self.writes}/{baseline.segment}/{baseline.side}/week{baseline.week}"
                fixed = context.written(fixed_path)
                if fixed is None:
                    raise StageFailure(
                        f"no registered baseline {fixed_path} in OUT: register week "
                        f"{baseline.week} first (it failed, or was not selected)"
                    )
                spacing_um = fixed.attrs["bonemet"].get("registration", {})
                if spacing_um.get("output_spacing_um"):
                    fixed = fixed.assign_attrs(voxel_size_um=spacing_um["output_spacing_um"])
            options = {k: v for k, v in self.parameters.items()
                       if k not in ("reference", "slices_per_shard")}  # fmt: skip
            plan = plan_registration(moving, fixed, reference=self.reference, **options)
            (search,) = context.compute(plan.search)
            result = finish(plan, search)
            transform, shape, spacing = result.transform, result.shape, result.spacing_um
            record = {k: v for k, v in result.to_dict().items() if k != "seconds"}
        layout = ImageLayout.default_for(
            "ct",
            shape,
            "uint8",
            voxel_size_um=list(spacing),
            slices_per_shard=self.parameters["slices_per_shard"],
        )
        registered = resample(moving, transform, shape=shape, spacing=spacing,
                              chunks=(layout.slices_per_shard, *layout.shape[1:]))  # fmt: skip
        attrs: dict[str, Any] = {
            "registration": record,
            "provenance": {
                "fixed": fixed_path or "reference tibia",
                "transform": record["transform"],
                "metric": record["metric"],
            },
        }
        if not record.get("passed", True):
            attrs["flag"] = (
                f"poor registration: NCC {record['metric']['value']:.3f} < "
                f"{record['min_metric']:.2f}"
            )
        return Product(layout, {"0": registered.data}, attrs)

    def note(self, outcome: Outcome) -> str:
        """The flag, if any."""
        return outcome.details.get("flag") or super().note(outcome)


def register_store(
    store: Any,
    out: Any = None,
    *,
    mice: Any = None,
    weeks: Any = None,
    sides: Any = None,
    slices_per_shard: int | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    client: Any = None,
    concurrency: int | None = None,
    compute: bool = True,
    progress: Any = None,
    **options: Any,
) -> StageReport:
    """Register every selected ``seg_ct`` tibia into ``regist_ct`` groups.

    Parameters
    ----------
    store, out : str, os.PathLike or zarr Store
        Store holding ``seg_ct`` groups (read from ``out`` first); where to write (default
        ``store``).
    mice, weeks, sides : optional
        Selection.  A later week whose baseline week is not selected is registered against the
        baseline's ``regist_ct`` group already in ``out``.
    slices_per_shard : int, optional
        Slices per shard (= per writing task).
    overwrite, storage_options, client, concurrency, compute, progress
        See :func:`~bonemet_dask.ops.engine.run_stage`.  Without ``overwrite``, converted
        (published) ``regist_ct`` groups are refused, not replaced.
    **options
        Passed to :func:`bonemet_dask.register` (``threshold``, ``levels_um``, ``reference``,
        ``roll_starts``, ``min_metric``...).

    Returns
    -------
    StageReport
        Outputs whose quality flag failed are written and listed in ``flagged``.
    """
    stage = Register(slices_per_shard=slices_per_shard, **options)
    return run_stage(
        stage, store, out, selection=Selection.of(mice=mice, weeks=weeks, sides=sides),
        overwrite=overwrite, storage_options=storage_options, client=client,
        concurrency=concurrency, compute=compute, progress=progress,
    )  # fmt: skip
