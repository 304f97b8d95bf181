"""Bone metrics, composite_store, the records join and the preview, on a converted phantom."""

import json

import numpy as np
import pytest
import zarr
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

import bonemet_dask as bm
from bonemet_dask.cli import app
from bonemet_dask.ops.composite_store import GREYSCALE_ARRAY
from bonemet_dask.synth import SynthConfig, generate

# Tolerances against synthetic_truth.json (noise-free tibia masks; the regist_ct we composite has
# grey-level noise sigma 2, which flips a few partial-volume voxels): bone volume 3 %, formed and
# resorbed volume 0.03 mm^3 (7 voxels of 160 um).  Measured: <= 1.5 % and <= 0.025 mm^3.
BV_REL = 0.03
CHANGE_ABS_MM3 = 0.03

H_UM = 160.0  # the small preset's voxel: 35 um camera pixels x 16 / magnification 3.5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    # voxelised: the metric arithmetic is checked against the phantom's exact voxel counts
    config = SynthConfig(mice=2, weeks=3, size="small", seed=0, components=("regist_ct", "roi_ct"),
                         products="voxelised")  # fmt: skip
    truth = generate(str(root / "src"), config)
    store = str(root / "store.zarr")
    report = bm.convert(str(root / "src"), store)
    assert not report.quarantined
    return store, truth


def _truth(truth, mouse, side, week):
    return truth["mice"][mouse]["weeks"][str(week)]["roi"][side]


def test_metrics_of_published_roi_equal_the_truth(converted):
    store, truth = converted
    tree = bm.open_store(store)
    stacked = bm.bone_metrics(bm.stack(tree, "roi_ct"), kind="composite")
    table = bm.metrics_table(stacked)
    assert len(table) == 12
    for row in table.itertuples():
        t = _truth(truth, row.mouse, row.side, row.week)
        assert row.bone_volume_mm3 == pytest.approx(t["kept_mm3"] + t["formed_mm3"], rel=1e-9)
        assert row.formed_volume_mm3 == pytest.approx(t["formed_mm3"], abs=1e-12)
        assert row.resorbed_volume_mm3 == pytest.approx(t["resorbed_mm3"], abs=1e-12)
        assert row.baseline_bone_volume_mm3 == pytest.approx(t["baseline_bone_mm3"], rel=1e-9)


def test_metrics_against_an_independent_numpy_computation(converted):
    store, _ = converted
    image = bm.open_store(store)["roi_ct/851/right/week2"].image
    ds = bm.bone_metrics(image.chunk({"slice": 7}), kind="composite").compute()
    codes = image.values
    voxel_mm = float(image.y[1] - image.y[0]) * 1e-3
    bone = (codes == 180) | (codes == 240)
    base = (codes == 180) | (codes == 60)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in bone])
    assert float(ds.bone_volume_mm3) == pytest.approx(bone.sum() * voxel_mm**3)
    assert float(ds.tissue_volume_mm3) == pytest.approx(filled.sum() * voxel_mm**3)
    assert float(ds.bv_tv) == pytest.approx(bone.sum() / filled.sum())
    assert float(ds.formed_fraction) == pytest.approx((codes == 240).sum() / base.sum())
    assert float(ds.resorbed_fraction) == pytest.approx((codes == 60).sum() / base.sum())
    np.testing.assert_allclose(ds.bone_area_mm2, bone.sum((1, 2)) * voxel_mm**2)
    assert ds.bone_area_mm2.dims == ("slice",) and str(ds.mouse.values) == "851"
    # the cortex is a closed ring in most RoI slices of the phantom's metaphysis
    assert int(ds.cortical_slices) >= 10
    assert 0.1 < float(ds.cortical_thickness_mm) < 0.5


