"""SkyScan acquisition logs as scanners write them: each geometry key decided, each decision tested.

The logs below are written the way SkyScan 1272/1275/1276/1278 logs are (CRLF, Latin-1, values
padded with spaces, ``[System]``/``[User]``/``[Acquisition]``/``[Reconstruction]``), with the
values of logs published on the SkyScan user forum (1275: 7.000817 um stated, 6.4917 um from the
distances; 1278: 51.423 against 52.448).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import dask
import numpy as np
import pytest

import bonemet_dask as bm
from bonemet_dask.geometry import ConeGeometry
from bonemet_dask.io.skyscan_geometry import read_geometry, unsupported
from bonemet_dask.io.skyscan_log import SkyScanLogError, parse_skyscan_log, read_skyscan_log
from bonemet_dask.kernels.fdk import fan_angles, full_scan_weights, parker_weights

LOG_1275 = (
    "[System]\r\n"
    "Scanner=SkyScan1275\r\n"
    "Instrument S/N=SCAN1275_001\r\n"
    "Software Version=1.1.10\r\n"
    "Source Type=Hamamatsu L11871_20\r\n"
    "Camera Pixel Size (um)=   75.00\r\n"
    "CameraXYRatio=1.0000\r\n"
    "[User]\r\n"
    "User Name=J. M\xfcller\r\n"
    "[Acquisition]\r\n"
    "Data Directory=D:\\Results\\embryo\\1275_embryo_7um_\r\n"
    "Filename Prefix=1275_embryo_7um_\r\n"
    "Number Of Files=  601\r\n"
    "Number Of Rows= 1536\r\n"
    "Number Of Columns= 1944\r\n"
    "Filename Index Length=8\r\n"
    "Partial Width=OFF\r\n"
    "Image crop origin X=0\r\n"
    "Image crop origin Y=0\r\n"
    "Camera binning=1x1\r\n"
    "Image Rotation=-0.03800\r\n"
    "Optical Axis (line)=  760\r\n"
    "Object to Source (mm)=24.755\r\n"
    "Camera to Source (mm)=286.0\r\n"
    "Source Voltage (kV)=  80\r\n"
    "Source Current (uA)= 124\r\n"
    "Image Pixel Size (um)=7.000817\r\n"
    "Scaled Image Pixel Size (um)=7.000817\r\n"
    "Image Format=TIFF\r\n"
    "Depth (bits)=16\r\n"
    "Reference Intensity=58000\r\n"
    "Exposure (ms)=57\r\n"
    "Rotation Step (deg)=0.600\r\n"
    "Use 360 Rotation=YES\r\n"
    "Frame Averaging=ON (4)\r\n"
    "Random Movement=OFF (30)\r\n"
    "Flat Field Correction=ON\r\n"
    "Filter=Al 1mm\r\n"
    "Gantry direction=CC\r\n"
    "Rotation Direction=CC\r\n"
    "Scanning Start Angle=0.000\r\n"
    "Type of Detector Motion=STEP AND SHOOT\r\n"
    "Scanning Trajectory=ROUND\r\n"
    "Number of connected scans=1\r\n"
    "Study Date and Time=22 Sep 2017  06h:56m:05s\r\n"
    "Scan duration=0h:12m:25s\r\n"
    "[Reconstruction]\r\n"
    "Reconstruction Program=NRecon\r\n"
    "Postalignment=-1.00\r\n"
    "Pixel Size (um)=7.00082\r\n"
).encode("latin-1")

LOG_1278 = (
    "[System]\r\n"
    "Scanner=Skyscan1278\r\n"
    "Camera Pixel Size (um)=   50.00\r\n"
    "[Acquisition]\r\n"
    "Number Of Files=  600\r\n"
    "Number Of Rows=  576\r\n"
    "Number Of Columns= 1032\r\n"
    "Camera binning=2x2\r\n"
    "Optical Axis (line)=  288\r\n"
    "Object to Source (mm)=120.000\r\n"
    "Camera to Source (mm)=228.800\r\n"
    "Image Pixel Size (um)=51.423000\r\n"
    "Rotation Step (deg)=0.400\r\n"
    "Use 360 Rotation=NO\r\n"
    "Rotation Direction=CC\r\n"
).encode("latin-1")


LOG_1272 = (
    "[System]\r\n"
    "Scanner=SkyScan1272\r\n"
    "Camera Pixel Size (um)=    9.00\r\n"
    "CameraXYRatio=1.0000\r\n"
    "[Acquisition]\r\n"
    "Filename Prefix=14~01\r\n"
    "Filename Index Length=8\r\n"
    "Number Of Files=  315\r\n"
    "Number Of Rows=  672\r\n"
    "Number Of Columns= 1008\r\n"
    "Partial Width=OFF\r\n"
    "Image crop origin X=0\r\n"
    "Image crop origin Y=0\r\n"
    "Camera binning=4x4\r\n"
    "Image Rotation=-0.35000\r\n"
    "Optical Axis (line)=  300\r\n"
    "Camera to Source (mm)=273.83609\r\n"
    "Object to Source (mm)=200.89000\r\n"
    "Image Pixel Size (um)=26.413040\r\n"
    "Scaled Image Pixel Size (um)=26.413040\r\n"
    "Image Format=TIFF\r\n"
    "Depth (bits)=16\r\n"
    "Reference Intensity=57000\r\n"
    "Rotation Step (deg)=0.600\r\n"
    "Use 360 Rotation=NO\r\n"
    "Gantry direction=CC\r\n"
    "Rotation Direction=CC\r\n"
    "Number of connected scans=2\r\n"
    "Current scan number=2\r\n"
    "Number of lines to be reconstructed=503\r\n"
    "[Reconstruction]\r\n"
    "Reconstruction Program=NRecon\r\n"
    "Connected Reconstruction (parts)=2\r\n"
    "Sub-scan post alignment [0]=1.000000\r\n"
    "Used extra shift in X per scan(micron)= 0.000  13.629\r\n"
).encode("latin-1")


def edited(raw: bytes, **values: str) -> bytes:
    """``raw`` with keys set (``Rotation_Direction="CW"``), added to [Acquisition] if absent."""
    text = raw.decode("latin-1")
    for name, value in values.items():
        key = name.replace("_", " ")
        pattern = rf"(?im)^{re.escape(key)}=.*$"
        if re.search(pattern, text):
            text = re.sub(pattern, f"{key}={value}", text)
        else:
            text = text.replace("[Acquisition]\r\n", f"[Acquisition]\r\n{key}={value}\r\n", 1)
    return text.encode("latin-1")


def geometry_of(raw: bytes, **kwargs) -> ConeGeometry:
    return ConeGeometry.from_skyscan_log(parse_skyscan_log(raw, source="scan.log"), **kwargs)


# ---------------------------------------------------------------------------- the voxel size


@pytest.mark.parametrize(
    ("raw", "stated", "from_distances"),
    [(LOG_1275, 7.000817, 75 * 24.755 / 286.0), (LOG_1278, 51.423, 100 * 120 / 228.8)],
)
def test_the_voxel_is_the_calibrated_pixel_and_the_distance_follows(
    raw, stated, from_distances, caplog
):
    with caplog.at_level(logging.INFO, logger="bonemet_dask.io.skyscan_geometry"):
        geometry = geometry_of(raw)
    assert geometry.voxel_size * 1000 == pytest.approx(stated, rel=1e-9)
    log = parse_skyscan_log(raw)
    assert geometry.source_to_detector == log.summary.camera_to_source_mm  # kept
    notes = geometry.calibration
    assert notes["image_pixel_size_um"]["stated"] == stated
    assert notes["image_pixel_size_um"]["from_distances"] == pytest.approx(from_distances)
    assert notes["object_to_source_mm"]["stated"] == log.summary.object_to_source_mm
    effective = notes["object_to_source_mm"]["effective"]
    assert effective == pytest.approx(geometry.source_to_object)
    assert effective / log.summary.object_to_source_mm == pytest.approx(stated / from_distances)
    # both figures reported, as information
    (record,) = [r for r in caplog.records if "calibrat" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert f"{stated:.4f}" in record.getMessage()
    assert f"{from_distances:.4f}" in record.getMessage()


def test_without_a_calibrated_pixel_the_distances_give_the_voxel():
    raw = re.sub(rb"Image Pixel Size \(um\)=[^\r]*\r\n", b"", LOG_1278)
    geometry = geometry_of(raw)
    assert geometry.voxel_size * 1000 == pytest.approx(100 * 120 / 228.8)
    assert geometry.source_to_object == 120.0
    assert "no Image Pixel Size" in geometry.calibration["voxel_size_from"]


def test_a_calibrated_pixel_without_magnification_is_refused():
    with pytest.raises(SkyScanLogError, match=r"Image Pixel Size.*no magnification"):
        geometry_of(edited(LOG_1278, **{"Image Pixel Size (um)": "120.000000"}))


def test_logs_of_four_scanner_models(tmp_path):
    """1272 (binning 4x4, connected), 1275 (a full turn), 1276 (the generator's), 1278."""
    from bonemet_dask.synth import SynthConfig, generate

    generate(str(tmp_path), SynthConfig(mice=1, weeks=1, components=("rotation_xray",)))
    (log_1276,) = tmp_path.glob("Imagery_Dataset/*/851/week 0/*.log")
    single_1272 = edited(LOG_1272, Number_of_connected_scans="1")
    for raw in (single_1272, LOG_1275, log_1276.read_bytes(), LOG_1278):
        log = parse_skyscan_log(raw)
        geometry = ConeGeometry.from_skyscan_log(log)
        assert geometry.voxel_size * 1000 == pytest.approx(log.summary.image_pixel_size_um)
        assert geometry.n_cols == log.summary.number_of_columns
    one = geometry_of(single_1272)
    assert one.detector_pixel == pytest.approx(0.036)  # 9 um camera pixel, binning 4
    assert one.calibration["reference_intensity"] == 57000
    with pytest.raises(SkyScanLogError, match=r"Number of connected scans='2'"):
        geometry_of(LOG_1272)


# ---------------------------------------------------------------------------- the angles


def test_a_full_turn_with_its_closing_view_gets_no_parker_weights():
    geometry = geometry_of(LOG_1275)
    angles = geometry.angles_deg
    assert angles.size == 601 and angles[0] == 0 and angles[-1] == pytest.approx(360)
    notes = geometry.calibration["angles"]
    assert notes["full_turn"] and notes["closing_view"]
    weights = parker_weights(angles, fan_angles(geometry))
    np.testing.assert_array_equal(weights, full_scan_weights(angles, geometry.n_cols))
    assert (weights[1:-1] == 0.5).all() and (weights[[0, -1]] == 0.25).all()
    # every direction of the turn weighs one half: the closing view is not counted twice
    assert weights[:, 0].sum() * np.deg2rad(notes["step_deg"]) == pytest.approx(np.pi)


def test_a_full_turn_without_a_closing_view_weighs_every_view_half():
    geometry = geometry_of(edited(LOG_1275, Number_Of_Files="600"))
    assert geometry.calibration["angles"]["full_turn"]
    assert not geometry.calibration["angles"]["closing_view"]
    assert (parker_weights(geometry.angles_deg, fan_angles(geometry)) == 0.5).all()


def test_a_full_turn_refines_the_rounded_step():
    # 1201 steps of a turn are 0.29975 deg each, which the scanner writes as 0.300
    raw = edited(LOG_1275, Number_Of_Files="1202", **{"Rotation Step (deg)": "0.300"})
    geometry = geometry_of(raw)
    step = geometry.calibration["angles"]["step_deg"]
    assert step == pytest.approx(360 / 1201) and geometry.angles_deg[-1] == pytest.approx(360)


def test_a_short_scan_keeps_parker_weights():
    geometry = geometry_of(LOG_1278)  # 599 x 0.4 = 239.6 deg
    assert not geometry.calibration["angles"]["full_turn"]
    weights = parker_weights(geometry.angles_deg, fan_angles(geometry))
    assert weights.min() == 0 and weights.max() == 1


@pytest.mark.parametrize(
    ("direction", "start", "expected"),
    [("CC", "0.000", 0.0), ("CW", "0.000", 0.0), ("CC", "12.500", 12.5), ("CW", "90.000", 90.0)],
)
def test_direction_and_start_angle_set_the_angles(direction, start, expected):
    raw = edited(LOG_1278, Rotation_Direction=direction, Scanning_Start_Angle=start)
    angles = geometry_of(raw).angles_deg
    sign = 1 if direction == "CC" else -1
    np.testing.assert_allclose(angles, expected + sign * 0.4 * np.arange(600))


def test_an_unknown_rotation_direction_is_refused():
    with pytest.raises(SkyScanLogError, match=r"Rotation Direction='UP' is not CC, CCW or CW"):
        geometry_of(edited(LOG_1278, Rotation_Direction="UP"))


def test_use_360_short_of_a_turn_and_more_than_a_turn_are_refused():
    with pytest.raises(SkyScanLogError, match=r"Use 360 Rotation='YES' says a full turn.*covers"):
        geometry_of(edited(LOG_1275, Number_Of_Files="300"))
    with pytest.raises(SkyScanLogError, match=r"more than a full turn"):
        geometry_of(edited(LOG_1275, Number_Of_Files="700"))


def test_a_turn_under_use_360_no_is_a_full_scan_noted():
    geometry = geometry_of(edited(LOG_1275, Use_360_Rotation="NO"))
    assert geometry.calibration["angles"]["full_turn"]
    assert "Use 360 Rotation=NO" in geometry.calibration["angles"]["full_turn_note"]


# ---------------------------------------------------------------------------- the detector


def test_a_cropped_detector_moves_the_axis_column():
    raw = edited(LOG_1278, Partial_Width="ON", Image_crop_origin_X="100", Image_crop_origin_Y="0")
    # a 1278 detector 2 x 1200 columns wide at binning 1 -> 1200 binned; the crop is 1032 wide
    geometry = geometry_of(raw, full_detector_columns=2400)
    assert geometry.centre_col == pytest.approx((1200 - 1) / 2 - 100)
    assert geometry.calibration["axis_column"]["crop_shift_px"] == pytest.approx(-16.0)
    with dask.config.set({"bonemet.skyscan.full-detector-columns": {"SkyScan1278": 2400}}):
        assert geometry_of(raw).centre_col == geometry.centre_col  # the config, by scanner
    assert geometry_of(edited(raw, Partial_Width="OFF")).centre_col == (1032 - 1) / 2


def test_a_cropped_detector_of_unknown_width_or_origin_is_refused():
    raw = edited(LOG_1278, Partial_Width="ON", Image_crop_origin_X="100")
    with pytest.raises(SkyScanLogError, match=r"bonemet.skyscan.full-detector-columns"):
        geometry_of(raw)
    with pytest.raises(SkyScanLogError, match=r"lacks Image crop origin X"):
        geometry_of(edited(LOG_1278, Partial_Width="ON"))


def test_postalignment_and_image_rotation():
    geometry = geometry_of(LOG_1275)
    assert geometry.centre_col == pytest.approx((1944 - 1) / 2 - 1.0)  # Postalignment=-1.00
    rotation = geometry.calibration["image_rotation_deg"]
    assert rotation["value"] == -0.038 and "not applied again" in rotation["decision"]
    level = geometry_of(edited(LOG_1275, Image_Rotation="0.00000"))  # recorded, not applied
    for name in ("source_to_object", "source_to_detector", "detector_pixel", "cor_offset"):
        assert getattr(level, name) == getattr(geometry, name)
    np.testing.assert_array_equal(level.angles_deg, geometry.angles_deg)


def test_reference_intensity_is_read():
    result = read_geometry(parse_skyscan_log(LOG_1275))
    assert result.reference_intensity == 58000.0
    assert result.notes["reference_intensity"] == 58000.0


def test_connected_scans_are_refused_with_their_fix():
    raw = edited(LOG_1275, Number_of_connected_scans="2")
    issues = unsupported(parse_skyscan_log(raw, source="scan.log"))
    assert [i.key for i in issues] == ["Number of connected scans"]
    with pytest.raises(SkyScanLogError, match=r"scan.log: Number of connected scans='2'.*NRecon"):
        geometry_of(raw)


def test_malformed_new_keys_are_named():
    with pytest.raises(SkyScanLogError, match=r"Reference Intensity='-5' must be > 0"):
        geometry_of(edited(LOG_1275, Reference_Intensity="-5"))
    with pytest.raises(SkyScanLogError, match=r"Scanning Start Angle='north' is not a number"):
        geometry_of(edited(LOG_1275, Scanning_Start_Angle="north"))


# ---------------------------------------------------------------------------- reading the file


def test_read_skyscan_log_takes_paths_and_urls(tmp_path):
    path = tmp_path / "a=b" / "scan.log"  # a folder name with '=' is still a path
    path.parent.mkdir()
    path.write_bytes(LOG_1275)
    expected = parse_skyscan_log(LOG_1275)
    for given in (path, str(path), f"file://{path}"):
        log = read_skyscan_log(given)
        assert log == expected and log.source == str(given)
    assert bm.parse_skyscan_log(str(path)) == expected  # a str naming a file is never content
    assert bm.read_skyscan_log is read_skyscan_log
    import fsspec

    with fsspec.open("memory://logs/scan.log", "wb") as handle:
        handle.write(LOG_1278)
    assert read_skyscan_log("memory://logs/scan.log").summary.number_of_files == 600
    with pytest.raises(FileNotFoundError, match="is not a file"):
        read_skyscan_log(tmp_path / "missing.log")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_skyscan_log(Path(tmp_path))
    with pytest.raises(TypeError, match="parse content"):
        read_skyscan_log(LOG_1275)  # type: ignore[arg-type]


def test_a_malformed_partial_width_is_named():
    with pytest.raises(SkyScanLogError, match=r"Partial Width='maybe' is not a yes/no word"):
        geometry_of(edited(LOG_1278, Partial_Width="maybe"))
