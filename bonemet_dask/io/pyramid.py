"""Multiscale pyramids: OME-Zarr levels 1, 2, ... of every image group, chunk-aligned, resumable.

Level ``k`` halves level ``k - 1`` along ``y`` and ``x`` (``row``, ``col``) and, for CT, along
``z`` too, so napari's and neuroglancer's 3D views get isotropic voxels at every level;
projection stacks keep every angle (an angle is not a length). Levels are added until the
largest downsampled axis is at most ``target`` (256) pixels: a full-size Recon-CT
(2685 x 2428 x 2588) gets levels down to 168 x 152 x 162. Greyscale images are averaged
(rounded half up); masks and class maps (``roi_ct``'s composite ``0``, OME labels, arrays whose
``bonemet.kind`` is ``mask``) take the block's mode, so their classes survive
(:mod:`bonemet_dask.kernels.downsample`).

Layout. Level ``k`` of an image group is the array ``level{k}/0`` (one subgroup per level, so
``xr.open_zarr`` of the image group sees one consistent set of dims; the OME ``multiscales``
datasets name the paths). Level ``k`` of a label image (``labels/mask``, ``labels/composite``)
is the array ``k`` beside its ``0``, the usual OME-Zarr layout: ome-zarr-models (1.7) validates
a label's levels only by their names in the label group, and rejects ``level{k}/0`` there. A
level group also holds the level's coordinate arrays (micrometres of the pixel centres), so
``xr.open_zarr(store, group=".../level2")`` is labelled too. A level's chunks are
``(64, 256, 256)`` (projections ``(8, 128, full)``) clipped to the level; one shard spans the
level's whole y/x and as many slices as keep the task's input near :data:`TASK_INPUT_BYTES`,
a multiple of the chunk depth. A task therefore reads whole chunks of the level above
(``2 x`` its slices: whole shards there) and writes one whole shard, then its done-marker
(a chunk of ``level{k}/shard_done``); a rerun writes only the shards whose marker is missing.
When every marker is present the group's OME ``multiscales`` lists the levels (readers never
see a half-built one) and ``bonemet.pyramid`` records the fingerprint, method and level count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Final

import dask
import zarr
from zarr.core.sync import sync

from bonemet_dask.io.coords import write_coordinates
from bonemet_dask.io.store import get_bonemet_attrs, open_zarr_store, read_ome_scale, write_shard
from bonemet_dask.naming import COMPONENTS
from bonemet_dask.selection import Selection

__all__ = [
    "DEFAULT_TARGET",
    "PyramidLevel",
    "build_groups",
    "level_array",
    "plan_levels",
    "resampling_method",
    "selected_groups",
    "wire_group",
]

logger = logging.getLogger(__name__)

PYRAMID_VERSION: Final = 1
"""Part of every pyramid fingerprint: bump when the levels' pixels or layout change."""
DEFAULT_TARGET: Final = 256
"""Levels are added until the largest downsampled axis is at most this many pixels."""
TASK_INPUT_BYTES: Final = 256 * 2**20
"""Decoded bytes of the level above that one task should read (at least one chunk depth)."""
MARKER: Final = "shard_done"
"""Per-level done-marker array: chunk ``i`` present = shard ``i`` of the level is written."""
_CHUNKS: Final = {"z": (64, 256, 256), "angle": (8, 128, None)}
_MODE_COMPONENTS: Final = ("roi_ct",)
"""Components whose image ``0`` is a class map (the 180/240/60/0 composite), not greyscale."""


