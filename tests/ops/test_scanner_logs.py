"""Reconstructions that follow what a real SkyScan log says: the calibrated voxel, the rotation's
direction and start, a full turn's closing view, the flat-field level.

Projections are exact ray integrals of analytic phantoms (``bonemet_dask.synth``), taken with
the true geometry; the log states what a scanner states. Each test also shows what reading the
log the old way (distances for the voxel, direction and start ignored) gets wrong, so none can
pass by accident.
"""

from __future__ import annotations

import logging

import imagecodecs
import numpy as np
import pytest
import xarray as xr

import bonemet_dask as bm
from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.io.skyscan_log import format_skyscan_log, parse_skyscan_log
from bonemet_dask.kernels.fdk import backproject, preweight_and_filter
from bonemet_dask.naming import slice_file_name
from bonemet_dask.synth import line_integrals
from bonemet_dask.synth.primitives import Phantom, Term, ellipsoid

AIR = 40000.0
# the true scanner: 0.2 mm detector pixels at magnification 4, so 50 um voxels
SOD, SDD, PIXEL_MM, ROWS, COLS = 30.0, 120.0, 0.2, 48, 64
SEMI_AXES = (0.8, 0.6, 0.5)  # mm, along x, y, z
DENSITY = 1.0  # 1/mm


def _ellipsoid_phantom() -> Phantom:
    phantom = Phantom()
    phantom.add(Term(DENSITY, (ellipsoid((0.0, 0.0, 0.0), SEMI_AXES),)))
    return phantom


def _log(geometry: ConeGeometry, **acquisition: object) -> dict[str, dict[str, object]]:
    step = float(geometry.angles_deg[1] - geometry.angles_deg[0])
    return {
        "System": {"Scanner": "SkyScan1276", "Camera Pixel Size (um)": PIXEL_MM * 1000},
        "User": {"User Name": "J. Müller"},
        "Acquisition": {
            "Number Of Files": f"{geometry.angles_deg.size:5d}",
            "Number Of Rows": f"{ROWS:5d}",
            "Number Of Columns": f"{COLS:5d}",
            "Camera binning": "1x1",
            "Optical Axis (line)": f"{round(geometry.centre_row):5d}",
            "Object to Source (mm)": SOD,
            "Camera to Source (mm)": SDD,
            "Image Pixel Size (um)": geometry.voxel_size * 1000,
            "Rotation Step (deg)": abs(step),
            "Use 360 Rotation": "NO",
            "Reference Intensity": f"{AIR:.0f}",
            **acquisition,
        },
    }


def _write_scan(root, geometry: ConeGeometry, log: dict, phantom: Phantom) -> None:
    """One Rotation-X-ray scan in the published layout: 16-bit PNG projections and the .log."""
    folder = root / "Imagery_Dataset" / "1. Rotation-X-ray" / "851" / "week 0"
    folder.mkdir(parents=True)
    for index, angle in enumerate(geometry.angles_deg):
        counts = AIR * np.exp(-line_integrals(phantom, geometry, angle))
        image = np.clip(np.round(counts), 0, 65535).astype(np.uint16)
        name = slice_file_name("rotation_xray", "851", "both", index)
        (folder / name).write_bytes(imagecodecs.png_encode(image))
    (folder / "851.log").write_bytes(format_skyscan_log(log))


def _edges_um(profile: np.ndarray, coords: np.ndarray) -> float:
    """Distance between the half-maximum crossings of a profile, linearly interpolated."""
    half = DENSITY / 2
    inside = np.flatnonzero(profile > half)
    lo, hi = inside[0], inside[-1]
    left = np.interp(half, profile[[lo - 1, lo]], coords[[lo - 1, lo]])
    right = np.interp(half, profile[[hi + 1, hi]], coords[[hi + 1, hi]])
    return float(right - left)


