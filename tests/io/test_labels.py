"""OME-Zarr labels (seg_ct mask, roi_ct composite) and coordinate arrays of scan groups."""

import numpy as np
import pytest
import xarray as xr
import zarr
from ome_zarr_models.v05 import Image, ImageLabel, Labels

from bonemet_dask.io.labels import (
    COMPOSITE_LABEL,
    COMPOSITE_LABEL_COLOURS,
    MASK_LABEL,
    MASK_LABEL_COLOURS,
    label_array_path,
    label_arrays,
    label_extra,
    mask_array,
)
from bonemet_dask.io.store import (
    ImageLayout,
    StoreLayoutError,
    create_image_group,
    open_zarr_store,
    scan_group_path,
    write_scan_shard,
)
from bonemet_dask.io.xr import open_scan, open_store

MASK = label_array_path(MASK_LABEL)
COMPOSITE = label_array_path(COMPOSITE_LABEL)


@pytest.fixture
def root(tmp_path):
    return zarr.open_group(open_zarr_store(tmp_path / "s.zarr"), mode="w")


def seg_group(root, shape=(70, 12, 20), voxel=10.0):
    """A seg_ct group written like the segment stage: image, then the mask label, per shard."""
    layout = ImageLayout.default_for("ct", shape, "uint8", voxel_size_um=voxel)
    path = scan_group_path("seg_ct", "851", "left", 0)
    extras = {MASK: label_extra(MASK_LABEL_COLOURS, attributes={"bonemet": {"kind": "mask"}})}
    group = create_image_group(root, path, layout, attrs={"mouse": "851"}, extras=extras)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 250, shape, dtype=np.uint8)
    mask = (image > 120).astype(np.uint8)
    group["slice_index"][:] = np.arange(shape[0]) + 5
    for i in range(layout.n_shards):
        sl = layout.shard_slices(i)
        write_scan_shard(group, i, {"0": image[sl], MASK: mask[sl]})
    return group, image, mask


def validate_all(group):
    """ome-zarr-models validation of the image, its labels group and every label image."""
    Image.from_zarr(group)
    if "labels" not in group:
        return []
    labels = Labels.from_zarr(group["labels"])
    return [ImageLabel.from_zarr(group[f"labels/{name}"]) for name in labels.label_paths]


def test_mask_is_a_valid_ome_label_of_its_image(root):
    group, _, mask = seg_group(root)
    (label,) = validate_all(group)
    ome = group["labels"].attrs["ome"]
    assert ome == {"version": "0.5", "labels": ["mask"]}
    attrs = group["labels/mask"].attrs["ome"]
    assert attrs["image-label"]["source"] == {"image": "../../"}
    assert attrs["image-label"]["colors"] == [{"label-value": 1, "rgba": [240, 228, 66, 160]}]
    assert attrs["image-label"]["properties"] == [{"label-value": 1, "name": "bone"}]
    # the same axes and scale as the image, so it overlays voxel for voxel
    assert attrs["multiscales"][0]["axes"] == group.attrs["ome"]["multiscales"][0]["axes"]
    assert label.attributes.ome.multiscales[0].datasets[0].path == "0"
    assert group[MASK].shards == group["0"].shards  # one writer per shard with "0"
    assert "mask" not in group  # the label image is the mask: not a second copy
    np.testing.assert_array_equal(mask_array(group)[:], mask)
    assert set(label_arrays(group)) == {"mask"}


def test_composite_label_colours_are_the_preview_colours():
    from matplotlib.colors import to_rgba

    from bonemet_dask.preview import COMPOSITE_COLOURS

    for code, (_, colour) in COMPOSITE_COLOURS.items():
        rgba = COMPOSITE_LABEL_COLOURS[code][1]
        np.testing.assert_allclose(np.array(rgba) / 255, to_rgba(colour), atol=1 / 255)
    assert sorted(COMPOSITE_LABEL_COLOURS) == [60, 180, 240]  # 0 (no bone) stays transparent


def test_open_store_and_open_scan_show_the_mask(root, tmp_path):
    group, _, mask = seg_group(root)
    for scan in (open_store(tmp_path / "s.zarr")[group.path].dataset, open_scan(group)):
        assert list(scan.data_vars) == ["image", "mask"]
        assert scan["mask"].dims == ("slice", "y", "x")
        np.testing.assert_array_equal(scan["mask"].values, mask)


