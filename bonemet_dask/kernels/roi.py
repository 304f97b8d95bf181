"""RoI kernels: find the fibula in a cropped proximal tibia and remove it.

Below the proximal tibia-fibula junction the fibula runs beside the tibia as a separate bone.
Removal is two kernels:

1. :func:`outside_tibia` (per slab): in each slice, the tibia is the largest component of the
   hole-filled bone mask (its periosteal envelope); bone outside that envelope is a candidate;
2. :func:`fibula_mask` (one task over the whole RoI): candidates are linked across slices in
   3-D (6-connected); a chain that reaches the RoI's first or last slice runs through the RoI
   beside the tibia, as the fibula does, and is the fibula.  Fragments that start and end inside
   the RoI (a piece of cortex cut off by a lesion, woven bone) are kept.

Pure and Dask-free; numpy or cupy blocks.
"""

from __future__ import annotations

from typing import Any

from bonemet_dask._backend import array_namespace, ndimage_namespace
from bonemet_dask.kernels.composite import threshold_mask
from bonemet_dask.kernels.slicewise import (
    fill_holes_slices,
    label_slices,
    largest_component_slices,
)

__all__ = ["bone_of", "fibula_mask", "outside_tibia", "remove_voxels"]


def bone_of(block: Any, *, kind: str, level: float = 75) -> Any:
    """Bone mask of a block, bool.

    ``grey >= level`` for ``kind="greyscale"``; any bone code of a composite for
    ``kind="composite"`` (bone in the baseline or the follow-up).
    """
    if kind == "composite":
        return block > 0
    if kind == "greyscale":
        return threshold_mask(block, level=level)
    raise ValueError(f"kind={kind!r} is not one of 'composite', 'greyscale'")


def outside_tibia(block: Any, *, kind: str, level: float = 75) -> Any:
    """Bone of a ``(slice, y, x)`` slab lying outside each slice's tibial envelope, bool.

    The envelope is the largest 8-connected component of the slice's hole-filled bone mask
    (cortex, marrow and trabeculae together).
    """
    xp = array_namespace(block)
    bone = bone_of(block, kind=kind, level=level)
    labels, count = label_slices(fill_holes_slices(bone))
    largest, _ = largest_component_slices(labels, count)
    envelope = (labels == largest[:, None, None]) & (largest[:, None, None] > 0)
    return bone & ~envelope if count else xp.zeros(bone.shape, dtype=bool)


def fibula_mask(outside: Any, *, min_voxels: int = 1) -> Any:
    """The 6-connected chains of ``outside`` that reach the first or last slice, bool.

    Parameters
    ----------
    outside : ndarray of bool, shape (slice, y, x)
        :func:`outside_tibia` over the whole RoI.
    min_voxels : int, optional
        Smaller chains are left alone (partial-volume crumbs touching an end slice).
    """
    xp, ndi = array_namespace(outside), ndimage_namespace(outside)
    labels, count = ndi.label(outside)  # default structure: 6-connected in 3-D
    if not count:
        return xp.zeros(outside.shape, dtype=bool)
    sizes = xp.bincount(labels.ravel(), minlength=int(count) + 1)
    through = xp.zeros(int(count) + 1, dtype=bool)
    through[labels[0].ravel()] = True
    through[labels[-1].ravel()] = True
    through[0] = False
    through &= sizes >= min_voxels
    return through[labels]


def remove_voxels(block: Any, remove: Any, *, fill: float = 0) -> Any:
    """``block`` with the voxels where ``remove`` is True set to ``fill`` (a copy)."""
    xp = array_namespace(block, remove)
    return xp.where(remove, xp.asarray(fill, dtype=block.dtype), block)
