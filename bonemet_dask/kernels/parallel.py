"""Parallel-beam FBP of a block of detector rows: one independent slice per row."""

from __future__ import annotations

import numpy as np

from bonemet_dask.kernels.fdk import fbp_parallel_slice


def fbp_parallel_rows(
    sinograms: np.ndarray,
    angles_deg: np.ndarray,
    *,
    window: str,
    center: float | None,
    pixel_mm: float,
) -> np.ndarray:
    """``(row, angle, col)`` sinograms of line integrals -> ``(row, y, x)`` slices in 1/mm.

    Detector row ``r`` becomes slice ``r`` (row 0, the top, is slice 0); each float32 slice is
    :func:`~bonemet_dask.kernels.fdk.fbp_parallel_slice` of that row's sinogram, divided by the
    pixel size to turn 1/pixel into 1/mm.
    """
    n_rows, n_angles, n_cols = sinograms.shape
    if n_angles != len(angles_deg):
        raise ValueError(
            f"block has {n_angles} projections but angles_deg has {len(angles_deg)}; a parallel "
            "block must hold every angle of its rows"
        )
    out = np.empty((n_rows, n_cols, n_cols), np.float32)
    for r in range(n_rows):
        sinogram = np.ascontiguousarray(sinograms[r], dtype=np.float32)
        out[r] = fbp_parallel_slice(sinogram, angles_deg, window=window, center=center) / pixel_mm
    return out
