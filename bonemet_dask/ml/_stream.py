"""The moving parts of a sample stream: read ahead, cut, shuffle in a bounded buffer, batch.

Each stage is a generator over the previous one, so at any time the stream holds at most the
read units in flight (``prefetch`` ahead plus the one being cut), the shuffle buffer (at most
``buffer_bytes`` of samples, or one sample if larger) and one batch being assembled.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from bonemet_dask.ml._plan import ReadUnit
from bonemet_dask.ml._scans import TreeReader, ZarrReader
from bonemet_dask.ml._shards import SlabPool
from bonemet_dask.selection import mouse_key

__all__ = ["Sample", "StreamStats", "batched", "buffered", "cut", "read_ahead"]

logger = logging.getLogger(__name__)

Slabs = list[tuple[np.ndarray | list[np.ndarray], np.ndarray]]
"""What reading a unit returns: ``(image slab or its planes, source indices)`` per scan."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One sample (or a batch of them) of :func:`bonemet_dask.ml.samples`.

    Attributes
    ----------
    image : numpy.ndarray or cupy.ndarray
        The sample: a slice ``(y, x)``, a projection ``(row, col)``, a volume ``(slice, y, x)``,
        a patch ``(dz, dy, dx)`` or ``(dy, dx)``; with ``batch_size``, a batch of them stacked
        on a new first axis.
    target : numpy.ndarray, cupy.ndarray or None
        ``unit="pair"``: the same region of the same tibia ``gap`` weeks later; else None.
    mouse : str or numpy.ndarray
        Animal id, as the store's ``mouse`` coordinate shows it.
    side : str or numpy.ndarray
        ``left``, ``right`` or ``both``.
    week : int or numpy.ndarray
        Week of ``image`` (the target's is ``week + gap``).
    index : int or numpy.ndarray
        Source file index of the sample's first slice (projection): the ``slice`` coordinate
        of :func:`bonemet_dask.open_store` and :func:`bonemet_dask.stack`.
    label : object or None
        The split table's ``label`` column for the mouse (e.g. ``lesion``: bool); None without
        a split table (a batch: an array of them, or None).
    position : tuple of 3 int or numpy.ndarray
        Array position ``(z, y, x)`` of the sample's first voxel in the scan's array ``0``
        (a batch: shape ``(batch, 3)``).
    """

    image: Any
    target: Any
    mouse: Any
    side: Any
    week: Any
    index: Any
    label: Any
    position: Any


@dataclass
class StreamStats:
    """What a stream did so far (for checks and benchmarks; updated as it runs).

    Attributes
    ----------
    units_read : int
        Read units read (each a slab of one scan, or of a tibia's weeks for pairs).
    bytes_read : int
        Decoded bytes read.
    samples : int
        Samples yielded (before batching).
    max_buffered_bytes : int
        Largest number of bytes the shuffle buffer held.
    max_buffered_samples : int
        Largest number of samples the shuffle buffer held.
    """

    units_read: int = 0
    bytes_read: int = 0
    samples: int = 0
    max_buffered_bytes: int = 0
    max_buffered_samples: int = 0


def read_unit(
    reader: ZarrReader | TreeReader,
    paths: Sequence[str],
    z0: int,
    z1: int,
    pool: SlabPool | None = None,
    planes: bool = False,
) -> Slabs:
    """Read slices ``[z0, z1)`` of each scan (run in a thread or on a Dask worker)."""
    return [reader.read(path, z0, z1, pool=pool, planes=planes) for path in paths]


def read_ahead(
    units: Sequence[ReadUnit],
    reader: ZarrReader | TreeReader,
    *,
    prefetch: int,
    client: Any = None,
    pool: SlabPool | None = None,
    stats: StreamStats,
) -> Iterator[tuple[ReadUnit, Slabs]]:
    """Read the units in order, ``prefetch`` ahead on a thread pool or a Dask cluster.

    Local reads decode into arrays lent by ``pool`` (:func:`cut` gives them back).
    """

    def done(unit: ReadUnit, slabs: Slabs) -> tuple[ReadUnit, Slabs]:
        stats.units_read += 1
        stats.bytes_read += sum(_size(slab) for slab, _ in slabs)
        return unit, slabs

    def args(unit: ReadUnit) -> tuple[Any, ...]:
        paths = [scan.path for scan in unit.scans]
        return (reader, paths, unit.z0, unit.z1, None if client is not None else pool,
                unit.planes)  # fmt: skip

    if client is None and prefetch == 0:
        for unit in units:
            yield done(unit, read_unit(*args(unit)))
        return
    threads = None
    if client is not None:
        submit: Callable[[ReadUnit], Any] = lambda unit: client.submit(  # noqa: E731
            read_unit, *args(unit), pure=False
        )
    else:
        threads = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="bonemet-samples")
        submit = lambda unit: threads.submit(read_unit, *args(unit))  # noqa: E731
    queue = iter(units)
    pending: deque[tuple[ReadUnit, Any]] = deque()
    try:
        for unit in islice(queue, max(1, prefetch)):
            pending.append((unit, submit(unit)))
        while pending:
            unit, future = pending.popleft()
            slabs = future.result()
            future = None  # a Dask future's result is released on the cluster
            following = next(queue, None)
            if following is not None:
                pending.append((following, submit(following)))
            yield done(unit, slabs)
    finally:
        for _, future in pending:
            future.cancel()
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


def cut(
    read: Iterable[tuple[ReadUnit, Slabs]],
    *,
    labels: Mapping[str, Any] | None,
    rng: np.random.Generator | None,
    pool: SlabPool | None = None,
) -> Iterator[Sample]:
    """The samples of each unit, in item order (or permuted by ``rng``).

    A unit of whole slices arrives as independent planes, which become the samples (a plane
    used twice, a week in two pairs, is copied the second time).  Other samples are copied out
    of the slab (a view would keep the whole slab alive) unless one is the whole slab; a unit
    whose samples were all copied gives its slabs back to ``pool``.
    """
    for unit, slabs in read:
        order = rng.permutation(len(unit.items)) if rng is not None else range(len(unit.items))
        used: set[tuple[int, int]] = set()
        for k in order:
            item = unit.items[k]
            scan = unit.scans[item.image]
            z, y, x = item.start
            dz, dy, dx = item.size
            box = (slice(z - unit.z0, z - unit.z0 + dz), slice(y, y + dy), slice(x, x + dx))
            image = _take(slabs, item.image, box, item.squeeze, used)
            target = None if item.target < 0 else _take(slabs, item.target, box, item.squeeze, used)
            yield Sample(
                image=image,
                target=target,
                mouse=scan.mouse,
                side=scan.side,
                week=scan.week,
                index=int(slabs[item.image][1][z - unit.z0]),
                label=None if labels is None else labels[mouse_key(scan.mouse)],
                position=(z, y, x),
            )
        arrays = [slab for slab, _ in slabs if isinstance(slab, np.ndarray)]
        whole = any(math.prod(item.size) == slab.size for item in unit.items for slab in arrays)
        if pool is not None and arrays and not whole:  # nothing refers to the slabs any more
            for slab in arrays:
                pool.give(slab)


def _take(
    slabs: Slabs,
    which: int,
    box: tuple[slice, slice, slice],
    squeeze: bool,
    used: set[tuple[int, int]],
) -> np.ndarray:
    """The sample ``box`` of the unit's ``which``-th scan: its plane, a copy, or the slab.

    A plane or a whole slab is handed out once; a second sample of it (a week in two pairs)
    gets a copy, so that no two samples share memory.
    """
    slab = slabs[which][0]
    if isinstance(slab, list):  # planes: a slice sample is its plane
        region, key = slab[box[0].start], (which, box[0].start)
    else:
        region = slab[box]
        if region.size != slab.size:  # a part: copied out, the sample's own
            region = region.copy()
            return region[0] if squeeze else region
        region, key = (region[0] if squeeze else region), (which, -1)  # the whole slab
    if key in used:
        return region.copy()
    used.add(key)
    return region


def _size(slab: np.ndarray | list[np.ndarray]) -> int:
    return sum(plane.nbytes for plane in slab) if isinstance(slab, list) else int(slab.nbytes)


def _nbytes(sample: Sample) -> int:
    return int(sample.image.nbytes + (0 if sample.target is None else sample.target.nbytes))


def buffered(
    samples: Iterable[Sample],
    *,
    buffer_bytes: int,
    rng: np.random.Generator | None,
    stats: StreamStats,
) -> Iterator[Sample]:
    """Shuffle within a buffer of at most ``buffer_bytes`` (or one sample, if larger).

    Each arriving sample, once the buffer is full, pushes out a uniformly drawn one; at the
    end the rest leave in random order.  Without ``rng`` samples pass in order.
    """
    if rng is None:
        for sample in samples:
            stats.samples += 1
            yield sample
        return
    held: list[Sample] = []
    size = 0

    def draw() -> Sample:
        nonlocal size
        k = int(rng.integers(len(held)))
        held[k], held[-1] = held[-1], held[k]
        sample = held.pop()
        size -= _nbytes(sample)
        stats.samples += 1
        return sample

    for sample in samples:
        nbytes = _nbytes(sample)
        while held and size + nbytes > buffer_bytes:
            yield draw()
        held.append(sample)
        size += nbytes
        stats.max_buffered_bytes = max(stats.max_buffered_bytes, size)
        stats.max_buffered_samples = max(stats.max_buffered_samples, len(held))
    while held:
        yield draw()


def batched(samples: Iterable[Sample], *, batch_size: int, drop_last: bool) -> Iterator[Sample]:
    """Stack ``batch_size`` samples on a new first axis; keys become 1-D arrays."""
    iterator = iter(samples)
    while batch := list(islice(iterator, batch_size)):
        if len(batch) < batch_size and drop_last:
            return
        labels = [s.label for s in batch]
        yield Sample(
            image=np.stack([s.image for s in batch]),
            target=None if batch[0].target is None else np.stack([s.target for s in batch]),
            mouse=np.array([s.mouse for s in batch]),
            side=np.array([s.side for s in batch]),
            week=np.array([s.week for s in batch], dtype=np.int64),
            index=np.array([s.index for s in batch], dtype=np.int64),
            label=None if all(v is None for v in labels) else np.array(labels),
            position=np.array([s.position for s in batch], dtype=np.int64),
        )
