"""Multiscale pyramids: levels equal a reference downsampling, classes survive, resumable, valid.

The reference is :func:`skimage.transform.downscale_local_mean` on the edge-padded full array,
rounded half up: the mean of the pixels a block holds (an edge block of one real pixel along an
axis repeats it), which is what each level must be on uneven shapes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05 import Image
from skimage.transform import downscale_local_mean

from bonemet_dask.io.pyramid import plan_levels, resampling_method
from bonemet_dask.io.store import ImageLayout, create_image_group, set_status
from bonemet_dask.io.xr import open_store
from bonemet_dask.kernels.downsample import block_mean, block_mode
from bonemet_dask.ops.pyramid import pyramid

CLASSES = np.array([0, 60, 180, 240], dtype=np.uint8)  # none, resorbed, kept, formed


def reference_mean(a: np.ndarray, factors=(2, 2, 2)) -> np.ndarray:
    pad = [(0, -n % f) for n, f in zip(a.shape, factors, strict=True)]
    mean = downscale_local_mean(np.pad(a, pad, mode="edge").astype(np.float64), factors)
    return np.floor(mean + 0.5).astype(a.dtype)


def reference_mode(a: np.ndarray, factors=(2, 2, 2)) -> np.ndarray:
    """Per block: the most frequent value over the pixels present, ties to the larger."""
    out = np.empty([-(-n // f) for n, f in zip(a.shape, factors, strict=True)], a.dtype)
    for idx in np.ndindex(*out.shape):
        box = a[tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, factors, strict=True))]
        values, counts = np.unique(box, return_counts=True)
        out[idx] = values[counts == counts.max()].max()
    return out


def write_scan(root, path, data, *, component="recon_ct", slices_per_shard=64, chunk=None):
    layout = ImageLayout.default_for("ct", data.shape, data.dtype, voxel_size_um=10.0,
                                     slices_per_shard=slices_per_shard)  # fmt: skip
    if chunk is not None:
        across = (-(-n // c) * c for n, c in zip(data.shape[1:], chunk[1:], strict=True))
        layout = ImageLayout(layout.shape, layout.dtype, chunk, (layout.shards[0], *across),
                             layout.dims, layout.scale)  # fmt: skip
    mouse, side, week = path.split("/")[1:]
    group = create_image_group(root, path, layout, attrs={
        "component": component, "mouse": mouse, "side": side, "week": int(week[4:]),
        "fingerprint": f"fp-{path}"})  # fmt: skip
    group["0"][:] = data
    group["slice_index"][:] = np.arange(data.shape[0]) + 5
    set_status(group, "complete")
    return group


def lv(store, scan: str, k: int) -> zarr.Array:
    """Level k of a scan (by path: the store is consolidated)."""
    return zarr.open_array(store, path=f"{scan}/level{k}/0", mode="r")


def smooth(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_kernels_match_references_on_uneven_shapes():
    a = smooth((7, 9, 11))
    np.testing.assert_array_equal(block_mean(a, (2, 2, 2)), reference_mean(a))
    labels = np.random.default_rng(1).choice(CLASSES, (7, 9, 11))
    got = block_mode(labels, (2, 2, 2))
    np.testing.assert_array_equal(got, reference_mode(labels))
    assert set(np.unique(got)) <= set(CLASSES)
    many = np.random.default_rng(2).integers(0, 40, (5, 6, 7), dtype=np.uint16)  # sort path
    np.testing.assert_array_equal(block_mode(many, (2, 2, 2)), reference_mode(many))
    proj = smooth((3, 9, 8)).astype(np.uint16) * 200
    np.testing.assert_array_equal(block_mean(proj, (1, 2, 2)), reference_mean(proj, (1, 2, 2)))


def test_plan_full_size_recon_ct():
    levels = plan_levels((2685, 2428, 2588), ("z", "y", "x"), (10.0,) * 3, 1,
                         chunks=(64, 256, 256), shards=(64, 2560, 2816))  # fmt: skip
    assert [lv.shape for lv in levels[1:]] == [
        (1343, 1214, 1294),
        (672, 607, 647),
        (336, 304, 324),
        (168, 152, 162),
    ]
    for above, level in itertools.pairwise(levels):
        # a task reads whole chunks of the level above and writes one whole shard
        assert level.shards[0] % level.chunks[0] == 0
        assert (level.shards[0] * 2) % above.chunks[0] == 0 or level.n_shards == 1
        assert level.shards[1] >= level.shape[1] and level.shards[2] >= level.shape[2]
    assert levels[-1].scale == (160.0,) * 3 and levels[-1].translation == (75.0,) * 3
    proj = plan_levels((260, 1000, 1300), ("angle", "row", "col"), (1.0, 35.0, 35.0), 2)
    assert [lv.shape for lv in proj[1:]] == [(260, 500, 650), (260, 250, 325), (260, 125, 163)]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.zarr"
    root = zarr.open_group(path, mode="w")
    grey = smooth((150, 45, 51))
    comp = np.random.default_rng(3).choice(CLASSES, (60, 70, 66))
    write_scan(root, "recon_ct/1/both/week0", grey, slices_per_shard=16, chunk=(8, 16, 16))
    write_scan(root, "roi_ct/1/left/week0", comp, component="roi_ct")
    return path, grey, comp


def test_levels_equal_reference_and_classes_survive(store):
    path, grey, comp = store
    report = pyramid(path, target=20, task_bytes=1)  # one chunk depth per task: many shards
    assert report.counts()["written"] == 2
    root = zarr.open_group(path, mode="r", use_consolidated=False)
    group = root["recon_ct/1/both/week0"]
    expected = grey
    for k in range(1, 4):
        expected = reference_mean(expected)
        np.testing.assert_array_equal(lv(path, "recon_ct/1/both/week0", k)[:], expected)
    assert not (path / "recon_ct/1/both/week0/level4").exists() and expected.shape == (
        19,
        6,
        7,
    )  # largest axis <= 20
    direct = downscale_local_mean(grey[:144, :40, :48].astype(float), (8, 8, 8))
    assert (
        np.abs(lv(path, "recon_ct/1/both/week0", 3)[:18, :5, :6] - direct).max() <= 1.5
    )  # rounding, 3 levels
    roi = root["roi_ct/1/left/week0"]
    assert resampling_method(roi) == "mode" and resampling_method(group) == "mean"
    expected = comp
    for k in range(1, 3):
        expected = reference_mode(expected)
        level = lv(path, "roi_ct/1/left/week0", k)[:]
        np.testing.assert_array_equal(level, expected)
        assert set(np.unique(level)) <= set(CLASSES)
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "level1/0", "level2/0", "level3/0"]
    assert datasets[2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [40.0] * 3},
        {"type": "translation", "translation": [15.0] * 3},
    ]
    for path_ in ("recon_ct/1/both/week0", "roi_ct/1/left/week0"):
        Image.from_zarr(root[path_])  # ome-zarr-models validates every level
    assert pyramid(path, target=20, task_bytes=1).counts()["up to date"] == 2


def test_chunked_equals_unchunked(store, tmp_path):
    path, grey, _ = store
    pyramid(path, target=20, task_bytes=1)
    other = tmp_path / "o.zarr"
    write_scan(zarr.open_group(other, mode="w"), "recon_ct/1/both/week0", grey,
               slices_per_shard=64)  # fmt: skip
    pyramid(other, target=20, task_bytes=2**40)  # every level one shard, one task
    a, b = (lambda k, p=p: lv(p, "recon_ct/1/both/week0", k) for p in (path, other))
    assert a(1).shards[0] < a(1).shape[0] <= b(1).shards[0]
    for k in range(1, 4):
        np.testing.assert_array_equal(a(k)[:], b(k)[:])


def test_resume_after_deleting_one_shard(store):
    path = store[0]
    pyramid(path, target=20, task_bytes=1)
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    group = root["recon_ct/1/both/week0"]
    before = lv(path, "recon_ct/1/both/week0", 1)[:]
    assert lv(path, "recon_ct/1/both/week0", 1).cdata_shape[0] == 2
    (path / "recon_ct/1/both/week0/level1/0/c/1/0/0").unlink()  # a killed task: shard gone,
    (path / "recon_ct/1/both/week0/level1/shard_done/c/1").unlink()  # marker never written
    attrs = dict(group.attrs["bonemet"])
    group.attrs["bonemet"] = {**attrs, "pyramid": {**attrs["pyramid"], "status": "incomplete"}}
    report = pyramid(path, target=20, task_bytes=1)
    assert [o.status for o in report.outcomes] == ["resumed", "up to date"]
    np.testing.assert_array_equal(lv(path, "recon_ct/1/both/week0", 1)[:],
                                  before)  # fmt: skip


def test_open_store_level(store):
    path, grey, _ = store
    pyramid(path, target=20)
    tree = open_store(path, level=2)
    image = tree["recon_ct/1/both/week0"].dataset["image"]
    assert image.shape == (38, 12, 13) and image.attrs["level"] == 2
    np.testing.assert_array_equal(image.values, reference_mean(reference_mean(grey)))
    np.testing.assert_allclose(image["y"].values[:2], [15.0, 55.0])  # centres of 4-pixel blocks
    assert list(image["slice"].values[:2]) == [5, 9]
    coarsest = open_store(path, level=9)["recon_ct/1/both/week0"].dataset["image"]
    assert coarsest.attrs["level"] == 3
