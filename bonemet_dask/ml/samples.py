"""Streaming ML samples out of a store: slices, patches, volumes, projections or week pairs.

>>> import bonemet_dask as bm
>>> stream = bm.ml.samples("bonemet.zarr", "regist_ct", unit="slice", split=table,
...                        subset="train", fold=0, batch_size=32, epoch=3)  # doctest: +SKIP
>>> for batch in stream:  # doctest: +SKIP
...     batch.image.shape, batch.label  # (32, 539, 509), array([ True, False, ...])

I/O plan (the published store holds ~68 TB; random access by sample would read each shard
again for every sample):

* The unit of reading is an aligned slab of one scan (:mod:`bonemet_dask.ml._plan`): whole
  inner chunks along the first axis, dividing the shard, so the slabs of an epoch partition
  every scan and **no chunk is read twice in an epoch**.  ``unit="pair"`` reads a slab of all
  the weeks of one tibia together, so each week is read once whatever pairs it takes part in.
* With ``shuffle=True`` the order of the read units is a permutation drawn from
  ``(seed, epoch)``; the samples of each unit then pass through a shuffle buffer of at most
  ``buffer_bytes``.  The same ``(seed, epoch)`` gives the same samples in the same order.
* Sharded arrays in this project's layouts are decoded shard by shard
  (:mod:`bonemet_dask.ml._shards`: the slab's chunks fetched in one batch, decoded with
  c-blosc2), faster per core than zarr's own reads; a slice sample is its own array, other
  samples are copied out of their slab, and no two samples share memory.
* Reads run ``prefetch`` units ahead on a thread pool, or on Dask workers with ``client=``.
* Memory is bounded: see :attr:`SampleStream.memory_bound`.

Nothing here imports a deep-learning framework (:mod:`bonemet_dask.ml.torch` wraps this).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.abc.store import Store

from bonemet_dask.ml._plan import PatchSpec, ReadUnit, build_units
from bonemet_dask.ml._scans import ScanInfo, list_scans, open_source
from bonemet_dask.ml._shards import SlabPool
from bonemet_dask.ml._stream import Sample, StreamStats, batched, buffered, cut, read_ahead
from bonemet_dask.naming import COMPONENTS
from bonemet_dask.selection import NothingSelectedError, Selection, mouse_key, summarize

__all__ = ["DEFAULT_BUFFER_BYTES", "Sample", "SampleStream", "StreamStats", "samples"]

logger = logging.getLogger(__name__)

UNITS: Final = ("volume", "slice", "patch", "projection", "pair")
"""What one sample is: a whole scan, one slice, a box, one projection, or a week pair."""
PAIR_UNITS: Final = ("volume", "slice", "patch")
"""What each image of a pair is."""
PAIR_COMPONENTS: Final = ("regist_ct", "roi_ct")
"""Components whose weeks share one grid (registered), so pairs are voxel to voxel."""
SUBSETS: Final = ("train", "validation", "test")
XPS: Final = ("numpy", "cupy")
DEFAULT_BUFFER_BYTES: Final = 256 * 2**20
"""Default size of the shuffle buffer (256 MiB)."""
READ_BYTES: Final = 32 * 2**20
"""Target of decoded bytes per read unit when ``slab`` is None (a full-size Regist-CT slab of
64 slices is 17.6 MB; a full-size Recon-CT chunk of 64 slices, 402 MB, is read as one)."""


class SampleStream(Iterator[Sample]):
    """The iterator :func:`samples` returns: one epoch (or one part of it) of samples.

    Attributes
    ----------
    units : tuple of ReadUnit
        The read units of this stream, in read order.
    memory_bound : int
        Upper bound of the bytes the stream holds at once: the shuffle buffer
        (``max(buffer_bytes, largest sample)``), ``prefetch + 1`` of the largest read unit (the
        reads in flight and the one being cut), each with its read's workspace (fetched and
        decoded chunks: twice the slab padded to whole chunks), and, with ``batch_size``, two
        batches (the samples gathered and the stacked copy).  Samples already yielded are the
        caller's.
    stats : StreamStats
        Units and bytes read, samples yielded, the buffer's high-water marks.
    """

    def __init__(
        self,
        iterator: Iterator[Sample],
        *,
        units: tuple[ReadUnit, ...],
        length: int,
        memory_bound: int,
        stats: StreamStats,
    ) -> None:
        self._iterator = iterator
        self.units = units
        self.memory_bound = memory_bound
        self.stats = stats
        self._length = length

    def __next__(self) -> Sample:
        return next(self._iterator)

    def __iter__(self) -> SampleStream:
        return self

    def __len__(self) -> int:
        """Samples (or batches, with ``batch_size``) in the stream."""
        return self._length

    def close(self) -> None:
        """Stop: cancel reads in flight and free the buffer."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def samples(
    store: str | os.PathLike[str] | Store | zarr.Group | xr.DataTree,
    component: str,
    *,
    unit: str = "slice",
    split: pd.DataFrame | None = None,
    subset: str | None = None,
    fold: int | None = None,
    label: str = "lesion",
    batch_size: int | None = None,
    drop_last: bool = False,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    mice: Any = None,
    sides: Any = None,
    weeks: Any = None,
    patch: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    patches_per_scan: int | None = None,
    gap: int = 1,
    pair_unit: str = "slice",
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    slab: int | None = None,
    prefetch: int = 2,
    client: Any = None,
    part: tuple[int, int] | None = None,
    xp: str = "numpy",
    storage_options: Mapping[str, Any] | None = None,
) -> SampleStream:
    """Stream labelled samples of one component of a store, reading each chunk once per epoch.

    Parameters
    ----------
    store : str, os.PathLike, zarr Store, zarr.Group or xarray.DataTree
        A store path or fsspec URL, a zarr store, its root group, or a tree from
        :func:`bonemet_dask.open_store`.
    component : {"rotation_xray", "recon_ct", "seg_ct", "regist_ct", "roi_ct"}
        Which images.
    unit : {"slice", "volume", "patch", "projection", "pair"}, optional
        A sample is one slice (CT), a whole scan, a box (``patch``), one projection
        (``rotation_xray`` only), or a pair of the same tibia's weeks ``k`` and ``k + gap``
        (``regist_ct`` or ``roi_ct``: one grid), each image a ``pair_unit``.
    split : pandas.DataFrame, optional
        A split table (:func:`bonemet_dask.ml.split`): one row per mouse with columns
        ``mouse``, ``split``, ``fold`` and label columns.  Only its mice are read.
    subset : {"train", "validation", "test"}, optional
        Mice with ``split == "train"`` (and ``fold != fold`` when ``fold`` is given), train
        mice with ``fold == fold``, or ``split == "test"``; None: every mouse of the table.
    fold : int, optional
        Cross-validation fold (with ``subset="train"`` or ``"validation"``).
    label : str, optional
        Column of ``split`` giving each sample's :attr:`Sample.label`.
    batch_size : int, optional
        Stack this many samples per yield (all samples must have one shape).
    drop_last : bool, optional
        Leave out a last, smaller batch.
    shuffle : bool, optional
        Shuffle (the read units' order, then samples within the buffer); False gives store
        order: mouse, side, week, index (pairs: mouse, side, slab, week, index).
    seed, epoch : int, optional
        The order (and random patches) are a function of ``(seed, epoch)``.
    mice, sides, weeks : optional
        Narrow the scans (:class:`~bonemet_dask.selection.Selection` syntax: ``"851-860"``,
        ``"left"``, ``"0-2"``).
    patch : sequence of 2 or 3 int, optional
        Patch size ``(dz, dy, dx)``, or ``(dy, dx)`` for 2-D patches of one slice; required
        for ``unit="patch"`` (or ``pair_unit="patch"``).
    stride : sequence of int, optional
        Grid step of patches (default: the patch size, a tiling); patches that would cross the
        scan's edge are left out.
    patches_per_scan : int, optional
        Instead of a grid, this many random patches per scan (per tibia for pairs, at the same
        positions in every pair), drawn anew each epoch, each inside one read unit.
    gap : int, optional
        Weeks between a pair's image and target.
    pair_unit : {"slice", "volume", "patch"}, optional
        What each image of a pair is.
    buffer_bytes : int, optional
        Size of the shuffle buffer (default 256 MiB); it holds at least one sample.
    slab : int, optional
        Slices per read unit, a multiple of the inner chunk depth; default: the largest
        divisor of the shard depth within 32 MiB decoded (and a quarter of the buffer), at
        least one chunk depth.  Volumes are read whole.
    prefetch : int, optional
        Read units read ahead (on as many threads); 0 reads in the iterating thread.
    client : distributed.Client, optional
        Read on this cluster's workers instead (``store`` must be a path, URL or store the
        workers reach); ``max(prefetch, 1)`` reads in flight.
    part : tuple of 2 int, optional
        ``(i, n)``: only every ``n``-th read unit of the epoch's order from the ``i``-th, e.g. a
        DataLoader worker's or a distributed rank's share; the ``n`` parts partition the epoch.
    xp : {"numpy", "cupy"}, optional
        Array type of the yielded images (cupy: moved to the GPU after batching).
    storage_options : mapping, optional
        fsspec options for a URL.

    Returns
    -------
    SampleStream
        An iterator of :class:`Sample`, with ``len()``, :attr:`~SampleStream.memory_bound`
        and :attr:`~SampleStream.stats`.

    Raises
    ------
    ValueError
        For an option outside its allowed values, a unit that does not fit the component, a
        malformed split table, or batches of samples of different shapes.
    NothingSelectedError
        If the selection matches no scan.
    """
    spec = _check_options(
        component, unit=unit, subset=subset, fold=fold, split=split, batch_size=batch_size,
        seed=seed, epoch=epoch, patch=patch, stride=stride, patches_per_scan=patches_per_scan,
        gap=gap, pair_unit=pair_unit, buffer_bytes=buffer_bytes, prefetch=prefetch, part=part,
        xp=xp, client=client, store=store,
    )  # fmt: skip
    source = open_source(store, storage_options=storage_options)
    scans, skipped, reader = list_scans(source, component)
    if skipped:
        warnings.warn(
            f"samples: {len(skipped)} {component} scans are not complete and are left out: "
            f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}",
            stacklevel=2,
        )
    labels = _split_labels(split, subset=subset, fold=fold, label=label)
    chosen = _select(scans, component, labels, mice=mice, sides=sides, weeks=weeks)
    units = build_units(
        chosen, "pair" if unit == "pair" else unit, pair_unit=pair_unit, gap=gap, patch=spec,
        slab=slab, read_bytes=min(READ_BYTES, max(1, buffer_bytes // 4)),
        rng_for=lambda k: np.random.default_rng([seed, epoch, 2, k]),
    )  # fmt: skip
    if not units:
        raise NothingSelectedError(
            f"samples(unit={unit!r}) finds no sample in the {len(chosen)} selected {component} "
            + ("scans: no tibia has weeks k and k+gap" if unit == "pair" else "scans")
            + (f" (patch={tuple(spec.size)} larger than every scan?)" if spec else "")
        )
    shapes = {item.shape for u in units for item in u.items}
    if batch_size is not None and len(shapes) > 1:
        raise ValueError(
            f"batch_size={batch_size} needs samples of one shape; these have {sorted(shapes)[:4]}"
            f"; use unit='patch', a component of one grid (regist_ct, roi_ct), or batch_size=None"
        )
    if shuffle:
        order = np.random.default_rng([seed, epoch, 0]).permutation(len(units))
        units = [units[k] for k in order]
    index, count = part or (0, 1)
    mine = tuple(units[index::count])
    n_samples = sum(len(u.items) for u in mine)
    length = n_samples if batch_size is None else (
        n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)
    )  # fmt: skip
    itemsize = max(scan.dtype.itemsize for scan in chosen)
    largest = max(
        math.prod(item.size) * itemsize * (2 if item.target >= 0 else 1)
        for u in units
        for item in u.items
    )
    bound = max(buffer_bytes, largest) + (prefetch + 1) * max(u.read_bytes for u in units)
    bound += 2 * batch_size * largest if batch_size else 0
    stats = StreamStats()
    logger.info(
        "samples: %d %s scans, %d read units, %d samples in this part, memory bound %.0f MB",
        len(chosen), component, len(mine), n_samples, bound / 1e6,
    )  # fmt: skip
    rng = np.random.default_rng([seed, epoch, 1, index]) if shuffle else None
    pool = SlabPool(prefetch + 1)
    stream: Iterator[Sample] = buffered(
        cut(
            read_ahead(mine, reader, prefetch=prefetch, client=client, pool=pool, stats=stats),
            labels=labels,
            rng=rng,
            pool=pool,
        ),
        buffer_bytes=buffer_bytes,
        rng=rng,
        stats=stats,
    )
    if batch_size is not None:
        stream = batched(stream, batch_size=batch_size, drop_last=drop_last)
    if xp == "cupy":
        stream = _on_device(stream)
    return SampleStream(stream, units=mine, length=length, memory_bound=bound, stats=stats)


def _choice(argument: str, value: object, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{argument}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _positive(argument: str, value: Any, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{argument}={value!r} must be an integer >= {minimum}")


def _check_options(component: str, *, unit: str, **options: Any) -> PatchSpec | None:
    """Validate every option before anything is read; return the patch spec (or None)."""
    _choice("component", component, COMPONENTS)
    _choice("unit", unit, UNITS)
    _choice("pair_unit", options["pair_unit"], PAIR_UNITS)
    _choice("subset", options["subset"], (None, *SUBSETS))
    _choice("xp", options["xp"], XPS)
    if unit == "projection" and component != "rotation_xray":
        raise ValueError(
            f"unit='projection' needs component='rotation_xray', not {component!r}; "
            "use unit='slice' for CT"
        )
    if unit == "slice" and component == "rotation_xray":
        raise ValueError("component='rotation_xray' holds projections: use unit='projection'")
    if unit == "pair" and component not in PAIR_COMPONENTS:
        raise ValueError(
            f"unit='pair' needs a registered component ({', '.join(PAIR_COMPONENTS)}), whose "
            f"weeks share one grid; {component!r} does not"
        )
    for name in ("seed", "epoch"):
        _positive(name, options[name], minimum=0)
    for name in ("buffer_bytes", "gap"):
        _positive(name, options[name])
    _positive("prefetch", options["prefetch"], minimum=0)
    if options["batch_size"] is not None:
        _positive("batch_size", options["batch_size"])
    _check_split_options(options["split"], options["subset"], options["fold"])
    part = options["part"]
    if part is not None and (
        len(part) != 2 or not all(isinstance(v, int) for v in part) or not 0 <= part[0] < part[1]
    ):
        raise ValueError(f"part={part!r} must be (i, n) with 0 <= i < n, e.g. (0, 4)")
    if options["client"] is not None and isinstance(options["store"], xr.DataTree):
        raise ValueError(
            "client= reads on Dask workers, which need the store itself: pass its path, URL "
            "or zarr store instead of a DataTree"
        )
    if options["xp"] == "cupy":
        from bonemet_dask._backend import resolve_backend

        resolve_backend("cupy")  # a clear error now when no GPU works here
    wants_patch = unit == "patch" or (unit == "pair" and options["pair_unit"] == "patch")
    return _patch_spec(
        options["patch"], options["stride"], options["patches_per_scan"], wants_patch
    )


def _check_split_options(split: Any, subset: str | None, fold: int | None) -> None:
    if split is None:
        if subset is not None or fold is not None:
            raise ValueError(
                f"subset={subset!r}, fold={fold!r} select mice of a split table: pass "
                "split=bm.ml.split(records, ...) too"
            )
        return
    if not isinstance(split, pd.DataFrame) or "mouse" not in split.columns:
        raise ValueError(
            "split= must be a pandas DataFrame with a 'mouse' column, as bm.ml.split returns"
        )
    if fold is not None:
        _positive("fold", fold, minimum=0)
        if subset not in ("train", "validation"):
            raise ValueError(
                f"fold={fold} selects train or validation mice: pass subset='train' or "
                f"'validation', not subset={subset!r}"
            )
    if subset == "validation" and fold is None:
        raise ValueError("subset='validation' needs fold=k (the train mice of fold k)")


def _patch_spec(
    patch: Sequence[int] | None, stride: Sequence[int] | None, count: int | None, wanted: bool
) -> PatchSpec | None:
    if not wanted:
        if patch is not None or stride is not None or count is not None:
            raise ValueError(
                "patch=, stride= and patches_per_scan= apply to unit='patch' (or "
                "pair_unit='patch'); drop them or set the unit"
            )
        return None
    if patch is None or len(patch) not in (2, 3):
        raise ValueError(f"unit='patch' needs patch=(dz, dy, dx) or (dy, dx), not {patch!r}")
    size = (1, *patch) if len(patch) == 2 else tuple(patch)
    for value in size:
        _positive("patch", value)
    if count is not None:
        _positive("patches_per_scan", count)
        if stride is not None:
            raise ValueError(
                "stride= sets a patch grid and patches_per_scan= random patches: pass one"
            )
    step = size if stride is None else ((1, *stride) if len(stride) == 2 else tuple(stride))
    if len(step) != 3:
        raise ValueError(f"stride={stride!r} must have as many values as patch={patch!r}")
    for value in step:
        _positive("stride", value)
    return PatchSpec(size=size, squeeze=len(patch) == 2, stride=step, count=count)  # type: ignore[arg-type]


def _split_labels(
    split: pd.DataFrame | None, *, subset: str | None, fold: int | None, label: str
) -> dict[str, Any] | None:
    """``mouse_key -> label`` of the table's mice in ``subset`` (None without a table)."""
    if split is None:
        return None
    needed = {"split": subset is not None, "fold": fold is not None, label: True}
    missing = [name for name, need in needed.items() if need and name not in split.columns]
    if missing:
        raise ValueError(
            f"the split table lacks column(s) {missing}; it has {list(split.columns)} "
            "(label= names the label column)"
        )
    keys = split["mouse"].map(mouse_key)
    if keys.duplicated().any():
        raise ValueError(
            f"the split table has several rows for mice {sorted(set(keys[keys.duplicated()]))}; "
            "it needs one row per mouse, as bm.ml.split returns"
        )
    rows = split
    if subset == "test":
        rows = split[split["split"] == "test"]
    elif subset is not None:
        train = split[split["split"] == "train"]
        if fold is not None:
            folds = sorted({int(f) for f in train["fold"].dropna()})
            if fold not in folds:
                raise ValueError(f"fold={fold} is not in the split table; its folds are {folds}")
            in_fold = (train["fold"] == fold).fillna(False).astype(bool)
            rows = train[in_fold] if subset == "validation" else train[~in_fold]
        else:
            rows = train
    labels = {}
    for mouse, value in zip(rows["mouse"], rows[label], strict=True):
        value = None if value is pd.NA or (isinstance(value, float) and np.isnan(value)) else value
        labels[mouse_key(mouse)] = value.item() if isinstance(value, np.generic) else value
    if not labels:
        raise NothingSelectedError(
            f"subset={subset!r} (fold={fold!r}) selects none of the split table's "
            f"{len(split)} mice; check its 'split' and 'fold' columns"
        )
    return labels


def _select(
    scans: list[ScanInfo],
    component: str,
    labels: dict[str, Any] | None,
    *,
    mice: Any,
    sides: Any,
    weeks: Any,
) -> list[ScanInfo]:
    selection = Selection.of(mice=mice, sides=sides, weeks=weeks)
    chosen = [
        s
        for s in scans
        if selection.matches(mouse=s.mouse, side=s.side, week=s.week)
        and (labels is None or mouse_key(s.mouse) in labels)
    ]
    if labels is not None:
        stored = {mouse_key(s.mouse) for s in scans}
        absent = sorted(set(labels) - stored)
        if absent:
            warnings.warn(
                f"samples: {len(absent)} mice of the split table have no {component} scan in "
                f"the store and are skipped: {', '.join(absent[:20])}"
                f"{' ...' if len(absent) > 20 else ''}",
                stacklevel=3,
            )
    if not chosen:
        available = [(s.mouse, s.side, s.week) for s in scans]
        where = "the split table's subset and " if labels is not None else ""
        raise NothingSelectedError(
            f"{where}{selection.describe()} match none of the {len(scans)} {component} scans; "
            f"the store holds {summarize(available) if available else 'none'}"
        )
    return chosen


def _on_device(stream: Iterator[Sample]) -> Iterator[Sample]:
    from dataclasses import replace

    from bonemet_dask._backend import to_device

    for sample in stream:
        target = None if sample.target is None else to_device(sample.target, "cupy")
        yield replace(sample, image=to_device(sample.image, "cupy"), target=target)
