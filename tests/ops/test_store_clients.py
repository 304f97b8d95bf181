"""A whole store as the chain writes it, read by the clients users bring: ome-zarr-models (the
OME-Zarr 0.5 schema napari-ome-zarr and ome-zarr-py follow) and plain ``xr.open_zarr``."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from ome_zarr_models.v05 import Image, ImageLabel, Labels

from bonemet_dask.ops.pyramid import pyramid
from bonemet_dask.ops.run import run

SPATIAL = {"z", "y", "x", "row", "col"}


@pytest.fixture(scope="module")
def chain_store(tiny_published, tmp_path_factory):
    """``run`` from the tiny tree's Recon-CT to metrics, then levels for every image group
    (the tiny images are below the default 256 pixels: ``target=4`` gives each levels)."""
    store = tmp_path_factory.mktemp("clients") / "chain.zarr"
    report = run(tiny_published / "src", str(store), start="recon_ct", metrics_csv=None)
    assert report.exit_code == 0
    assert pyramid(str(store), target=4).counts()["written"] > 0
    return store


def _ome_groups(root: zarr.Group):
    for path, member in root.members(max_depth=None):
        if isinstance(member, zarr.Group) and "multiscales" in member.attrs.get("ome", {}):
            yield path, member


def test_every_image_level_and_label_is_valid_ome_zarr(chain_store):
    root = zarr.open_group(str(chain_store), mode="r")
    images = labels = levels = 0
    for path, group in _ome_groups(root):
        if "/labels/" in path:
            ImageLabel.from_zarr(group)  # raises on any violation, its levels included
            labels += 1
            continue
        Image.from_zarr(group)
        images += 1
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        assert len(datasets) >= 2, path  # target=4: every image has a level
        levels += len(datasets) - 1
        scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
        assert all(np.all(np.diff(s, axis=0) >= 0) for s in zip(*scales, strict=True))
        if "labels" in group:
            names = Labels.from_zarr(group["labels"]).label_paths
            assert names == (["mask"] if path.startswith("seg_ct") else ["composite"])
    # 2 reconstructions (the published ones: run from recon_ct) + 4 of each of the three
    # per-tibia stages; the masks and composites are labels with their own levels
    assert images == 2 + 3 * 4 and labels == 2 * 4 and levels > images


def test_plain_open_zarr_of_every_group_and_level_is_in_micrometres(chain_store):
    root = zarr.open_group(str(chain_store), mode="r")
    checked = 0
    for path, group in _ome_groups(root):
        if "/labels/" in path:  # label images are for OME viewers and bm.open_store
            continue
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        axes = [a["name"] for a in group.attrs["ome"]["multiscales"][0]["axes"]]
        for dataset in datasets:
            array_path = f"{path}/{dataset['path']}"
            folder, name = array_path.rsplit("/", 1)
            ds = xr.open_zarr(chain_store, group=folder, consolidated=False)
            image = ds[name]
            assert image.dims == tuple(axes), array_path
            scale = dataset["coordinateTransformations"][0]["scale"]
            for dim, step in zip(axes, scale, strict=True):
                if dim not in SPATIAL:
                    continue
                coord = image[dim]
                assert coord.attrs["units"] == "micrometer", (array_path, dim)
                assert coord.size == image.sizes[dim]
                # level k's pixel 0 sits at its block's centre at level 0 (OME translation)
                transforms = dataset["coordinateTransformations"]
                start = transforms[1]["translation"][axes.index(dim)] if len(transforms) > 1 else 0
                expected = start + np.arange(coord.size) * step
                np.testing.assert_allclose(coord.values, expected, err_msg=array_path)
            checked += 1
    assert checked > 40
    # a level read through bm.open_store has the same micrometres
    from bonemet_dask.io.xr import open_store

    path = "recon_ct/851/both/week0"
    image = open_store(chain_store, level=1)[path].dataset["image"]
    plain = xr.open_zarr(chain_store, group=f"{path}/level1", consolidated=False)["0"]
    for dim in ("y", "x"):
        np.testing.assert_allclose(image[dim].values, plain[dim].values)
    np.testing.assert_allclose(image["z"].values, plain["z"].values)