def test_the_calibrated_pixel_gives_the_grid_and_the_lengths(tmp_path, caplog):
    """A log whose distances are 8% off its calibrated pixel: the volume follows the pixel.

    The scanner's true source distance is 30 mm; the log states 32.4 mm (8% more) and the
    calibrated Image Pixel Size of 50 um. Read the old way (the distances) the voxel would be
    54 um and every length 8% off.
    """
    truth = ConeGeometry(SOD, SDD, PIXEL_MM, ROWS, COLS, np.arange(260) * 0.8,
                         optical_axis_row=ROWS // 2)  # fmt: skip
    log = _log(truth, **{"Object to Source (mm)": SOD * 1.08})
    stated = parse_skyscan_log(format_skyscan_log(log))
    from_distances = PIXEL_MM * 1000 * stated.summary.object_to_source_mm / SDD
    assert from_distances / 50.0 == pytest.approx(1.08)
    _write_scan(tmp_path / "src", truth, log, _ellipsoid_phantom())
    store = tmp_path / "out.zarr"
    with caplog.at_level(logging.INFO, logger="bonemet_dask.io.skyscan_geometry"):
        bm.convert(tmp_path / "src", store)
        bm.reconstruct_store(store, keep_float=True)
    assert any("54.0000 um" in r.getMessage() and "50.0000" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    node = bm.open_store(store)["recon_ct/851/both/week0"]
    volume = node["attenuation"].compute()
    spacing = np.diff(volume["x"].values)
    np.testing.assert_allclose(spacing, 50.0, rtol=1e-9)  # um, the calibrated pixel
    provenance = node.attrs["provenance"]
    assert provenance["voxel_size_um"] == pytest.approx(50.0)
    scanner = provenance["scanner_log"]
    assert scanner["object_to_source_mm"]["stated"] == pytest.approx(32.4)
    assert scanner["object_to_source_mm"]["effective"] == pytest.approx(30.0)
    assert provenance["parameters"]["air"] == AIR  # the log's Reference Intensity
    # the phantom's lengths, measured through its centre (half-maximum edges)
    k, i, j = (n // 2 for n in volume.shape)
    through_x = volume.values[k, i, :]
    through_y = volume.values[k, :, j]
    length_x = _edges_um(through_x, volume["x"].values)
    length_y = _edges_um(through_y, volume["y"].values)
    # measured 1594.3 and 1194.8 um (true 1600 and 1200); read with the distances the same
    # scan measures 1712.4 and 1281.9 um on 54 um voxels
    assert length_x == pytest.approx(2000 * SEMI_AXES[0], abs=15)
    assert length_y == pytest.approx(2000 * SEMI_AXES[1], abs=15)


# ------------------------------------------------------------------ direction and start angle

GRID = VolumeGrid((32, 48, 48), 0.05)
BALL = np.array([0.55, -0.3, 0.2])  # x, y, z (mm): every axis' sign matters


def _ball_phantom() -> Phantom:
    phantom = Phantom()
    phantom.add(Term(1.0, (ellipsoid(tuple(BALL), (0.15, 0.15, 0.15)),)))
    return phantom


def _fdk(geometry: ConeGeometry, projections: np.ndarray) -> np.ndarray:
    idx = np.arange(geometry.angles_deg.size)
    filtered = preweight_and_filter(projections, geometry, idx, window="ramlak")
    return backproject(filtered, geometry, idx, GRID)


def _centroid_mm(volume: np.ndarray) -> np.ndarray:
    weights = np.clip(volume, 0, None)
    weights = np.where(weights > 0.3 * weights.max(), weights, 0)
    index = np.argwhere(np.ones(volume.shape, bool)).astype(float)
    centre = (index * weights.reshape(-1, 1)).sum(0) / weights.sum()
    return GRID.index_to_world(centre[None])[0]


@pytest.mark.parametrize(("direction", "start"), [("CW", 0.0), ("CC", 90.0), ("CW", 37.5)])
def test_direction_and_start_angle_put_the_object_where_it_is(direction, start):
    sign = 1 if direction == "CC" else -1
    angles = start + sign * np.arange(240) * 1.0  # a short scan of 239 deg
    truth = ConeGeometry(SOD, SDD, PIXEL_MM, ROWS, COLS, angles, optical_axis_row=ROWS // 2)
    projections = np.stack([line_integrals(_ball_phantom(), truth, a) for a in angles])
    log = _log(truth, **{"Rotation Direction": direction, "Scanning Start Angle": start})
    from_log = ConeGeometry.from_skyscan_log(parse_skyscan_log(format_skyscan_log(log)))
    np.testing.assert_allclose(from_log.angles_deg, angles, atol=1e-9)
    found = _centroid_mm(_fdk(from_log, projections))
    assert np.abs(found - BALL).max() < 0.01  # mm; measured < 0.002
    # read as 0, 1, 2... deg (direction and start ignored) the ball lands elsewhere
    naive = ConeGeometry(SOD, SDD, PIXEL_MM, ROWS, COLS, np.arange(240) * 1.0,
                         optical_axis_row=ROWS // 2)  # fmt: skip
    assert np.abs(_centroid_mm(_fdk(naive, projections)) - BALL).max() > 0.2


def test_a_closing_view_is_not_counted_twice():
    """361 views of 1 deg (the last at 360, as SkyScan takes a full turn) reconstruct exactly
    what the 360 views without it do; weighting every view 0.5 would overweight one direction."""
    phantom = _ball_phantom()
    closed = ConeGeometry(SOD, SDD, PIXEL_MM, ROWS, COLS, np.arange(361) * 1.0,
                          optical_axis_row=ROWS // 2)  # fmt: skip
    opened = ConeGeometry(SOD, SDD, PIXEL_MM, ROWS, COLS, np.arange(360) * 1.0,
                          optical_axis_row=ROWS // 2)  # fmt: skip
    projections = np.stack([line_integrals(phantom, closed, a) for a in closed.angles_deg])
    with_closing = _fdk(closed, projections)
    without = _fdk(opened, projections[:360])
    scale = np.abs(without).max()
    assert np.abs(with_closing - without).max() < 1e-5 * scale
    idx = np.arange(361)
    uniform = backproject(
        preweight_and_filter(projections, closed, idx, window="ramlak", short_scan=False),
        closed, idx, GRID,
    )  # fmt: skip
    assert np.abs(uniform - without).max() > 1e-3 * scale


def test_reference_intensity_is_the_default_air(caplog):
    truth = ConeGeometry(SOD, SDD, PIXEL_MM, ROWS, COLS, np.arange(260) * 0.8,
                         optical_axis_row=ROWS // 2)  # fmt: skip
    counts = np.full((260, ROWS, COLS), 30000, np.uint16)
    log = _log(truth)
    attrs = {"bonemet": {"source": {"log": log, "path": "851.log"}}}
    projections = xr.DataArray(counts, dims=("angle", "row", "col"), attrs=attrs)
    volume = bm.reconstruct(projections, truth)
    assert volume.attrs["bonemet"]["provenance"]["parameters"]["air"] == AIR
    # 8-bit projections cannot hold a level of 40000: estimated from them instead, with a warning
    with caplog.at_level(logging.WARNING, logger="bonemet_dask.ops.reconstruct"):
        volume = bm.reconstruct(projections.astype(np.uint8).assign_attrs(attrs), truth)
    assert volume.attrs["bonemet"]["provenance"]["parameters"]["air"] != AIR
    assert any("Reference Intensity" in r.getMessage() for r in caplog.records)
