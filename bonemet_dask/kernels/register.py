"""Rigid registration of two small in-memory volumes: metric, principal axes, multi-start search.

Dask-free and deterministic: everything here runs inside one task on downsampled ``(slice, y, x)``
float32 volumes (see :mod:`bonemet_dask.ops.register` for the graph around it).  Transforms follow
:mod:`bonemet_dask.transform`: they map fixed micrometres to moving micrometres.

The metric is the normalised cross-correlation (NCC) of the fixed volume and the trilinearly
resampled moving volume over sample voxels of the fixed volume near its bone (moving samples
outside the volume count as 0, i.e. air).  Time registration can leave out the regions that
really changed between the scans (:func:`changed_regions`): a lesion that removes a millimetre
of cortex otherwise pulls a tube-like shaft along its own axis.  The optimiser is Powell's
method on six parameters scaled to "voxels of displacement": three translations in voxels of
the level, and a rotation vector whose unit turns a point at the bone's radius of gyration by
one voxel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numba as nb
import numpy as np
from scipy import ndimage, optimize

from bonemet_dask.kernels.resample import affine_block, bin_mean
from bonemet_dask.transform import RigidTransform

__all__ = [
    "BONEMET_ROLL_STARTS",
    "FULL_ROLL_STARTS",
    "Level",
    "changed_regions",
    "ncc",
    "principal_axes",
    "register_levels",
]

logger = logging.getLogger(__name__)

BONEMET_ROLL_STARTS = tuple(np.pi * i / 16 for i in range(-16, 10))
"""The 26 roll starts of the published tool, ``pi * i / 16`` for ``i = -16 .. 9`` (radians)."""
FULL_ROLL_STARTS = tuple(np.pi * i / 16 for i in range(-16, 16))
"""32 starts every 11.25 degrees round the whole circle (the default: no roll is out of reach)."""
MAX_SAMPLES = 300_000
MAX_CHANGED_FRACTION = 0.25
"""A change exclusion that would drop more of the samples than this is not trusted: so much
"change" means the fit itself is wrong, and the plain fit is kept."""


@dataclass(frozen=True)
class Level:
    """One pyramid level of one volume: float32 voxels and where they sit (micrometres)."""

    image: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def binned(self, factors: Sequence[int]) -> Level:
        """Block means over ``factors`` (the trailing partial bins are dropped)."""
        factors = tuple(int(f) for f in factors)
        crop = tuple(slice(0, n // f * f) for n, f in zip(self.image.shape, factors, strict=True))
        image = bin_mean(self.image[crop], factors)
        spacing = tuple(s * f for s, f in zip(self.spacing, factors, strict=True))
        origin = tuple(
            o + (f - 1) / 2 * s for o, s, f in zip(self.origin, self.spacing, factors, strict=True)
        )
        return Level(image, spacing, origin)  # type: ignore[arg-type]

    def points(self, index: np.ndarray) -> np.ndarray:
        """Physical positions (n, 3) of voxel indices (n, 3)."""
        return np.asarray(self.origin) + index * np.asarray(self.spacing)


@nb.njit(cache=True, nogil=True, fastmath=True)
def _ncc_kernel(samples, values, moving, matrix, offset):  # pragma: no cover - numba
    m0, m1, m2 = moving.shape
    s_f = 0.0
    s_m = 0.0
    s_ff = 0.0
    s_mm = 0.0
    s_fm = 0.0
    n = samples.shape[0]
    for q in range(n):
        k = float(samples[q, 0])
        i = float(samples[q, 1])
        j = float(samples[q, 2])
        c0 = offset[0] + matrix[0, 0] * k + matrix[0, 1] * i + matrix[0, 2] * j
        c1 = offset[1] + matrix[1, 0] * k + matrix[1, 1] * i + matrix[1, 2] * j
        c2 = offset[2] + matrix[2, 0] * k + matrix[2, 1] * i + matrix[2, 2] * j
        v = 0.0
        if 0.0 <= c0 < m0 - 1.0 and 0.0 <= c1 < m1 - 1.0 and 0.0 <= c2 < m2 - 1.0:
            t0, t1, t2 = int(c0), int(c1), int(c2)
            w0, w1, w2 = c0 - t0, c1 - t1, c2 - t2
            v00 = moving[t0, t1, t2] + w2 * (moving[t0, t1, t2 + 1] - moving[t0, t1, t2])
            v01 = moving[t0, t1 + 1, t2] + w2 * (
                moving[t0, t1 + 1, t2 + 1] - moving[t0, t1 + 1, t2]
            )
            v10 = moving[t0 + 1, t1, t2] + w2 * (
                moving[t0 + 1, t1, t2 + 1] - moving[t0 + 1, t1, t2]
            )
            v11 = moving[t0 + 1, t1 + 1, t2] + w2 * (
                moving[t0 + 1, t1 + 1, t2 + 1] - moving[t0 + 1, t1 + 1, t2]
            )
            v0 = v00 + w1 * (v01 - v00)
            v1 = v10 + w1 * (v11 - v10)
            v = v0 + w0 * (v1 - v0)
        f = values[q]
        s_f += f
        s_m += v
        s_ff += f * f
        s_mm += v * v
        s_fm += f * v
    if n == 0:
        return 0.0
    cov = s_fm - s_f * s_m / n
    var_f = s_ff - s_f * s_f / n
    var_m = s_mm - s_m * s_m / n
    if var_f <= 0.0 or var_m <= 0.0:
        return 0.0
    return cov / np.sqrt(var_f * var_m)


def sample_points(fixed: Level, threshold: float, *, dilate: int = 2) -> np.ndarray:
    """Fixed voxel indices (n, 3) int32 near bone (``>= threshold``, dilated).

    At most ``MAX_SAMPLES``, taken with an even stride.
    """
    mask = fixed.image >= threshold
    if mask.sum() < 64:
        mask = np.ones_like(mask)
    elif dilate:
        mask = ndimage.binary_dilation(mask, iterations=dilate)
    index = np.argwhere(mask).astype(np.int32)
    if len(index) > MAX_SAMPLES:
        index = index[:: -(-len(index) // MAX_SAMPLES)]
    return index


def ncc(
    fixed: Level, moving: Level, transform: RigidTransform, samples: np.ndarray | None = None
) -> float:
    """Normalised cross-correlation of ``fixed`` and ``moving`` resampled through ``transform``.

    Parameters
    ----------
    fixed, moving : Level
        Volumes with their spacing and origin (micrometres).
    transform : RigidTransform
        Fixed micrometres to moving micrometres.
    samples : numpy.ndarray, optional
        Fixed voxel indices to compare (default all voxels).

    Returns
    -------
    float
        In ``[-1, 1]``; 1 when the volumes match up to a linear change of grey levels.
    """
    if samples is None:
        samples = np.argwhere(np.ones(fixed.image.shape, bool)).astype(np.int32)
    values = fixed.image[tuple(samples.T)].astype(np.float64)
    matrix, offset = transform.index_affine(
        fixed.spacing, moving.spacing, fixed_origin=fixed.origin, moving_origin=moving.origin
    )
    return float(_ncc_kernel(samples, values, np.ascontiguousarray(moving.image), matrix, offset))


def principal_axes(level: Level, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Centroid, proximal long axis and radius of gyration of the bone (``>= threshold``).

    The long axis is the principal axis of largest variance of the bone voxels' positions; its
    sign points to the proximal end, taken as the end whose last quarter of the length holds
    more bone (the flared, trabecular metaphysis outweighs the narrow distal shaft).

    Returns
    -------
    centroid : numpy.ndarray
        (3,), micrometres.
    axis : numpy.ndarray
        (3,) unit vector, ``(slice, y, x)``, pointing proximally.
    radius : float
        Radius of gyration about the long axis, micrometres.

    Raises
    ------
    ValueError
        If fewer than 10 voxels reach ``threshold`` (no bone to align).
    """
    index = np.argwhere(level.image >= threshold)
    if len(index) < 10:
        raise ValueError(
            f"only {len(index)} voxels reach threshold={threshold}; is this a bone volume? "
            "(lower threshold= or check the input's grey levels)"
        )
    weights = level.image[tuple(index.T)].astype(np.float64)
    points = level.points(index.astype(np.float64))
    centroid = np.average(points, axis=0, weights=weights)
    centred = points - centroid
    cov = (centred * weights[:, None]).T @ centred / weights.sum()
    values, vectors = np.linalg.eigh(cov)
    axis = vectors[:, np.argmax(values)]
    u = centred @ axis
    lo, hi = u.min(), u.max()
    quarter = (hi - lo) / 4
    top = weights[u > hi - quarter].sum()
    bottom = weights[u < lo + quarter].sum()
    if bottom > top:
        axis = -axis
    radius = float(np.sqrt(max(np.sum(values) - values.max(), 1e-12)))
    return centroid, axis, radius


