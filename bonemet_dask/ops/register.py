"""Rigid registration of tibiae: week 0 to the vertical reference, later weeks to week 0.

``register(moving)`` ("sample registration", BoneMet's week 0): the bone's principal axes give
the long axis, proximal end up; the roll about it is found by a multi-start search scored against
a reference tibia; a 6-dof rigid optimiser refines it coarse to fine.  ``register(moving, fixed)``
("time registration"): the same search against the tibia's registered week 0, refitted without
the regions that changed (a lesion, new bone), which would otherwise slide the shaft along its
axis.  Both run on small
downsampled volumes inside one task (:mod:`bonemet_dask.kernels.register`); the only graph work
here is the chunked downsampling that feeds it.  :func:`bonemet_dask.resample` then applies the
transform at full resolution, chunk by chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import dask
import dask.array as da
import numpy as np
import xarray as xr

from bonemet_dask._backend import meta_like
from bonemet_dask.kernels.register import (
    BONEMET_ROLL_STARTS,
    FULL_ROLL_STARTS,
    Level,
    SearchResult,
    register_levels,
)
from bonemet_dask.kernels.resample import bin_mean
from bonemet_dask.ops.resample import origin_um, voxel_size_um
from bonemet_dask.transform import RigidTransform

__all__ = [
    "BONEMET_ROLL_STARTS",
    "FULL_ROLL_STARTS",
    "RegistrationResult",
    "register",
]

logger = logging.getLogger(__name__)

LEVELS_UM: Final = (160.0, 80.0, 40.0, 20.0)
"""Voxel sizes of the pyramid, coarse to fine (micrometres; levels finer than the input are
dropped).  The finest, 20 um, keeps the error of 10 um scans under one voxel."""
CHANGE_ROUNDS: Final = 3
"""Refits without the changed regions, at most, in time registration (it stops earlier when
the regions settle; two suffice on the synthetic lesions)."""
AXIAL_RESTARTS_UM: Final = (-240.0, -120.0, 120.0, 240.0)
"""Sample registration refits from its result shifted this far along the bone's long axis
(micrometres), keeping a higher NCC: against a reference of another anatomy the NCC along a
shaft is flat enough to hold a local optimum 5 slices off at 40 um (synthetic medium chain)."""
MIN_METRIC: Final = {"sample": 0.5, "time": 0.8}
"""Default quality thresholds on the final NCC. Time registration compares a tibia with itself
(synthetic pairs reach 0.93-0.97 with a growing lesion); sample registration compares it with the
reference anatomy (synthetic tibiae of other anatomy reach ~0.7)."""


@dataclass
class RegistrationResult:
    """What :func:`register` found.

    Attributes
    ----------
    transform : RigidTransform
        Fixed (output-grid) micrometres to moving micrometres: pass it to
        :func:`bonemet_dask.resample` with ``shape`` / ``spacing`` below.
    metric : float
        Normalised cross-correlation at the finest level (1 is a perfect match).
    passed : bool
        ``metric >= min_metric``: the quality flag.
    kind : {"sample", "time"}
        Against the reference (week 0) or against a registered baseline.
    shape : tuple of int
        The output grid the transform is for (the fixed volume's or the reference's).
    spacing_um : tuple of float
        Its voxel size.
    min_metric : float
        The threshold ``passed`` used.
    start : str
        The multi-start candidate that won.
    levels : list of dict
        Per pyramid level: voxel size, metric, metric evaluations (then one entry per refit
        without the changed regions).
    seconds : float
        Wall time of the search (downsampling included).
    changed_fraction : float
        Time registration: fraction of the metric's samples left out as changed.
    """

    transform: RigidTransform
    metric: float
    passed: bool
    kind: str
    shape: tuple[int, int, int]
    spacing_um: tuple[float, float, float]
    min_metric: float
    start: str = ""
    levels: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    changed_fraction: float = 0.0

    @property
    def quality(self) -> str:
        """``"ok"`` or ``"poor"`` (the flag as text)."""
        return "ok" if self.passed else "poor"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for group attributes (transform, metric, flag, search details)."""
        return {
            "kind": self.kind,
            "transform": self.transform.to_dict(),
            "metric": {"name": "normalized_cross_correlation", "value": self.metric},
            "quality": self.quality,
            "passed": self.passed,
            "min_metric": self.min_metric,
            "start": self.start,
            "levels": self.levels,
            "output_shape": list(self.shape),
            "output_spacing_um": list(self.spacing_um),
            "changed_fraction": self.changed_fraction,
            "seconds": self.seconds,
        }


