"""The synthetic BoneMet tree: layout, determinism, and consistency between its products."""

import hashlib
import json
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bonemet_dask import naming
from bonemet_dask.io.catalog import scan_source
from bonemet_dask.io.skyscan_log import parse_skyscan_log
from bonemet_dask.synth import THRESHOLD, TRUTH_FILE, SynthConfig, generate
from bonemet_dask.synth.config import AIR_COUNTS, WINDOW_MAX_PER_MM

# the products' consistency with the phantom, checked exactly on its voxelised form (the
# reconstruction model is tested in test_imaging.py)
CONFIG = SynthConfig(mice=2, weeks=3, size="tiny", seed=7, products="voxelised")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "bonemet"
    truth = generate(str(out), CONFIG)
    return out, truth


def stack(out: Path, component: str, mouse: str, side: str, week: int) -> np.ndarray:
    folder = (
        out
        / "Imagery_Dataset"
        / naming.component_folder_name(component)
        / naming.scan_folder_name(component, mouse, side)
        / naming.week_folder_name(week)
    )
    files = sorted(folder.glob("*.png"), key=lambda p: naming.parse_index(p.name))
    return np.stack([imagecodecs.png_decode(f.read_bytes()) for f in files])


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_naming(tree):
    out, _ = tree
    imagery = out / "Imagery_Dataset"
    assert sorted(p.name for p in imagery.iterdir()) == [
        "1. Rotation-X-ray",
        "2. Recon-CT",
        "3. Seg-CT",
        "4. Regist-CT",
        "5. ROI-CT",
    ]
    assert (imagery / "1. Rotation-X-ray" / "851" / "week 2" / "851_0259.png").exists()
    assert (imagery / "3. Seg-CT" / "852 right tibia" / "week 0").is_dir()
    assert (imagery / "5. ROI-CT" / "851L proximal tibia" / "week 1").is_dir()
    assert (out / "MiceMediRec Dataset" / "record.csv").exists()
    recon = sorted((imagery / "2. Recon-CT" / "851" / "week 0").glob("*.png"))
    assert recon[0].name.startswith("851_rec") and len(recon[0].stem) == len("851_rec") + 8


def test_catalog_finds_every_scan_without_problems(tree):
    out, _ = tree
    catalog = scan_source(out)
    assert catalog.all_problems() == ()
    counts = catalog.summary().set_index("component")["scans"].to_dict()
    hindlimbs, tibiae = CONFIG.mice * CONFIG.weeks, 2 * CONFIG.mice * CONFIG.weeks
    assert counts == {
        "rotation_xray": hindlimbs,
        "recon_ct": hindlimbs,
        "seg_ct": tibiae,
        "regist_ct": tibiae,
        "roi_ct": tibiae,
    }
    projections = catalog.select(components="rotation_xray").stacks[0]
    geo = CONFIG.geometry()
    assert projections.shape == (260, geo.n_rows, geo.n_cols)
    assert projections.dtype == "uint16"
    assert catalog.records_path is not None


def test_logs_hold_the_geometry(tree):
    out, _ = tree
    geo = CONFIG.geometry()
    folder = out / "Imagery_Dataset" / "1. Rotation-X-ray" / "852" / "week 1"
    raw = (folder / "852.log").read_bytes()
    assert b"\r\n" in raw and "Müller".encode("latin-1") in raw
    summary = parse_skyscan_log(raw).summary
    assert summary.object_to_source_mm == geo.source_to_object
    assert summary.camera_to_source_mm == geo.source_to_detector
    assert summary.number_of_files == 260
    assert summary.rotation_step_deg == pytest.approx(0.8)
    assert summary.image_pixel_size_um == pytest.approx(geo.voxel_size * 1000, rel=1e-6)
    binning = summary.camera_binning[0]
    assert summary.camera_pixel_size_um * binning / 1000 == pytest.approx(geo.detector_pixel)


def test_same_seed_same_bytes_other_seed_other_bytes(tree, tmp_path):
    out, _ = tree
    again = tmp_path / "again"
    generate(str(again), CONFIG)
    assert tree_digest(again) == tree_digest(out)
    other = tmp_path / "other"
    generate(str(other), SynthConfig(mice=2, weeks=3, size="tiny", seed=8))
    digests, other_digests = tree_digest(out), tree_digest(other)
    common = digests.keys() & other_digests.keys()
    assert len(common) > 0.5 * len(digests)
    assert sum(digests[k] != other_digests[k] for k in common) > 0.9 * len(common)


def test_existing_tree_is_not_overwritten_silently(tree):
    out, _ = tree
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate(str(out), CONFIG)


