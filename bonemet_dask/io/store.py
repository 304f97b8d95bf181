"""The Zarr v3 store: opening it and the scan-group layout (records: :mod:`.records`).

Implements ``docs/store-layout.md``: one OME-Zarr 0.5 image group per scan at
``/{component}/{mouse}/{side}/week{k}`` holding the sharded image array ``0`` and the per-slice
arrays ``slice_index`` and ``slice_hash``; ``/medirec`` holds MiceMediRec as 1-D column arrays.
A present ``slice_hash`` chunk marks a complete shard (its writer writes it last), so progress is
read from one store listing, never from pixel data.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from bonemet_dask.errors import StoreError
from bonemet_dask.naming import COMPONENTS, SIDES

if TYPE_CHECKING:
    pass

__all__ = [
    "CODECS",
    "STATUSES",
    "STORE_LAYOUT_VERSION",
    "ImageLayout",
    "StoreLayoutError",
    "check_local_store_path",
    "completed_shards",
    "create_image_group",
    "get_bonemet_attrs",
    "ome_image_attrs",
    "open_zarr_store",
    "read_layout",
    "read_ome_scale",
    "scan_group_path",
    "set_status",
    "shard_is_complete",
    "write_scan_shard",
    "write_shard",
]

logger = logging.getLogger(__name__)

STORE_LAYOUT_VERSION: Final = 1
"""``bonemet.layout`` of the root group: the version of ``docs/store-layout.md`` written."""
STATUSES: Final = ("incomplete", "complete", "quarantined")
"""Allowed values of ``bonemet.status`` on an image group."""
CODECS: Final = ("blosc-zstd", "blosc-lz4", "zstd", "gzip", "none")
"""Compressors :class:`ImageLayout` knows (applied to each inner chunk of a shard)."""
DIMS: Final = {"ct": ("z", "y", "x"), "projections": ("angle", "row", "col")}
"""Dimension names of the image array ``0`` by kind of stack."""
_MODES: Final = ("r", "r+", "a", "w", "w-")
# kind: (slices per shard, inner chunk along axis 0, along axis 1, along axis 2 or None = full)
_DEFAULTS: Final[dict[str, tuple[int, int, int, int | None]]] = {
    "ct": (64, 64, 256, 256),
    "projections": (8, 8, 128, None),
}
_WEEK_RE: Final = re.compile(r"^week(\d+)$")
MAX_ID_LENGTH: Final = 128
"""Longest animal id :func:`scan_group_path` accepts (ids are short; file names stop at 255)."""
_SAFE_ID: Final = re.compile(
    rf"[A-Za-z0-9](?:[A-Za-z0-9_.-]{{0,{MAX_ID_LENGTH - 2}}}[A-Za-z0-9_-])?", re.ASCII
)


class StoreLayoutError(ValueError):
    """An existing group differs from the layout (or fingerprint) a writer asked for."""


# --------------------------------------------------------------------------------------------
# Opening stores and naming groups
# --------------------------------------------------------------------------------------------


def open_zarr_store(
    store: str | os.PathLike[str] | Store,
    *,
    mode: str = "a",
    storage_options: Mapping[str, Any] | None = None,
) -> Store:
    """Return a Zarr store for a local path, an fsspec URL or an existing store.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        A local path (-> :class:`zarr.storage.LocalStore`), a ``file://`` URL (same), another
        fsspec URL such as ``memory://x`` or ``s3://bucket/x`` (->
        :class:`zarr.storage.FsspecStore`; synchronous filesystems are wrapped by zarr), or a
        store, returned as is.
    mode : {"r", "r+", "a", "w", "w-"}, optional
        ``"r"`` opens the store read-only; the other modes are passed on by the caller to
        :func:`zarr.open_group` (opening a store never deletes anything).
    storage_options : mapping, optional
        fsspec options for URLs (credentials, endpoint); not allowed with a path or a store.

    Returns
    -------
    zarr.abc.store.Store

    Raises
    ------
    TypeError
        If ``store`` is of another type.
    ValueError
        If ``mode`` is unknown or ``storage_options`` is given for a path or a store.
    StoreError
        If a local path is a regular file or lies under one (:func:`check_local_store_path`).
    """
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(map(repr, _MODES))}")
    read_only = mode == "r"
    if isinstance(store, Store):
        if storage_options:
            raise ValueError(
                "storage_options only apply to a URL; configure the store object itself, "
                f"or pass its URL instead of store={store!r}"
            )
        return store
    if not isinstance(store, str | os.PathLike):
        raise TypeError(
            f"store={store!r} ({type(store).__name__}) is not a path, URL or zarr Store; "
            "pass e.g. 'out.zarr', 'memory://out' or 's3://bucket/out.zarr'"
        )
    text = os.fspath(store)
    if "://" in text and not text.startswith("file://"):
        return FsspecStore.from_url(text, storage_options=dict(storage_options or {}),
                                    read_only=read_only)  # fmt: skip
    if storage_options:
        raise ValueError(
            f"storage_options={dict(storage_options)!r} given for the local path store={text!r}; "
            "drop them or pass an fsspec URL"
        )
    # FsspecStore over file:// does not create parent folders on write: use LocalStore instead.
    path = text.removeprefix("file://")
    check_local_store_path(path)
    return LocalStore(path, read_only=read_only)


def check_local_store_path(path: str | os.PathLike[str]) -> None:
    """Refuse a local store path that cannot be a Zarr store: a regular file, or one under a file.

    Parameters
    ----------
    path : str or os.PathLike
        The store's folder; it may not exist yet.

    Raises
    ------
    StoreError
        Naming the path and the fix, when the path is a regular file (or another non-folder) or
        when one of its parents is.
    """
    text = os.fspath(path)
    if os.path.exists(text) and not os.path.isdir(text):
        raise StoreError(
            f"store {text!r} is a regular file, not a Zarr store (a folder); pass another path "
            "(a new folder, e.g. out.zarr) or move the file away"
        )
    parent = os.path.dirname(os.path.abspath(text))
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise StoreError(
            f"store {text!r} cannot be created: {parent!r} is a regular file, not a folder; "
            "pass a store path under a folder (e.g. out.zarr) or move the file away"
        )


def scan_group_path(component: str, mouse: str | int, side: str, week: int) -> str:
    r"""The group path of one scan, e.g. ``"recon_ct/851/both/week0"``.

    The animal id becomes one path segment as it is, never rewritten (two ids never share a
    group), so it must be safe to join under ``component/`` on any file system or object store:
    1 to :data:`MAX_ID_LENGTH` ASCII letters, digits, ``_``, ``-`` and ``.``, starting with a
    letter or digit, not ending in ``.`` and holding no ``..``.  No ``/``, ``\``, NUL, ``:``,
    space or other character can reach the path, so an id read from a folder name cannot lead
    outside ``component/``.

    Parameters
    ----------
    component : str
        One of :data:`~bonemet_dask.naming.COMPONENTS`.
    mouse : str or int
        Animal id (``"851"``, ``851``, ``"0851"``); see above for the characters allowed.
    side : str
        One of :data:`~bonemet_dask.naming.SIDES`.
    week : int
        Week number, >= 0.

    Returns
    -------
    str
        ``{component}/{mouse}/{side}/week{week}``.

    Raises
    ------
    ValueError
        If an argument is not allowed; the message names it, lists the allowed values or
        characters and says how to fix it.
    """
    _check_choice("component", component, COMPONENTS)
    _check_choice("side", side, SIDES)
    if isinstance(week, bool) or not isinstance(week, int | np.integer) or week < 0:
        raise ValueError(f"week={week!r} must be an int >= 0, e.g. week=0")
    if isinstance(mouse, bool) or not isinstance(mouse, str | int | np.integer):
        raise ValueError(f"mouse={mouse!r} must be an animal id, a str or an int, e.g. '851'")
    segment = str(int(mouse)) if isinstance(mouse, int | np.integer) else mouse
    if not _SAFE_ID.fullmatch(segment) or ".." in segment:
        raise ValueError(
            f"mouse={mouse!r} cannot name a store group: an animal id is 1 to {MAX_ID_LENGTH} "
            "ASCII letters, digits, '_', '-' and '.', starts with a letter or digit, does not "
            "end in '.' and holds no '..' (so no '/', '\\', NUL or '..' can lead outside "
            f"{component}/); pass the id alone (e.g. '851'), or rename the scan folder so that "
            "it starts with the animal id"
        )
    return f"{component}/{segment}/{side}/week{int(week)}"


def parse_week_segment(name: str) -> int | None:
    """Return k of a ``week{k}`` group name, or None for any other name."""
    match = _WEEK_RE.match(name)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# Image layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageLayout:
    """Shape, chunking and physical scale of the image array ``0`` of one scan group.

    Attributes
    ----------
    shape : tuple of 3 int
        ``(n, height, width)``: slices or projections first.
    dtype : str
        numpy dtype name, e.g. ``"uint8"``.
    chunks : tuple of 3 int
        Inner chunk shape: the unit a reader fetches.
    shards : tuple of 3 int
        Shard shape: the unit one task writes; each entry a multiple of ``chunks``.
    dims : tuple of 3 str
        ``("z", "y", "x")`` (CT) or ``("angle", "row", "col")`` (projections).
    scale : tuple of 3 float
        Micrometres per voxel along each dim; 1.0 for the angle axis (an index).
    codec : {"zstd", "gzip", "none"}
        Compressor of each inner chunk.
    level : int
        Compression level.
    """

    shape: tuple[int, int, int]
    dtype: str
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int]
    dims: tuple[str, str, str]
    scale: tuple[float, float, float]
    codec: str = "zstd"
    level: int = 1

    def __post_init__(self) -> None:
        for name in ("shape", "chunks", "shards"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3 or min(value) < (0 if name == "shape" else 1):
                raise ValueError(f"{name}={getattr(self, name)!r} must be 3 positive ints")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "dims", tuple(str(d) for d in self.dims))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        if self.dims not in DIMS.values():
            raise ValueError(f"dims={self.dims!r} is not one of {list(DIMS.values())}")
        if len(self.scale) != 3 or not all(s > 0 and math.isfinite(s) for s in self.scale):
            raise ValueError(f"scale={self.scale!r} must be 3 positive finite floats")
        _check_choice("codec", self.codec, CODECS)
        if any(s % c for s, c in zip(self.shards, self.chunks, strict=True)):
            raise ValueError(
                f"chunks={self.chunks} must divide shards={self.shards} (a zarr sharding rule); "
                "use ImageLayout.default_for, or make each shard entry a multiple of the chunk"
            )

    @classmethod
    def default_for(
        cls,
        kind: Literal["ct", "projections"],
        shape: Sequence[int],
        dtype: str | np.dtype[Any],
        *,
        voxel_size_um: float | Sequence[float],
        slices_per_shard: int | None = None,
    ) -> ImageLayout:
        """The contract's default layout for a CT stack or a projection stack.

        CT: chunks ``(64, 256, 256)``, shards ``(64, full y, full x)``. Projections: chunks
        ``(8, 128, full col)``, shards ``(8, full row, full col)``.

        Parameters
        ----------
        kind : {"ct", "projections"}
            Which stack.
        shape : sequence of 3 int
            ``(n, height, width)``.
        dtype : str or numpy.dtype
            Pixel type.
        voxel_size_um : float or sequence of 3 float
            Voxel (CT) or detector pixel at the object plane (projections) size in micrometres;
            a float means isotropic (for projections the angle axis scale is always 1.0).
        slices_per_shard : int, optional
            Slices (angles) per shard, i.e. per writing task; default 64 (CT) or 8.

        Returns
        -------
        ImageLayout

        Notes
        -----
        Zarr requires the inner chunk to divide the shard. Every chunk is first clipped to the
        array; the shard along y/x (row/col) is then the array extent rounded *up* to a
        multiple of the chunk, so a shard still spans the full image with ``256 x 256`` chunks
        (2428 rows give shards of 2560 rows; the inner chunks past the edge are never written,
        empty inner chunks are not stored in a shard). Along axis 0 the shard holds
        ``min(slices_per_shard, n)`` slices and the chunk is the largest divisor of that not
        above the default (64 or 8).
        """
        _check_choice("kind", kind, tuple(DIMS))
        n, height, width = (int(v) for v in shape)
        if min(n, height, width) < 1:
            raise ValueError(f"shape={tuple(shape)!r} must be 3 positive ints (n, height, width)")
        default_sps, chunk0, chunk1, chunk2 = _DEFAULTS[kind]
        sps = default_sps if slices_per_shard is None else int(slices_per_shard)
        if sps < 1:
            raise ValueError(f"slices_per_shard={slices_per_shard!r} must be >= 1")
        sps = min(sps, n)
        chunk0 = max(d for d in range(1, min(chunk0, sps) + 1) if sps % d == 0)
        c1 = min(chunk1, height)
        c2 = width if chunk2 is None else min(chunk2, width)
        if isinstance(voxel_size_um, numbers.Real):
            size = float(voxel_size_um)
            scale = (size,) * 3 if kind == "ct" else (1.0, size, size)
        else:
            scale = tuple(float(v) for v in voxel_size_um)
            if len(scale) != 3:
                raise ValueError(f"voxel_size_um={voxel_size_um!r} must be a float or 3 floats")
            if kind == "projections":
                scale = (1.0, scale[1], scale[2])
        return cls(
            shape=(n, height, width),
            dtype=np.dtype(dtype).name,
            chunks=(chunk0, c1, c2),
            shards=(sps, math.ceil(height / c1) * c1, math.ceil(width / c2) * c2),
            dims=DIMS[kind],
            scale=scale,  # type: ignore[arg-type]
        )

    @property
    def kind(self) -> str:
        """``"ct"`` or ``"projections"``."""
        return "ct" if self.dims == DIMS["ct"] else "projections"

    @property
    def slices_per_shard(self) -> int:
        """Slices (angles) per shard along axis 0."""
        return self.shards[0]

    @property
    def n_shards(self) -> int:
        """Number of shards along axis 0 (each spans the full image in y/x)."""
        return math.ceil(self.shape[0] / self.shards[0])

    def shard_slices(self, i: int) -> slice:
        """The range of axis 0 written by shard ``i`` (the last one may be short)."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard index i={i} is out of range 0..{self.n_shards - 1}")
        step = self.shards[0]
        return slice(i * step, min((i + 1) * step, self.shape[0]))

    def compressors(self) -> tuple[Any, ...]:
        """The zarr compressor codecs of the inner chunks."""
        if self.codec == "zstd":
            return (ZstdCodec(level=self.level),)
        if self.codec.startswith("blosc-"):  # bit-shuffled blosc: fast and compact (BENCHMARKS.md)
            typesize = np.dtype(self.dtype).itemsize
            cname = self.codec.removeprefix("blosc-")
            return (
                BloscCodec(cname=cname, clevel=self.level, shuffle="bitshuffle", typesize=typesize),
            )
        return (GzipCodec(level=self.level),) if self.codec == "gzip" else ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for tuples), the inverse of :meth:`from_dict`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageLayout:
        """Rebuild a layout from :meth:`to_dict` output (e.g. read back from attributes)."""
        fields = ("shape", "dtype", "chunks", "shards", "dims", "scale", "codec", "level")
        missing = [f for f in fields[:6] if f not in data]
        if missing:
            raise ValueError(f"data={dict(data)!r} lacks {missing}; pass ImageLayout.to_dict()")
        values = {f: data[f] for f in fields if f in data}
        for f in ("shape", "chunks", "shards", "dims", "scale"):
            values[f] = tuple(values[f])
        return cls(**values)


