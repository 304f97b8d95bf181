"""Junction search on hand-made masks: a tibia disc and a fibula that splits off it."""

import numpy as np
import pytest

from bonemet_dask.kernels.junction import bin_bone_mask, search_junction


def _leg(n=40, junction=12, size=48):
    """A disc (tibia) and a small disc (fibula) touching it above ``junction``, apart below."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((n, size, size), bool)
    for k in range(n):
        mask[k] |= np.hypot(yy - 24, xx - 20) <= 10
        gap = 0 if k < junction else 2 + (k - junction) // 4
        mask[k] |= np.hypot(yy - 24, xx - (33 + gap)) <= 3
    return mask


def test_finds_the_split_slice_exactly():
    result = search_junction(_leg(), window=5)
    assert result["slice"] == 12
    assert result["confidence"] == 1.0
    assert not result["ambiguous"]
    assert result["split_from_tibia"]


def test_binned_search_is_within_a_slice():
    grey = _leg().astype(np.uint8) * 200
    binned = bin_bone_mask(grey, level=75, factor=2)
    assert binned.shape == (40, 24, 24)
    assert abs(search_junction(binned, window=5)["slice"] - 12) <= 1


def test_fibula_separate_from_the_top_is_ambiguous():
    result = search_junction(_leg(junction=0), window=5)
    assert result["slice"] == 0
    assert result["ambiguous"]
    assert any("slice 0" in reason for reason in result["reasons"])


def test_no_fibula_is_an_error():
    mask = _leg()
    mask[:, :, 28:] = False
    with pytest.raises(ValueError, match="no fibula"):
        search_junction(mask)


def test_two_components_born_in_the_same_slice():
    # regression: the second new component of a slice was matched against the first one's
    # not-yet-set (1-D) footprint and raised IndexError on registered demo volumes
    mask = np.zeros((30, 40, 40), bool)
    mask[:, 10:25, 10:25] = True  # tibia
    mask[0:5, 24:31, 24:31] = True  # fibula head, joined to the tibia
    mask[5:, 30:33, 30:33] = True  # fibula shaft, separate from slice 5
    mask[5:8, 2:4, 35:37] = True  # a short speck born in the same slice
    found = search_junction(mask)
    assert found["slice"] == 5
    assert found["split_from_tibia"]


def test_edge_level_lies_halfway_between_soft_tissue_and_cortex():
    from bonemet_dask.kernels.junction import edge_level

    hist = np.zeros(256)
    hist[2] = 5000  # air
    hist[55:62] = 1000  # soft tissue around 58
    hist[170:180] = 200  # trabecular
    hist[228:236] = 400  # cortex around 232
    level = edge_level(hist, floor=75)
    assert 140 <= level <= 150  # (58 + ~232) / 2
    assert edge_level(np.bincount([3, 40, 50], minlength=256), floor=75) is None  # no bone
    low = np.zeros(256)
    low[70], low[80] = 100, 100  # barely above the floor: never below it
    assert edge_level(low, floor=75) == 75
