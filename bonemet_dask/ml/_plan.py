"""The read plan of a sample stream: aligned slabs of scans (read units) and their samples.

A :class:`ReadUnit` is the unit of reading: slices ``[z0, z1)`` of one scan (of every week of
one tibia for ``unit="pair"``), a slab aligned to the scan's inner chunks and, by default,
dividing its shard, so that the slabs of an epoch partition every scan and no chunk is read
twice.  Each unit lists its :class:`Item` s, the samples cut from it (a slice, a patch, the
whole volume, or a pair of them).  Which slabs, and where patches fall, is decided here; the
stream (:mod:`bonemet_dask.ml.samples`) only orders, reads and cuts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import NamedTuple

import numpy as np

from bonemet_dask.ml._scans import ScanInfo

__all__ = ["Item", "PatchSpec", "ReadUnit", "build_units", "slab_depth"]


class Item(NamedTuple):
    """One sample of a read unit.

    Attributes
    ----------
    image : int
        Position in :attr:`ReadUnit.scans` of the scan the image is cut from.
    target : int
        Position of the target's scan (``unit="pair"``), or -1.
    start : tuple of 3 int
        First voxel in the scan's array, ``(z, y, x)`` (``z`` in ``[z0, z1)``).
    size : tuple of 3 int
        Extent ``(dz, dy, dx)``.
    squeeze : bool
        Whether the sample drops its first axis (a slice, a projection, a 2-D patch).
    """

    image: int
    target: int
    start: tuple[int, int, int]
    size: tuple[int, int, int]
    squeeze: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the sample's image."""
        return self.size[1:] if self.squeeze else self.size


@dataclass(frozen=True)
class ReadUnit:
    """Slices ``[z0, z1)`` of each of ``scans`` (one read each), and the samples cut from them."""

    scans: tuple[ScanInfo, ...]
    z0: int
    z1: int
    items: tuple[Item, ...]

    @property
    def nbytes(self) -> int:
        """Decoded bytes the unit reads."""
        return sum((self.z1 - self.z0) * scan.slice_bytes for scan in self.scans)

    @property
    def planes(self) -> bool:
        """Whether every sample is one whole slice: then the unit is read as separate planes."""
        return all(
            item.squeeze and item.size[1:] == self.scans[item.image].shape[1:]
            for item in self.items
        )

    @property
    def read_bytes(self) -> int:
        """Upper bound of the bytes reading the unit holds: its slabs and the reads' workspace."""
        return self.nbytes + sum(scan.read_workspace(self.z1 - self.z0) for scan in self.scans)


@dataclass(frozen=True)
class PatchSpec:
    """Patches: ``size`` (z, y, x), grid ``stride``, or ``count`` random ones per scan."""

    size: tuple[int, int, int]
    squeeze: bool
    stride: tuple[int, int, int]
    count: int | None


def slab_depth(scan: ScanInfo, slab: int | None, *, read_bytes: int, scans: int = 1) -> int:
    """Slices per read unit of a scan.

    ``slab`` if given (a multiple of the scan's inner chunk depth); else the largest multiple
    of the chunk depth dividing the shard depth whose decoded bytes (times ``scans`` read
    together) stay within ``read_bytes``, and at least one chunk depth.

    Raises
    ------
    ValueError
        If ``slab`` is not a positive multiple of the scan's chunk depth.
    """
    chunk = scan.chunk_depth
    if slab is not None:
        if slab < 1 or slab % chunk:
            raise ValueError(
                f"slab={slab} is not a multiple of the inner chunk depth {chunk} of "
                f"{scan.path!r}; pass a multiple of {chunk} (reads stay chunk-aligned), or None"
            )
        return slab
    best = chunk
    for depth in range(chunk, max(scan.shard_depth, chunk) + 1, chunk):
        if scan.shard_depth % depth == 0 and depth * scan.slice_bytes * scans <= read_bytes:
            best = depth
    return best


def _slabs(n: int, chunk: int, depth: int, crossed: Callable[[int], bool]) -> list[tuple[int, int]]:
    """Cut ``[0, n)`` at chunk boundaries about every ``depth`` slices, never where crossed."""
    slabs, start = [], 0
    while start < n:
        end = min(n, start + depth)
        while end < n and crossed(end):
            end = min(n, end + chunk)
        slabs.append((start, end))
        start = end
    return slabs


def _grid(n: int, size: int, stride: int) -> range:
    return range(0, n - size + 1, stride)