def ome_image_attrs(name: str, dims: Sequence[str], scale: Sequence[float]) -> dict[str, Any]:
    """OME-Zarr 0.5 attributes of a single-level image: ``{"ome": {"version", "multiscales"}}``.

    Parameters
    ----------
    name : str
        Multiscale name (the group path).
    dims : sequence of str
        Axis names; ``angle`` becomes a ``custom`` axis without unit, the others ``space`` axes
        in micrometres.
    scale : sequence of float
        Scale of dataset ``0`` along each axis.
    """
    axes = [
        {"name": d, "type": "custom"} if d == "angle"
        else {"name": d, "type": "space", "unit": "micrometer"}
        for d in dims
    ]  # fmt: skip
    transform = {"type": "scale", "scale": [float(s) for s in scale]}
    multiscale = {
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [transform]}],
    }
    return {"ome": {"version": "0.5", "multiscales": [multiscale]}}


# --------------------------------------------------------------------------------------------
# Image groups
# --------------------------------------------------------------------------------------------


def _array_specs(
    layout: ImageLayout, extras: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    n, step, axis = layout.shape[0], layout.slices_per_shard, layout.dims[0]
    specs = {
        "0": dict(shape=layout.shape, dtype=layout.dtype, chunks=layout.chunks,
                  shards=layout.shards, dimension_names=layout.dims,
                  compressors=layout.compressors()),
        # one object for the whole index, written once by the client (object budget)
        "slice_index": dict(shape=(n,), dtype="int64", chunks=(max(n, 1),), shards=None,
                            dimension_names=(axis,), compressors=()),
        "slice_hash": dict(shape=(n, 16), dtype="uint8", chunks=(step, 16), shards=None,
                           dimension_names=(axis, "digest"), compressors=()),
    }  # fmt: skip
    for name, extra in (extras or {}).items():  # arrays on the image grid: "mask", "greyscale"
        other = replace(layout, dtype=np.dtype(extra.get("dtype", layout.dtype)).name)
        specs[name] = dict(shape=layout.shape, dtype=other.dtype, chunks=layout.chunks,
                           shards=layout.shards, dimension_names=layout.dims,
                           compressors=other.compressors(),
                           attributes=dict(extra.get("attributes", {})))  # fmt: skip
    return specs


def _array_matches(array: zarr.Array, spec: Mapping[str, Any]) -> bool:  # attributes not compared
    return (
        tuple(array.shape) == tuple(spec["shape"])
        and array.dtype == np.dtype(spec["dtype"])
        and tuple(array.chunks) == tuple(spec["chunks"])
        and (array.shards is None) == (spec["shards"] is None)
        and (spec["shards"] is None or tuple(array.shards) == tuple(spec["shards"]))  # type: ignore[arg-type]
        and tuple(array.metadata.dimension_names or ()) == tuple(spec["dimension_names"])
        and tuple(array.compressors) == tuple(spec["compressors"])
    )


def read_ome_scale(group: zarr.Group) -> tuple[float, ...] | None:
    """The scale of dataset ``0`` in the group's OME multiscales attributes, or None."""
    try:
        dataset = group.attrs["ome"]["multiscales"][0]["datasets"][0]
        return tuple(float(s) for s in dataset["coordinateTransformations"][0]["scale"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def read_layout(group: zarr.Group) -> ImageLayout:
    """The :class:`ImageLayout` of an existing image group, from array ``0`` and the OME scale.

    Raises
    ------
    StoreLayoutError
        If the group has no array ``0`` or no OME multiscales attributes.
    """
    scale = read_ome_scale(group)
    array = group.get("0")
    if scale is None or not isinstance(array, zarr.Array):
        raise StoreLayoutError(
            f"group {group.path!r} is not a bonemet image group (no array '0' or no OME "
            "multiscales scale); recreate it with create_image_group(..., overwrite=True)"
        )
    codec, level = "none", 1
    for compressor in array.compressors:
        codec = "zstd" if isinstance(compressor, ZstdCodec) else "gzip"
        level = compressor.level
    return ImageLayout(
        shape=array.shape, dtype=array.dtype.name, chunks=array.chunks,
        shards=array.shards or array.chunks, dims=tuple(array.metadata.dimension_names or ()),
        scale=scale, codec=codec, level=level,
    )  # fmt: skip


def create_image_group(
    root: zarr.Group,
    path: str,
    layout: ImageLayout,
    *,
    attrs: Mapping[str, Any],
    overwrite: bool = False,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> zarr.Group:
    """Create (or reopen) the OME-Zarr image group of one scan with its three arrays.

    Parameters
    ----------
    root : zarr.Group
        The store's root group (its ``bonemet.layout`` is set when missing).
    path : str
        Group path, from :func:`scan_group_path`.
    layout : ImageLayout
        Layout of array ``0``; ``slice_index`` and ``slice_hash`` get one chunk per shard.
    attrs : mapping
        Stored under the group's ``bonemet`` key (``ome`` is never touched by them);
        ``status`` defaults to ``"incomplete"``.
    overwrite : bool, optional
        Delete whatever is at ``path`` first.
    extras : mapping, optional
        More arrays on the image grid, sharded like ``0``, one writer per shard with it:
        ``{"greyscale": {"dtype": "uint8", "attributes": {...}}}``; an OME-Zarr label image
        at ``labels/{name}/0`` from :func:`bonemet_dask.io.labels.label_extra`.

    Returns
    -------
    zarr.Group

    Raises
    ------
    StoreLayoutError
        If a group exists at ``path`` with another layout or another ``fingerprint`` and
        ``overwrite`` is False.

    Notes
    -----
    Idempotent: an existing group with this layout is returned with its data, its existing
    ``bonemet`` attributes kept and keys of ``attrs`` it lacks added (use :func:`set_status` to
    change the status). Arrays missing from it (a run killed while creating metadata) are
    created. The coordinate arrays of :mod:`bonemet_dask.io.coords` are written when missing.
    """
    bonemet = {"status": "incomplete", **dict(attrs)}
    _check_choice("status", bonemet["status"], STATUSES)
    ome = ome_image_attrs(path, layout.dims, layout.scale)
    specs = _array_specs(layout, extras)
    if not root.path and "layout" not in root.attrs.get("bonemet", {}):
        _mark_layout(root)
    existing = None if overwrite else _existing_group(root, path)
    if existing is None:
        group = root.create_group(path, overwrite=overwrite, attributes={**ome, "bonemet": bonemet})
    else:
        group = existing
        _check_existing(group, path, ome, specs, bonemet)
        old = dict(group.attrs.get("bonemet", {}))
        if any(key not in old for key in bonemet):
            group.attrs.update({"bonemet": {**bonemet, **old}})
    from bonemet_dask.io.coords import write_coordinates
    from bonemet_dask.io.labels import ensure_label_groups

    # label image groups (labels/{name}) before their arrays: docs/store-layout.md, Labels
    ensure_label_groups(group, ome["ome"]["multiscales"][0], extras)
    for name, spec in specs.items():
        if name in group:
            continue
        group.create_array(name, fill_value=0, **spec)
    write_coordinates(group, layout.dims, layout.shape, layout.scale,
                      bonemet=get_bonemet_attrs(group))  # fmt: skip
    logger.debug("image group %s ready: %s", path, layout)
    return group


def _mark_layout(root: zarr.Group) -> None:
    """Record ``bonemet.layout`` in the root group, read afresh.

    A long-lived ``root`` object holds the attributes of when it was opened; writing those
    back would undo what others wrote since (``convert``'s ``sources``); nor is consolidated
    metadata read, which the write would put back stale (:mod:`bonemet_dask.io.consolidate`).
    """
    fresh = zarr.open_group(root.store, mode="r+", use_consolidated=False)
    attrs = dict(fresh.attrs.get("bonemet", {}))
    if "layout" not in attrs:
        fresh.attrs.update({"bonemet": {**attrs, "layout": STORE_LAYOUT_VERSION}})


def _existing_group(root: zarr.Group, path: str) -> zarr.Group | None:
    try:
        node = root[path]
    except KeyError:
        return None
    if not isinstance(node, zarr.Group):
        raise StoreLayoutError(
            f"path={path!r} holds an array, not an image group; pass overwrite=True to replace it"
        )
    return node


def _check_existing(
    group: zarr.Group,
    path: str,
    ome: Mapping[str, Any],
    specs: Mapping[str, Mapping[str, Any]],
    bonemet: Mapping[str, Any],
) -> None:
    fix = "pass overwrite=True to replace it (its data is deleted) or choose the same settings"
    if _level0_ome(group.attrs.get("ome")) != ome["ome"]:
        raise StoreLayoutError(
            f"group {path!r} exists with OME attributes {group.attrs.get('ome')!r}, not "
            f"{ome['ome']!r}; {fix}"
        )
    for name, spec in specs.items():
        if name in group and not _array_matches(group[name], spec):  # type: ignore[arg-type]
            raise StoreLayoutError(f"array {path}/{name} exists with another layout; {fix}")
    old = group.attrs.get("bonemet", {}).get("fingerprint")
    new = bonemet.get("fingerprint")
    if old is not None and new is not None and old != new:
        raise StoreLayoutError(
            f"group {path!r} was written with fingerprint {old!r}, not {new!r} (other source "
            f"files or settings); {fix}"
        )


def _level0_ome(ome: Any) -> Any:
    """OME attributes as :func:`ome_image_attrs` writes them: pyramid levels left out.

    A multiscale pyramid (:mod:`bonemet_dask.io.pyramid`) adds datasets and a ``type`` to a
    complete group; the layout check compares level 0 only.
    """
    try:
        multiscale = dict(ome["multiscales"][0])
        multiscale["datasets"] = multiscale["datasets"][:1]
        multiscale.pop("type", None)
        return {**ome, "multiscales": [multiscale, *ome["multiscales"][1:]]}
    except (KeyError, IndexError, TypeError):
        return ome


def _hash_array(group: zarr.Group) -> zarr.Array:
    try:
        array = group["slice_hash"]
    except KeyError:
        raise StoreLayoutError(
            f"group {group.path!r} has no slice_hash array; create it with create_image_group"
        ) from None
    return array  # type: ignore[return-value]


def write_shard(array: zarr.Array, shard: int, block: np.ndarray) -> None:
    """Write shard number ``shard`` (along axis 0; the shard spans the other axes) in one PUT.

    Uses :func:`bonemet_dask.kernels.shard.encode_shard`, which produces the bytes zarr would,
    ~2x faster for this project's layouts; arrays with other codec chains go through zarr.
    """
    from zarr.core.buffer import default_buffer_prototype

    from bonemet_dask.kernels.shard import encode_shard, shard_codec_plan

    start = shard * array.shards[0]
    stop = min(array.shape[0], start + array.shards[0])
    if block.shape != (stop - start, *array.shape[1:]):
        raise ValueError(
            f"block.shape={block.shape} does not fill shard {shard} of {array.path!r} "
            f"(expected {(stop - start, *array.shape[1:])}); a task must write whole shards"
        )
    if any(s < n for s, n in zip(array.shards[1:], array.shape[1:], strict=True)):
        raise ValueError(f"{array.path!r} has more than one shard across axes 1 and 2")
    plan = shard_codec_plan(array)
    if plan is None:
        array[start:stop] = block
        return
    data = encode_shard(block, plan)
    key = "/".join(p for p in (array.path, array.metadata.encode_chunk_key((shard, 0, 0))) if p)
    if data is None:
        sync(array.store.delete(key))
    else:
        sync(array.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def write_scan_shard(
    group: zarr.Group,
    shard: int,
    arrays: Mapping[str, np.ndarray],
    digests: np.ndarray | None = None,
) -> None:
    """Write shard ``shard`` of each array of a scan group, then its digests: the done-marker.

    The one shard writer of every stage: ``arrays`` maps array names (``"0"`` first, then
    ``"mask"``...) to host blocks covering the whole shard; the ``slice_hash`` chunk, written
    last, marks the shard complete (:func:`completed_shards`), so a killed task leaves a shard
    that a rerun writes again.

    Parameters
    ----------
    group : zarr.Group
        An image group made by :func:`create_image_group`.
    shard : int
        Shard index along axis 0.
    arrays : mapping of str to numpy.ndarray
        The blocks; must include ``"0"``.
    digests : numpy.ndarray, optional
        ``(slices, 16)`` digests of the ``"0"`` block (computed when omitted).
    """
    from bonemet_dask.kernels.slab import slab_digests

    image = arrays["0"]
    for name, block in arrays.items():
        write_shard(group[name], shard, block)  # type: ignore[arg-type]
    start = shard * group["0"].shards[0]  # type: ignore[union-attr]
    hashes = _hash_array(group)
    hashes[start : start + image.shape[0]] = slab_digests(image) if digests is None else digests


def shard_is_complete(group: zarr.Group, shard_index: int) -> bool:
    """Whether shard ``shard_index`` is complete: its ``slice_hash`` chunk exists (one request)."""
    array = _hash_array(group)
    if not 0 <= shard_index < array.cdata_shape[0]:
        raise IndexError(f"shard_index={shard_index} is out of range 0..{array.cdata_shape[0] - 1}")
    key = f"{array.path}/{array.metadata.encode_chunk_key((int(shard_index), 0))}"
    return bool(sync(array.store.exists(key)))


def completed_shards(group: zarr.Group) -> set[int]:
    """Indices of the complete shards of an image group, from one listing of ``slice_hash``."""
    array = _hash_array(group)
    prefix = f"{array.path}/"
    encode = array.metadata.encode_chunk_key
    keys = {prefix + encode((i, 0)): i for i in range(array.cdata_shape[0])}

    async def listing() -> list[str]:
        return [key async for key in array.store.list_prefix(prefix)]

    return {keys[key] for key in sync(listing()) if key in keys}


def get_bonemet_attrs(group: zarr.Group) -> dict[str, Any]:
    """A copy of the group's ``bonemet`` attributes (empty when it has none)."""
    return dict(group.attrs.get("bonemet", {}))


def set_status(group: zarr.Group, status: str) -> None:
    """Set ``bonemet.status`` to one of :data:`STATUSES`, keeping the other attributes."""
    _check_choice("status", status, STATUSES)
    group.attrs.update({"bonemet": {**get_bonemet_attrs(group), "status": status}})


def _check_choice(argument: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{argument}={value!r} is not one of {', '.join(map(repr, allowed))}")
