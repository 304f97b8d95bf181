"""Tibia segmentation on the synthetic phantom: accuracy, laziness, chunking, errors, store, CLI."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner
from zarr.core.sync import sync

import bonemet_dask as bm
from bonemet_dask.cli import app
from bonemet_dask.io.labels import mask_array
from bonemet_dask.io.store import ImageLayout, create_image_group, scan_group_path, write_shard
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.segment import SegmentationError, segment_tibiae
from bonemet_dask.ops.segment_store import segment_store
from bonemet_dask.synth import SynthConfig, generate, imaging
from bonemet_dask.synth.anatomy import MU_SOFT, hindlimb_phantom, pose_matrix
from bonemet_dask.synth.config import WINDOW_MAX_PER_MM
from bonemet_dask.synth.generate import THRESHOLD, plan_mice
from bonemet_dask.synth.primitives import Phantom
from bonemet_dask.synth.render import voxelize

# "small" (1/16 size, 160 um voxels) is the coarsest preset that resolves the knee joint space
CONFIG = SynthConfig(mice=2, weeks=1, size="small", seed=3, components=("recon_ct", "seg_ct"))
SIDES = ("left", "right")
TIBIA = ("tibia", "trabecular", "fibula")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    truth = generate(str(root / "src"), CONFIG)
    store = root / "store.zarr"
    assert convert(str(root / "src"), str(store)).written
    return store, truth


@pytest.fixture(scope="module")
def tree(dataset):
    return bm.open_store(str(dataset[0]))


def volume_of(tree, mouse="851"):
    return tree[f"recon_ct/{mouse}/both/week0"]["image"]


_MASKS: dict = {}


def truth_mask(truth, number: int, side: str, labels) -> np.ndarray:
    """Noise-free bone (grey >= 75) of one leg's parts, voxelised from the phantom's primitives
    and blurred as the generator's reconstructed products are (the mask the threshold should
    give on them)."""
    key = (number, side, labels)
    if key not in _MASKS:
        _MASKS[key] = _voxelised_mask(truth, number, side, labels)
    return _MASKS[key]


def _voxelised_mask(truth, number: int, side: str, labels) -> np.ndarray:
    plan = plan_mice(CONFIG)[number]
    pose = truth["mice"][plan.mouse]["weeks"]["0"]["pose"]
    world = hindlimb_phantom(plan.legs, 0, pose_matrix(pose))
    leg = SIDES.index(side)  # groups 8 * leg .. 8 * leg + 7 belong to one leg
    pairs = [
        (term, group)
        for term, group in zip(world.terms, world.groups, strict=True)
        if term.label in labels and 8 * leg <= group < 8 * leg + 8
    ]
    phantom = Phantom([t for t, _ in pairs], [g for _, g in pairs])
    mu = voxelize(phantom, CONFIG.recon_grid(), supersample=CONFIG.voxel_supersample) + MU_SOFT
    mu = imaging.reconstructed(mu, None, noise_std=0.0)
    return np.clip(np.rint(mu * (255 / WINDOW_MAX_PER_MM)), 0, 255) >= THRESHOLD


def in_source(crop: xr.DataArray, shape) -> np.ndarray:
    """The crop's mask placed back into the reconstruction's frame."""
    lo, hi = crop.attrs["bonemet"]["crop_box"]["lo"], crop.attrs["bonemet"]["crop_box"]["hi"]
    out = np.zeros(shape, bool)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = crop["mask"].values
    return out


def dice(a, b) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def segmented(tree):
    return {mouse: segment_tibiae(volume_of(tree, mouse)) for mouse in CONFIG.mouse_ids}


@pytest.mark.parametrize("number", [0, 1])
def test_finds_both_tibiae_with_fibula_and_without_femur(dataset, tree, segmented, number):
    _, truth = dataset
    mouse = CONFIG.mouse_ids[number]
    shape = volume_of(tree, mouse).shape
    for side, other in (("left", "right"), ("right", "left")):
        crop = segmented[mouse][side].compute()
        mask = in_source(crop, shape)
        tibia = truth_mask(truth, number, side, TIBIA)
        # measured 0.991-0.999 (seed 3); the misses are the plateau's top slice, cut with the joint
        assert dice(mask, tibia) >= 0.95, side
        assert dice(mask, truth_mask(truth, number, other, TIBIA)) == 0  # not swapped
        fibula = truth_mask(truth, number, side, ("fibula",))
        assert (mask & fibula).sum() >= 0.95 * fibula.sum()  # kept (measured >= 0.985)
        femur = truth_mask(truth, number, side, ("femur", "patella"))
        # measured up to 71 voxels of ~5,700 (29-40 with the blur 0.55 voxel along the slices,
        # before it was measured at 0.65): blurred, the condyles and the plateau meet across
        # the joint space (2 voxels at 160 um); 0-1 on the phantom voxelised unblurred
        assert (mask & femur).sum() <= 0.015 * femur.sum()
        lo, hi = crop.attrs["bonemet"]["crop_box"].values()
        assert femur[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].sum() <= 0.015 * femur.sum()
        box = truth["mice"][mouse]["weeks"]["0"]["seg_box"][side]
        # the published crop's box (tibia + fibula primitives + 0.3 mm), within one 4-voxel bin
        assert np.abs(np.subtract(lo, box["lo"])).max() <= 4
        assert np.abs(np.subtract(hi, box["hi"])).max() <= 4
        assert abs(lo[0] - box["lo"][0]) <= 1  # the cut below the knee


def test_outputs_are_lazy_and_labelled(tree, segmented):
    volume = volume_of(tree)
    crop = segmented["851"]["left"]
    assert isinstance(crop.data, da.Array) and isinstance(crop["mask"].data, da.Array)
    assert crop["mask"].dtype == bool
    assert crop.name == "image" and crop.dims == ("slice", "y", "x") and crop.dtype == np.uint8
    assert crop["side"].item() == "left" and crop["mouse"].item() == "851"
    lo, hi = crop.attrs["bonemet"]["crop_box"].values()
    np.testing.assert_array_equal(crop["x"].values, volume["x"].values[lo[2] : hi[2]])
    np.testing.assert_array_equal(
        crop.values, volume.values[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    )
    attrs = crop.attrs["bonemet"]
    assert attrs["threshold"] == 75 and attrs["knee_slice"] == lo[0]
    assert attrs["provenance"]["stage"] == "segment"
    assert attrs["provenance"]["input"] == "recon_ct/851/both/week0"
    mask = crop["mask"].values
    assert not mask[crop.values < 75].any()


def test_chunked_equals_unchunked(tree, segmented):
    volume = volume_of(tree)
    whole = segmented["851"]
    uneven = segment_tibiae(volume.chunk({"slice": 37, "y": 41, "x": 45}))  # not bin-aligned
    in_memory = segment_tibiae(volume.compute())  # numpy-backed input
    for side in SIDES:
        reference = whole[side].compute()
        for other in (uneven[side], in_memory[side]):
            assert other.attrs["bonemet"]["crop_box"] == reference.attrs["bonemet"]["crop_box"]
            other = other.compute()
            np.testing.assert_array_equal(other.values, reference.values)
            np.testing.assert_array_equal(other["mask"].values, reference["mask"].values)


def test_margin_and_threshold(tree, segmented):
    volume = volume_of(tree)
    wide = segment_tibiae(volume, margin_um=640.0)["left"]  # 4 more voxels of 160 um
    base = segmented["851"]["left"].attrs["bonemet"]["crop_box"]
    box = wide.attrs["bonemet"]["crop_box"]
    assert box["lo"][0] == base["lo"][0]  # no margin above the cut
    assert box["lo"][1:] == [v - 2 for v in base["lo"][1:]]
    assert box["hi"][0] == min(volume.shape[0], base["hi"][0] + 2)
    strict = segment_tibiae(volume, 150)["left"]
    assert strict["mask"].sum() < segmented["851"]["left"]["mask"].sum()
    assert strict.attrs["bonemet"]["threshold"] == 150


def test_bad_input_errors(tree):
    volume = volume_of(tree)
    with pytest.raises(ValueError, match=r"dtype=float32 .* bm.to_uint8"):
        segment_tibiae(volume.astype(np.float32))
    with pytest.raises(ValueError, match=r"dims=\('x', 'y', 'slice'\) .* transpose"):
        segment_tibiae(volume.transpose("x", "y", "slice"))
    with pytest.raises(TypeError, match=r"not an xarray\.DataArray"):
        segment_tibiae(volume.values)
    with pytest.raises(ValueError, match="threshold=300"):
        segment_tibiae(volume, 300)
    with pytest.raises(ValueError, match="binning=0"):
        segment_tibiae(volume, binning=0)
    with pytest.raises(ValueError, match="voxel_size_um"):
        segment_tibiae(volume.drop_vars("x"))


def test_one_leg_and_no_bone_name_the_scan(tree):
    volume = volume_of(tree).compute()
    one_leg = volume.copy(data=np.where(np.arange(volume.shape[2]) < 81, volume.values, 40))
    with pytest.raises(SegmentationError, match=r"recon_ct/851/both/week0: only one leg found"):
        segment_tibiae(one_leg.astype(np.uint8))
    with pytest.raises(SegmentationError, match=r"recon_ct/851/both/week0: no bone found"):
        segment_tibiae(volume.copy(data=np.full(volume.shape, 40, np.uint8)))


def one_leg_store(dataset, path):
    """A store whose only hindlimb scan has the right leg erased."""
    source = zarr.open_group(str(dataset[0]), mode="r")["recon_ct/851/both/week0"]
    volume = source["0"][:]
    volume[:, :, 81:] = 40
    root = zarr.open_group(str(path), mode="w")
    layout = ImageLayout.default_for("ct", volume.shape, "uint8", voxel_size_um=160.0)
    group = create_image_group(
        root, scan_group_path("recon_ct", "851", "both", 0), layout,
        attrs={"component": "recon_ct", "mouse": "851", "side": "both", "week": 0,
               "status": "complete"},
    )  # fmt: skip
    for shard in range(layout.n_shards):
        write_shard(group["0"], shard, volume[layout.shard_slices(shard)])
    group["slice_index"][:] = np.arange(volume.shape[0])
    return path


def test_store_round_trip_resume_and_refusal(dataset, segmented, tmp_path):
    from ome_zarr_models.v05 import Image

    store, truth = dataset
    out = tmp_path / "out.zarr"
    report = segment_store(str(store), str(out), weeks=[0], slices_per_shard=64)
    assert sorted(report.written) == sorted(
        scan_group_path("seg_ct", m, s, 0) for m in CONFIG.mouse_ids for s in SIDES
    )
    assert not report.failed and not report.skipped
    written = zarr.open_group(str(out), mode="r")
    published = bm.open_store(str(store))
    for mouse in CONFIG.mouse_ids:
        for side in SIDES:
            path = scan_group_path("seg_ct", mouse, side, 0)
            group, crop = written[path], segmented[mouse][side].compute()
            Image.from_zarr(group)  # a valid OME-Zarr 0.5 image
            attrs = group.attrs["bonemet"]
            assert attrs["status"] == "complete" and attrs["provenance"]["stage"] == "segment"
            assert attrs["crop_box"] == crop.attrs["bonemet"]["crop_box"]
            assert attrs["provenance"]["inputs"] == {"input": f"recon_ct/{mouse}/both/week0"}
            np.testing.assert_array_equal(group["0"][:], crop.values)
            mask = group["labels/mask/0"]  # the mask is the OME-Zarr label image labels/mask
            np.testing.assert_array_equal(mask[:], crop["mask"].values.astype(np.uint8))
            assert mask.shards == group["0"].shards and "mask" not in group
            assert mask_array(group).path == mask.path
            # the same voxels as the published Seg-CT crop where the two boxes overlap
            ours = attrs["crop_box"]
            box = truth["mice"][mouse]["weeks"]["0"]["seg_box"][side]
            box = (np.array(box["lo"]), np.array(box["hi"]))
            lo = np.maximum(ours["lo"], box[0])
            hi = np.minimum(ours["hi"], box[1])
            assert (hi - lo).min() > 10
            a = group["0"][
                tuple(slice(*v) for v in zip(lo - ours["lo"], hi - ours["lo"], strict=True))
            ]
            b = (
                published[path]
                .dataset["image"]
                .values[tuple(slice(*v) for v in zip(lo - box[0], hi - box[0], strict=True))]
            )
            np.testing.assert_array_equal(a, b)
    again = segment_store(str(store), str(out), slices_per_shard=64)
    assert not again.written and all(r == "up to date" for _, r in again.skipped)
    # a killed run: one shard and its digests lost, status incomplete -> only it is rewritten
    path = scan_group_path("seg_ct", "851", "left", 0)
    group = zarr.open_group(str(out), mode="r+")[path]
    assert group["0"].shape[0] > group["0"].shards[0]  # two shards: one is lost below
    expected = group["0"][:]
    sync(group.store.delete(f"{path}/slice_hash/c/1/0"))
    sync(group.store.delete(f"{path}/0/c/1/0/0"))
    group.attrs["bonemet"] = {**group.attrs["bonemet"], "status": "incomplete"}
    assert group["0"][64:].max() == 0  # the shard is gone
    resumed = segment_store(str(store), str(out), mice=["851"], slices_per_shard=64)
    assert resumed.written == [path]
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")[path]["0"][:], expected)
    # the published Seg-CT in the source store is kept unless overwrite
    refused = segment_store(str(store), mice=["852"], slices_per_shard=64)
    assert not refused.written and len(refused.skipped) == 2
    assert all("overwrite=True" in reason for _, reason in refused.skipped)
    replaced = segment_store(str(store), str(out), mice=["852"], margin_um=0.0, slices_per_shard=64)
    assert not replaced.written and "other settings" in replaced.skipped[0][1]
    replaced = segment_store(
        str(store), str(out), mice=["852"], margin_um=0.0, overwrite=True, slices_per_shard=64
    )
    assert len(replaced.written) == 2


def test_store_reports_a_scan_it_cannot_segment(dataset, tmp_path):
    store = one_leg_store(dataset, tmp_path / "one.zarr")
    report = segment_store(str(store))
    assert not report.written
    assert [path for path, _ in report.failed] == [
        "seg_ct/851/left/week0",
        "seg_ct/851/right/week0",
    ]
    assert report.failed[0][1].startswith("recon_ct/851/both/week0: only one leg found")


def test_cli_segment(dataset, tmp_path):
    store, _ = dataset
    runner = CliRunner()
    out = tmp_path / "cli.zarr"
    args = ["segment", str(store), "--out", str(out), "--mice", "851", "--weeks", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "segment: 2 written" in result.output
    assert sorted(zarr.open_group(str(out), mode="r")["seg_ct/851"].group_keys()) == list(SIDES)
    refused = runner.invoke(app, ["segment", str(store), "--mice", "851"], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "--overwrite" in refused.output  # nothing it may write
    assert runner.invoke(app, ["segment", str(store), "--threshold", "0"]).exit_code == 2
    failed = runner.invoke(app, ["segment", str(one_leg_store(dataset, tmp_path / "one.zarr"))])
    assert failed.exit_code == 1 and "only one leg found" in failed.output


def test_open_store_surfaces_the_mask_beside_the_image(dataset, tmp_path):
    out = tmp_path / "derived.zarr"
    bm.segment_store(str(dataset[0]), str(out), mice=["851"], weeks=[0])
    scan = bm.open_store(str(out))["seg_ct/851/left/week0"].dataset
    assert list(scan.data_vars) == ["image", "mask"]
    assert scan["mask"].dims == scan["image"].dims and scan["mask"].dtype == np.uint8
    np.testing.assert_array_equal(
        scan["mask"].values,
        zarr.open_group(str(out), mode="r")["seg_ct/851/left/week0/labels/mask/0"][:],
    )
