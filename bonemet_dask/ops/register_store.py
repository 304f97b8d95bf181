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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bonemet_dask.io.scans import ScanRef
from bonemet_dask.ops.engine import UnitContext, run_declared
from bonemet_dask.ops.register import LEVELS_UM, finish, plan_registration
from bonemet_dask.ops.resample import resample
from bonemet_dask.ops.stage import Output, Product, Stage, StageFailure, StageReport, setting
from bonemet_dask.transform import RigidTransform

if TYPE_CHECKING:
    from bonemet_dask.ops.stage import Outcome

__all__ = ["Register", "register_store"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Register(
    Stage, name="register", reads="seg_ct", writes="regist_ct", per_tibia=True, chained=True
):
    """Rigid registration: week 0 to the vertical reference, later weeks to week 0."""

    threshold: float = setting(75.0, "Bone threshold (grey level).")
    roll_starts: str | Sequence[float] = setting(
        "full", "'full' (32 roll starts) or 'bonemet' (the published 26), or radians."
    )
    levels_um: Sequence[float] = setting(
        LEVELS_UM, "Pyramid voxel sizes, coarse to fine.", cli=False
    )
    keep_starts: int = setting(3, "Roll starts refined after the first scoring pass.")
    min_metric: float | None = setting(None, "Quality threshold on the final NCC.")
    max_evals: int = setting(600, "Metric evaluations per optimiser run.")
    exclude_changes: bool = setting(
        True,
        "Time registration: refit without the regions that changed (lesion, new bone).",
        cli="--exclude-changes/--keep-changes",
    )
    reference: Any = setting(
        None, "Your own vertical reference tibia.", cli=False, fingerprint=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.roll_starts, str) and self.roll_starts not in ("full", "bonemet"):
            raise ValueError(
                f"roll_starts={self.roll_starts!r} is not one of 'full', 'bonemet' or a list of "
                "radians"
            )
        object.__setattr__(self, "levels_um", tuple(float(v) for v in self.levels_um))
        if not isinstance(self.roll_starts, str):
            object.__setattr__(self, "roll_starts", tuple(float(v) for v in self.roll_starts))

    @property
    def parameters(self) -> dict[str, Any]:
        """The settings, a user-supplied reference recorded as such."""
        return super().parameters | {"reference": None if self.reference is None else "user"}

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
            plan = plan_registration(
                moving, fixed, reference=self.reference, threshold=self.threshold,
                levels_um=self.levels_um, roll_starts=self.roll_starts,
                keep_starts=self.keep_starts, min_metric=self.min_metric,
                max_evals=self.max_evals, exclude_changes=self.exclude_changes,
            )  # fmt: skip
            (search,) = context.compute(plan.search)
            result = finish(plan, search)
            transform, shape, spacing = result.transform, result.shape, result.spacing_um
            record = {k: v for k, v in result.to_dict().items() if k != "seconds"}
        layout = self.output_layout(shape, list(spacing))
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


def register_store(store: Any, out: Any = None, **options: Any) -> StageReport:
    """Register every selected ``seg_ct`` tibia into ``regist_ct`` groups.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        Store holding ``seg_ct`` groups (read from ``out`` first).
    out : str, os.PathLike or zarr Store, optional
        Where the registered tibiae go (default ``store``).
    **options
        ``mice``, ``weeks`` and ``sides`` (a later week whose baseline week is not selected is
        registered against the baseline's ``regist_ct`` group already in ``out``); the settings
        of :class:`Register` (``threshold``, ``roll_starts``, ``levels_um``, ``keep_starts``,
        ``min_metric``, ``max_evals``, ``exclude_changes``, ``reference``, ``slices_per_shard``: see
        :func:`bonemet_dask.register`); the engine's (``overwrite``, ``client``,
        ``concurrency``, ``compute``, ``storage_options``, ``progress``).

    Returns
    -------
    StageReport
        Outputs whose quality flag failed are written and listed in ``flagged``.
    """
    return run_declared(Register, store, out, **options)
