import hashlib
import uuid

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from ome_zarr_models.v05 import Image

from bonemet_dask.io.records import read_records, write_records
from bonemet_dask.io.store import (
    ImageLayout,
    StoreLayoutError,
    completed_shards,
    create_image_group,
    get_bonemet_attrs,
    ome_image_attrs,
    open_zarr_store,
    read_layout,
    scan_group_path,
    set_status,
    shard_is_complete,
)


def write_scan(root, path, layout, *, seed=0, shards=None, attrs=None):
    """Create a scan group and write the given shards (all by default) like convert would."""
    group = create_image_group(root, path, layout, attrs=attrs or {"mouse": "851"})
    rng = np.random.default_rng(seed)
    data = rng.integers(0, np.iinfo(layout.dtype).max, layout.shape, dtype=layout.dtype)
    for i in range(layout.n_shards) if shards is None else shards:
        sl = layout.shard_slices(i)
        group["0"][sl] = data[sl]
        group["slice_index"][sl] = np.arange(sl.start, sl.stop) + 17
        digests = [hashlib.blake2b(s.tobytes(), digest_size=16).digest() for s in data[sl]]
        group["slice_hash"][sl] = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16)
    return group, data


@pytest.fixture
def root(tmp_path):
    return zarr.open_group(open_zarr_store(tmp_path / "s.zarr"), mode="w")


# ---------------------------------------------------------------------------- store, naming


def test_open_zarr_store_kinds(tmp_path):
    assert isinstance(open_zarr_store(tmp_path / "a.zarr"), zarr.storage.LocalStore)
    assert isinstance(open_zarr_store(f"file://{tmp_path}/b.zarr"), zarr.storage.LocalStore)
    mem = open_zarr_store(f"memory://{uuid.uuid4().hex}")
    assert isinstance(mem, zarr.storage.FsspecStore)
    assert open_zarr_store(mem) is mem
    assert open_zarr_store(tmp_path / "a.zarr", mode="r").read_only


def test_open_zarr_store_errors(tmp_path):
    with pytest.raises(ValueError, match="mode='x'"):
        open_zarr_store(tmp_path, mode="x")
    with pytest.raises(ValueError, match="storage_options"):
        open_zarr_store(tmp_path, storage_options={"anon": True})
    with pytest.raises(TypeError, match="store=42"):
        open_zarr_store(42)


def test_scan_group_path():
    assert scan_group_path("recon_ct", "851", "both", 0) == "recon_ct/851/both/week0"
    with pytest.raises(ValueError, match=r"mouse='851 x' cannot name a store group"):
        scan_group_path("seg_ct", "851 x", "left", 3)  # refused, not rewritten: ids never merge
    with pytest.raises(ValueError, match=r"component='ct'.*'recon_ct'"):
        scan_group_path("ct", "851", "both", 0)
    with pytest.raises(ValueError, match=r"side='l'.*'left'"):
        scan_group_path("seg_ct", "851", "l", 0)
    with pytest.raises(ValueError, match="week=-1"):
        scan_group_path("seg_ct", "851", "left", -1)


# ---------------------------------------------------------------------------- layout


def test_default_layout_ct_clips_and_rounds_shards():
    layout = ImageLayout.default_for("ct", (2685, 2428, 2588), "uint8", voxel_size_um=9.0)
    assert layout.chunks == (64, 256, 256)
    assert layout.shards == (64, 2560, 2816)  # full y/x rounded up to a chunk multiple
    assert layout.dims == ("z", "y", "x") and layout.scale == (9.0, 9.0, 9.0)
    assert layout.n_shards == 42 and layout.shard_slices(41) == slice(2624, 2685)
    small = ImageLayout.default_for("ct", (10, 30, 40), "uint8", voxel_size_um=1.0)
    assert small.chunks == (10, 30, 40) and small.shards == (10, 30, 40)
    odd = ImageLayout.default_for("ct", (300, 8, 8), "uint8", voxel_size_um=1, slices_per_shard=96)
    assert odd.shards[0] == 96 and odd.chunks[0] == 48


def test_default_layout_projections():
    layout = ImageLayout.default_for("projections", (260, 2688, 4032), "uint16", voxel_size_um=5)
    assert layout.chunks == (8, 128, 4032) and layout.shards == (8, 2688, 4032)
    assert layout.dims == ("angle", "row", "col") and layout.scale == (1.0, 5.0, 5.0)
    assert layout.n_shards == 33


