"""Ground-truth landmarks of the phantom, computed at a resolution finer than any product."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from bonemet_dask.geometry import VolumeGrid
from bonemet_dask.synth.anatomy import LegAnatomy, leg_phantom
from bonemet_dask.synth.render import voxelize

JUNCTION_STEP_MM = 0.01
"""Sampling step of the junction search, mm (one slice at the published 10 um voxel size)."""


@functools.lru_cache(maxsize=64)
def find_junction_z(leg: LegAnatomy) -> float:
    """Height (mm, anatomical frame) of the proximal tibia-fibula junction.

    Rule (the one ``bm.find_tf_junction`` implements on images): walk distally slice by slice from
    the knee; the fibula's cross-section first appears joined to the tibia's (the head touches the
    tibia), and the junction is the first slice below that where the fibula is present but no
    8-connected component contains both tibia and fibula bone.

    Parameters
    ----------
    leg : LegAnatomy
        The leg (week does not matter: lesions and woven bone stay clear of the junction).

    Returns
    -------
    float
        ``z`` of the junction slice centre, mm; negative (below the plateau).

    Raises
    ------
    RuntimeError
        If the fibula never joins and then separates from the tibia in the searched range.
    """
    s = leg.scale
    coarse = 4 * JUNCTION_STEP_MM
    z_coarse = _first_separated_z(leg, coarse, -4.5 * s, -0.3 * s)
    # refine between the last joined coarse slice and the first separated one
    return _first_separated_z(leg, JUNCTION_STEP_MM, z_coarse - coarse, z_coarse + 2 * coarse)


def _first_separated_z(leg: LegAnatomy, step: float, z_low: float, z_high: float) -> float:
    """Walk slices of ``step`` mm from ``z_high`` down to ``z_low``; see :func:`find_junction_z`."""
    s = leg.scale
    x0, x1, y0, y1 = 0.0, 2.6 * s, -1.3 * s, 0.9 * s
    shape = (int((z_high - z_low) / step) + 1, int((y1 - y0) / step) + 1, int((x1 - x0) / step) + 1)
    top = z_high
    grid = VolumeGrid(shape, step, ((x0 + x1) / 2, (y0 + y1) / 2, top - (shape[0] - 1) / 2 * step))
    phantom = leg_phantom(leg, 0, frame="anatomical")
    is_tibia = phantom.select(lambda label: label in ("tibia", "trabecular"))
    tibia = voxelize(is_tibia, grid, supersample=1) > 0.02
    fibula = voxelize(phantom.select(lambda label: label == "fibula"), grid, supersample=1) > 0.02
    structure = np.ones((3, 3), bool)
    seen_joined = False
    for k in range(shape[0]):
        if not fibula[k].any() or not tibia[k].any():
            continue
        labels, _ = ndimage.label(tibia[k] | fibula[k], structure=structure)
        joined = bool(np.intersect1d(labels[tibia[k]], labels[fibula[k]]).size)
        if joined:
            seen_joined = True
        elif seen_joined:
            return float(grid.index_to_world(np.array([[k, 0.0, 0.0]]))[0, 2])
    raise RuntimeError(
        f"no proximal tibia-fibula junction between z={z_high:.3f} and {z_low:.3f} mm for {leg}"
    )
