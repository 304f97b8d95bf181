"""Physical checks of SkyScan/NRecon ``.log`` values: each bad value named with file, key and fix.

The logs are the synthetic generator's (the same writer as the synthetic tree's), then damaged.
"""

import logging
import re

import pytest

from bonemet_dask.geometry import ConeGeometry
from bonemet_dask.io.skyscan_check import check_skyscan_log
from bonemet_dask.io.skyscan_log import SkyScanLogError, parse_skyscan_log
from bonemet_dask.synth import SynthConfig
from bonemet_dask.synth.records import acquisition_log, derived_log, reconstruction_log

CONFIG = SynthConfig(mice=1, weeks=1, size="tiny", seed=0)
SOURCE = "Imagery_Dataset/1. Rotation-X-ray/851/week 0/851.log"


def acquisition() -> bytes:
    return acquisition_log(CONFIG, "851", 0, 851)


def with_value(data: bytes, key: str, value: str) -> bytes:
    pattern = rb"(?m)^" + re.escape(key.encode()) + rb"=[^\r\n]*"
    out, n = re.subn(pattern, f"{key}={value}".encode("latin-1"), data)
    assert n == 1, key
    return out


@pytest.mark.parametrize(
    "data",
    [acquisition(), reconstruction_log(CONFIG, "851", 0, 3, 40), derived_log(CONFIG, "x", 40, "y")],
    ids=["acquisition", "reconstruction", "derived"],
)
def test_what_scanners_write_passes(data):
    log = parse_skyscan_log(data, source=SOURCE, validate=True)
    assert check_skyscan_log(log) == []


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("Image Pixel Size (um)", "-35.0", "must be > 0"),
        ("Image Pixel Size (um)", "0", "must be > 0"),
        ("Image Pixel Size (um)", "nan", "is not a number"),
        ("Image Pixel Size (um)", "1e999", "must be a finite number"),
        ("Image Pixel Size (um)", "", "is not a number"),
        ("Object to Source (mm)", "0", "must be > 0"),
        ("Camera to Source (mm)", "10", "is not greater than Object to Source"),
        ("Camera Pixel Size (um)", "-6.5", "must be > 0"),
        ("Number Of Files", "0", "must be > 0"),
        ("Number Of Files", "12.5", "is not a whole number"),
        ("Number Of Rows", "-4", "must be > 0"),
        ("Rotation Step (deg)", "0.000", "must be > 0"),
        ("Camera binning", "0x0", "must be >= 1"),
        ("Camera binning", "big", "is not like '2x2'"),
        ("Use 360 Rotation", "perhaps", "is not a yes/no word"),
        ("Optical Axis (line)", "inf", "is not a number"),
    ],
)
def test_each_unphysical_value_is_named_with_file_key_value_and_fix(key, value, says):
    log = parse_skyscan_log(with_value(acquisition(), key, value), source=SOURCE)
    (issue,) = check_skyscan_log(log)
    assert (issue.key, issue.value) == (key, value)
    assert issue.message.startswith(f"{SOURCE}: {key}={value!r} {says}")
    assert "scanner's original .log" in issue.message  # the fix
    with pytest.raises(SkyScanLogError, match=re.escape(SOURCE)):
        parse_skyscan_log(with_value(acquisition(), key, value), source=SOURCE, validate=True)


def test_window_must_be_increasing():
    data = with_value(
        reconstruction_log(CONFIG, "851", 0, 3, 40), "Maximum for CS to Image Conversion", "0.0"
    )
    (issue,) = check_skyscan_log(parse_skyscan_log(data))
    assert issue.key == "Maximum for CS to Image Conversion" and "maximum" in issue.problem


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "holds no 'Key=Value' line"),
        (b"\r\n  \r\n", "holds no 'Key=Value' line"),
        (bytes(range(256)) * 4, "control byte(s): a binary file"),
    ],
)
def test_empty_or_binary_logs(data, says, caplog):
    with caplog.at_level(logging.WARNING):
        log = parse_skyscan_log(data, source="x.log")
    issues = check_skyscan_log(log)
    assert [says in i.message for i in issues] == [True]
    assert caplog.text == ""  # a binary file's 'duplicate keys' are not shouted about


def test_summary_warnings_name_the_file_once(caplog):
    log = parse_skyscan_log(with_value(acquisition(), "Camera binning", "big"), source=SOURCE)
    with caplog.at_level(logging.WARNING):
        assert log.summary.camera_binning is None
        assert log.summary.number_of_files is not None
    assert caplog.text.count(SOURCE) == 1


def test_geometry_names_a_zero_distance_instead_of_calling_it_missing():
    ok = parse_skyscan_log(acquisition())
    assert ConeGeometry.from_skyscan_log(ok).source_to_object > 0
    bad = parse_skyscan_log(with_value(acquisition(), "Object to Source (mm)", "0"))
    with pytest.raises(ValueError, match=r"Object to Source \(mm\)='0' must be > 0"):
        ConeGeometry.from_skyscan_log(bad)
    missing = parse_skyscan_log(acquisition().replace(b"Object to Source", b"Other Key"))
    with pytest.raises(ValueError, match=r"lacks Object to Source"):
        ConeGeometry.from_skyscan_log(missing)


def test_non_text_input_is_a_type_error():
    with pytest.raises(TypeError, match="bytes or text"):
        parse_skyscan_log(None)  # type: ignore[arg-type]