def test_layout_validation_and_dict_round_trip():
    layout = ImageLayout.default_for("ct", (70, 30, 40), "uint16", voxel_size_um=(2, 3, 4))
    assert ImageLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="must divide shards"):
        ImageLayout((10, 10, 10), "uint8", (4, 10, 10), (6, 10, 10), ("z", "y", "x"), (1, 1, 1))
    with pytest.raises(ValueError, match="kind='mri'"):
        ImageLayout.default_for("mri", (1, 1, 1), "uint8", voxel_size_um=1)
    with pytest.raises(IndexError, match="i=2"):
        layout.shard_slices(2)


# ---------------------------------------------------------------------------- image groups


@pytest.mark.parametrize("kind", ["ct", "projections"])
def test_image_group_is_valid_ome_zarr(root, kind):
    layout = ImageLayout.default_for(kind, (70, 30, 40), "uint16", voxel_size_um=9.5)
    component = "recon_ct" if kind == "ct" else "rotation_xray"
    path = scan_group_path(component, "851", "both", 0)
    group, data = write_scan(root, path, layout)
    image = Image.from_zarr(group)
    assert image.ome_attributes.multiscales[0].axes[0].name == layout.dims[0]
    assert group["0"].metadata.dimension_names == layout.dims
    assert group["slice_index"].metadata.dimension_names == (layout.dims[0],)
    assert group["slice_hash"].metadata.dimension_names == (layout.dims[0], "digest")
    assert group["0"].shards == layout.shards and group["slice_hash"].shards is None
    np.testing.assert_array_equal(group["0"][:], data)  # uneven last shard: 70 = 64 + 6
    assert read_layout(group) == layout
    assert get_bonemet_attrs(group) == {"status": "incomplete", "mouse": "851"}
    assert zarr.open_group(root.store, mode="r").attrs["bonemet"]["layout"] == 1


def test_angle_axis_is_custom_without_unit():
    ome = ome_image_attrs("x", ("angle", "row", "col"), (1.0, 5.0, 5.0))["ome"]
    axes = ome["multiscales"][0]["axes"]
    assert axes[0] == {"name": "angle", "type": "custom"}
    assert axes[1] == {"name": "row", "type": "space", "unit": "micrometer"}


def test_create_is_idempotent_and_keeps_data(root):
    layout = ImageLayout.default_for("ct", (70, 30, 40), "uint8", voxel_size_um=1.0)
    path = scan_group_path("recon_ct", "851", "both", 0)
    group, data = write_scan(root, path, layout, attrs={"fingerprint": "f1"})
    set_status(group, "complete")
    again = create_image_group(root, path, layout, attrs={"fingerprint": "f1", "extra": 1})
    np.testing.assert_array_equal(again["0"][:], data)
    assert get_bonemet_attrs(again) == {"status": "complete", "fingerprint": "f1", "extra": 1}


def test_layout_mismatch_raises(root):
    layout = ImageLayout.default_for("ct", (70, 30, 40), "uint8", voxel_size_um=1.0)
    path = scan_group_path("recon_ct", "851", "both", 0)
    create_image_group(root, path, layout, attrs={"fingerprint": "f1"})
    other = ImageLayout.default_for("ct", (71, 30, 40), "uint8", voxel_size_um=1.0)
    with pytest.raises(StoreLayoutError, match=r"recon_ct/851/both/week0.*overwrite=True"):
        create_image_group(root, path, other, attrs={})
    rescaled = ImageLayout.default_for("ct", (70, 30, 40), "uint8", voxel_size_um=2.0)
    with pytest.raises(StoreLayoutError, match="overwrite=True"):
        create_image_group(root, path, rescaled, attrs={})
    with pytest.raises(StoreLayoutError, match="fingerprint 'f1', not 'f2'"):
        create_image_group(root, path, layout, attrs={"fingerprint": "f2"})
    replaced = create_image_group(root, path, other, attrs={}, overwrite=True)
    assert replaced["0"].shape == (71, 30, 40)


def test_missing_arrays_are_recreated(root):
    layout = ImageLayout.default_for("ct", (10, 8, 8), "uint8", voxel_size_um=1.0)
    path = scan_group_path("recon_ct", "851", "both", 0)
    group = create_image_group(root, path, layout, attrs={})
    del group["slice_hash"]  # as if killed between creating the arrays
    again = create_image_group(root, path, layout, attrs={})
    assert "slice_hash" in again