def _rotation_between(a: np.ndarray, b: np.ndarray) -> RigidTransform:
    """The smallest rotation taking unit vector ``a`` to unit vector ``b``."""
    cross = np.cross(a, b)
    sin, cos = np.linalg.norm(cross), float(np.dot(a, b))
    if sin < 1e-12:
        if cos > 0:
            return RigidTransform.identity()
        helper = np.eye(3)[np.argmin(np.abs(a))]
        perpendicular = np.cross(a, helper)
        return RigidTransform.from_rotation_vector(
            np.pi * perpendicular / np.linalg.norm(perpendicular)
        )
    return RigidTransform.from_rotation_vector(cross / sin * np.arctan2(sin, cos))


def axis_starts(
    fixed: Level,
    moving: Level,
    threshold: float,
    roll_starts: Sequence[float],
    *,
    both_ends: bool = True,
) -> tuple[list[tuple[str, RigidTransform]], float]:
    """Initial transforms: principal axes aligned (proximal to proximal), then each roll.

    ``T = shift ∘ roll(angle about the moving long axis) ∘ align``, about the fixed centroid.
    With ``both_ends`` the upside-down alignment is scored too (cheap insurance against a
    misjudged proximal end).  Also returns the fixed bone's radius of gyration (micrometres).
    """
    c_f, axis_f, radius = principal_axes(fixed, threshold)
    c_m, axis_m, _ = principal_axes(moving, threshold)
    aligns = [("up", _rotation_between(axis_f, axis_m))]
    if both_ends:
        aligns.append(("flipped", _rotation_between(axis_f, -axis_m)))
    starts = []
    for label, align in aligns:
        for angle in roll_starts:
            roll = RigidTransform.from_rotation_vector(axis_m * float(angle))
            rotation = (roll @ align).rotation
            name = f"{label} roll {np.degrees(angle):+.2f} deg"
            starts.append((name, RigidTransform(rotation, c_m - c_f, c_f)))
    return starts, radius


