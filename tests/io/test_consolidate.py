"""Consolidated metadata: written, dropped, and never trusted by the package's own readers."""

import json
import uuid
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from bonemet_dask.io.consolidate import (
    consolidate_store,
    consolidated_paths,
    consolidating,
    drop_consolidated,
)
from bonemet_dask.io.scans import open_root
from bonemet_dask.io.store import (
    ImageLayout,
    create_image_group,
    open_zarr_store,
    scan_group_path,
    set_status,
)
from bonemet_dask.io.xr import open_store

LAYOUT = ImageLayout.default_for("ct", (3, 4, 5), "uint8", voxel_size_um=10.0)


def add_scan(root: zarr.Group, mouse: str, week: int) -> str:
    path = scan_group_path("roi_ct", mouse, "left", week)
    group = create_image_group(root, path, LAYOUT, attrs={"mouse": mouse})
    group["0"][:] = np.full(LAYOUT.shape, week + 1, dtype=np.uint8)
    group["slice_index"][:] = np.arange(LAYOUT.shape[0])
    return path


def scans(store) -> set[str]:
    return {"/".join(k.split("/")[:4]) for k in consolidated_paths(store) if k.count("/") >= 3}


@pytest.fixture(params=["local", "memory"])
def location(request, tmp_path):
    """A store with one scan, as a local path and as a ``memory://`` URL."""
    if request.param == "local":
        store = str(tmp_path / "s.zarr")
    else:
        store = f"memory://{uuid.uuid4().hex}/s.zarr"
    add_scan(zarr.open_group(open_zarr_store(store), mode="w"), "7", 0)
    return store


def test_consolidate_then_drop(location):
    assert consolidated_paths(location) is None
    assert not drop_consolidated(location)  # nothing to drop: no write
    count = consolidate_store(location)
    paths = consolidated_paths(location)
    # roi_ct, 7, left, week0, its three arrays and its coordinates z, y, x
    assert count == len(paths) == 10
    assert "roi_ct/7/left/week0/slice_hash" in paths
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither zarr's nor xarray's consolidation warning
        tree = xr.open_datatree(location, engine="zarr")
    np.testing.assert_array_equal(tree["roi_ct/7/left/week0"].dataset["0"].values, 1)
    attrs = dict(zarr.open_group(open_zarr_store(location), mode="r").attrs)
    assert drop_consolidated(location)
    assert consolidated_paths(location) is None
    assert dict(zarr.open_group(open_zarr_store(location), mode="r").attrs) == attrs  # kept


def test_consolidating_drops_first_and_writes_at_the_end_even_on_error(location):
    consolidate_store(location)
    with pytest.raises(RuntimeError, match="boom"), consolidating(location):
        assert consolidated_paths(location) is None  # nothing describes the store mid-write
        add_scan(open_root(location, mode="r+"), "7", 1)
        raise RuntimeError("boom")
    assert scans(location) == {"roi_ct/7/left/week0", "roi_ct/7/left/week1"}
    with pytest.raises(KeyboardInterrupt), consolidating(location):
        add_scan(open_root(location, mode="r+"), "7", 2)
        raise KeyboardInterrupt
    assert consolidated_paths(location) is None  # killed: none left rather than a stale one
    with consolidating(location, enabled=False):
        pass
    assert consolidated_paths(location) is None


def test_own_readers_ignore_stale_consolidated_metadata(tmp_path):
    """After consolidation, a group is added and a status changed behind its back: the root
    ``open_root`` returns, ``open_store`` and root attribute writes all see the store as it is
    (and never write the stale consolidation back); ``consolidated=True`` trusts it."""
    store = str(tmp_path / "s.zarr")
    add_scan(zarr.open_group(open_zarr_store(store), mode="w"), "7", 0)
    consolidate_store(store)
    added = add_scan(open_root(store, mode="r+"), "8", 1)
    set_status(open_root(store, mode="r+")[scan_group_path("roi_ct", "7", "left", 0)], "complete")
    assert added not in scans(store)  # stale: written by other means since the consolidation

    root = open_root(store, mode="r")
    assert root.metadata.consolidated_metadata is None
    assert root[added].attrs["bonemet"]["mouse"] == "8"
    tree = open_store(store)
    assert tree["roi_ct/7/left/week0"].attrs["status"] == "complete"
    assert tree["roi_ct/8/left/week1"].dataset["image"].shape == LAYOUT.shape
    trusting = open_store(store, consolidated=True)
    assert "8" not in trusting["roi_ct"].children
    assert trusting["roi_ct/7/left/week0"].attrs["status"] == "incomplete"

    writable = open_root(store, mode="r+")
    writable.attrs["note"] = "x"  # a root write drops the stale consolidation, never rewrites it
    assert consolidated_paths(store) is None
    document = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert document["attributes"]["note"] == "x" and "consolidated_metadata" not in document
