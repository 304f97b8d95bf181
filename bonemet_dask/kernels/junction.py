"""Proximal tibia-fibula junction of a registered tibia: binning and the per-slice search.

The rule (DESIGN.md 3.5, the one :func:`bonemet_dask.synth.truth.find_junction_z` applies to
the phantom): walk distally slice by slice from the knee; the fibula's cross-section is first
joined to the tibia's (its head touches the tibia), and the junction is the first slice below
that where the fibula's cross-section is a connected component of its own.

On images this becomes a tracking problem, solved on a small in-plane-binned bone mask:

1. bone = grey >= threshold, binned in-plane by majority vote (:func:`bin_bone_mask`);
2. in each slice, holes are filled (the marrow and trabeculae join their cortex), the
   8-connected components labelled, specks below ``min_area`` dropped, and the largest
   component taken as the tibia;
3. every other component is linked to the one in the slice above it overlaps (a 1-pixel
   dilation, bridging up to ``max_gap`` missing slices) into *tracks*;
4. the fibula is the longest track; the junction is its first slice.

The result is checked against the rule: the track must *split off* from the tibia (its first
footprint overlaps the tibia's component in the slice above), persist below the junction, and
be the only long track.  Pure, Dask-free; the sequential tracking runs on the host (the mask is
small: a full-size Regist-CT binned 3x in-plane is ~42 MB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from bonemet_dask._backend import array_namespace, to_host
from bonemet_dask.kernels.composite import threshold_mask
from bonemet_dask.kernels.slicewise import (
    fill_holes_slices,
    label_slices,
    largest_component_slices,
    pad_slices,
)

__all__ = ["bin_bone_mask", "edge_level", "grey_histogram", "search_junction"]

_SLAB = 64  # slices labelled per ndimage call: bounds the int32 label memory


def grey_histogram(block: Any) -> np.ndarray:
    """Counts of each grey level 0..255 in a uint8 block, shape ``(1, 1, 256)`` (summable)."""
    values = to_host(block)
    return np.bincount(np.asarray(values, np.uint8).ravel(), minlength=256)[None, None, :]


def edge_level(histogram: np.ndarray, *, floor: float) -> float | None:
    """The grey level halfway between soft tissue and cortical bone: where a bone edge lies.

    A reconstruction blurs every edge; thresholding at a level near soft tissue moves edges
    outwards by more than a voxel (and joins a fibula to its tibia for several slices after
    they part), while the level halfway up the step stays on the edge.  Soft tissue is the
    median grey between ``floor / 4`` and ``floor`` (air below), cortical bone the 90th
    percentile of the grey at or above ``floor``.

    Parameters
    ----------
    histogram : ndarray, shape (256,)
        Counts per grey level (:func:`grey_histogram` summed).
    floor : float
        The bone threshold (BoneMet: 75).

    Returns
    -------
    float or None
        The level, never below ``floor``; None when the histogram has no soft tissue or no bone.
    """
    counts = np.asarray(histogram, np.float64).ravel()
    grey = np.arange(counts.size)
    soft = (grey >= floor / 4) & (grey < floor)
    bone = grey >= floor
    if counts[soft].sum() == 0 or counts[bone].sum() == 0:
        return None
    soft_median = _quantile(grey[soft], counts[soft], 0.5)
    bone_high = _quantile(grey[bone], counts[bone], 0.9)
    return float(max(floor, (soft_median + bone_high) / 2))


def _quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    cumulative = np.cumsum(counts)
    return float(values[np.searchsorted(cumulative, q * cumulative[-1])])


def bin_bone_mask(block: Any, *, level: float = 75, factor: int = 1) -> Any:
    """Bone mask of a ``(slice, y, x)`` greyscale block, binned ``factor`` x in ``y`` and ``x``.

    Parameters
    ----------
    block : ndarray, shape (slice, y, x)
        Greyscale slab spanning the full ``y`` and ``x`` extent.
    level : float, optional
        Bone threshold.
    factor : int, optional
        In-plane binning; ``slice`` is never binned.  Edges are zero-padded.

    Returns
    -------
    ndarray of bool, shape (slice, ceil(y / factor), ceil(x / factor))
        True where at least half of a bin's voxels are bone (a majority vote keeps a gap
        between two bones open, where a maximum would close it).
    """
    xp = array_namespace(block)
    mask = threshold_mask(block, level=level)
    if factor == 1:
        return mask
    mask = pad_slices(mask, factor)
    n, h, w = mask.shape
    counts = mask.reshape(n, h // factor, factor, w // factor, factor).sum(
        axis=(2, 4), dtype=xp.int32
    )
    return counts * 2 >= factor * factor


@dataclass(eq=False)  # identity, not field equality: tracks hold arrays (list.remove)
class _Track:
    """A chain of non-tibia components linked slice to slice."""

    start: int
    first: np.ndarray  # dilated footprint in its first slice
    split_from_tibia: bool  # that footprint lies on the tibia's component of the slice above
    footprint: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    slices: list[int] = field(default_factory=list)

    @property
    def present(self) -> int:
        return len(self.slices)

    @property
    def last(self) -> int:
        return self.slices[-1]


def search_junction(
    mask: Any,
    *,
    min_area: int = 1,
    max_gap: int = 2,
    window: int = 10,
) -> dict[str, Any]:
    """Find the proximal tibia-fibula junction in a ``(slice, y, x)`` bone mask, slice 0 proximal.

    Parameters
    ----------
    mask : ndarray of bool, shape (slice, y, x)
        Bone mask of a registered tibia (binned in-plane or not), slice 0 at the knee.
    min_area : int, optional
        Components with fewer pixels are ignored (noise specks, partial-volume crumbs).
    max_gap : int, optional
        Slices a track may miss and still continue (a thin fibula can vanish at a threshold).
    window : int, optional
        Slices above and below the junction used to score it.

    Returns
    -------
    dict
        ``slice`` (int, index into ``mask``), ``confidence`` (float in [0, 1]), ``ambiguous``
        (bool), ``reasons`` (list of str: why it is ambiguous, empty otherwise),
        ``track_slices`` (slices where the fibula was found separate), ``track_end`` (its last
        slice), ``split_from_tibia`` (bool), ``candidates`` (first slices of the other tracks
        of at least ``window`` slices).

    Raises
    ------
    ValueError
        If ``mask`` is not 3-D or holds no separate component at all (no fibula).

    Notes
    -----
    ``confidence`` is the product of three scores, each 1 for a clean junction: the fraction of
    the ``window`` slices from the junction down where the fibula is separate; the fraction of
    the ``window`` slices above it where the fibula's first footprint lies on the tibia's
    component (the two were joined); and ``1 - L2 / L1`` for the lengths of the two longest
    tracks.  ``ambiguous`` is set when the confidence is below 0.5, the track did not split off
    from the tibia, another track of at least half its length exists, or it starts at slice 0.
    """
    mask = to_host(mask).astype(bool, copy=False)
    if mask.ndim != 3:
        raise ValueError(f"mask.ndim={mask.ndim}; pass a (slice, y, x) bone mask")
    n = mask.shape[0]
    grow = np.ones((3, 3), dtype=bool)
    active: list[_Track] = []
    done: list[_Track] = []
    tibia_prev: np.ndarray | None = None
    for start in range(0, n, _SLAB):
        labels, count = label_slices(fill_holes_slices(mask[start : start + _SLAB]))
        largest, areas = largest_component_slices(labels, count)
        for offset in range(labels.shape[0]):
            k = start + offset
            lab = labels[offset]
            tibia = (lab == largest[offset]) if largest[offset] else np.zeros(lab.shape, bool)
            ids = np.unique(lab[(lab > 0) & ~tibia])
            footprints: dict[int, np.ndarray] = {}
            for comp in ids[areas[ids] >= min_area]:
                grown = ndimage.binary_dilation(lab == comp, grow)
                owners = [t for t in active if t.footprint[lab == comp].any()]
                if owners:
                    track = min(owners, key=lambda t: t.start)
                    for other in owners:  # two chains meet: keep the older one
                        if other is not track:
                            track.slices = sorted(set(track.slices) | set(other.slices))
                            active.remove(other)
                            footprints.pop(id(other), None)
                else:
                    split = tibia_prev is not None and bool(tibia_prev[grown].any())
                    # an empty footprint until the slice ends: another component of this
                    # same slice must not join a track that starts here
                    track = _Track(
                        start=k, first=grown, split_from_tibia=split,
                        footprint=np.zeros(lab.shape, bool),
                    )  # fmt: skip
                    active.append(track)
                footprints[id(track)] = footprints.get(id(track), False) | grown
                if not track.slices or track.slices[-1] != k:
                    track.slices.append(k)
            for track in list(active):
                if id(track) in footprints:
                    track.footprint = footprints[id(track)]
                elif k - track.last > max_gap:
                    active.remove(track)
                    done.append(track)
            tibia_prev = tibia
    done.extend(active)
    if not done:
        raise ValueError(
            "mask holds no bone component besides the largest one in any slice: no fibula to "
            "find; check the threshold, or that the volume is a registered tibia with its fibula"
        )
    done.sort(key=lambda t: (-t.present, t.start))
    fibula = done[0]
    j = fibula.start
    below = set(range(j, min(n, j + window)))
    persistence = len(below & set(fibula.slices)) / max(len(below), 1)
    above = range(max(0, j - window), j)
    joined = [bool(_tibia_at(mask, k)[fibula.first].any()) for k in above]
    join_score = float(np.mean(joined)) if joined else 0.0
    second = done[1].present if len(done) > 1 else 0
    unique_score = 1.0 - second / fibula.present
    confidence = float(persistence * join_score * unique_score)
    reasons = []
    if not fibula.split_from_tibia:
        reasons.append("the fibula's track does not split off from the tibia's component")
    if j == 0:
        reasons.append("the fibula is separate from slice 0: the junction may lie above the volume")
    if second >= fibula.present / 2:
        reasons.append(f"a second track of {second} slices (fibula: {fibula.present})")
    if confidence < 0.5:
        reasons.append(f"low confidence {confidence:.2f}")
    return {
        "slice": int(j),
        "confidence": round(confidence, 4),
        "ambiguous": bool(reasons),
        "reasons": reasons,
        "track_slices": int(fibula.present),
        "track_end": int(fibula.last),
        "split_from_tibia": bool(fibula.split_from_tibia),
        "candidates": sorted(int(t.start) for t in done[1:] if t.present >= window),
    }


def _tibia_at(mask: np.ndarray, k: int) -> np.ndarray:
    """The filled largest component of slice ``k`` (recomputed: only a window is scored)."""
    filled = fill_holes_slices(mask[k : k + 1])
    labels, count = label_slices(filled)
    largest, _ = largest_component_slices(labels, count)
    if not largest[0]:
        return np.zeros(mask.shape[1:], dtype=bool)
    return labels[0] == largest[0]