def changed_regions(
    fixed: Level,
    moving: Level,
    transform: RigidTransform,
    samples: np.ndarray,
    *,
    smoothing: float = 2.0,
    contrast: float = 0.15,
    sigmas: float = 3.0,
    margin: int = 2,
) -> np.ndarray:
    """Where the tibia changed between the fixed and the aligned moving volume.

    The moving volume is resampled onto the fixed grid through ``transform`` and fitted to the
    fixed one by a gain and an offset over ``samples``.  The residual is smoothed by a Gaussian
    of ``smoothing`` voxels: a small misalignment leaves a thin two-signed sheet along every
    edge, and noise or interpolation differences in fine trabeculae are zero-mean, so smoothing
    cancels them, whereas bone that vanished (a lesion) or appeared (woven bone) leaves a
    one-signed blob that survives.  Voxels whose smoothed residual exceeds both ``contrast``
    times the bone's contrast (99th minus 50th percentile of the fixed samples) and ``sigmas``
    robust standard deviations of it (1.4826 MAD over the samples) are changed, grown by
    ``margin`` voxels to cover the blobs' blurred rims.

    Parameters
    ----------
    fixed, moving : Level
        The two volumes (one pyramid level).
    transform : RigidTransform
        Fixed micrometres to moving micrometres, the current fit.
    samples : numpy.ndarray
        Fixed voxel indices (n, 3) the metric uses.
    smoothing : float
        Gaussian sigma of the residual's smoothing, voxels.
    contrast : float
        Threshold on the smoothed residual, as a fraction of the bone's contrast.
    sigmas : float
        Threshold on the smoothed residual, in its robust standard deviations.
    margin : int
        Dilation of the changed regions, voxels.

    Returns
    -------
    numpy.ndarray
        bool, the fixed volume's shape: True where the tibia changed.
    """
    matrix, offset = transform.index_affine(
        fixed.spacing, moving.spacing, fixed_origin=fixed.origin, moving_origin=moving.origin
    )
    image = np.ascontiguousarray(moving.image, np.float32)
    aligned = affine_block(image, matrix=matrix, offset=offset, box_lo=(0, 0, 0),
                           in_shape=image.shape, out_start=(0, 0, 0),
                           out_shape=fixed.image.shape, order=1)  # fmt: skip
    where = tuple(samples.T)
    f = fixed.image[where].astype(np.float64)
    m = aligned[where].astype(np.float64)
    design = np.stack([m, np.ones_like(m)], axis=1)
    (gain, bias), *_ = np.linalg.lstsq(design, f, rcond=None)
    residual = fixed.image - (np.float32(gain) * aligned + np.float32(bias))
    smoothed = ndimage.gaussian_filter(residual, smoothing)
    r = smoothed[where]
    spread = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    low, high = np.percentile(f, [50, 99])
    level = max(sigmas * spread, contrast * float(high - low))
    if level <= 0:
        return np.zeros(fixed.image.shape, bool)
    changed = np.abs(smoothed) > level
    if margin and changed.any():
        ball = ndimage.generate_binary_structure(3, 1)
        changed = ndimage.binary_dilation(changed, ball, iterations=margin)
    return changed


