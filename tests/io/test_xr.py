import uuid
import warnings

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from bonemet_dask.io.consolidate import consolidate_store
from bonemet_dask.io.records import write_records
from bonemet_dask.io.store import (
    ImageLayout,
    create_image_group,
    open_zarr_store,
    scan_group_path,
)
from bonemet_dask.io.xr import open_store, stack


def write_scan(root, component, mouse, side, week, layout, *, seed=0, attrs=None):
    path = scan_group_path(component, mouse, side, week)
    group = create_image_group(root, path, layout, attrs={"mouse": mouse, **(attrs or {})})
    data = np.random.default_rng(seed).integers(0, 250, layout.shape, dtype=layout.dtype)
    group["0"][:] = data
    group["slice_index"][:] = np.arange(layout.shape[0]) + 5
    return data


def ct(shape, voxel=10.0):
    return ImageLayout.default_for("ct", shape, "uint8", voxel_size_um=voxel)


@pytest.fixture
def store(tmp_path):
    """A store with two recon scans, a projection stack, four regist scans and records."""
    path = tmp_path / "s.zarr"
    root = zarr.open_group(open_zarr_store(path), mode="w")
    scans = {
        "recon": write_scan(root, "recon_ct", "851", "both", 0, ct((70, 12, 20))),
        "proj": write_scan(
            root, "rotation_xray", "851", "both", 0,
            ImageLayout.default_for("projections", (11, 9, 7), "uint16", voxel_size_um=5.0),
            attrs={"angles_deg": [0.8 * i for i in range(11)]},
        ),
    }  # fmt: skip
    for seed, (mouse, side, week) in enumerate(
        [("851", "left", 0), ("851", "left", 1), ("10", "right", 1), ("851", "right", 0)]
    ):
        scans[(mouse, side, week)] = write_scan(
            root, "regist_ct", mouse, side, week, ct((6, 5, 4), 20.0), seed=seed
        )
    write_records(root, pd.DataFrame({"id": [851, 10], "note": ["µ", None]}))
    return path, scans


def test_open_store_ct_node(store):
    path, scans = store
    tree = open_store(path)
    ds = tree["/recon_ct/851/both/week0"].dataset
    image = ds["image"]
    assert image.dims == ("slice", "y", "x")
    assert isinstance(image.data, da.Array)
    assert image.data.chunks[0] == (64, 6)  # inner chunks, uneven last shard
    np.testing.assert_array_equal(image.values, scans["recon"])
    np.testing.assert_array_equal(image["slice"].values, np.arange(70) + 5)
    np.testing.assert_allclose(image["x"].values, np.arange(20) * 10.0)
    assert image["y"].attrs["units"] == "micrometer"
    assert (image["mouse"].item(), image["side"].item(), image["week"].item()) == ("851", "both", 0)
    assert ds.attrs["status"] == "incomplete"


def test_open_store_projection_node(store):
    path, scans = store
    image = open_store(path, chunks="shard")["/rotation_xray/851/both/week0"].dataset["image"]
    assert image.dims == ("angle", "row", "col")
    np.testing.assert_allclose(image["angle"].values, 0.8 * np.arange(11))
    assert image["angle"].attrs["units"] == "degree"
    np.testing.assert_array_equal(image["index"].values, np.arange(11) + 5)
    np.testing.assert_allclose(image["row"].values, np.arange(9) * 5.0)
    np.testing.assert_array_equal(image.values, scans["proj"])


def test_open_store_records_and_hierarchy(store):
    path, _ = store
    tree = open_store(path)
    assert set(tree.children) == {"recon_ct", "rotation_xray", "regist_ct", "medirec"}
    records = tree["medirec"].dataset
    assert records["note"].dims == ("record",)
    assert records["note"].values[0] == "µ" and pd.isna(records["note"].values[1])
    assert records["id"].attrs["column"] == "id"
    assert tree.attrs["layout"] == 1


def test_open_store_memory_url():
    url = f"memory://{uuid.uuid4().hex}"
    root = zarr.open_group(open_zarr_store(url), mode="w")
    data = write_scan(root, "roi_ct", "7", "left", 2, ct((3, 4, 5)))
    image = open_store(url)["/roi_ct/7/left/week2"].dataset["image"]
    np.testing.assert_array_equal(image.values, data)


def test_xarray_open_datatree_plain_call(store):
    """Unconsolidated (as this fixture writes it), xarray warns and lists the store; once
    consolidated (as every bonemet-dask command leaves a store), the plain call is silent and
    gives the same tree."""
    path, _ = store
    with pytest.warns(RuntimeWarning, match="consolidated metadata"):
        listed = xr.open_datatree(path, engine="zarr")
    assert consolidate_store(path) == len(dict(zarr.open_group(str(path)).members(max_depth=None)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata" RuntimeWarning
        tree = xr.open_datatree(path, engine="zarr")
    assert tree["regist_ct/10/right/week1"].dataset["0"].dims == ("z", "y", "x")
    assert sorted(n.path for n in tree.subtree) == sorted(n.path for n in listed.subtree)
    xr.testing.assert_identical(tree, listed)


def test_stack_shape_fill_present_and_lazy(store):
    path, scans = store
    tree = open_store(path)
    dense = stack(tree, "regist_ct", fill=7)
    assert dense.dims == ("mouse", "side", "week", "slice", "y", "x")
    assert dense.shape == (2, 2, 2, 6, 5, 4)
    assert list(dense["mouse"].values) == ["10", "851"]  # numeric order
    assert list(dense["side"].values) == ["left", "right"]
    assert isinstance(dense.data, da.Array) and dense.dtype == np.uint8
    present = dense["present"]
    assert present.dims == ("mouse", "side", "week")
    assert int(present.sum()) == 4
    assert not present.sel(mouse="10", side="left", week=0)
    np.testing.assert_array_equal(
        dense.sel(mouse="851", side="left", week=1).values, scans[("851", "left", 1)]
    )
    assert (dense.sel(mouse="10", side="left", week=0).values == 7).all()
    np.testing.assert_allclose(dense["y"].values, np.arange(5) * 20.0)


def test_stack_nan_fill_promotes(store):
    path, scans = store
    dense = stack(open_store(path), "regist_ct", fill=np.nan)
    assert dense.dtype == np.float32
    assert np.isnan(dense.sel(mouse="10", side="right", week=0).values).all()
    np.testing.assert_array_equal(
        dense.sel(mouse="851", side="right", week=0).values, scans[("851", "right", 0)]
    )


def test_stack_errors(store, tmp_path):
    path, _ = store
    tree = open_store(path)
    with pytest.raises(ValueError, match="component='seg_ct' is not in the tree"):
        stack(tree, "seg_ct")
    root = zarr.open_group(open_zarr_store(path), mode="a")
    write_scan(root, "regist_ct", "99", "left", 0, ct((6, 5, 3)))
    with pytest.raises(ValueError, match=r"\(6, 5, 3\): regist_ct/99/left/week0"):
        stack(open_store(path), "regist_ct")
