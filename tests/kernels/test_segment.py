"""Segmentation kernels against scipy / scikit-image references and hand-built volumes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage.measure import block_reduce

from bonemet_dask.kernels import segment as K


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", [(8, 8, 8), (13, 9, 11), (5, 17, 3)])
def test_bin_counts_equal_block_reduce(factor, shape):
    rng = np.random.default_rng(factor)
    grey = rng.integers(0, 256, size=shape, dtype=np.uint8)
    counts = K.bin_bone_counts(grey, level=75, factor=factor)
    reference = block_reduce(grey >= 75, (factor,) * 3, np.sum, cval=0)  # pads partial bins
    assert counts.dtype == K.counts_dtype(factor)
    np.testing.assert_array_equal(counts, reference)


def test_counts_dtype_holds_a_full_bin():
    assert K.counts_dtype(4) == np.uint8 and K.counts_dtype(6) == np.uint8
    assert K.counts_dtype(7) == np.uint16  # 343 voxels
    full = K.bin_bone_counts(np.full((7, 7, 7), 200, np.uint8), level=75, factor=7)
    assert full.item() == 343


def test_threshold_includes_the_level():
    grey = np.array([[[74, 75, 76]]], np.uint8)
    np.testing.assert_array_equal(K.threshold(grey, level=75), [[[False, True, True]]])


def test_binned_bone_drops_sparse_bins():
    counts = np.array([[[0, 3, 4, 64]]], np.uint8)
    np.testing.assert_array_equal(K.binned_bone(counts, factor=4), [[[False, False, True, True]]])
    assert K.binned_bone(np.array([[[1]]], np.uint8), factor=1).all()


def two_legs() -> np.ndarray:
    bone = np.zeros((30, 12, 40), bool)
    bone[2:28, 4:8, 3:7] = True  # left leg: a long bone
    bone[5:9, 2:10, 1:9] = True  # its knee, wider
    bone[2:25, 3:7, 28:31] = True  # right leg
    bone[15, 10, 18] = True  # a speck between the legs
    return bone


def test_find_legs_orders_by_x_and_drops_specks():
    bone = two_legs()
    legs = K.find_legs(bone)
    assert [(lo, hi) for lo, hi, _ in legs] == [
        ((2, 2, 1), (28, 10, 9)),
        ((2, 3, 28), (25, 7, 31)),
    ]
    labels, _ = ndimage.label(bone, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    assert sorted(n for _, _, n in legs) == sorted(sizes[sizes > 1].tolist())
    assert K.find_legs(np.zeros((4, 4, 4), bool)) == []


def test_find_legs_merges_bones_overlapping_in_x():
    bone = np.zeros((20, 10, 20), bool)
    bone[1:8, 2:4, 4:9] = True  # femur
    bone[10:19, 2:4, 5:8] = True  # tibia, apart in z but under the femur
    bone[10:19, 6:8, 8:10] = True  # fibula beside it, touching its x range
    (lo, hi, n), *rest = K.find_legs(bone)
    assert not rest and lo == (1, 2, 4) and hi == (19, 8, 10) and n == bone.sum()


def brute_valley(values):
    depth = [min(max(values[: i + 1]), max(values[i:])) - values[i] for i in range(len(values))]
    return max(depth)


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 50)))
def test_deepest_valley_matches_brute_force(profile):
    index, depth = K.deepest_valley(profile)
    assert depth == brute_valley(profile.tolist())
    assert min(profile[: index + 1].max(), profile[index:].max()) - profile[index] == depth


def test_deepest_valley_takes_the_distal_end_of_a_flat_bottom():
    profile = np.array([1, 5, 9, 0, 0, 0, 10, 6, 7, 3])
    assert K.deepest_valley(profile) == (5, 9.0)
    assert K.deepest_valley(np.array([])) == (0, 0.0)


def test_knee_cut_needs_a_deep_valley():
    knee = np.array([2, 2, 6, 9, 5, 1, 10, 4, 4, 3])
    assert K.knee_cut(knee) == 5
    no_femur = np.array([0, 0, 10, 8, 4, 5, 4, 3])  # a shallow dip only (depth 1 of 10)
    assert K.knee_cut(no_femur) is None
    assert K.knee_cut(no_femur, min_depth=0.05) == 4
    assert K.knee_cut(np.array([3, 2, 1])) is None


def test_knee_search_range_centres_on_the_widest_slice():
    bone = two_legs()[:, :, :10]
    assert K.knee_search_range(bone, half_width=2) == (3, 8)  # widest: slices 5..8, first is 5
    assert K.knee_search_range(bone, half_width=10) == (0, 16)


def test_tibia_region_keeps_the_fibula_and_drops_what_is_above_or_apart():
    bone = np.zeros((20, 12, 16), bool)
    bone[0:4, 3:7, 3:7] = True  # femur, above the cut
    bone[5:18, 4:6, 4:6] = True  # tibia
    bone[6:12, 4:5, 7:8] = True  # fibula, one empty bin from the tibia
    bone[8:10, 9:11, 13:15] = True  # another bone, apart
    region, lo, hi = K.tibia_region(bone, top=5)
    assert (lo, hi) == ((5, 4, 4), (18, 6, 8))
    assert region[5:18, 4:6, 4:6].all() and region[6:12, 4, 7].all()
    assert not region[:5].any() and not region[8:10, 9:11, 13:15].any()
    expected = ndimage.binary_dilation(
        bone & (np.arange(20) >= 5)[:, None, None], np.ones((3,) * 3)
    )
    assert not (region & ~expected).any()  # within one bin of the kept bone
    empty, lo, hi = K.tibia_region(bone, top=19)
    assert not empty.any() and (lo, hi) == ((0, 0, 0), (0, 0, 0))


@pytest.mark.parametrize("factor", [1, 3, 4])
@pytest.mark.parametrize("start", [(0, 0, 0), (5, -3, 2), (-9, 10, 7)])
def test_threshold_in_region_equals_an_upsampled_reference(factor, start):
    rng = np.random.default_rng(factor)
    region = rng.random((5, 4, 6)) > 0.4
    block = rng.integers(0, 256, size=(11, 9, 13), dtype=np.uint8)
    out = K.threshold_in_region(block, region, level=75, factor=factor, start=start)
    up = region.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
    pad = 40
    up = np.pad(up, pad)  # outside the region is not bone
    window = tuple(slice(s + pad, s + pad + n) for s, n in zip(start, block.shape, strict=True))
    np.testing.assert_array_equal(out, (block >= 75) & up[window])


def test_area_profile():
    grey = np.zeros((3, 4, 4), np.uint8)
    grey[1, :2, :3] = 90
    np.testing.assert_array_equal(K.area_profile(grey, level=75), [0, 6, 0])
    np.testing.assert_array_equal(K.area_profile(grey > 0, level=True), [0, 6, 0])


@pytest.mark.gpu
def test_kernels_on_cupy_equal_numpy():
    import cupy

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(13, 9, 11), dtype=np.uint8)
    on_gpu = K.bin_bone_counts(cupy.asarray(grey), level=75, factor=4)
    assert isinstance(on_gpu, cupy.ndarray)
    np.testing.assert_array_equal(on_gpu.get(), K.bin_bone_counts(grey, level=75, factor=4))
    bone = two_legs()
    assert K.find_legs(cupy.asarray(bone)) == K.find_legs(bone)
    region, lo, hi = K.tibia_region(cupy.asarray(bone[:, :, :10]), top=3)
    expected = K.tibia_region(bone[:, :, :10], top=3)
    np.testing.assert_array_equal(region.get(), expected[0])
    assert (lo, hi) == expected[1:]
    mask = K.threshold_in_region(cupy.asarray(grey), cupy.asarray(bone[:4, :3, :3]), level=75,
                                 factor=4, start=(1, 2, 3))  # fmt: skip
    reference = K.threshold_in_region(grey, bone[:4, :3, :3], level=75, factor=4, start=(1, 2, 3))
    np.testing.assert_array_equal(mask.get(), reference)
    host_region = K.threshold_in_region(cupy.asarray(grey), bone[:4, :3, :3], level=75, factor=4,
                                        start=(1, 2, 3))  # fmt: skip
    np.testing.assert_array_equal(host_region.get(), reference)
    profile = K.area_profile(cupy.asarray(grey), level=75)
    np.testing.assert_array_equal(profile.get(), K.area_profile(grey, level=75))
    assert K.knee_search_range(cupy.asarray(bone), half_width=2) == K.knee_search_range(
        bone, half_width=2
    )


# Bone area per slice through one synthetic knee at 40 um (mouse 851, right, week 2): our FDK of
# the projections (the joint space half filled, bright bands on the plateau's surfaces) and the
# generator's Recon-CT (the phantom blurred); slice 0 here is slice 219 of the scan, and the
# joint space's last slice is 237 - 219 = 18 (the tibia starts on the next).
KNEE_FDK = [4400, 4300, 4100, 3900, 3700, 3500, 3269, 3109, 2947, 2780, 2612, 2363, 2208, 2124,
            2215, 2370, 2555, 2615, 3464, 6815, 7191, 6420, 5264, 4327, 4270, 4226, 4502, 5684,
            6580, 4575, 2194, 1886, 1823, 1790, 1799, 1764, 1740, 1723, 1698, 1697]  # fmt: skip
KNEE_MODEL = [4400, 4300, 4100, 3900, 3700, 3500, 3287, 3113, 2932, 2717, 2489, 2251, 2004, 1734,
              1451, 1130, 790, 428, 157, 783, 2636, 4105, 4386, 4367, 4340, 4293, 4257, 4190,
              3282, 2139, 1873, 1873, 1886, 1843, 1829, 1809, 1794, 1787, 1761, 1734]  # fmt: skip


def test_knee_cut_at_the_plateau_edge_ignores_the_reconstruction_bands():
    fdk, model = np.array(KNEE_FDK), np.array(KNEE_MODEL)
    assert K.knee_cut(model) == 18  # the floor: right on a clean joint space
    assert K.knee_cut(fdk) == 25  # the floor: between the two bright bands, 7 slices low
    assert abs(K.knee_cut(fdk, level="edge", smoothing=1.5) - 18) <= 1  # measured 17
    assert abs(K.knee_cut(model, level="edge", smoothing=1.5) - 18) <= 2  # measured 20
    with pytest.raises(ValueError, match="level="):
        K.knee_cut(model, level="middle")
