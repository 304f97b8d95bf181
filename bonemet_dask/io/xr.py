"""The store as xarray: a lazy :class:`xarray.DataTree` of labelled scans, and dense stacks.

:func:`open_store` mirrors the store hierarchy (``/recon_ct/851/both/week0``); each scan node
holds a Dataset whose DataArray ``image`` is a Dask array over the Zarr array ``0`` (nothing is
read but metadata and the small ``slice_index`` arrays). :func:`stack` turns the scans of a
fixed-shape component into one ``(mouse, side, week, slice, y, x)`` DataArray without copying.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.abc.store import Store

from bonemet_dask.io.labels import LABELS_GROUP, label_variables
from bonemet_dask.io.pyramid import level_array
from bonemet_dask.io.records import RECORDS_GROUP
from bonemet_dask.io.store import (
    DIMS,
    get_bonemet_attrs,
    open_zarr_store,
    parse_week_segment,
    read_ome_scale,
)
from bonemet_dask.naming import COMPONENTS, SIDES

__all__ = ["open_scan", "open_store", "stack"]

logger = logging.getLogger(__name__)

_READ_DIMS: Final = {DIMS["ct"]: ("slice", "y", "x"), DIMS["projections"]: DIMS["projections"]}
_CHUNKINGS: Final = ("inner", "shard")


def open_store(
    store: str | os.PathLike[str] | Store,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunks: str = "inner",
    consolidated: bool = False,
    level: int = 0,
) -> xr.DataTree:
    """Open a bonemet store as a lazy DataTree with the store's hierarchy.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        Local path, fsspec URL (``memory://``, ``s3://``) or store; see
        :func:`~bonemet_dask.io.store.open_zarr_store`.
    storage_options : mapping, optional
        fsspec options for a URL.
    chunks : {"inner", "shard"}, optional
        Dask chunks of each image: the Zarr inner chunks (what a reader fetches, the default)
        or whole shards (fewer, larger tasks).
    consolidated : bool, optional
        False (default): read every group's own metadata (one request per node, concurrent),
        always current.  True: use the root's consolidated metadata when there is some (one
        request for the whole tree, e.g. on S3), as the last finished bonemet-dask command
        wrote it; a command still running, or killed, leaves none (then the store is listed),
        but a write by other means since is not seen.
    level : int, optional
        Pyramid level of each image (0: full resolution; k: downsampled ``2**k`` times, see
        :mod:`bonemet_dask.io.pyramid`); a scan with fewer levels gives its coarsest, and
        ``image.attrs["level"]`` says which. Coordinates are those of the level (micrometres
        of the pixel centres; ``slice``: the source index of each block's first slice); other
        arrays of the scan are left out at levels above 0.

    Returns
    -------
    xarray.DataTree
        Nodes ``/{component}/{mouse}/{side}/week{k}`` hold a Dataset with the DataArray
        ``image``: dims ``(slice, y, x)`` for CT, ``(angle, row, col)`` for projections;
        coords ``slice`` (source file index), ``y``/``x``/``row``/``col`` (micrometres),
        ``angle`` (degrees from ``bonemet.angles_deg``, else the source index) with ``index``
        (the source index) beside it; scalar coords ``mouse`` (the original id), ``side``,
        ``week``; the group's ``bonemet`` attributes as Dataset attrs (and, for projections,
        as ``image.attrs["bonemet"]`` too, so ``bm.reconstruct`` takes the image as it is).
        ``/medirec`` holds the
        records with dim ``record`` (one variable per column, ``column`` attr = original name).

    Raises
    ------
    ValueError
        If ``chunks`` is not allowed.
    """
    if chunks not in _CHUNKINGS:
        raise ValueError(f"chunks={chunks!r} is not one of {', '.join(map(repr, _CHUNKINGS))}")
    zstore = open_zarr_store(store, mode="r", storage_options=storage_options)
    root = zarr.open_group(zstore, mode="r", use_consolidated=None if consolidated else False)
    # one concurrent walk of all metadata (or none: the consolidated metadata has it)
    members = dict(root.members(max_depth=None, use_consolidated_for_children=consolidated))
    nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=get_bonemet_attrs(root))}
    children: dict[str, list[str]] = {}
    for key in members:
        parent, _, name = key.rpartition("/")
        children.setdefault(parent, []).append(name)
    for path, node in sorted(members.items()):
        parts = path.split("/")
        if len(parts) != 4 or not isinstance(node, zarr.Group):
            continue
        component, _, side, week_name = parts
        week = parse_week_segment(week_name)
        if component not in COMPONENTS or side not in SIDES or week is None:
            logger.debug("open_store: %r is not a scan group path; skipped", path)
            continue
        image = members.get(f"{path}/0")
        index = members.get(f"{path}/slice_index")
        if not isinstance(image, zarr.Array) or not isinstance(index, zarr.Array):
            logger.warning("open_store: scan group %r lacks array '0' or 'slice_index'", path)
            continue
        # other arrays of the scan on the same grid (seg_ct "mask", roi_ct "greyscale", ...),
        # from the metadata walk above: no extra listing per group
        extras = {
            name: array
            for name in children.get(path, ())
            if name not in _OWN_ARRAYS
            and isinstance(array := members[f"{path}/{name}"], zarr.Array)
            and array.shape == image.shape
            and array.metadata.dimension_names == image.metadata.dimension_names
        }
        extras.update(label_variables(members, path, image))  # seg_ct labels/mask -> "mask"
        transform = None
        if level:  # a pyramid level: its own array and transform, no extras
            image, used, *transform = level_array(node, level)
            extras, transform = {}, (*transform, used)
        nodes["/" + path] = _scan_dataset(node, image, index, parts, chunks=chunks, extras=extras,
                                          transform=transform)  # fmt: skip
    records = members.get(RECORDS_GROUP)
    if isinstance(records, zarr.Group) and "columns" in records.attrs.get("bonemet", {}):
        nodes["/" + RECORDS_GROUP] = _records_dataset(records)
    return xr.DataTree.from_dict(nodes)


_OWN_ARRAYS = ("0", "slice_index", "slice_hash")
_READ_NAMES: Final = {
    "rotation_xray": "projections",
    "recon_ct": "recon",
    "seg_ct": "seg",
    "regist_ct": "regist",
    "roi_ct": "roi",
}
"""Dashboard names of the read tasks per component (``read-recon``: task names allow letters)."""


def open_scan(group: zarr.Group, *, chunks: str = "inner") -> xr.Dataset:
    """The labelled Dataset of one scan group, as :func:`open_store` shows it.

    Reads the group's metadata and its ``slice_index`` only; a stage that works on one scan
    of a large store opens just that scan.

    Parameters
    ----------
    group : zarr.Group
        A scan group ``{component}/{mouse}/{side}/week{k}``.
    chunks : {"inner", "shard"}, optional
        Dask chunks of the arrays (see :func:`open_store`).

    Raises
    ------
    ValueError
        If the group is not a scan group (no array ``0`` or ``slice_index``).
    """
    if chunks not in _CHUNKINGS:
        raise ValueError(f"chunks={chunks!r} is not one of {', '.join(map(repr, _CHUNKINGS))}")
    parts = group.path.split("/")[-4:]
    arrays = {name: node for name, node in group.members() if isinstance(node, zarr.Array)}
    image, index = arrays.get("0"), arrays.get("slice_index")
    if image is None or index is None or len(parts) != 4:
        raise ValueError(
            f"group {group.path!r} is not a scan group (it lacks array '0' or 'slice_index')"
        )
    extras = {
        name: array
        for name, array in arrays.items()
        if name not in _OWN_ARRAYS
        and array.shape == image.shape
        and array.metadata.dimension_names == image.metadata.dimension_names
    }
    members = dict(group.members(max_depth=2)) if LABELS_GROUP in group else {}
    extras.update(label_variables(members, "", image))  # seg_ct labels/mask -> "mask"
    return _scan_dataset(group, image, index, parts, chunks=chunks, extras=extras)


def _lazy(array: zarr.Array, chunks: str) -> da.Array:
    block = array.chunks if chunks == "inner" else (array.shards or array.chunks)
    component = array.path.split("/", 1)[0]
    prefix = "read-" + _READ_NAMES.get(component, "array")
    token = tokenize(str(array.store), array.path, array.shape, str(array.dtype), block)
    return da.from_array(
        array, chunks=block, name=f"{prefix}-{token}", lock=False, asarray=True, fancy=False
    )


def _scan_dataset(
    group: zarr.Group,
    image: zarr.Array,
    index: zarr.Array,
    parts: list[str],
    *,
    chunks: str,
    extras: dict[str, zarr.Array] | None = None,
    transform: tuple[Any, Any, int] | None = None,
) -> xr.Dataset:
    attrs = get_bonemet_attrs(group)
    stored_dims = tuple(image.metadata.dimension_names or ())
    if stored_dims not in _READ_DIMS:
        raise ValueError(
            f"array {image.path!r} has dimension_names={stored_dims!r}, not one of "
            f"{list(_READ_DIMS)}; rewrite the scan with bonemet_dask's convert"
        )
    dims = _READ_DIMS[stored_dims]
    scale = read_ome_scale(group)
    if scale is None or len(scale) != 3:
        logger.warning("open_store: %r has no OME scale; using 1.0", group.path)
        scale = (1.0, 1.0, 1.0)
    data = _lazy(image, chunks)
    source_index = np.asarray(index[:], dtype=np.int64)
    offset, used = (0.0, 0.0, 0.0), 0
    if transform is not None:  # pyramid level (io/pyramid.py): scale, pixel-centre offset
        scale, offset, used = transform
        if len(source_index) != image.shape[0]:
            source_index = source_index[:: 2**used]
    micrometre = {"units": "micrometer"}
    coords: dict[str, Any] = {
        dims[1]: (dims[1], np.arange(image.shape[1]) * scale[1] + offset[1], micrometre),
        dims[2]: (dims[2], np.arange(image.shape[2]) * scale[2] + offset[2], micrometre),
        "mouse": str(attrs.get("mouse", parts[1])),
        "side": parts[2],
        "week": int(parse_week_segment(parts[3]) or 0),
    }
    if dims[0] == "slice":
        coords["slice"] = ("slice", source_index, {"long_name": "source file index"})
        # the stored axis' name and micrometres, as plain xr.open_zarr shows them (io/coords.py)
        coords[stored_dims[0]] = ("slice", np.arange(image.shape[0]) * scale[0] + offset[0],
                                  micrometre)  # fmt: skip
    else:
        angles = attrs.get("angles_deg")
        if angles is not None and len(angles) == image.shape[0]:
            coords["angle"] = ("angle", np.asarray(angles, dtype=np.float64), {"units": "degree"})
        else:
            coords["angle"] = ("angle", source_index, {"long_name": "projection index"})
        coords["index"] = ("angle", source_index, {"long_name": "source file index"})
    # a projection stack's image carries the group's attributes (the SkyScan .log, NRecon's
    # reference grid and window): what bm.reconstruct(tree[...].dataset["image"]) reads
    image_attrs = {"bonemet": attrs} if dims[0] == "angle" else {}
    if transform is not None:
        image_attrs = {**image_attrs, "level": used}
    variables = {"image": (dims, data, image_attrs)}
    for name, array in sorted((extras or {}).items()):  # e.g. seg_ct "mask", roi_ct "greyscale"
        variables[name] = (dims, _lazy(array, chunks))
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _records_dataset(group: zarr.Group) -> xr.Dataset:
    columns = group.attrs["bonemet"]["columns"]
    variables = {}
    for meta in columns:
        values = np.asarray(group[meta["array"]][:])
        if meta["kind"] == "string":
            values = values.astype(object)
            if "mask" in meta:
                values[np.asarray(group[meta["mask"]][:], dtype=bool)] = None
        attrs = {"column": meta["name"], "pandas_dtype": meta["dtype"]}
        variables[meta["array"]] = xr.Variable(("record",), values, attrs)
    return xr.Dataset(variables, attrs={"n_records": group.attrs["bonemet"]["n_records"]})


def _mouse_key(mouse: str) -> tuple[int, int, str]:
    return (0, int(mouse), mouse) if mouse.isdigit() else (1, 0, mouse)


def stack(tree: xr.DataTree, component: str, *, fill: float = 0) -> xr.DataArray:
    """Dense lazy ``(mouse, side, week, *image dims)`` view of a fixed-shape component.

    Parameters
    ----------
    tree : xarray.DataTree
        From :func:`open_store`.
    component : str
        A component whose scans all have one shape, e.g. ``"regist_ct"`` or ``"roi_ct"``.
    fill : float, optional
        Value of the scans that are missing. When the images' dtype cannot hold it (NaN for
        uint8), the result is promoted (float32 for 8/16-bit images) lazily.

    Returns
    -------
    xarray.DataArray
        Named ``image``, Dask-backed (existing scans are referenced, not copied; missing ones
        are ``dask.array.full``); coords ``mouse``, ``side``, ``week``, the boolean
        ``present(mouse, side, week)``, and the image coords that all scans share.

    Raises
    ------
    ValueError
        If the tree has no scans of ``component`` or their shapes differ (the scans are named).
    """
    if component not in tree.children:
        raise ValueError(
            f"component={component!r} is not in the tree; it holds "
            f"{sorted(k for k in tree.children if k in COMPONENTS)}"
        )
    scans: dict[tuple[str, str, int], xr.DataArray] = {}
    for node in tree[component].subtree:
        if "image" in node.dataset.data_vars:
            image = node.dataset["image"]
            key = (str(image["mouse"].item()), str(image["side"].item()), int(image["week"]))
            scans[key] = image.drop_vars(["mouse", "side", "week"])
    if not scans:
        raise ValueError(f"component={component!r} holds no scan; nothing to stack")
    shapes: dict[tuple[int, ...], list[str]] = {}
    for (mouse, side, week), image in scans.items():
        shapes.setdefault(image.shape, []).append(f"{component}/{mouse}/{side}/week{week}")
    if len(shapes) > 1:
        listing = "; ".join(f"{shape}: {', '.join(paths[:3])}" for shape, paths in shapes.items())
        raise ValueError(
            f"stack(component={component!r}) needs every scan to have one shape, found {listing}; "
            "select scans of one shape or resample them to a common grid first"
        )
    first = next(iter(scans.values()))
    dtype = np.result_type(*(image.dtype for image in scans.values()))
    if not np.can_cast(np.min_scalar_type(fill), dtype):
        floating = isinstance(fill, float) or np.issubdtype(type(fill), np.floating)
        dtype = np.result_type(dtype, np.float32 if floating else np.min_scalar_type(fill))
    mice = sorted({k[0] for k in scans}, key=_mouse_key)
    sides = sorted({k[1] for k in scans}, key=SIDES.index)
    weeks = sorted({k[2] for k in scans})
    chunks = first.data.chunks
    missing = da.full(first.shape, fill, dtype=dtype, chunks=chunks)
    present = np.zeros((len(mice), len(sides), len(weeks)), dtype=bool)
    per_mouse = []
    for i, mouse in enumerate(mice):
        per_side = []
        for j, side in enumerate(sides):
            blocks = []
            for k, week in enumerate(weeks):
                image = scans.get((mouse, side, week))
                present[i, j, k] = image is not None
                blocks.append(missing if image is None else image.data.astype(dtype, copy=False))
            per_side.append(da.stack(blocks))
        per_mouse.append(da.stack(per_side))
    data = da.stack(per_mouse)
    coords: dict[str, Any] = {
        "mouse": mice,
        "side": sides,
        "week": weeks,
        "present": (("mouse", "side", "week"), present),
    }
    for name, coord in first.coords.items():
        if all(np.array_equal(coord.values, im.coords[name].values) for im in scans.values()):
            coords[name] = coord.variable
        else:
            logger.info("stack(%r): coord %r differs between scans; left out", component, name)
    dims = ("mouse", "side", "week", *first.dims)
    return xr.DataArray(
        data, dims=dims, coords=coords, name="image", attrs={"component": component, "fill": fill}
    )
