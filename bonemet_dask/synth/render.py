"""Render a phantom: exact cone-beam line integrals per view and voxelised ground truth.

Thin, validated wrappers around the numba kernels in :mod:`bonemet_dask.synth._kernels`.
"""

from __future__ import annotations

import numpy as np

from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.synth import _kernels
from bonemet_dask.synth.primitives import PackedPhantom, Phantom


def _packed(phantom: Phantom | PackedPhantom) -> PackedPhantom:
    return phantom.pack() if isinstance(phantom, Phantom) else phantom


def line_integrals(
    phantom: Phantom | PackedPhantom,
    geometry: ConeGeometry,
    angle_deg: float,
    *,
    subpixels: int = 1,
) -> np.ndarray:
    """Line integrals of attenuation (dimensionless) over every detector pixel of one view.

    Parameters
    ----------
    phantom : Phantom or PackedPhantom
        The object, world millimetres, attenuation in 1/mm.
    geometry : ConeGeometry
        Scanner geometry (conventions in :mod:`bonemet_dask.geometry`).
    angle_deg : float
        Gantry angle of the view.
    subpixels : int, optional
        Rays per pixel edge.  1 samples pixel centres (exact line integrals); ``n > 1`` averages
        the transmitted intensity of ``n x n`` rays as a detector pixel does, returning
        ``-log(mean(exp(-p)))``.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_rows, n_cols)``, row 0 at the top.
    """
    if subpixels < 1:
        raise ValueError(f"subpixels={subpixels} must be >= 1")
    packed = _packed(phantom)
    source, origin, col_step, row_step = geometry.view_frame(angle_deg)
    out = np.empty((geometry.n_rows, geometry.n_cols), dtype=np.float64)
    if packed.density.size == 0:
        out[:] = 0.0
        return out
    _kernels.project_view(
        source,
        origin,
        col_step,
        row_step,
        out,
        packed.shapes,
        packed.density,
        packed.includes,
        packed.excludes,
        packed.spheres,
        int(subpixels),
    )
    return out


def voxelize(
    phantom: Phantom | PackedPhantom, grid: VolumeGrid, *, supersample: int = 2
) -> np.ndarray:
    """Mean attenuation (1/mm) of each voxel of ``grid``, float32 ``(slice, y, x)``.

    Parameters
    ----------
    phantom : Phantom or PackedPhantom
        The object, world millimetres.
    grid : VolumeGrid
        Where to sample.
    supersample : int, optional
        Point samples per voxel edge (``supersample**3`` per voxel), for partial-volume edges.
    """
    if supersample < 1:
        raise ValueError(f"supersample={supersample} must be >= 1")
    packed = _packed(phantom)
    out = np.zeros(grid.shape, dtype=np.float32)
    if packed.density.size:
        _kernels.voxelize_into(
            out,
            grid.origin,
            grid.steps,
            int(supersample),
            packed.shapes,
            packed.density,
            packed.includes,
            packed.excludes,
            packed.spheres,
        )
    return out
