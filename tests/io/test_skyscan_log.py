import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bonemet_dask.io.skyscan_log import (
    FLOAT_DECIMALS,
    SkyScanLogError,
    format_skyscan_log,
    normalise_key,
    parse_skyscan_log,
)

# An NRecon reconstruction log in the style of a SkyScan 1276 (values invented, layout real):
# CRLF, Latin-1 micro sign (0xB5), padded values, "Number Of Files" in [Acquisition] and
# "Number of Files" spelled differently in a later section, a garbage line and a blank line.
NRECON_LOG = (
    b"[System]\r\n"
    b"Scanner=Skyscan1276\r\n"
    b"Instrument S/N=16J04084\r\n"
    b"Camera=Hamamatsu C11440-22C\r\n"
    b"Camera Pixel Size (um)=    6.50\r\n"
    b"CameraXYRatio=1.0000\r\n"
    b"[User]\r\n"
    b"User Name=M\xfcller\r\n"
    b"\r\n"
    b"[Acquisition]\r\n"
    b"Data directory=D:\\Results\\851\\week 0\r\n"
    b"Filename Prefix=851_\r\n"
    b"Number Of Files=  261\r\n"
    b"Number Of Rows= 2688\r\n"
    b"Number Of Columns= 4032\r\n"
    b"Camera binning=1x1\r\n"
    b"Optical Axis (line)= 1326\r\n"
    b"Object to Source (mm)=84.000\r\n"
    b"Camera to Source (mm)=286.500\r\n"
    b"Image Pixel Size (um)=9.000000\r\n"
    b"Exposure (ms)=   500\r\n"
    b"Rotation Step (deg)=0.800\r\n"
    b"Use 360 Rotation=NO\r\n"
    b"Scanning position=17.200 mm\r\n"
    b"Frame Averaging=ON (2)\r\n"
    b"Filter=Al 0.5mm, 10\xb5m Cu\r\n"
    b"this line is garbage without an equals sign\r\n"
    b"[Reconstruction]\r\n"
    b"Reconstruction Program=NRecon\r\n"
    b"Program Version=Version: 1.7.4.6\r\n"
    b"Postalignment=-4.00\r\n"
    b"Sections Count=2685\r\n"
    b"Number of Files=  999\r\n"
    b"Filter type=0\r\n"
    b"Filter type description=Hamming (Alpha=0.54)\r\n"
    b"Minimum for CS to Image Conversion=0.000000\r\n"
    b"Maximum for CS to Image Conversion=0.070000\r\n"
    b"Use 180+=OFF\r\n"
    b"Smoothing=1\r\n"
)


def test_real_looking_nrecon_log():
    log = parse_skyscan_log(NRECON_LOG)
    assert set(log.sections) == {"system", "user", "acquisition", "reconstruction"}
    assert log.get("user name") == "Müller"  # Latin-1 0xFC, not UTF-8
    assert log.get("Filter", "Acquisition") == "Al 0.5mm, 10µm Cu"
    # case and spacing of keys do not matter; sections are optional; first section wins
    assert log.get("NUMBER OF FILES") == "261"
    assert log.get("numberoffiles") == "261"
    assert log.get("number of files", section="reconstruction") == "999"
    assert log.get_int("Number of Files", "acquisition") == 261
    assert log.key_names["acquisition"]["number of files"] == "Number Of Files"
    assert log.key_names["reconstruction"]["number of files"] == "Number of Files"
    assert log.get("Data directory") == "D:\\Results\\851\\week 0"
    assert log.get_float("Scanning position") == pytest.approx(17.2)
    assert log.get_bool("Frame Averaging") is True
    assert log.get_bool("Use 180+") is False
    assert log.get("not a key") is None
    assert log.get_float("not a key", default=1.5) == 1.5
    assert log.get("Scanner", section="no such section") is None
    assert "this line is garbage" not in str(log.sections)

    s = log.summary
    assert s.object_to_source_mm == 84.0
    assert s.camera_to_source_mm == 286.5
    assert s.camera_pixel_size_um == 6.5
    assert s.camera_binning == (1, 1)
    assert s.image_pixel_size_um == 9.0
    assert (s.number_of_files, s.number_of_rows, s.number_of_columns) == (261, 2688, 4032)
    assert s.optical_axis_line == 1326
    assert s.rotation_step_deg == pytest.approx(0.8)
    assert s.use_360_rotation is False
    assert s.filter_type_description == "Hamming (Alpha=0.54)"
    assert (s.cs_to_image_min, s.cs_to_image_max) == (0.0, 0.07)
    assert s.postalignment == -4.0
    assert s.sections_count == 2685


