"""Composite kernels: exact codes on hand-made and random blocks, and their decoding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bonemet_dask.kernels.composite import (
    FORMED,
    KEPT,
    RESORBED,
    baseline_bone,
    composite_from_masks,
    followup_bone,
    threshold_composite,
    threshold_mask,
)


def test_hand_made_codes():
    baseline = np.array([[0, 75, 74, 200]], np.uint8)
    followup = np.array([[0, 80, 75, 10]], np.uint8)
    out = threshold_composite(baseline, followup, level=75)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, KEPT, FORMED, RESORBED]])


def test_week0_against_itself_is_kept_or_nothing():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, (4, 5, 6), dtype=np.uint8)
    out = threshold_composite(volume, volume)
    assert set(np.unique(out)) <= {0, KEPT}
    np.testing.assert_array_equal(out == KEPT, volume >= 75)


volumes = arrays(np.uint8, st.tuples(*[st.integers(1, 6)] * 3), elements=st.integers(0, 255))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), level=st.integers(0, 256))
def test_random_blocks_match_the_masked_rule(data, level):
    baseline = data.draw(volumes)
    followup = data.draw(arrays(np.uint8, baseline.shape, elements=st.integers(0, 255)))
    out = threshold_composite(baseline, followup, level=level)
    expected = composite_from_masks(baseline >= level, followup >= level)
    np.testing.assert_array_equal(out, expected)
    # decoding gives back both masks: the composite loses nothing
    np.testing.assert_array_equal(baseline_bone(out), threshold_mask(baseline, level=level))
    np.testing.assert_array_equal(followup_bone(out), followup >= level)


def test_float_input_and_shape_mismatch():
    a = np.array([0.5, 80.0, 75.0], np.float32)
    np.testing.assert_array_equal(threshold_composite(a, a[::-1].copy()), [FORMED, KEPT, RESORBED])
    with pytest.raises(ValueError, match=r"baseline\.shape"):
        threshold_composite(np.zeros((2, 2)), np.zeros((2, 3)))


def test_small_change_clusters_are_reverted_26_connected():
    from bonemet_dask.kernels.composite import drop_small_changes

    comp = np.full((6, 8, 8), 180, np.uint8)
    comp[0, 0, 0] = 60  # one resorbed voxel: noise -> kept
    comp[2:4, 2:4, 2:4] = 60  # 8 resorbed voxels: kept as change
    comp[5, 7, 7] = 240  # one formed voxel: noise -> no bone
    comp[0, 5, 5] = comp[1, 6, 6] = comp[2, 7, 7] = 240  # 3 diagonal voxels: one cluster of 3
    out = drop_small_changes(comp, min_voxels=5)
    assert out[0, 0, 0] == 180 and out[5, 7, 7] == 0 and out[0, 5, 5] == 0
    assert (out[2:4, 2:4, 2:4] == 60).all()
    assert drop_small_changes(comp, min_voxels=3)[1, 6, 6] == 240  # diagonal = connected
    np.testing.assert_array_equal(drop_small_changes(comp, min_voxels=1), comp)
    assert (comp[0, 0, 0], comp[5, 7, 7]) == (60, 240)  # the input is not changed