def _check_volume(name: str, volume: Any) -> None:
    if not isinstance(volume, xr.DataArray) or tuple(volume.dims) != ("slice", "y", "x"):
        raise TypeError(
            f"{name} must be an xarray.DataArray with dims ('slice', 'y', 'x') (e.g. "
            f"open_store(...)[path]['image']), got {type(volume).__name__}"
            + (f" with dims {volume.dims}" if isinstance(volume, xr.DataArray) else "")
        )


def _binned(volume: xr.DataArray, factor: int) -> tuple[da.Array, tuple, tuple]:
    """Lazy block-mean binning of a volume by ``factor``: (array, spacing, origin)."""
    data = da.asarray(volume.data)
    spacing = voxel_size_um(volume)
    origin = origin_um(volume)
    if factor > 1:
        crop = tuple(slice(0, n // factor * factor) for n in data.shape)
        data = data[crop]
        chunks = tuple(max(factor, c // factor * factor) for c in (max(cs) for cs in data.chunks))
        data = data.rechunk(chunks)
        data = data.map_blocks(
            bin_mean,
            (factor,) * 3,
            dtype=np.float32,
            chunks=tuple(tuple(c // factor for c in cs) for cs in data.chunks),
            meta=meta_like(data, np.float32),
        )
        origin = tuple(o + (factor - 1) / 2 * s for o, s in zip(origin, spacing, strict=True))
        spacing = tuple(s * factor for s in spacing)
    else:
        data = data.astype(np.float32)
    return data, spacing, origin


def _search_task(
    fixed: np.ndarray,
    fixed_spacing: tuple,
    fixed_origin: tuple,
    moving: np.ndarray,
    moving_spacing: tuple,
    moving_origin: tuple,
    factors: tuple[int, ...],
    options: dict[str, Any],
) -> SearchResult:
    """The one task of a registration: the search on in-memory downsampled volumes."""
    from bonemet_dask._backend import to_host

    return register_levels(
        Level(np.ascontiguousarray(to_host(fixed), np.float32), fixed_spacing, fixed_origin),
        Level(np.ascontiguousarray(to_host(moving), np.float32), moving_spacing, moving_origin),
        factors,
        **options,
    )


def _reference_volume(side: str, voxel_size_um: float, factor: int) -> np.ndarray:
    """The default vertical reference as float32 (the task that feeds sample registration)."""
    from bonemet_dask.synth.reference import reference_tibia

    reference = reference_tibia(side, voxel_size_um=voxel_size_um, factor=factor)
    return np.asarray(reference.values, np.float32)


@dataclass
class _Plan:
    """A registration as a delayed search plus what is needed to read its result."""

    search: Any
    kind: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    min_metric: float


def _pyramid_factors(levels_um: Sequence[float], finest_um: float) -> tuple[int, ...]:
    factors: list[int] = []
    for level in levels_um:
        factor = max(1, round(float(level) / finest_um))
        if not factors or factor < factors[-1]:
            factors.append(factor)
    if factors[-1] != 1:
        factors.append(1)
    return tuple(factors)


def plan_registration(
    moving: xr.DataArray,
    fixed: xr.DataArray | None = None,
    *,
    reference: xr.DataArray | None = None,
    side: str | None = None,
    threshold: float = 75.0,
    levels_um: Sequence[float] = LEVELS_UM,
    roll_starts: Sequence[float] | str = "full",
    keep_starts: int = 3,
    min_metric: float | None = None,
    max_evals: int = 600,
    exclude_changes: bool = True,
) -> _Plan:
    """The lazy form of :func:`register` (same parameters): one delayed search task."""
    _check_volume("moving", moving)
    if fixed is not None:
        _check_volume("fixed", fixed)
    if reference is not None:
        _check_volume("reference", reference)
    if isinstance(roll_starts, str):
        named = {"full": FULL_ROLL_STARTS, "bonemet": BONEMET_ROLL_STARTS}
        if roll_starts not in named:
            raise ValueError(
                f"roll_starts={roll_starts!r} is not one of 'full', 'bonemet' or a list of radians"
            )
        roll_starts = named[roll_starts]
    if not levels_um or any(float(v) <= 0 for v in levels_um):
        raise ValueError(f"levels_um={levels_um!r} must be positive voxel sizes, coarse to fine")
    kind = "sample" if fixed is None else "time"
    spacing_m = voxel_size_um(moving)
    finest = max(float(min(levels_um)), min(spacing_m))
    k_m = max(1, round(finest / min(spacing_m)))
    moving_data, m_spacing, m_origin = _binned(moving, k_m)
    target = fixed if fixed is not None else reference
    if target is not None:
        out_shape = tuple(int(n) for n in target.shape)
        out_spacing = voxel_size_um(target)
        k_f = max(1, round(finest / min(out_spacing)))
        fixed_data, f_spacing, f_origin = _binned(target, k_f)
    else:
        from bonemet_dask.synth.reference import reference_grid

        side = side or (str(moving["side"].item()) if "side" in moving.coords else None)
        if side not in ("left", "right"):
            raise ValueError(
                f"side={side!r}: sample registration needs the tibia's side ('left' or 'right') "
                "to pick the reference; pass side= or reference=, or give moving a 'side' coord"
            )
        h = float(min(spacing_m))
        out_shape = reference_grid(side, h).shape
        out_spacing = (h, h, h)
        k_f = k_m
        # voxelised by the task that needs it (cached per worker), not shipped in the graph
        # (25 MiB at 40 um)
        fixed_data = da.from_delayed(
            dask.delayed(_reference_volume, pure=True)(side, h, k_f),
            shape=reference_grid(side, h, factor=k_f).shape,
            dtype=np.float32,
        )
        f_spacing = (h * k_f,) * 3
        f_origin = ((k_f - 1) / 2 * h,) * 3
    factors = _pyramid_factors(levels_um, finest)
    options = {
        "threshold": float(threshold),
        "roll_starts": tuple(float(a) for a in roll_starts),
        "keep_starts": int(keep_starts),
        "max_evals": int(max_evals),
        "exclude_change_rounds": CHANGE_ROUNDS if exclude_changes and kind == "time" else 0,
        "axial_restarts": tuple(d / finest for d in AXIAL_RESTARTS_UM) if kind == "sample" else (),
    }
    search = dask.delayed(_search_task, pure=True)(
        fixed_data, f_spacing, f_origin, moving_data, m_spacing, m_origin, factors, options
    )
    threshold_metric = MIN_METRIC[kind] if min_metric is None else float(min_metric)
    return _Plan(search, kind, out_shape, out_spacing, threshold_metric)  # type: ignore[arg-type]


def finish(plan: _Plan, search: SearchResult, seconds: float = 0.0) -> RegistrationResult:
    """A :class:`RegistrationResult` from a computed plan."""
    levels = [
        {
            "spacing_um": list(level.spacing_um),
            "metric": level.metric,
            "evaluations": level.evaluations,
        }
        for level in search.levels
    ]
    return RegistrationResult(
        transform=search.transform,
        metric=float(search.metric),
        passed=bool(search.metric >= plan.min_metric),
        kind=plan.kind,
        shape=plan.shape,
        spacing_um=plan.spacing,
        min_metric=plan.min_metric,
        start=search.start,
        levels=levels,
        seconds=seconds,
        changed_fraction=float(search.changed_fraction),
    )


def register(
    moving: xr.DataArray,
    fixed: xr.DataArray | None = None,
    *,
    reference: xr.DataArray | None = None,
    side: str | None = None,
    threshold: float = 75.0,
    levels_um: Sequence[float] = LEVELS_UM,
    roll_starts: Sequence[float] | str = "full",
    keep_starts: int = 3,
    min_metric: float | None = None,
    max_evals: int = 600,
    exclude_changes: bool = True,
) -> RegistrationResult:
    """Rigidly register a tibia: to the vertical reference (week 0) or to its registered week 0.

    Parameters
    ----------
    moving : xarray.DataArray
        uint8 ``(slice, y, x)`` tibia, e.g. a ``seg_ct`` image from
        :func:`bonemet_dask.open_store` (voxel size from its micrometre coords or
        ``attrs["voxel_size_um"]``).
    fixed : xarray.DataArray, optional
        The same tibia's registered week 0 ("time registration").  None: "sample registration"
        against ``reference``.
    reference : xarray.DataArray, optional
        Vertical reference tibia for sample registration, e.g. a registered week-0 volume of
        your own; default :func:`bonemet_dask.synth.reference.reference_tibia` (the phantom's
        average tibia on the published Regist-CT box) at the moving voxel size.
    side : {"left", "right"}, optional
        Picks the default reference; read from ``moving``'s ``side`` coordinate when omitted.
    threshold : float
        Bone grey level (principal axes, metric sample selection); BoneMet's 75.
    levels_um : sequence of float
        Pyramid voxel sizes, coarse to fine; sizes below the input's are dropped.
    roll_starts : {"full", "bonemet"} or sequence of float
        Roll angles (radians) about the long axis to start from: ``"full"`` 32 starts every
        11.25 degrees (default), ``"bonemet"`` the published tool's 26 (``pi * i / 16``,
        ``i = -16 .. 9``, which leave 101-180 degrees to the optimiser's capture range).  Both
        proximal-end choices are scored.
    keep_starts : int
        Starts optimised after one scoring pass on the coarsest level (early rejection).
    min_metric : float, optional
        Quality threshold on the final NCC (default 0.8 for time, 0.5 for sample
        registration).
    max_evals : int
        Metric evaluations per optimiser run.
    exclude_changes : bool
        Time registration only: after the fit, refit without the regions where the tibia
        changed (residual blobs thicker than the misalignment's edge sheets, see
        :func:`bonemet_dask.kernels.register.changed_regions`).  A growing lesion otherwise
        slides the fit along the shaft (3.6 voxels on the synthetic injected tibia at week 2,
        0.07 with the exclusion).  ``metric`` is then the NCC over the bone that did not
        change, and ``changed_fraction`` says how much was left out (at most a quarter: more
        is taken as a failed fit, and the plain fit is kept).

    Returns
    -------
    RegistrationResult
        ``transform`` (fixed micrometres to moving micrometres), ``metric``, ``passed``.

    Notes
    -----
    Deterministic: same inputs, same result.  The downsampling is a chunked Dask graph computed
    with the current scheduler; the search is one task on the downsampled volumes.
    """
    started = time.perf_counter()
    plan = plan_registration(
        moving, fixed, reference=reference, side=side, threshold=threshold,
        levels_um=levels_um, roll_starts=roll_starts, keep_starts=keep_starts,
        min_metric=min_metric, max_evals=max_evals, exclude_changes=exclude_changes,
    )  # fmt: skip
    (search,) = dask.compute(plan.search)
    result = finish(plan, search, time.perf_counter() - started)
    logger.info(
        "%s registration: NCC %.4f (%s) in %.1f s, %r",
        result.kind, result.metric, result.quality, result.seconds, result.transform,
    )  # fmt: skip
    return result