def test_lf_and_crlf_give_the_same_log():
    crlf = parse_skyscan_log(NRECON_LOG)
    lf = parse_skyscan_log(NRECON_LOG.replace(b"\r\n", b"\n"))
    from_str = parse_skyscan_log(NRECON_LOG.decode("latin-1"))
    assert crlf == lf == from_str
    assert hash(crlf) == hash(lf)


def test_latin1_nel_byte_is_not_a_line_break():
    # 0x85 decodes to U+0085 (NEL), which str.splitlines() would split on
    log = parse_skyscan_log(b"[S]\r\nKey=a\x85b\r\nOther=1\r\n")
    assert log.get("key") == "a\x85b"
    assert log.get_int("other") == 1


def test_duplicate_key_keeps_first_and_warns(caplog):
    data = b"[Acquisition]\r\nNumber Of Files=261\r\nNumber of Files=300\r\n"
    with caplog.at_level(logging.WARNING, logger="bonemet_dask.io.skyscan_log"):
        log = parse_skyscan_log(data)
    assert log.get_int("number of files") == 261
    assert "duplicate key" in caplog.text


def test_bad_values_raise_naming_the_key():
    log = parse_skyscan_log(b"[A]\r\nX=abc\r\nY=2.5\r\nZ=maybe\r\nB=1x\r\n")
    with pytest.raises(SkyScanLogError, match="'X'"):
        log.get_float("X")
    with pytest.raises(SkyScanLogError, match="whole number"):
        log.get_int("Y")
    with pytest.raises(SkyScanLogError, match="ON/OFF"):
        log.get_bool("Z")
    with pytest.raises(SkyScanLogError):
        log.get_float("B")


def test_summary_tolerates_malformed_values(caplog):
    log = parse_skyscan_log(b"[Acquisition]\r\nCamera binning=big\r\nNumber of Files=12\r\n")
    with caplog.at_level(logging.WARNING):
        summary = log.summary
    assert summary.camera_binning is None
    assert summary.number_of_files == 12
    assert "Camera binning" in caplog.text


def test_comma_decimal_and_empty_log():
    log = parse_skyscan_log(b"[A]\r\nPixel=8,75\r\n")
    assert log.get_float("pixel") == 8.75
    assert len(parse_skyscan_log(b"\x00\x01garbage\r\n\r\n")) == 0


def test_format_like_skyscan():
    data = format_skyscan_log(
        {
            "System": {"Scanner": "Skyscan1276", "Camera Pixel Size (um)": 6.5},
            "Acquisition": {
                "Number Of Files": 261,
                "Object to Source (mm)": 84,
                "Image Pixel Size (um)": 9.0,
                "Rotation Step (deg)": 0.8,
                "Use 360 Rotation": False,
                "Filter": "Al 10µm",
                "Exposure (ms)": "   500",
            },
            "Reconstruction": {"Postalignment": -4.0, "Some Other Float": 0.07},
        }
    )
    assert data == (
        b"[System]\r\nScanner=Skyscan1276\r\nCamera Pixel Size (um)=6.50\r\n"
        b"[Acquisition]\r\nNumber Of Files=261\r\nObject to Source (mm)=84.000\r\n"
        b"Image Pixel Size (um)=9.000000\r\nRotation Step (deg)=0.800\r\nUse 360 Rotation=OFF\r\n"
        b"Filter=Al 10\xb5m\r\nExposure (ms)=   500\r\n"
        b"[Reconstruction]\r\nPostalignment=-4.00\r\nSome Other Float=0.070000\r\n"
    )