def test_completed_shards_follow_hash_chunks(root):
    layout = ImageLayout.default_for("ct", (150, 8, 8), "uint8", voxel_size_um=1.0)
    path = scan_group_path("recon_ct", "851", "both", 0)
    group, _ = write_scan(root, path, layout, shards=[0, 2])
    assert layout.n_shards == 3
    assert completed_shards(group) == {0, 2}
    assert [shard_is_complete(group, i) for i in range(3)] == [True, False, True]


def test_status(root):
    layout = ImageLayout.default_for("ct", (4, 8, 8), "uint8", voxel_size_um=1.0)
    group = create_image_group(root, "roi_ct/1/left/week0", layout, attrs={"mouse": "1"})
    set_status(group, "quarantined")
    assert get_bonemet_attrs(group) == {"status": "quarantined", "mouse": "1"}
    with pytest.raises(ValueError, match=r"status='done'.*'complete'"):
        set_status(group, "done")


def test_memory_store_create_and_reopen():
    url = f"memory://{uuid.uuid4().hex}/s.zarr"
    root = zarr.open_group(open_zarr_store(url), mode="w")
    layout = ImageLayout.default_for("ct", (70, 16, 16), "uint8", voxel_size_um=1.0)
    path = scan_group_path("regist_ct", "851", "left", 1)
    _, data = write_scan(root, path, layout, shards=[1])
    reopened = zarr.open_group(open_zarr_store(url, mode="r"), mode="r")
    np.testing.assert_array_equal(reopened[path]["0"][64:], data[64:])
    assert completed_shards(reopened[path]) == {1}
    Image.from_zarr(reopened[path])


def test_open_datatree_reads_raw_store(tmp_path, root):
    layout = ImageLayout.default_for("ct", (70, 16, 16), "uint8", voxel_size_um=1.0)
    write_scan(root, scan_group_path("recon_ct", "851", "both", 0), layout)
    write_records(root, pd.DataFrame({"id": [1, 2], "name": ["a", "µ"]}))
    tree = xr.open_datatree(tmp_path / "s.zarr", engine="zarr", consolidated=False)
    scan = tree["recon_ct/851/both/week0"].dataset
    assert scan["0"].dims == ("z", "y", "x")
    assert scan["slice_hash"].dims == ("z", "digest")
    assert list(tree["medirec"].dataset["name"].values) == ["a", "µ"]


# ---------------------------------------------------------------------------- records


def test_records_round_trip(root):
    table = pd.DataFrame(
        {
            "Mouse ID": [851, 852, 853, 854],
            "Weight (g)": [20.5, np.nan, 21.25, 19.0],
            "Tumour µ-volume": ["µ small", None, "large ✓", ""],
            "Scan date": ["2020-01-31", "2020-02-07", None, "2020-02-21"],
            "Injected": pd.to_datetime(["2020-01-01", None, "2020-01-03", "2020-01-04"]),
            "Week": pd.array([0, None, 2, 3], dtype="Int64"),
            "Alive": [True, True, False, True],
            "Note": ["2020-13-45", "x", "y", "z"],  # not a date
            "": [1.0, 2.0, 3.0, 4.0],
            "Group": pd.Categorical(["a", "b", None, "a"]),
            "Seen": pd.to_datetime(["2020-01-01 10:00"] * 4).tz_localize("Europe/Berlin"),
            "f32": np.array([1.5, 2.5, np.nan, 0.0], dtype=np.float32),
        }
    )
    group = write_records(root, table)
    assert group["Mouse_ID"].dtype == np.int64
    assert group["Weight_g"].dtype == np.float64
    assert np.issubdtype(group["Scan_date"].dtype, np.datetime64)
    assert np.issubdtype(group["Injected"].dtype, np.datetime64)
    assert group["Mouse_ID"].metadata.dimension_names == ("record",)
    assert group["Mouse_ID"].attrs["column"] == "Mouse ID"
    back = read_records(root)
    pd.testing.assert_frame_equal(back, table)
    assert back["Tumour µ-volume"].iloc[3] == ""  # empty string is not a missing value


def test_records_rewrite_and_empty(root):
    write_records(root, pd.DataFrame({"a": [1, 2, 3]}))
    empty = pd.DataFrame({"a": np.array([], dtype=np.int64), "b": np.array([], dtype=float)})
    write_records(root, empty)
    pd.testing.assert_frame_equal(read_records(root), empty)


def test_read_records_missing(root):
    with pytest.raises(KeyError, match="write_records"):
        read_records(root)