def _grid_slabs(
    shape: tuple[int, int, int], chunk: int, depth: int, patch: PatchSpec
) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Slabs holding whole grid patches, with the patch corners in each."""
    pz, py, px = patch.size
    sz, sy, sx = patch.stride
    n = shape[0]
    last = (n - pz) // sz * sz  # the last patch start along z (negative: none fits)

    def crossed(boundary: int) -> bool:
        start = min((boundary - 1) // sz * sz, last)
        return start >= 0 and start + pz > boundary

    plane = [(y, x) for y in _grid(shape[1], py, sy) for x in _grid(shape[2], px, sx)]
    out = []
    for z0, z1 in _slabs(n, chunk, depth, crossed):
        corners = [(z, y, x) for z in range(z0, z1 - pz + 1) if z % sz == 0 for y, x in plane]
        out.append((z0, z1, corners))
    return out


def _random_slabs(
    shape: tuple[int, int, int],
    chunk: int,
    depth: int,
    patch: PatchSpec,
    rng: np.random.Generator,
) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Slabs of at least the patch depth, and ``patch.count`` random corners inside them."""
    pz, py, px = patch.size
    n = shape[0]
    depth = max(depth, chunk * math.ceil(pz / chunk))
    slabs = _slabs(n, chunk, depth, lambda boundary: False)
    if len(slabs) > 1 and slabs[-1][1] - slabs[-1][0] < pz:  # a short tail joins its neighbour
        slabs[-2:] = [(slabs[-2][0], n)]
    room = np.array([max(0, z1 - z0 - pz + 1) for z0, z1 in slabs], dtype=np.float64)
    corners: list[list[tuple[int, int, int]]] = [[] for _ in slabs]
    if room.sum() == 0 or shape[1] < py or shape[2] < px:
        return []
    for _ in range(int(patch.count or 0)):
        k = int(rng.choice(len(slabs), p=room / room.sum()))
        z = slabs[k][0] + int(rng.integers(room[k]))
        y = int(rng.integers(shape[1] - py + 1))
        x = int(rng.integers(shape[2] - px + 1))
        corners[k].append((z, y, x))
    return [(z0, z1, sorted(c)) for (z0, z1), c in zip(slabs, corners, strict=True) if c]


def _scan_slabs(
    scan: ScanInfo,
    unit: str,
    depth: int,
    patch: PatchSpec | None,
    rng: np.random.Generator | None,
) -> list[tuple[int, int, list[tuple[int, int, int]], tuple[int, int, int], bool]]:
    """Slabs of one scan (or of a tibia's weeks, same grid), with corners, size and squeeze."""
    n, height, width = scan.shape
    if unit == "volume":
        return [(0, n, [(0, 0, 0)], (n, height, width), False)]
    if unit in ("slice", "projection"):
        slabs = _slabs(n, scan.chunk_depth, depth, lambda boundary: False)
        return [
            (z0, z1, [(z, 0, 0) for z in range(z0, z1)], (1, height, width), True)
            for z0, z1 in slabs
        ]
    assert patch is not None
    if patch.count is None:
        cut = _grid_slabs(scan.shape, scan.chunk_depth, depth, patch)
    else:
        assert rng is not None
        cut = _random_slabs(scan.shape, scan.chunk_depth, depth, patch, rng)
    return [(z0, z1, corners, patch.size, patch.squeeze) for z0, z1, corners in cut if corners]


def build_units(
    scans: Sequence[ScanInfo],
    unit: str,
    *,
    pair_unit: str,
    gap: int,
    patch: PatchSpec | None,
    slab: int | None,
    read_bytes: int,
    rng_for: Callable[[int], np.random.Generator],
) -> list[ReadUnit]:
    """The read units of an epoch in store order, each with its items in (week, z, y, x) order.

    Store order is (mouse, side, week, slab) for single scans, (mouse, side, slab) for pairs.

    Parameters
    ----------
    scans : sequence of ScanInfo
        Selected scans, in store order.
    unit : {"volume", "slice", "patch", "projection", "pair"}
        What a sample is.
    pair_unit : {"volume", "slice", "patch"}
        What each image of a pair is (``unit="pair"``).
    gap : int
        Weeks between the image and the target of a pair.
    patch : PatchSpec or None
        Patches (``unit="patch"`` or ``pair_unit="patch"``).
    slab : int or None
        Slices per read unit (:func:`slab_depth`).
    read_bytes : int
        Target of decoded bytes per read unit when ``slab`` is None.
    rng_for : callable
        ``rng_for(k)``: the random generator of the k-th scan (or tibia) for random patches.

    Raises
    ------
    ValueError
        If a tibia's weeks have different shapes or chunking (``unit="pair"``).
    """
    units: list[ReadUnit] = []
    if unit != "pair":
        for k, scan in enumerate(scans):
            depth = slab_depth(scan, slab, read_bytes=read_bytes)
            rng = rng_for(k) if patch is not None and patch.count is not None else None
            for z0, z1, corners, size, squeeze in _scan_slabs(scan, unit, depth, patch, rng):
                items = tuple(Item(0, -1, c, size, squeeze) for c in corners)
                units.append(ReadUnit((scan,), z0, z1, items))
        return units
    tibiae = groupby(scans, key=lambda scan: (scan.mouse, scan.side))
    for k, (_, group) in enumerate(tibiae):
        weeks = list(group)
        by_week = {scan.week: i for i, scan in enumerate(weeks)}
        pairs = [(by_week[w], by_week[w + gap]) for w in sorted(by_week) if w + gap in by_week]
        if not pairs:
            continue
        used = sorted({i for pair in pairs for i in pair})
        members = tuple(weeks[i] for i in used)
        position = {i: used.index(i) for i in used}
        first = members[0]
        for other in members[1:]:
            if (other.shape, other.chunk_depth) != (first.shape, first.chunk_depth):
                raise ValueError(
                    f"unit='pair' needs the weeks of a tibia on one grid: {first.path!r} has "
                    f"shape {first.shape}, chunks of {first.chunk_depth}, {other.path!r} "
                    f"{other.shape}, {other.chunk_depth}; use regist_ct or roi_ct"
                )
        depth = slab_depth(first, slab, read_bytes=read_bytes, scans=len(members))
        rng = rng_for(k) if patch is not None and patch.count is not None else None
        for z0, z1, corners, size, squeeze in _scan_slabs(first, pair_unit, depth, patch, rng):
            items = tuple(
                Item(position[a], position[b], c, size, squeeze) for a, b in pairs for c in corners
            )
            units.append(ReadUnit(members, z0, z1, items))
    return units