@dataclass(frozen=True)
class PyramidLevel:
    """One resolution level of an image group.

    Attributes
    ----------
    index : int
        0 for the full-resolution array ``0``.
    path : str
        The array's path in the image group: ``"0"``, ``"level1/0"``...
    shape, chunks, shards : tuple of int
        The array's layout (level 0: as stored).
    factors : tuple of int
        Downsampling from the level above (1 or 2 per axis; all 1 for level 0).
    scale, translation : tuple of float
        OME coordinate transformations: micrometres per pixel, and the position of pixel 0's
        centre relative to level 0's (``(2**k - 1) / 2`` level-0 pixels along a halved axis).
    """

    index: int
    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...]
    factors: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    @property
    def n_shards(self) -> int:
        """Shards (writing tasks) along axis 0."""
        return math.ceil(self.shape[0] / self.shards[0])

    def source_slices(self, shard: int, source_n: int) -> slice:
        """The slices of the level above that shard ``shard`` is made from."""
        step = self.shards[0] * self.factors[0]
        return slice(shard * step, min((shard + 1) * step, source_n))


def _level_path(index: int, flat: bool = False) -> str:
    return "0" if index == 0 else str(index) if flat else f"level{index}/0"


def plan_levels(
    shape: Sequence[int],
    dims: Sequence[str],
    scale: Sequence[float],
    itemsize: int,
    *,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    target: int = DEFAULT_TARGET,
    task_bytes: int = TASK_INPUT_BYTES,
    flat: bool = False,
) -> list[PyramidLevel]:
    """The levels of an image: level 0 as stored, then 2x steps until ``target`` is reached.

    Parameters
    ----------
    shape : sequence of 3 int
        Shape of array ``0``.
    dims : sequence of 3 str
        ``("z", "y", "x")`` (all three axes are halved) or ``("angle", "row", "col")`` (rows
        and columns only).
    scale : sequence of 3 float
        Level 0's OME scale.
    itemsize : int
        Bytes per pixel (sizes the shards).
    chunks, shards : sequence of int, optional
        Level 0's layout (recorded in the plan only).
    target : int
        Largest downsampled axis of the coarsest level, at most; >= 1.
    task_bytes : int
        Decoded bytes of the level above one writing task should read.
    flat : bool
        Level ``k`` is the array ``k`` beside ``0`` (label images) instead of ``level{k}/0``.

    Returns
    -------
    list of PyramidLevel
        Level 0 first; only level 0 when the image is already within ``target``.
    """
    if int(target) < 1:
        raise ValueError(f"target={target!r} must be a positive number of pixels, e.g. 256")
    dims = tuple(dims)
    if dims[0] not in _CHUNKS or len(dims) != 3:
        raise ValueError(f"dims={dims!r} must be ('z', 'y', 'x') or ('angle', 'row', 'col')")
    halved = (True, True, True) if dims[0] == "z" else (False, True, True)
    factors = tuple(2 if h else 1 for h in halved)
    shape = tuple(int(n) for n in shape)
    levels = [
        PyramidLevel(0, "0", shape, tuple(chunks or shape), tuple(shards or chunks or shape),
                     (1, 1, 1), tuple(float(s) for s in scale), (0.0, 0.0, 0.0))
    ]  # fmt: skip
    while max(n for n, h in zip(levels[-1].shape, halved, strict=True) if h) > int(target):
        above = levels[-1]
        k = above.index + 1
        new = tuple(-(-n // f) for n, f in zip(above.shape, factors, strict=True))
        c0, c1, c2 = _CHUNKS[dims[0]]
        chunk = (min(c0, new[0]), min(c1, new[1]), new[2] if c2 is None else min(c2, new[2]))
        slice_bytes = above.shape[1] * above.shape[2] * int(itemsize)
        depth = chunk[0] * max(1, int(task_bytes) // (factors[0] * chunk[0] * slice_bytes))
        depth = min(depth, math.ceil(new[0] / chunk[0]) * chunk[0])
        shard = (depth, *(math.ceil(n / c) * c for n, c in zip(new[1:], chunk[1:], strict=True)))
        cumulative = tuple(f**k for f in factors)
        levels.append(
            PyramidLevel(
                index=k, path=_level_path(k, flat), shape=new, chunks=chunk, shards=shard,
                factors=factors,
                scale=tuple(s * c for s, c in zip(levels[0].scale, cumulative, strict=True)),
                translation=tuple(s * (c - 1) / 2 for s, c in
                                  zip(levels[0].scale, cumulative, strict=True)),
            )
        )  # fmt: skip
    return levels


def resampling_method(group: zarr.Group, array_name: str = "0") -> str:
    """``"mode"`` for masks and class maps, ``"mean"`` for greyscale.

    Mode when the group is an OME label image (``image-label`` in its ``ome`` attributes),
    its ``bonemet.component`` is ``roi_ct`` (the composite), or the array's own
    ``bonemet.kind`` is ``mask`` (``seg_ct``'s ``mask``).
    """
    if _is_label(group):
        return "mode"
    if get_bonemet_attrs(group).get("component") in _MODE_COMPONENTS:
        return "mode"
    array = group.get(array_name)
    if isinstance(array, zarr.Array) and array.attrs.get("bonemet", {}).get("kind") == "mask":
        return "mode"
    return "mean"


def _is_label(group: zarr.Group) -> bool:
    ome = group.attrs.get("ome", {})
    return isinstance(ome, dict) and "image-label" in ome


def _plan_for(group: zarr.Group, target: int, task_bytes: int) -> list[PyramidLevel]:
    array = group["0"]
    scale = read_ome_scale(group) or (1.0,) * array.ndim
    return plan_levels(array.shape, tuple(array.metadata.dimension_names or ()), scale,
                       array.dtype.itemsize, chunks=array.chunks,
                       shards=array.shards or array.chunks, target=target,
                       task_bytes=task_bytes, flat=_is_label(group))  # fmt: skip


def _fingerprint(group: zarr.Group, levels: list[PyramidLevel], method: str) -> str:
    array = group["0"]
    source = get_bonemet_attrs(group).get("fingerprint")
    scan, _, _ = group.path.partition("/labels/")
    if source is None and scan != group.path:  # a label image: its scan's fingerprint
        parent = zarr.open_group(group.store, path=scan, mode="r", use_consolidated=False)
        source = get_bonemet_attrs(parent).get("fingerprint")
    payload = {
        "source": source,
        "dtype": str(array.dtype),
        "levels": [asdict(level) for level in levels],
        "method": method,
        "version": PYRAMID_VERSION,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def multiscales_datasets(levels: Sequence[PyramidLevel]) -> list[dict[str, Any]]:
    """The OME ``datasets`` of the levels (level 0: its scale only, as written by the store)."""
    datasets = []
    for level in levels:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(level.scale)}]
        if level.index:
            transforms.append({"type": "translation", "translation": list(level.translation)})
        datasets.append({"path": level.path, "coordinateTransformations": transforms})
    return datasets


def _set_pyramid_attrs(group: zarr.Group, levels: Sequence[PyramidLevel] | None,
                       pyramid: dict[str, Any]) -> None:  # fmt: skip
    """Write ``bonemet.pyramid`` and (when ``levels``) the OME datasets, attributes read afresh."""
    fresh = zarr.open_group(group.store, path=group.path, mode="r+", use_consolidated=False)
    ome = json.loads(json.dumps(fresh.attrs.get("ome", {})))
    if levels is not None and ome.get("multiscales"):
        ome["multiscales"][0]["datasets"] = multiscales_datasets(levels)
        if len(levels) > 1:
            ome["multiscales"][0]["type"] = pyramid["method"]
        else:
            ome["multiscales"][0].pop("type", None)
    fresh.attrs.update({"ome": ome, "bonemet": {**get_bonemet_attrs(fresh), "pyramid": pyramid}})


def _array(group: zarr.Group, path: str) -> zarr.Array:
    """An array below ``group`` by path, never through consolidated metadata."""
    return zarr.open_array(group.store, path=f"{group.path}/{path}", mode="r+" if not
                           group.store.read_only else "r")  # fmt: skip


def _level_folders(group: zarr.Group) -> list[str]:
    async def listing() -> list[str]:
        return [key async for key in group.store.list_dir(group.path)]

    return sorted(name for name in sync(listing()) if re.fullmatch(r"level\d+|[1-9]\d*", name))


def _marker_keys(group: zarr.Group, level: PyramidLevel) -> dict[str, int]:
    marker = _array(group, f"level{level.index}/{MARKER}")
    prefix = f"{marker.path}/"
    return {prefix + marker.metadata.encode_chunk_key((i,)): i for i in range(level.n_shards)}


def _done_shards(group: zarr.Group, level: PyramidLevel) -> set[int]:
    """Shards of a level whose done-marker exists: one listing."""
    keys = _marker_keys(group, level)
    prefix = f"{group.path}/level{level.index}/{MARKER}/"

    async def listing() -> list[str]:
        return [key async for key in group.store.list_prefix(prefix)]

    return {keys[key] for key in sync(listing()) if key in keys}


def _prepare(group: zarr.Group, levels: list[PyramidLevel], method: str, fingerprint: str,
             rebuild: bool) -> dict[int, set[int]] | None:  # fmt: skip
    """Create the level arrays (dropping stale ones); the done shards per level, or None."""
    recorded = get_bonemet_attrs(group).get("pyramid") or {}
    same = recorded.get("fingerprint") == fingerprint and not rebuild
    if same and recorded.get("status") == "complete":
        return None
    stale = _level_folders(group)
    if not same and (stale or recorded):
        logger.info("%s: rebuilding the pyramid (%s)", group.path,
                    "asked" if rebuild else "another source, layout or method")  # fmt: skip
        _set_pyramid_attrs(group, levels[:1], {"status": "incomplete"})
        for name in stale:
            sync(group.store.delete_dir(f"{group.path}/{name}"))
    source = group["0"]
    _set_pyramid_attrs(group, None, {"fingerprint": fingerprint, "method": method,
                                     "levels": len(levels), "status": "incomplete"})  # fmt: skip
    done: dict[int, set[int]] = {}
    store, base = group.store, group.path
    dims = tuple(source.metadata.dimension_names or ())
    flat = _is_label(group)
    for level in levels[1:]:
        folder = f"{base}/level{level.index}"
        if not sync(store.exists(f"{base}/{level.path}/zarr.json")):
            zarr.create_array(store, name=f"{base}/{level.path}", shape=level.shape,
                              dtype=source.dtype,
                              chunks=level.chunks, shards=level.shards,
                              dimension_names=source.metadata.dimension_names,
                              compressors=source.compressors,
                              fill_value=source.fill_value)  # fmt: skip
        if not flat:  # a level group is labelled like its image (xr.open_zarr)
            write_coordinates(zarr.open_group(store, path=folder, mode="r+",
                                              use_consolidated=False),
                              dims, level.shape, level.scale, offset=level.translation,
                              bonemet=get_bonemet_attrs(group))  # fmt: skip
        if not sync(store.exists(f"{folder}/{MARKER}/zarr.json")):
            zarr.create_array(store, name=f"{folder}/{MARKER}", shape=(level.n_shards,),
                              dtype="uint8", chunks=(1,), dimension_names=("shard",),
                              compressors=(), fill_value=0)  # fmt: skip
        done[level.index] = _done_shards(group, level) if same else set()
    return done


def _open(location: Any, storage_options: dict | None, path: str) -> zarr.Group:
    store = open_zarr_store(location, storage_options=storage_options)
    return zarr.open_group(store, path=path, mode="r+", use_consolidated=False)


def _level_task(location: Any, storage_options: dict | None, path: str, levels: list[dict],
                index: int, shard: int, method: str, *after: Any) -> int:  # fmt: skip
    """Task: read whole chunks of level ``index - 1``, write shard ``shard`` of level ``index``."""
    from bonemet_dask.kernels.downsample import downsample_block

    group = _open(location, storage_options, path)
    above, level = PyramidLevel(**levels[index - 1]), PyramidLevel(**levels[index])
    block = _array(group, above.path)[level.source_slices(shard, above.shape[0])]
    pixels = downsample_block(block, level.factors, method=method)
    write_shard(_array(group, level.path), shard, pixels)
    _array(group, f"level{index}/{MARKER}")[shard] = 1
    return shard


def _finish_task(location: Any, storage_options: dict | None, path: str, levels: list[dict],
                 pyramid: dict[str, Any], written: list[int]) -> int:  # fmt: skip
    """Task: once every marker is present, list the levels in the OME metadata."""
    group = _open(location, storage_options, path)
    plan = [PyramidLevel(**level) for level in levels]
    for level in plan[1:]:
        missing = sorted(set(range(level.n_shards)) - _done_shards(group, level))
        if missing:
            raise RuntimeError(
                f"{path}: pyramid level {level.index} shards {missing} were not written; "
                "rerun `bonemet-dask pyramid` to finish them"
            )
    _set_pyramid_attrs(group, plan, {**pyramid, "status": "complete"})
    return len(written)


def wire_group(location: Any, storage_options: dict | None, group: zarr.Group, *,
               target: int = DEFAULT_TARGET, task_bytes: int = TASK_INPUT_BYTES,
               rebuild: bool = False, name: str = "pyramid") -> tuple[str, Any]:  # fmt: skip
    """The lazy pyramid build of one image group (array ``0``): status and finish task.

    Creates the level arrays now (client side, before any task) and returns
    ``("up to date", None)``, or ``("written" | "resumed", delayed)`` whose computation writes
    every missing shard, level by level (a task waits only for the shards of the level above
    that it reads), and then lists the levels in the group's OME metadata.

    Parameters
    ----------
    location : str, os.PathLike or zarr Store
        The store, as tasks open it.
    storage_options : dict, optional
        fsspec options of ``location``.
    group : zarr.Group
        A complete image group (or an OME label image) holding array ``0``.
    target, task_bytes : int
        See :func:`plan_levels`.
    rebuild : bool
        Drop the existing levels and write them again.
    name : str
        Prefix of the task names (the dashboard's).
    """
    levels = _plan_for(group, target, task_bytes)
    if len(levels) == 1 and not get_bonemet_attrs(group).get("pyramid"):
        return "up to date", None  # within target: level 0 is the pyramid; nothing written
    method = resampling_method(group)
    fingerprint = _fingerprint(group, levels, method)
    done = _prepare(group, levels, method, fingerprint, rebuild)
    if done is None:
        return "up to date", None
    resumed = any(done.values())
    plain = [asdict(level) for level in levels]
    token = fingerprint[:12] + "-" + hashlib.sha256(group.path.encode()).hexdigest()[:8]
    tasks: dict[tuple[int, int], Any] = {}
    for level in levels[1:]:
        above = levels[level.index - 1]
        for shard in range(level.n_shards):
            if shard in done[level.index]:
                continue
            reads = level.source_slices(shard, above.shape[0])
            after = [
                tasks[(above.index, s)]
                for s in range(reads.start // above.shards[0], -(-reads.stop // above.shards[0]))
                if (above.index, s) in tasks
            ]
            tasks[(level.index, shard)] = dask.delayed(_level_task, pure=False)(
                location, storage_options, group.path, plain, level.index, shard, method,
                *after, dask_key_name=f"{name}-level{level.index}-{token}-{shard}",
            )  # fmt: skip
    pyramid = {"fingerprint": fingerprint, "method": method, "levels": len(levels)}
    finish = dask.delayed(_finish_task, pure=False)(
        location, storage_options, group.path, plain, pyramid, list(tasks.values()),
        dask_key_name=f"{name}-finish-{token}",
    )  # fmt: skip
    return ("resumed" if resumed else "written"), finish


def image_groups(group: zarr.Group) -> list[zarr.Group]:
    """A scan group and the OME label images under its ``labels/`` (each pyramided alike)."""
    found = [group]
    labels = group.get("labels")
    if isinstance(labels, zarr.Group):
        names = labels.attrs.get("ome", {}).get("labels") or sorted(labels.group_keys())
        for label in names:
            node = labels.get(label)
            if isinstance(node, zarr.Group) and isinstance(node.get("0"), zarr.Array):
                found.append(node)
    return found


def level_array(group: zarr.Group, level: int) -> tuple[zarr.Array, int, tuple[float, ...],
                                                        tuple[float, ...]]:  # fmt: skip
    """Array of pyramid level ``level`` of an image group, or its coarsest when it has fewer.

    Returns
    -------
    array : zarr.Array
        The level's array.
    used : int
        The level returned (``min(level, coarsest)``).
    scale, translation : tuple of float
        Its OME coordinate transformations (micrometres; translation zero at level 0).
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"level={level!r} must be an int >= 0 (0 = full resolution)")
    try:
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    except (KeyError, IndexError, TypeError):
        datasets = [{"path": "0", "coordinateTransformations": []}]
    used = min(level, len(datasets) - 1)
    if used < level:
        logger.info("%s has levels 0..%d; level=%d gives its coarsest, %d",
                    group.path, len(datasets) - 1, level, used)  # fmt: skip
    dataset = datasets[used]
    array = zarr.open_array(group.store, path=f"{group.path}/{dataset['path']}", mode="r")
    scale: tuple[float, ...] = tuple(read_ome_scale(group) or (1.0,) * array.ndim)
    translation: tuple[float, ...] = (0.0,) * array.ndim
    for transform in dataset.get("coordinateTransformations", ()):
        if transform.get("type") == "scale":
            scale = tuple(float(s) for s in transform["scale"])
        elif transform.get("type") == "translation":
            translation = tuple(float(t) for t in transform["translation"])
    return array, used, scale, translation  # type: ignore[return-value]


def build_groups(location: Any, groups: Sequence[zarr.Group], *,
                 storage_options: dict | None = None, target: int = DEFAULT_TARGET,
                 task_bytes: int = TASK_INPUT_BYTES, rebuild: bool = False,
                 compute: Callable[[Any], Any], concurrency: int = 1,
                 progress: Callable[[int, int], None] | None = None,
                 ) -> list[tuple[str, str, str]]:  # fmt: skip
    """Build the pyramids of ``groups``, ``concurrency`` groups in flight at once.

    Returns
    -------
    list of (path, status, reason)
        Per group, in order: ``written``, ``resumed``, ``up to date`` or ``failed``.
    """
    results: list[tuple[str, str, str] | None] = [None] * len(groups)
    counter = [0]

    def one(i: int) -> None:
        group = groups[i]
        try:
            status, finish = wire_group(location, storage_options, group, target=target,
                                        task_bytes=task_bytes, rebuild=rebuild)  # fmt: skip
            if finish is not None:
                compute(finish)
            results[i] = (group.path, status, "")
        except Exception as err:  # one group's failure must not stop the others
            logger.warning("pyramid of %s failed: %s", group.path, err)
            results[i] = (group.path, "failed", f"{type(err).__name__}: {err}")
        counter[0] += 1
        if progress:
            progress(counter[0], len(groups))

    if progress:
        progress(0, len(groups))
    if concurrency <= 1 or len(groups) <= 1:
        for i in range(len(groups)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pyramid") as pool:
            list(pool.map(one, range(len(groups))))
    return [r for r in results if r is not None]


def selected_groups(root: zarr.Group, selection: Selection) -> list[zarr.Group]:
    """Complete image groups (and their labels) matching ``selection``, in store order."""
    from bonemet_dask.io.scans import list_scans

    found = []
    for component in selection.components or COMPONENTS:
        for scan in list_scans(root, component, selection):
            if not selection.matches(week=scan.week):
                continue
            if scan.status != "complete":
                logger.info("pyramid: %s skipped (status %s)", scan.path, scan.status)
                continue
            found.extend(image_groups(root[scan.path]))  # type: ignore[arg-type]
    return found
