"""Coordinate arrays of a scan group, so that a plain ``xr.open_zarr`` is labelled too.

Each image group holds one tiny 1-D array per axis of its image, named like the axis (xarray's
rule for a dimension coordinate): ``z``, ``y``, ``x`` (CT) or ``row``, ``col`` in micrometres
and, when the group records ``bonemet.angles_deg``, ``angle`` in degrees (projections), each
with a ``units`` attribute.
Array ``0`` lists them and ``slice_index`` in its ``coordinates`` attribute (the CF convention
xarray decodes), so ``xr.open_zarr(store, group=...)`` gives ``0`` with these coordinates.
They are written once by the client when the group is created, one chunk each, unsharded and
uncompressed: 3 arrays, 6 objects per group.

The names are the OME-Zarr axis names, which OME-Zarr 0.5 requires to equal the arrays'
``dimension_names``.  :func:`bonemet_dask.open_store` shows the same micrometres (its CT slice
dimension keeps the name ``slice``, with the coordinate ``z`` along it: see
``docs/store-layout.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import zarr

__all__ = ["COORDINATE_UNITS", "coordinate_values", "write_coordinates"]

logger = logging.getLogger(__name__)

COORDINATE_UNITS: Final = "micrometer"
"""``units`` of the spatial coordinate arrays (UDUNITS spelling, as the OME axes)."""


def coordinate_values(
    dims: Sequence[str],
    shape: Sequence[int],
    scale: Sequence[float],
    *,
    angles_deg: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
) -> dict[str, tuple[str, np.ndarray, dict[str, Any]]]:
    """The coordinate of each axis of an image: values and attributes.

    Parameters
    ----------
    dims : sequence of str
        Axis names, e.g. ``("z", "y", "x")`` or ``("angle", "row", "col")``.
    shape : sequence of int
        Image shape.
    scale : sequence of float
        Micrometres per voxel along each axis (ignored for ``angle``).
    angles_deg : sequence of float, optional
        The projections' angles in degrees; without them there is no angle coordinate (the
        projection index is ``slice_index``).
    offset : sequence of float, optional
        Micrometres of pixel 0 along each axis (a pyramid level's OME translation); default 0.

    Returns
    -------
    dict
        ``{name: (dim, values, attrs)}``: ``index * scale`` micrometres, or the angles in
        degrees, each with ``units``; ``name`` is ``dim``.
    """
    out: dict[str, tuple[str, np.ndarray, dict[str, Any]]] = {}
    offset = offset if offset is not None else (0.0,) * len(dims)
    for dim, n, step, start in zip(dims, shape, scale, offset, strict=True):
        if dim == "angle":
            if angles_deg is not None and len(angles_deg) == n:
                values = np.asarray(angles_deg, dtype=np.float64)
                out[dim] = (dim, values, {"units": "degree"})
        else:
            values = float(start) + np.arange(n, dtype=np.float64) * float(step)
            out[dim] = (dim, values, {"units": COORDINATE_UNITS})
    return out


def write_coordinates(
    group: zarr.Group,
    dims: Sequence[str],
    shape: Sequence[int],
    scale: Sequence[float],
    *,
    bonemet: Mapping[str, Any] | None = None,
    offset: Sequence[float] | None = None,
) -> list[str]:
    """Write the coordinate arrays a group lacks (idempotent; existing ones are kept).

    Parameters
    ----------
    group : zarr.Group
        A scan group whose array ``0`` has ``dimension_names`` ``dims``.
    dims, shape, scale : sequence
        The image's axes, shape and micrometres per voxel.
    bonemet : mapping, optional
        The group's ``bonemet`` attributes (``angles_deg`` of a projection stack).
    offset : sequence of float, optional
        Micrometres of pixel 0 (a pyramid level's translation); default 0.

    Returns
    -------
    list of str
        The names of the arrays written.

    Raises
    ------
    ValueError
        If a member named like an axis is not a 1-D array of the axis' length (the fix:
        rename or delete it).
    """
    angles = (bonemet or {}).get("angles_deg")
    coords = coordinate_values(dims, shape, scale, angles_deg=angles, offset=offset)
    written = []
    for name, (dim, values, attrs) in coords.items():
        node = group.get(name)
        if node is not None:
            if not isinstance(node, zarr.Array) or node.shape != values.shape:
                raise ValueError(
                    f"{group.path}/{name} exists and is not a 1-D array of length "
                    f"{values.size}; delete it (it is the coordinate of axis {dim!r}) or "
                    "rewrite the group with overwrite=True"
                )
            continue
        array = group.create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=(max(values.size, 1),),
            dimension_names=(dim,), compressors=(), fill_value=0, attributes=attrs,
        )  # fmt: skip
        array[:] = values
        written.append(name)
    names = "slice_index" if "slice_index" in group else ""
    image = group.get("0")
    if names and isinstance(image, zarr.Array) and image.attrs.get("coordinates") != names:
        image.attrs.update({"coordinates": names})
    if written:
        logger.debug("coordinates of %s: %s", group.path, written)
    return written