@dataclass
class LevelResult:
    """How one pyramid level went."""

    spacing_um: tuple[float, float, float]
    metric: float
    evaluations: int


@dataclass
class SearchResult:
    """Output of :func:`register_levels`."""

    transform: RigidTransform
    metric: float
    start: str
    start_scores: list[tuple[str, float]] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)
    changed_fraction: float = 0.0
    """Fraction of the finest level's samples left out as changed (0 without exclusion)."""


def _optimise(
    fixed: Level,
    moving: Level,
    start: RigidTransform,
    radius: float,
    samples: np.ndarray,
    *,
    xtol: float,
    max_evals: int,
) -> tuple[RigidTransform, float, int]:
    """Powell's method from ``start`` on one level; returns transform, NCC and evaluations."""
    values = fixed.image[tuple(samples.T)].astype(np.float64)
    moving_image = np.ascontiguousarray(moving.image)
    h = float(np.mean(fixed.spacing))
    rot_scale = h / max(radius, h)
    centre = start.centre

    def transform_of(x: np.ndarray) -> RigidTransform:
        delta = RigidTransform.from_rotation_vector(x[:3] * rot_scale, x[3:] * h, centre)
        return start @ delta

    def cost(x: np.ndarray) -> float:
        matrix, offset = transform_of(x).index_affine(
            fixed.spacing, moving.spacing, fixed_origin=fixed.origin, moving_origin=moving.origin
        )
        return 1.0 - float(_ncc_kernel(samples, values, moving_image, matrix, offset))

    result = optimize.minimize(
        cost,
        np.zeros(6),
        method="Powell",
        options={"xtol": xtol, "ftol": 1e-4, "maxfev": max_evals, "direc": np.eye(6) * 2.0},
    )
    best = transform_of(result.x)
    return best.with_centre(centre), 1.0 - float(result.fun), int(result.nfev)


