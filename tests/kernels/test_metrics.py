"""Per-slice metric kernels against geometry whose answer is known, and scipy."""

import numpy as np
import pytest
from scipy import ndimage

from bonemet_dask.kernels.metrics import SLICE_METRICS, slice_metrics
from bonemet_dask.kernels.slicewise import (
    fill_holes_slices,
    label_slices,
    largest_component_slices,
)

COL = {name: i for i, name in enumerate(SLICE_METRICS)}


def _annulus(thickness, outer=40, size=101):
    yy, xx = np.mgrid[:size, :size] - size // 2
    r = np.hypot(yy, xx)
    return (r <= outer) & (r > outer - thickness)


def _disc(radius=40, size=101):
    yy, xx = np.mgrid[:size, :size] - size // 2
    return np.hypot(yy, xx) <= radius


@pytest.mark.parametrize("thickness", [3, 4, 5, 6, 8, 10, 12])
def test_cortical_thickness_of_annuli_within_half_a_pixel(thickness):
    ring = _annulus(thickness)
    out = slice_metrics(ring[None] * np.uint8(200), kind="greyscale", pixel_mm=(0.01, 0.01))
    assert out.shape == (1, len(SLICE_METRICS))
    assert abs(out[0, COL["cortical_thickness_mm"]] / 0.01 - thickness) <= 0.45
    assert out[0, COL["cortical_area_mm2"]] == pytest.approx(ring.sum() * 1e-4)
    # the envelope is the filled disc
    assert out[0, COL["tissue_area_mm2"]] == pytest.approx(_disc().sum() * 1e-4)
    assert np.isnan(out[0, COL["formed_area_mm2"]])  # greyscale: no change codes


def test_solid_slice_has_no_identifiable_cortex():
    disc = _disc()
    out = slice_metrics(disc[None, None] * np.uint8(255), kind="greyscale")
    assert out.shape == (1, 1, len(SLICE_METRICS))
    assert np.isnan(out[0, 0, COL["cortical_thickness_mm"]])
    assert np.isnan(out[0, 0, COL["cortical_area_mm2"]])
    assert out[0, 0, COL["bone_area_mm2"]] == disc.sum()


def test_composite_areas_against_numpy():
    rng = np.random.default_rng(3)
    block = rng.choice(np.array([0, 60, 180, 240], np.uint8), size=(5, 30, 40))
    out = slice_metrics(block, kind="composite", pixel_mm=(0.5, 0.25))
    area = 0.125
    np.testing.assert_allclose(
        out[:, COL["bone_area_mm2"]], ((block == 180) | (block == 240)).sum((1, 2)) * area
    )
    np.testing.assert_allclose(
        out[:, COL["baseline_bone_area_mm2"]], ((block == 180) | (block == 60)).sum((1, 2)) * area
    )
    np.testing.assert_allclose(out[:, COL["formed_area_mm2"]], (block == 240).sum((1, 2)) * area)
    np.testing.assert_allclose(out[:, COL["resorbed_area_mm2"]], (block == 60).sum((1, 2)) * area)
    filled = [ndimage.binary_fill_holes((b == 180) | (b == 240)).sum() for b in block]
    np.testing.assert_allclose(out[:, COL["tissue_area_mm2"]], np.array(filled) * area)


def test_slicewise_helpers_match_scipy_per_slice():
    rng = np.random.default_rng(1)
    mask = rng.random((12, 25, 31)) < 0.45
    labels, count = label_slices(mask)
    largest, areas = largest_component_slices(labels, count)
    filled = fill_holes_slices(mask)
    for k in range(mask.shape[0]):
        ref, _ = ndimage.label(mask[k], np.ones((3, 3)))
        assert areas[largest[k]] == np.bincount(ref.ravel())[1:].max()
        np.testing.assert_array_equal(filled[k], ndimage.binary_fill_holes(mask[k]))
    empty, count = label_slices(np.zeros((2, 3, 3), bool))
    assert count == 0
    assert largest_component_slices(empty, count)[0].tolist() == [0, 0]