def test_total_attenuation_per_view_matches_the_voxelised_phantom(tree):
    """Sum of -log(I/I0) over the detector equals the magnification-weighted mass of Recon-CT.

    For a flat detector, sum_pixels p dA = integral of mu(x) (SDD / L(x))^2 / cos(gamma) dV, with L
    the depth along the central ray and gamma the ray's obliquity.  The projections are exact line
    integrals; Recon-CT is the same phantom voxelised; this ties the two products together.
    """
    out, _ = tree
    geo, grid = CONFIG.geometry(), CONFIG.recon_grid()
    counts = stack(out, "rotation_xray", "852", "both", 2).astype(np.float64)
    measured = -np.log(np.maximum(counts, 1) / AIR_COUNTS).sum((1, 2)) * geo.detector_pixel**2
    grey = stack(out, "recon_ct", "852", "both", 2).astype(np.float64)
    grey[grey < 20] = 0  # air: the 8-bit product clips noise at 0, which would bias the mass
    k, i, j = np.nonzero(grey)
    points = grid.index_to_world(np.stack([k, i, j], 1))
    mass = grey[k, i, j] / 255 * WINDOW_MAX_PER_MM * grid.voxel_size**3
    predicted = []
    for angle in geo.angles_deg:
        source, *_ = geo.view_frame(angle)
        rel = points - source
        depth = rel @ (-source / np.linalg.norm(source))
        cos_gamma = depth / np.linalg.norm(rel, axis=1)
        predicted.append((mass * (geo.source_to_detector / depth) ** 2 / cos_gamma).sum())
    ratio = measured / np.array(predicted)
    # tiny detector pixels are 2.2 mm against 0.2 mm cortices: edge aliasing costs ~1% per view
    assert abs(ratio.mean() - 1) < 0.05
    assert ratio.std() < 0.025
    assert measured.std() / measured.mean() < 0.025


def test_silhouette_matches_phantom_footprint(tree):
    out, _ = tree
    geo, grid = CONFIG.geometry(), CONFIG.recon_grid()
    counts = stack(out, "rotation_xray", "851", "both", 1).astype(np.float64)
    grey = stack(out, "recon_ct", "851", "both", 1)
    k, i, j = np.nonzero(grey > 30)
    offsets = np.array(
        [[a, b, c] for a in (-0.25, 0.25) for b in (-0.25, 0.25) for c in (-0.25, 0.25)]
    )
    index = (np.stack([k, i, j], 1)[:, None, :] + offsets).reshape(-1, 3)
    points = grid.index_to_world(index)  # 8 samples per voxel: no gaps between projected voxels
    for view in (0, 65, 130, 259):
        # 4 sigma of the Poisson noise on -log(I/I0) with 40000 air counts
        silhouette = -np.log(np.maximum(counts[view], 1) / AIR_COUNTS) > 0.02
        rc = np.rint(geo.project_points(points, geo.angles_deg[view])).astype(int)
        inside = (
            (rc[:, 0] >= 0) & (rc[:, 0] < geo.n_rows) & (rc[:, 1] >= 0) & (rc[:, 1] < geo.n_cols)
        )
        assert inside.all(), "the whole specimen must stay on the detector"
        footprint = np.zeros_like(silhouette)
        footprint[rc[:, 0], rc[:, 1]] = True
        assert silhouette.sum() > 200
        # the two outlines agree to one pixel both ways, but for stray partial-volume voxels
        assert (silhouette & ~ndimage.binary_dilation(footprint)).sum() <= 0.01 * silhouette.sum()
        assert (footprint & ~ndimage.binary_dilation(silhouette)).sum() <= 0.01 * footprint.sum()


def test_seg_ct_is_a_crop_of_recon_ct(tree):
    out, truth = tree
    recon = stack(out, "recon_ct", "851", "both", 0)
    for side in ("left", "right"):
        box = truth["mice"]["851"]["weeks"]["0"]["seg_box"][side]
        (k0, i0, j0), (k1, i1, j1) = box["lo"], box["hi"]
        seg = stack(out, "seg_ct", "851", side, 0)
        np.testing.assert_array_equal(seg, recon[k0:k1, i0:i1, j0:j1])
    left, right = (truth["mice"]["851"]["weeks"]["0"]["seg_box"][s] for s in ("left", "right"))
    assert left["hi"][2] <= right["lo"][2], "the left tibia lies at lower x (columns)"