def test_recreating_the_group_is_idempotent(root):
    group, _, mask = seg_group(root)
    layout = ImageLayout.default_for("ct", (70, 12, 20), "uint8", voxel_size_um=10.0)
    extras = {MASK: label_extra(MASK_LABEL_COLOURS)}
    again = create_image_group(root, group.path, layout, attrs={}, extras=extras)
    assert again["labels"].attrs["ome"]["labels"] == ["mask"]
    np.testing.assert_array_equal(again[MASK][:], mask)


def test_older_stores_mask_is_still_found_and_not_resumed_into_a_label(root):
    layout = ImageLayout.default_for("ct", (8, 6, 6), "uint8", voxel_size_um=1.0)
    path = scan_group_path("seg_ct", "851", "left", 0)
    old = create_image_group(root, path, layout, attrs={}, extras={"mask": {"dtype": "uint8"}})
    old["mask"][:] = 1
    assert mask_array(old).path.endswith("/mask") and mask_array(old)[:].all()
    with pytest.raises(StoreLayoutError, match="overwrite=True"):
        create_image_group(root, path, layout, attrs={},
                           extras={MASK: label_extra(MASK_LABEL_COLOURS)})  # fmt: skip
    with pytest.raises(KeyError, match="no mask"):
        mask_array(create_image_group(root, "seg_ct/1/left/week0", layout, attrs={}))


def test_label_extras_need_image_label_metadata(root):
    layout = ImageLayout.default_for("ct", (8, 6, 6), "uint8", voxel_size_um=1.0)
    with pytest.raises(ValueError, match="label_extra"):
        create_image_group(root, "seg_ct/1/left/week0", layout, attrs={},
                           extras={MASK: {"dtype": "uint8"}})  # fmt: skip


# ---------------------------------------------------------------------------- coordinates


def test_plain_open_zarr_gives_micrometre_coordinates(root, tmp_path):
    group, image, _ = seg_group(root, shape=(70, 12, 20), voxel=10.0)
    ds = xr.open_zarr(tmp_path / "s.zarr", group=group.path, consolidated=False)
    assert ds["0"].dims == ("z", "y", "x")
    for dim, n in zip("zyx", image.shape, strict=True):
        coord = ds["0"][dim]
        assert coord.dims == (dim,) and coord.attrs["units"] == "micrometer"
        np.testing.assert_allclose(coord.values, np.arange(n) * 10.0)
    np.testing.assert_array_equal(ds["slice_index"].values, np.arange(70) + 5)
    assert "slice_index" in ds.coords  # via the CF "coordinates" attribute of array 0
    np.testing.assert_array_equal(ds["0"].values, image)
    validate_all(group)  # the coordinate arrays do not disturb OME-Zarr validation
    assert int(ds.sel(z=20.0)["slice_index"].values) == 7  # an index in micrometres
    # open_store shows the same micrometres: coordinate z along its slice dim, y and x
    scan = open_store(tmp_path / "s.zarr")[group.path].dataset
    np.testing.assert_allclose(scan["z"].values, ds["z"].values)
    assert scan["z"].dims == ("slice",) and scan["z"].attrs["units"] == "micrometer"
    np.testing.assert_allclose(scan["x"].values, ds["x"].values)


def test_projection_coordinates_in_degrees(root, tmp_path):
    layout = ImageLayout.default_for("projections", (11, 9, 7), "uint16", voxel_size_um=5.0)
    path = scan_group_path("rotation_xray", "851", "both", 0)
    angles = [0.8 * i for i in range(11)]
    group = create_image_group(root, path, layout, attrs={"angles_deg": angles})
    ds = xr.open_zarr(tmp_path / "s.zarr", group=path, consolidated=False)
    assert ds["0"].dims == ("angle", "row", "col")
    np.testing.assert_allclose(ds["angle"].values, angles)
    assert ds["angle"].attrs["units"] == "degree"
    np.testing.assert_allclose(ds["col"].values, np.arange(7) * 5.0)
    assert ds["row"].attrs["units"] == "micrometer" and "slice_index" in ds.coords
    validate_all(group)


def test_coordinates_are_one_unsharded_chunk_each(root):
    group, _, _ = seg_group(root)
    for dim in "zyx":
        array = group[dim]
        assert array.shards is None and array.chunks == array.shape
        assert array.metadata.dimension_names == (dim,)


def test_open_datatree_of_a_labelled_store(root, tmp_path):
    seg_group(root)
    tree = xr.open_datatree(tmp_path / "s.zarr", engine="zarr", consolidated=False)
    assert tree["seg_ct/851/left/week0"]["z"].attrs["units"] == "micrometer"
    label = tree["seg_ct/851/left/week0/labels/mask"].dataset
    assert label["0"].dims == ("z", "y", "x") and "z" in label.coords  # inherited