@pytest.mark.parametrize(
    "sections",
    [
        {"A": {"K": "line\r\nbreak"}},
        {"A": {"K=1": "x"}},
        {"A": {"[K]": "x"}},
        {"A": {" ": "x"}},
        {"A]": {"K": "x"}},
        {"A": {"K": float("nan")}},
        {"A": {"K": "Ω"}},
        {"A": {}, "": {"K": 1}},
    ],
)
def test_format_rejects_what_cannot_be_read_back(sections):
    with pytest.raises(SkyScanLogError):
        format_skyscan_log(sections)


# ---- round trip -------------------------------------------------------------------------------

_LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
_names = st.text(_LATIN1.filter(lambda c: c not in "[]="), min_size=1, max_size=12).map(str.strip)
_names = _names.filter(lambda s: s != "")
_text_values = st.text(st.one_of(_LATIN1, st.just("\x85")), max_size=20).map(str.strip)
_values = st.one_of(
    _text_values,
    st.integers(-(10**9), 10**9),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.booleans(),
)


def _unique_by_normalised(mapping: dict) -> bool:
    return len({normalise_key(k) for k in mapping}) == len(mapping)


_sections = st.dictionaries(
    _names,
    st.dictionaries(_names, _values, max_size=6).filter(_unique_by_normalised),
    min_size=1,
    max_size=4,
).filter(_unique_by_normalised)


@settings(max_examples=150, deadline=None)
@given(_sections)
def test_round_trip(sections):
    data = format_skyscan_log(sections)
    # CRLF everywhere, no bare LF or CR; pure Latin-1 (one byte per character)
    assert data.count(b"\r\n") == data.count(b"\n") == data.count(b"\r")
    assert data.endswith(b"\r\n")
    assert len(data) == len(data.decode("latin-1"))
    assert format_skyscan_log(sections) == data  # deterministic

    log = parse_skyscan_log(data)
    assert list(log.to_dict()) == list(sections)
    for section, entries in sections.items():
        for key, value in entries.items():
            text = log.get(key, section)
            assert text is not None
            assert log.key_names[normalise_key(section)][normalise_key(key)] == key
            if isinstance(value, bool):
                assert log.get_bool(key, section) is value
            elif isinstance(value, int):
                assert log.get_int(key, section) == value
            elif isinstance(value, float):
                decimals = FLOAT_DECIMALS.get(normalise_key(key), 6)
                assert text == f"{value:.{decimals}f}"
                assert math.isclose(log.get_float(key, section), value, abs_tol=0.6 * 10**-decimals)
            else:
                assert text == value
                if value:
                    assert value.encode("latin-1") in data
    # writing the parsed log again gives the same bytes
    assert format_skyscan_log(log.to_dict()) == data


def test_a_path_is_read_not_parsed_as_content(tmp_path):
    """``parse_skyscan_log("scan.log")`` used to take the name for the content and return an
    empty log; a ``Path`` raised AttributeError.  Both read the file now, naming it."""
    from pathlib import Path

    log = tmp_path / "scan.log"
    log.write_bytes(b"[System]\r\nCamera Pixel Size (um)=35.00\r\n[Acquisition]\r\n"
                    b"Object to Source (mm)=84.000\r\n")  # fmt: skip
    for where in (str(log), log, f"file://{log}"):
        parsed = parse_skyscan_log(where)
        assert parsed.get("Object to Source (mm)", "Acquisition") == "84.000", where
        assert parsed.source == str(where if not isinstance(where, Path) else log)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.log"):
        parse_skyscan_log(str(tmp_path / "nowhere.log"))
    assert len(parse_skyscan_log("[System]\nScanner=Skyscan1276\n")) == 1  # content stays content
