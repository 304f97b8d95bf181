"""The reference tibia of sample registration: the phantom's canonical tibia on the Regist-CT grid.

BoneMet registered every week-0 tibia to one vertical reference (long axis along the slices,
proximal end at slice 0) before registering later weeks to it.  The reference here is the
synthetic phantom's tibia with average anatomy (:func:`reference_leg`: scale 1, mean fibula
position, no lesion, no yaw), in its side frame, voxelised on the published Regist-CT box (1538 x
539 x 509 voxels of 10 um: 15.38 x 5.39 x 5.09 mm) at any voxel size, with the grey levels of the
8-bit products.  It is what :func:`bonemet_dask.register` uses when ``fixed`` and ``reference``
are both omitted; to register to real anatomy instead, pass a registered week-0 volume of your own
as ``reference=``.
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr

from bonemet_dask.geometry import VolumeGrid
from bonemet_dask.synth.anatomy import LegAnatomy, leg_phantom, leg_placement, pose_matrix
from bonemet_dask.synth.config import (
    PUBLISHED_REGIST,
    REGIST_CENTRE_LATERAL_MM,
    REGIST_TOP_Z_MM,
    WINDOW_MAX_PER_MM,
)
from bonemet_dask.synth.render import voxelize

__all__ = ["reference_grid", "reference_leg", "reference_tibia", "scan_transform"]

PUBLISHED_VOXEL_UM = 10.0
"""Voxel size of the published Regist-CT grid, micrometres."""
SIDES = ("left", "right")


def reference_leg(side: str) -> LegAnatomy:
    """The average leg of the phantom (the means of :meth:`LegAnatomy.random`'s ranges)."""
    if side not in SIDES:
        raise ValueError(f"side={side!r} is not one of 'left', 'right'")
    return LegAnatomy(
        side=side,
        scale=1.0,
        injected=False,
        lesion_centre=(0.15, 0.35, -2.35),
        lesion_growth=0.23,
        fibula_head=(1.3, -0.35, -1.275),
        fibula_bow=(1.95, -0.25, -5.2),
        trabecular_seed=0,
        leg_yaw_deg=0.0,
    )


def reference_grid(side: str, voxel_size_um: float, *, factor: int = 1) -> VolumeGrid:
    """The Regist-CT box at ``voxel_size_um`` (world mm, side frame), optionally binned.

    Slice 0 sits ``REGIST_TOP_Z_MM`` above the tibial plateau and the box centre is shifted
    laterally to leave room for the fibula, as :meth:`SynthConfig.regist_grid` places it.  With
    ``factor > 1`` the grid is that of the box binned ``factor`` times: voxel ``m`` covers fine
    voxels ``m * factor .. m * factor + factor - 1``.
    """
    if side not in SIDES:
        raise ValueError(f"side={side!r} is not one of 'left', 'right'")
    if voxel_size_um <= 0 or factor < 1:
        raise ValueError(f"voxel_size_um={voxel_size_um} and factor={factor} must be positive")
    h = voxel_size_um / 1000
    shape = tuple(max(4, round(n * PUBLISHED_VOXEL_UM / voxel_size_um)) for n in PUBLISHED_REGIST)
    lateral = -REGIST_CENTRE_LATERAL_MM if side == "left" else REGIST_CENTRE_LATERAL_MM
    fine = VolumeGrid(shape, h, (lateral, 0.0, REGIST_TOP_Z_MM - (shape[0] - 1) / 2 * h))
    if factor == 1:
        return fine
    coarse = tuple(n // factor for n in shape)
    centre_index = np.array([(m - 1) / 2 * factor + (factor - 1) / 2 for m in coarse])
    centre = fine.index_to_world(centre_index[None])[0]
    return VolumeGrid(coarse, h * factor, tuple(centre))


@functools.lru_cache(maxsize=8)
def _reference_grey(side: str, voxel_size_um: float, factor: int, supersample: int) -> np.ndarray:
    grid = reference_grid(side, voxel_size_um, factor=factor)
    mu = voxelize(leg_phantom(reference_leg(side), 0), grid, supersample=supersample)
    grey = np.clip(np.rint(mu * (255.0 / WINDOW_MAX_PER_MM)), 0, 255).astype(np.uint8)
    grey.flags.writeable = False
    return grey


def reference_tibia(
    side: str, *, voxel_size_um: float = PUBLISHED_VOXEL_UM, factor: int = 1, supersample: int = 2
) -> xr.DataArray:
    """The reference tibia (uint8 grey, no noise) on the Regist-CT box.

    Parameters
    ----------
    side : {"left", "right"}
        Which leg (the left is the mirror image of the right).
    voxel_size_um : float
        Voxel size of the output grid (default the published 10 um: shape ``(1538, 539, 509)``).
    factor : int
        Return the grid binned ``factor`` times instead (cheap coarse levels for registration).
    supersample : int
        Point samples per voxel edge when voxelising (partial volume at the edges).

    Returns
    -------
    xarray.DataArray
        dims ``(slice, y, x)``, coords ``y`` / ``x`` in micrometres of the unbinned frame;
        attrs ``voxel_size_um`` and ``origin_um`` (where voxel 0 sits in that frame), so that
        transforms found against it apply to the full-resolution box.  Cached per arguments.
    """
    grey = _reference_grey(side, float(voxel_size_um), int(factor), int(supersample))
    h = voxel_size_um * factor
    origin = (factor - 1) / 2 * voxel_size_um
    micrometre = {"units": "micrometer"}
    return xr.DataArray(
        grey,
        dims=("slice", "y", "x"),
        coords={
            "slice": ("slice", np.arange(grey.shape[0])),
            "y": ("y", origin + np.arange(grey.shape[1]) * h, micrometre),
            "x": ("x", origin + np.arange(grey.shape[2]) * h, micrometre),
            "side": side,
        },
        name="reference_tibia",
        attrs={"voxel_size_um": [h, h, h], "origin_um": [origin] * 3, "source": __name__},
    )


def _index_to_world_matrix(grid: VolumeGrid) -> np.ndarray:
    """4x4 map of (slice, y, x) indices to world (x, y, z) millimetres."""
    m = np.eye(4)
    m[:3, :3] = grid.steps.T
    m[:3, 3] = grid.origin
    return m


def posed_tibia(
    side: str,
    *,
    voxel_size_um: float,
    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    leg: LegAnatomy | None = None,
    week: int = 0,
    margin_mm: float = 0.3,
    noise_sigma: float = 2.0,
    seed: int = 0,
    supersample: int = 1,
    reconstructed: bool = False,
) -> tuple[xr.DataArray, object]:
    """A Seg-CT-like crop of a tibia (with fibula and soft tissue) in a known rigid pose.

    The leg's side frame is moved by ``p -> R p + t`` (``R`` from ``angles_deg`` about world
    z, y, x, as :func:`bonemet_dask.synth.anatomy.random_pose` draws them), voxelised on an
    axis-aligned box around the posed bone plus ``margin_mm``, cut at the knee (femur and
    patella left out) and turned into noisy 8-bit grey: white noise of ``noise_sigma`` grey
    levels, or with ``reconstructed`` FDK's blur and correlated noise at this voxel size
    (:func:`bonemet_dask.synth.imaging.reconstructed`), as the generator's image products.

    Returns
    -------
    volume : xarray.DataArray
        uint8 ``(slice, y, x)`` with micrometre ``y`` / ``x`` coords, scalar ``side`` / ``week``.
    truth : RigidTransform
        The map from the reference frame (:func:`reference_grid` at ``voxel_size_um``,
        micrometres from its voxel 0) to this volume's micrometres: what registering the volume
        to a reference of the same anatomy should return.
    """
    from bonemet_dask.synth.primitives import rotation_matrix
    from bonemet_dask.transform import RigidTransform

    leg = leg or reference_leg(side)
    h = voxel_size_um / 1000
    rotation = rotation_matrix(angles_deg)
    shift = np.asarray(translation_mm, np.float64)
    parts = ("soft", "tibia", "trabecular", "fibula")
    phantom = leg_phantom(leg, week).select(lambda label: label in parts).moved(rotation, shift)
    lo, hi = phantom.bounds(lambda label, group: label != "soft")
    lo, hi = lo - margin_mm, hi + margin_mm
    top = min(hi[2], float((rotation @ np.zeros(3) + shift)[2]) + margin_mm * 0.5)
    shape = (
        int(np.ceil((top - lo[2]) / h)) + 1,
        int(np.ceil((hi[1] - lo[1]) / h)) + 1,
        int(np.ceil((hi[0] - lo[0]) / h)) + 1,
    )
    centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, top - (shape[0] - 1) / 2 * h)
    grid = VolumeGrid(shape, h, centre)
    mu = voxelize(phantom, grid, supersample=supersample)
    if reconstructed:
        from bonemet_dask.synth.imaging import noise_std_per_mm
        from bonemet_dask.synth.imaging import reconstructed as as_reconstructed

        white = np.random.default_rng(seed).standard_normal(mu.shape, dtype=np.float32)
        mu = as_reconstructed(mu, white, noise_std=noise_std_per_mm(h))
        noise_sigma = 0.0
    grey = mu * (255.0 / WINDOW_MAX_PER_MM)
    if noise_sigma:
        grey = grey + np.random.default_rng(seed).normal(0.0, noise_sigma, size=grey.shape)
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    # fixed micrometres -> fixed index -> side-frame world -> posed world -> moving index -> um
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, shift
    um_to_index = np.diag([1 / voxel_size_um] * 3 + [1.0])
    index_to_um = np.linalg.inv(um_to_index)
    fixed = _index_to_world_matrix(reference_grid(side, voxel_size_um))
    moving = _index_to_world_matrix(grid)
    matrix = index_to_um @ np.linalg.inv(moving) @ pose @ fixed @ um_to_index
    micrometre = {"units": "micrometer"}
    volume = xr.DataArray(
        grey,
        dims=("slice", "y", "x"),
        coords={
            "slice": ("slice", np.arange(shape[0])),
            "y": ("y", np.arange(shape[1]) * voxel_size_um, micrometre),
            "x": ("x", np.arange(shape[2]) * voxel_size_um, micrometre),
            "side": side,
            "week": week,
        },
        name="image",
    )
    return volume, RigidTransform.from_matrix(matrix)


def scan_transform(
    truth: dict, mouse: str, side: str, week: int, crop_lo, voxel_size_um: float
) -> object:
    """The registration a generated scan should get: reference micrometres -> crop micrometres.

    Composes, from ``synthetic_truth.json`` (``truth``): the reference grid's index -> the leg's
    side frame -> the holder (:func:`~bonemet_dask.synth.anatomy.leg_placement`) -> the scan's
    pose -> the Recon-CT index -> the index in a crop whose first voxel is ``crop_lo`` (a Seg-CT
    box).  The reference is the average leg, so a registration of the scan's own leg differs
    from this map by that leg's anatomy only.

    Returns
    -------
    RigidTransform
        In the conventions of :mod:`bonemet_dask.transform` (fixed -> moving micrometres).
    """
    from types import SimpleNamespace

    from bonemet_dask.transform import RigidTransform

    g = truth["grids"]["recon"]
    crop = _index_to_world_matrix(
        VolumeGrid(tuple(g["shape"]), g["voxel_size_mm"], tuple(g["centre_mm"]))
    )
    crop[:3, 3] += crop[:3, :3] @ np.asarray(crop_lo, np.float64)
    leg = SimpleNamespace(side=side, leg_yaw_deg=truth["mice"][mouse]["legs"][side]["leg_yaw_deg"])
    place = np.eye(4)
    place[:3, :3], place[:3, 3] = leg_placement(leg)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = pose_matrix(truth["mice"][mouse]["weeks"][str(week)]["pose"])
    fixed = _index_to_world_matrix(reference_grid(side, voxel_size_um))
    scale = np.diag([voxel_size_um] * 3 + [1.0])
    return RigidTransform.from_matrix(
        scale @ np.linalg.inv(crop) @ pose @ place @ fixed @ np.linalg.inv(scale)
    )