def test_roi_composites_follow_the_lesion(tree):
    out, truth = tree
    injected = {m: truth["mice"][m]["injected_side"] for m in truth["mice"]}
    assert injected["851"] in ("left", "right") and injected["852"] is None
    for mouse, side in (("851", injected["851"]), ("852", "left")):
        weeks = truth["mice"][mouse]["weeks"]
        for week in range(CONFIG.weeks):
            roi = stack(out, "roi_ct", mouse, side, week)
            assert set(np.unique(roi)) <= {0, 60, 180, 240}
            assert roi.shape[0] == CONFIG.roi_slices
            stats = weeks[str(week)]["roi"][side]
            assert stats["resorbed_mm3"] == pytest.approx((roi == 60).sum() * CONFIG.voxel_size**3)
            if week == 0:
                assert set(np.unique(roi)) <= {0, 180}
        lesion = [
            weeks[str(w)]["lesion"][side]["ellipsoid_volume_mm3"] for w in range(CONFIG.weeks)
        ]
        if mouse == "851":
            assert lesion[0] == 0 and lesion[1] < lesion[2]
        else:
            assert lesion == [0, 0, 0]


def test_regist_ct_is_the_canonical_tibia(tree):
    """Registered weeks of one tibia differ only where bone changed; week 0 holds bone."""
    out, truth = tree
    side = truth["mice"]["851"]["injected_side"]
    base = stack(out, "regist_ct", "851", side, 0)
    later = stack(out, "regist_ct", "851", side, 2)
    assert base.shape == tuple(CONFIG.regist_grid(side).shape)
    assert (base >= THRESHOLD).mean() > 0.02
    differ = np.abs(base.astype(int) - later.astype(int)) > 12  # above noise (sigma 2 per image)
    assert 0 < differ.mean() < 0.05


def test_records_csv(tree):
    out, truth = tree
    records = pd.read_csv(out / "MiceMediRec Dataset" / "record.csv")
    assert len(records) == CONFIG.mice * CONFIG.weeks
    assert set(records["Animal ID"].astype(str)) == {"851", "852"}
    assert (records.groupby("Animal ID")["Week"].apply(list) == [[0, 1, 2]] * 2).all()
    injected = records[records["Animal ID"] == 851]["Injected Limb"].dropna().unique()
    assert list(injected) == [truth["mice"]["851"]["injected_side"]]


def test_truth_sidecar_is_json(tree):
    out, truth = tree
    assert json.loads((out / TRUTH_FILE).read_text()) == json.loads(json.dumps(truth))


def test_naming_variants_parse_to_the_same_scans(tmp_path):
    config = SynthConfig(
        mice=3,
        weeks=2,
        size="tiny",
        seed=3,
        variants=True,
        components=("seg_ct", "roi_ct", "rotation_xray"),
    )
    generate(str(tmp_path), config)
    folders = {p.name for p in (tmp_path / "Imagery_Dataset").glob("*/*")}
    assert folders - {"851", "852", "853"}, "some per-tibia folder must use a variant spelling"
    canonical = {
        naming.scan_folder_name("seg_ct", m, s)
        for m in ("851", "852", "853")
        for s in ("left", "right")
    }
    assert folders - canonical - {"851", "852", "853"}
    catalog = scan_source(tmp_path)
    assert [p for p in catalog.all_problems() if p.severity == "error"] == []
    keys = {s.key for s in catalog}
    expected = {
        (c, m, s, w)
        for c in ("seg_ct", "roi_ct")
        for m in ("851", "852", "853")
        for s in ("left", "right")
        for w in (0, 1)
    } | {("rotation_xray", m, "both", w) for m in ("851", "852", "853") for w in (0, 1)}
    assert keys == expected


def test_geometry_from_the_acquisition_log(tree):
    from bonemet_dask.geometry import ConeGeometry

    out, _ = tree
    raw = (
        out / "Imagery_Dataset" / "1. Rotation-X-ray" / "851" / "week 0" / "851.log"
    ).read_bytes()
    geometry = ConeGeometry.from_skyscan_log(parse_skyscan_log(raw))
    expected = CONFIG.geometry()
    assert geometry.source_to_object == expected.source_to_object
    assert geometry.source_to_detector == expected.source_to_detector
    assert geometry.detector_pixel == pytest.approx(expected.detector_pixel)
    assert (geometry.n_rows, geometry.n_cols) == (expected.n_rows, expected.n_cols)
    np.testing.assert_allclose(geometry.angles_deg, expected.angles_deg)
    assert geometry.centre_row == expected.centre_row
    with pytest.raises(ValueError, match="Object to Source"):
        ConeGeometry.from_skyscan_log(parse_skyscan_log(b"[System]\r\nScanner=x\r\n"))