def register_levels(
    fixed: Level,
    moving: Level,
    factors: Sequence[int],
    *,
    threshold: float = 75.0,
    roll_starts: Sequence[float] = FULL_ROLL_STARTS,
    keep_starts: int = 3,
    initial: RigidTransform | None = None,
    max_evals: int = 600,
    exclude_change_rounds: int = 0,
    axial_restarts: Sequence[float] = (),
) -> SearchResult:
    """Multi-start, coarse-to-fine rigid registration of two in-memory volumes.

    Parameters
    ----------
    fixed, moving : Level
        The finest level of each volume (already downsampled to the working resolution).
    factors : sequence of int
        Binning of the finest level for each pyramid level, coarse to fine, ending in 1 (e.g.
        ``(4, 2, 1)``).
    threshold : float
        Bone grey level (principal axes; sample selection).
    roll_starts : sequence of float
        Roll angles (radians) about the long axis tried from the principal-axes alignment.
    keep_starts : int
        Starts kept after scoring every start once on the coarsest level (early rejection);
        each is optimised there and the best continues to the finer levels.
    initial : RigidTransform, optional
        Skip the principal-axes search and start from this transform.
    max_evals : int
        Metric evaluations per Powell run.
    exclude_change_rounds : int
        After the finest level, refit up to this many times without the samples in
        :func:`changed_regions` (stopping when they no longer change).  For time registration,
        where a lesion or new bone would otherwise bias the fit; 0 (default) keeps every sample.
        ``metric`` is then the NCC over the unchanged samples (how well the bone that did not
        change matches); at most ``MAX_CHANGED_FRACTION`` of them can be left out.
    axial_restarts : sequence of float
        After the finest level, refit from the result shifted by each of these many voxels
        along the fixed bone's long axis, keeping a higher NCC: a shaft is nearly the same
        all along, so the fit can stop in a local optimum a few voxels along it.

    Returns
    -------
    SearchResult
    """
    factors = [int(f) for f in factors]
    if not factors or factors[-1] != 1 or any(f < 1 for f in factors):
        raise ValueError(f"factors={factors} must be positive and end with 1 (the finest level)")
    pyramid = [
        (fixed.binned((f,) * 3) if f > 1 else fixed, moving.binned((f,) * 3) if f > 1 else moving)
        for f in factors
    ]
    coarse_f, coarse_m = pyramid[0]
    if initial is None:
        starts, radius = axis_starts(coarse_f, coarse_m, threshold, roll_starts)
    else:
        _, _, radius = principal_axes(coarse_f, threshold)
        starts = [("given", initial)]
    samples = sample_points(coarse_f, threshold * 0.5)
    scored = [(name, ncc(coarse_f, coarse_m, t, samples)) for name, t in starts]
    order = np.argsort([-score for _, score in scored], kind="stable")
    kept = [starts[i] for i in order[: max(1, keep_starts)]]
    logger.debug("start scores: %s", [scored[i] for i in order[:8]])
    best: tuple[RigidTransform, float, int, str] | None = None
    for name, start in kept:
        transform, metric, evals = _optimise(
            coarse_f, coarse_m, start, radius, samples, xtol=0.05, max_evals=max_evals
        )
        if best is None or metric > best[1]:
            best = (transform, metric, evals, name)
    assert best is not None
    transform, metric, evals, start_name = best
    levels = [LevelResult(coarse_f.spacing, metric, evals)]
    for fixed_l, moving_l in pyramid[1:]:
        samples = sample_points(fixed_l, threshold * 0.5)
        transform, metric, evals = _optimise(
            fixed_l, moving_l, transform, radius, samples, xtol=0.02, max_evals=max_evals
        )
        levels.append(LevelResult(fixed_l.spacing, metric, evals))
    fixed_l, moving_l = pyramid[-1]  # ``samples`` are the finest level's from here on
    if axial_restarts:
        _, axis, _ = principal_axes(fixed_l, threshold)
        h = float(np.mean(fixed_l.spacing))
        for shift in axial_restarts:
            nudge = RigidTransform.from_rotation_vector((0.0, 0.0, 0.0), axis * float(shift) * h)
            candidate, score, evals = _optimise(
                fixed_l, moving_l, (transform @ nudge).with_centre(transform.centre), radius,
                samples, xtol=0.02, max_evals=max_evals,
            )  # fmt: skip
            if score > metric + 1e-4:
                logger.debug("axial restart %+g voxels: NCC %.4f -> %.4f", shift, metric, score)
                transform, metric = candidate, score
                levels.append(LevelResult(fixed_l.spacing, metric, evals))
    excluded = np.zeros(len(samples), bool)
    changed_fraction = 0.0
    for _ in range(max(0, int(exclude_change_rounds))):
        blobs = changed_regions(fixed_l, moving_l, transform, samples)
        now = blobs[tuple(samples.T)]
        fraction = float(now.mean())
        if fraction > MAX_CHANGED_FRACTION:
            logger.warning(
                "%.0f%% of the samples look changed (more than %.0f%%): keeping the fit "
                "without change exclusion", 100 * fraction, 100 * MAX_CHANGED_FRACTION,
            )  # fmt: skip
            break
        if np.array_equal(now, excluded):
            break
        excluded, changed_fraction = now, fraction
        transform, metric, evals = _optimise(
            fixed_l, moving_l, transform, radius, samples[~excluded], xtol=0.02,
            max_evals=max_evals,
        )  # fmt: skip
        levels.append(LevelResult(fixed_l.spacing, metric, evals))
    return SearchResult(
        transform, metric, start_name, [scored[i] for i in order], levels, changed_fraction
    )
