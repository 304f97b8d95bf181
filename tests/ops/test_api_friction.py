"""What ``open_store`` returns feeds the API as it is (issue 13's "API friction").

``bm.reconstruct`` takes a projection scan of ``open_store`` (its image, Dataset or node) on the
grid the CLI writes; mouse ids are one type (str) in the store, ``bm.stack`` and ``/medirec``;
``bm.resample`` takes the output grid from a registration result.
"""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import bonemet_dask as bm
from bonemet_dask.io.records import read_records, read_records_csv
from bonemet_dask.ops.register import RegistrationResult
from bonemet_dask.ops.resample import REGIST_SHAPE


@pytest.fixture(scope="module")
def tree(tiny_published):
    return bm.open_store(str(tiny_published / "published.zarr"))


def test_projection_image_carries_its_log(tree):
    node = tree["rotation_xray/851/both/week0"]
    image = node.dataset["image"]
    assert image.attrs["bonemet"]["source"]["log"] == node.dataset.attrs["source"]["log"]
    assert image.attrs["bonemet"]["nrecon"]["shape"]  # NRecon's grid, recorded at convert
    assert tree["recon_ct/851/both/week0"].dataset["image"].attrs == {}  # CT images: unchanged


@pytest.mark.parametrize("form", ["image", "dataset", "node", "bare image + dataset attrs"])
def test_reconstruct_takes_what_open_store_gives_on_the_cli_grid(tree, form):
    node = tree["rotation_xray/851/both/week0"]
    given = {
        "image": node.dataset["image"],
        "dataset": node.dataset,
        "node": node,
        "bare image + dataset attrs": node.dataset.assign(image=node.dataset["image"].drop_attrs()),
    }[form]
    volume = bm.reconstruct(given)
    # the grid the CLI (reconstruct_store) writes: the published Recon-CT's
    published = tree["recon_ct/851/both/week0"].dataset["image"]
    assert volume.shape == published.shape
    assert volume.attrs["bonemet"]["nrecon"]["shape"] == list(published.shape)


def test_reconstruct_refuses_other_inputs(tree):
    with pytest.raises(TypeError, match="DataArray, Dataset or DataTree"):
        bm.reconstruct(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="without an 'image'"):
        bm.reconstruct(xr.Dataset({"other": (("a",), [1])}))


def test_mouse_ids_are_strings_in_store_stack_and_records(tree, tiny_published):
    stacked = bm.stack(tree, "regist_ct")
    records = read_records(zarr.open_group(str(tiny_published / "published.zarr"), mode="r"))
    medirec = tree["medirec"].dataset
    ids = medirec[next(k for k in medirec.data_vars if medirec[k].attrs["column"] == "Animal ID")]
    assert list(stacked.mouse.values) == ["851"]
    assert tree["recon_ct/851/both/week0"].dataset["image"].mouse.item() == "851"
    assert set(records["Animal ID"]) == {"851"} and set(ids.values) == {"851"}
    # the join the issue found silently all-NaN: records matched to the stack's mice
    chosen = records[records["Animal ID"].isin(stacked.mouse.values)]
    assert len(chosen) == len(records) > 0
    per_mouse = chosen.groupby("Animal ID")["Week"].max()
    assert per_mouse.reindex(stacked.mouse.values).notna().all()


def test_read_records_csv_keeps_ids_as_text():
    text = b"Animal ID,Week,Weight\n 0851,0,20.5\n852,1,\n,2,19.0\n"
    table = read_records_csv(text)
    assert list(table["Animal ID"][:2]) == ["0851", "852"] and pd.isna(table["Animal ID"][2])
    assert table["Week"].dtype == np.int64 and table["Weight"].dtype == np.float64


def _result(shape, spacing) -> RegistrationResult:
    return RegistrationResult(
        transform=bm.RigidTransform.identity(),
        metric=1.0, passed=True, kind="sample", shape=shape, spacing_um=spacing, min_metric=0.5,
    )  # fmt: skip


def test_resample_takes_the_grid_from_a_registration_result(tree):
    moving = tree["seg_ct/851/left/week0"].dataset["image"]
    result = _result((12, 9, 8), (80.0, 80.0, 80.0))
    out = bm.resample(moving, result)
    assert out.shape == (12, 9, 8) and out.attrs["voxel_size_um"] == [80.0, 80.0, 80.0]
    assert out.attrs["transform"] == result.transform.to_dict()
    # explicit arguments win; a bare transform keeps the published Regist-CT default
    assert bm.resample(moving, result, shape=(3, 4, 5)).shape == (3, 4, 5)
    assert bm.resample(moving, result.transform).shape == REGIST_SHAPE
    with pytest.raises(TypeError, match="RegistrationResult"):
        bm.resample(moving, np.eye(4))