def test_composite_store_refuses_converted_roi_then_writes(converted, tmp_path):
    store, truth = converted
    report = bm.composite_store(store, mice=["851"], weeks=[0])
    assert not report.written
    assert all("written by convert" in why for _, why in report.skipped)
    csv = tmp_path / "metrics.csv"
    n = _truth(truth, "851", "left", 0)["n_slices"]
    length = n * H_UM
    report = bm.composite_store(store, length_um=length, overwrite=True, metrics_csv=str(csv))
    assert len(report.written) == 12
    for outcome in report.outcomes:
        _, mouse, side, _ = outcome.path.split("/")
        junction = outcome.details["junction"]
        assert abs(junction["slice"] - _truth(truth, mouse, side, 0)["junction_regist_slice"]) <= 5
    root = zarr.open_group(store, mode="r")
    group = root["roi_ct/851/right/week2"]
    attrs = group.attrs["bonemet"]
    assert attrs["status"] == "complete" and attrs["provenance"]["stage"] == "composite"
    assert attrs["provenance"]["inputs"]["baseline"] == "regist_ct/851/right/week0"
    assert attrs["junction"]["slice"] == attrs["junction_slice"]
    assert group[GREYSCALE_ARRAY].shape == group["0"].shape == (n, 34, 32)
    codes = np.asarray(group["0"][:])
    assert set(np.unique(codes)) <= {0, 60, 180, 240}
    week0 = np.asarray(root["roi_ct/851/right/week0/0"][:])
    assert set(np.unique(week0)) <= {0, 180}  # week 0 against itself: kept or nothing
    # metrics of our composites against the phantom's truth
    for row in report.table.itertuples():
        t = _truth(truth, row.mouse, row.side, row.week)
        assert row.bone_volume_mm3 == pytest.approx(t["kept_mm3"] + t["formed_mm3"], rel=0.1)
    # the CSV is joined with MiceMediRec by mouse and week
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 12 and {"Body Weight (g)", "Animal ID", "injected_side"} <= set(
        table.columns
    )
    assert (table["Week"] == table["week"]).all()
    injected = table[table.injected_side]
    for row in injected.itertuples():
        assert truth["mice"][str(row.mouse)]["injected_side"] == row.side
    # a rerun with the same settings is up to date; other settings need overwrite
    again = bm.composite_store(store, length_um=length)
    assert not again.written and all(why == "up to date" for _, why in again.skipped)


def test_metrics_with_aligned_roi_agree_with_truth(converted):
    store, truth = converted
    tree = bm.open_store(store)
    for mouse, side, week in [("851", "right", 2), ("852", "left", 2), ("851", "left", 1)]:
        t = _truth(truth, mouse, side, week)
        base = tree[f"regist_ct/{mouse}/{side}/week0"].image
        follow = tree[f"regist_ct/{mouse}/{side}/week{week}"].image
        length = t["n_slices"] * H_UM
        roi = bm.crop_roi(bm.composite(base, follow), t["first_regist_slice"], length_um=length)
        ds = bm.bone_metrics(roi).compute()
        assert float(ds.bone_volume_mm3) == pytest.approx(
            t["kept_mm3"] + t["formed_mm3"], rel=BV_REL
        )
        assert float(ds.formed_volume_mm3) == pytest.approx(t["formed_mm3"], abs=CHANGE_ABS_MM3)
        assert float(ds.resorbed_volume_mm3) == pytest.approx(t["resorbed_mm3"], abs=CHANGE_ABS_MM3)


def test_greyscale_metrics_and_missing_records(converted, tmp_path):
    store, _ = converted
    image = bm.open_store(store)["regist_ct/852/left/week0"].image
    ds = bm.bone_metrics(image.isel(slice=slice(10, 40))).compute()
    assert ds.attrs["kind"] == "greyscale" and np.isnan(float(ds.formed_volume_mm3))
    table = bm.write_metrics_csv(ds, tmp_path / "plain.csv")
    assert list(table.mouse) == ["852"] and "Animal ID" not in table.columns


def test_cli_composite_and_preview(converted, tmp_path):
    store, _ = converted
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "composite",
            store,
            "--mice",
            "852",
            "--sides",
            "left",
            "--length-um",
            "3040",
            "--overwrite",
            "--csv",
            str(tmp_path / "m.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "junction" in result.output and (tmp_path / "m.csv").exists()
    png = tmp_path / "fig.png"
    args = ["preview", store, "--mouse", "852", "--week", "2", "--side", "left", "-o", str(png)]
    result = runner.invoke(app, [*args, "--width", "9", "--height", "3", "--dpi", "80"])
    assert result.exit_code == 0, result.output
    with Image.open(png) as image:
        assert image.size == (720, 240) and image.format == "PNG"
    result = runner.invoke(
        app,
        [
            "preview",
            store,
            "--component",
            "regist_ct",
            "--mouse",
            "852",
            "--week",
            "1",
            "-o",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    with Image.open(png) as image:
        assert image.size == (1200, 400)
    result = runner.invoke(app, ["preview", store, "--mouse", "999", "--week", "0", "-o", str(png)])
    assert result.exit_code == 1 and "mouse" in result.output


def test_truth_sidecar_is_json(converted):
    _, truth = converted
    assert json.loads(json.dumps(truth))["threshold"] == 75
