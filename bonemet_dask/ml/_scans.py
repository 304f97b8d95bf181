"""The scans of one component a sample stream reads, and the reader of their slabs.

:func:`list_scans` walks only ``/{component}`` of a store (or a DataTree from
:func:`bonemet_dask.open_store`) and returns one :class:`ScanInfo` per scan: keys, shape, and
the depths (along the first axis) of the Zarr inner chunks and shards, which decide the read
plan.  A reader (:class:`ZarrReader` or :class:`TreeReader`) then reads an aligned slab of
slices ``[z0, z1)`` of a scan and the matching source indices; a :class:`ZarrReader` pickles
without its open arrays, so it also runs on Dask workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store

from bonemet_dask.io.store import get_bonemet_attrs, open_zarr_store, parse_week_segment
from bonemet_dask.ml._shards import IndexCache, ShardLayout, SlabPool, read_slab, shard_layout
from bonemet_dask.naming import COMPONENTS, SIDES
from bonemet_dask.selection import mouse_key

__all__ = ["ScanInfo", "TreeReader", "ZarrReader", "list_scans", "open_source"]

logger = logging.getLogger(__name__)

_IMAGE: Final = "0"
_INDEX: Final = "slice_index"


@dataclass(frozen=True)
class ScanInfo:
    """One scan of the component: where it is and how it is chunked along its first axis.

    Attributes
    ----------
    path : str
        Group path in the store (``regist_ct/851/left/week0``) or the DataTree node's path.
    mouse : str
        The animal id as the store's ``mouse`` coordinate shows it (``bonemet.mouse``).
    side : str
        ``left``, ``right`` or ``both``.
    week : int
        Time point.
    shape : tuple of 3 int
        Shape of the image array ``(slice, y, x)`` or ``(angle, row, col)``.
    dtype : numpy.dtype
        Its dtype.
    chunk_depth : int
        Slices per inner chunk (the unit a reader fetches).
    shard_depth : int
        Slices per shard (the unit one object holds); ``chunk_depth`` when unsharded.
    chunk_plane : tuple of 2 int
        Inner chunk extent along y and x (a decoded chunk past the image's edge is padded).
    """

    path: str
    mouse: str
    side: str
    week: int
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    chunk_depth: int
    shard_depth: int
    chunk_plane: tuple[int, int]

    @property
    def sort_key(self) -> tuple[Any, ...]:
        """Store order: mouse (numeric ids as numbers), side, week."""
        key = mouse_key(self.mouse)
        mouse = (0, int(key), key) if key.isdigit() else (1, 0, key)
        return (mouse, SIDES.index(self.side), self.week)

    @property
    def slice_bytes(self) -> int:
        """Bytes of one decoded slice."""
        return int(self.shape[1] * self.shape[2] * self.dtype.itemsize)

    def read_workspace(self, depth: int) -> int:
        """Upper bound of the bytes a read of ``depth`` slices holds besides its result.

        The fetched compressed chunks and the decoded chunks, each at most the slab's chunks
        decoded (padded to whole chunks in y and x).
        """
        cy, cx = self.chunk_plane
        padded = -(-self.shape[1] // cy) * cy * -(-self.shape[2] // cx) * cx
        return int(2 * depth * padded * self.dtype.itemsize)


def open_source(
    store: str | os.PathLike[str] | Store | zarr.Group | xr.DataTree,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> zarr.Group | xr.DataTree:
    """The root group of a path, URL or store (read-only); a group or a DataTree as it is.

    Raises
    ------
    TypeError
        If ``store`` is none of these.
    """
    if isinstance(store, zarr.Group | xr.DataTree):
        if storage_options:
            raise ValueError(
                "storage_options only apply to a path or URL; drop them when passing an open "
                f"{type(store).__name__}"
            )
        return store
    zstore = open_zarr_store(store, mode="r", storage_options=storage_options)
    return zarr.open_group(zstore, mode="r", use_consolidated=False)


def list_scans(
    source: zarr.Group | xr.DataTree, component: str
) -> tuple[list[ScanInfo], list[str], ZarrReader | TreeReader]:
    """The complete scans of ``component``, the paths of incomplete ones, and their reader.

    Parameters
    ----------
    source : zarr.Group or xarray.DataTree
        The store's root group (see :func:`open_source`) or a tree from ``bm.open_store``.
    component : str
        One of :data:`~bonemet_dask.naming.COMPONENTS`.

    Returns
    -------
    scans : list of ScanInfo
        In store order (mouse, side, week).
    skipped : list of str
        Scan groups whose ``bonemet.status`` is not ``complete`` (reading them would return
        fill values for the shards not yet written); left out.
    reader : ZarrReader or TreeReader
        Reads slabs of the scans.

    Raises
    ------
    ValueError
        If the source holds no ``component`` group (the message lists those it holds).
    """
    if isinstance(source, xr.DataTree):
        return _tree_scans(source, component)
    present = sorted(name for name, _ in source.groups() if name in COMPONENTS)
    if component not in present:
        raise ValueError(
            f"component={component!r} is not in the store; it holds {present or 'no component'}"
        )
    # one concurrent metadata walk of the component: mouse/side/week groups and their arrays
    members = dict(source[component].members(max_depth=3))
    scans: list[ScanInfo] = []
    skipped: list[str] = []
    arrays: dict[str, zarr.Array] = {}
    for key, node in members.items():
        parts = key.split("/")
        if len(parts) != 3 or not isinstance(node, zarr.Group):
            continue
        mouse_segment, side, week_name = parts
        week = parse_week_segment(week_name)
        image = members.get(f"{key}/{_IMAGE}")
        if side not in SIDES or week is None or not isinstance(image, zarr.Array):
            logger.debug("samples: %s/%s is not a scan group; skipped", component, key)
            continue
        attrs = get_bonemet_attrs(node)
        path = f"{component}/{key}"
        if attrs.get("status", "complete") != "complete":
            skipped.append(path)
            continue
        chunk = int(image.chunks[0])
        shard = int(image.shards[0]) if image.shards is not None else chunk
        scans.append(
            ScanInfo(
                path=path,
                mouse=str(attrs.get("mouse", mouse_segment)),
                side=side,
                week=int(week),
                shape=tuple(int(n) for n in image.shape),  # type: ignore[arg-type]
                dtype=np.dtype(image.dtype),
                chunk_depth=chunk,
                shard_depth=shard,
                chunk_plane=(int(image.chunks[1]), int(image.chunks[2])),
            )
        )
        arrays[path] = image
    scans.sort(key=lambda scan: scan.sort_key)
    prefix = f"{source.path}/" if source.path else ""
    return scans, sorted(skipped), ZarrReader(source.store, prefix=prefix, arrays=arrays)


def _tree_scans(tree: xr.DataTree, component: str) -> tuple[list[ScanInfo], list[str], TreeReader]:
    present = sorted(name for name in tree.children if name in COMPONENTS)
    if component not in present:
        raise ValueError(
            f"component={component!r} is not in the tree; it holds {present or 'no component'}"
        )
    scans: list[ScanInfo] = []
    skipped: list[str] = []
    images: dict[str, xr.DataArray] = {}
    for node in tree[component].subtree:
        if "image" not in node.dataset.data_vars:
            continue
        image = node.dataset["image"]
        path = node.path.lstrip("/")
        if node.dataset.attrs.get("status", "complete") != "complete":
            skipped.append(path)
            continue
        chunks = getattr(image.data, "chunks", None)
        chunk = int(chunks[0][0]) if chunks else int(image.shape[0])
        plane = (int(chunks[1][0]), int(chunks[2][0])) if chunks else tuple(image.shape[1:])
        scans.append(
            ScanInfo(
                path=path,
                mouse=str(image["mouse"].item()),
                side=str(image["side"].item()),
                week=int(image["week"].item()),
                shape=tuple(int(n) for n in image.shape),  # type: ignore[arg-type]
                dtype=np.dtype(image.dtype),
                chunk_depth=chunk,
                shard_depth=chunk,
                chunk_plane=plane,  # type: ignore[arg-type]
            )
        )
        images[path] = image
    scans.sort(key=lambda scan: scan.sort_key)
    return scans, sorted(skipped), TreeReader(images)


class ZarrReader:
    """Reads slabs ``[z0, z1)`` of scan images, and their source indices, from a Zarr store.

    Sharded arrays of this project's layouts are read shard by shard
    (:func:`bonemet_dask.ml._shards.read_slab`); others through zarr.

    Parameters
    ----------
    store : zarr.abc.store.Store
        The store.
    prefix : str
        Path of the root group inside the store (``""`` for the store's root).
    arrays : dict, optional
        Image arrays already open, by scan path (not pickled: a Dask worker reopens them).
    """

    def __init__(
        self, store: Store, *, prefix: str = "", arrays: dict[str, zarr.Array] | None = None
    ) -> None:
        self.store = store
        self.prefix = prefix
        self._arrays: dict[str, zarr.Array] = dict(arrays or {})
        self._layouts: dict[str, ShardLayout | None] = {}
        self._indices: dict[str, np.ndarray] = {}
        self._cache = IndexCache()

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "prefix": self.prefix}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], prefix=state["prefix"])  # type: ignore[misc]

    def _array(self, path: str, name: str = _IMAGE) -> zarr.Array:
        key = path if name == _IMAGE else f"{path}/{name}"
        array = self._arrays.get(key)
        if array is None:
            array = zarr.open_array(self.store, path=f"{self.prefix}{path}/{name}", mode="r")
            self._arrays[key] = array
        return array

    def source_index(self, path: str) -> np.ndarray:
        """The ``slice_index`` of a scan (read once, then kept: one int64 per slice)."""
        index = self._indices.get(path)
        if index is None:
            index = np.asarray(self._array(path, _INDEX)[...], dtype=np.int64)
            self._indices[path] = index
        return index

    def read(
        self, path: str, z0: int, z1: int, *, pool: SlabPool | None = None, planes: bool = False
    ) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
        """Slices ``z0:z1`` of a scan's image (one read of the chunks they span) and indices.

        ``pool`` lends the array the slab is decoded into (sharded arrays only); ``planes``
        returns a list of independent 2-D slices instead.
        """
        if path not in self._layouts:
            self._layouts[path] = shard_layout(self._array(path))
        layout = self._layouts[path]
        index = self.source_index(path)[z0:z1]
        if layout is not None:
            return read_slab(self.store, layout, z0, z1, cache=self._cache, pool=pool,
                             planes=planes), index  # fmt: skip
        block = np.asarray(self._array(path)[z0:z1])
        return (list(block.copy()) if planes else block), index


class TreeReader:
    """Reads slabs of the ``image`` variables of a DataTree (Dask or lazily indexed arrays).

    Dask-backed images are computed with the scheduler the user has active (a distributed
    client, or Dask's default), as any other ``compute`` would be.
    """

    def __init__(self, images: dict[str, xr.DataArray]) -> None:
        self._images = images

    def read(
        self, path: str, z0: int, z1: int, *, pool: SlabPool | None = None, planes: bool = False
    ) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
        """Slices ``z0:z1`` of a scan's image and their source indices.

        ``planes`` gives a list of 2-D slices; ``pool`` is not used.
        """
        image = self._images[path]
        block = image[z0:z1].data
        if hasattr(block, "compute"):
            block = block.compute()
        first = image.dims[0]
        coord = "index" if "index" in image.coords else first
        index = np.asarray(image[coord].values[z0:z1], dtype=np.int64)
        block = np.asarray(block)
        return (list(block) if planes else block), index
