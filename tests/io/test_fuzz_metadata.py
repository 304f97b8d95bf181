"""Hypothesis: whatever bytes a ``.log`` or ``record.csv`` holds, the readers answer.

They never raise anything but their documented error (``SkyScanLogError``, ``RecordsCsvError``)
and never hang (each example is bounded by a deadline); valid logs give back their values, and
whatever table the CSV reader returns is stored in ``/medirec`` and read back unchanged.
"""

import contextlib
import logging
import math
from datetime import timedelta

import pandas as pd
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bonemet_dask.geometry import ConeGeometry
from bonemet_dask.io.records import import_records, read_records
from bonemet_dask.io.records_csv import RecordsCsvError, load_records_csv, read_records_csv
from bonemet_dask.io.skyscan_check import check_skyscan_log
from bonemet_dask.io.skyscan_log import (
    FLOAT_DECIMALS,
    SkyScanLogError,
    format_skyscan_log,
    normalise_key,
    parse_skyscan_log,
)

FUZZ = settings(
    max_examples=250,
    deadline=timedelta(seconds=2),  # "never hang": a slow example fails
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True)
def _quiet():
    """The readers log every problem; thousands of examples need not fill the report."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


# ------------------------------------------------------------------------------------ .log

PHYSICAL_KEYS = [
    "Image Pixel Size (um)", "Object to Source (mm)", "Camera to Source (mm)", "Number Of Files",
    "Number of Rows", "Number of Columns", "Camera binning", "Use 360 Rotation", "Sections Count",
    "Rotation Step (deg)", "Camera Pixel Size (um)", "Postalignment", "Optical Axis (line)",
    "Minimum for CS to Image Conversion", "Maximum for CS to Image Conversion",
]  # fmt: skip
AWKWARD = ["nan", "inf", "-inf", "1e999", "1e-400", "-1", "0", "9" * 5000, "2x2", "99999999x1",
           "1,5", "ON", "84.000", "", " ", "=", "(2)"]  # fmt: skip
log_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(AWKWARD),
    st.floats().map(str),
    st.integers().map(str),
)
log_lines = st.one_of(
    st.tuples(st.sampled_from(PHYSICAL_KEYS), log_values).map("=".join),
    st.text(max_size=24),
    st.sampled_from(["[System]", "[Acquisition]", "[Reconstruction]", "[", "]", "=", "[]"]),
)
log_texts = st.tuples(st.lists(log_lines, max_size=14), st.sampled_from(["\r\n", "\n", "\r"])).map(
    lambda parts: parts[1].join(parts[0])
)
log_inputs = st.one_of(
    st.binary(max_size=600),
    log_texts,
    log_texts.map(lambda text: text.encode("latin-1", "replace")),
)


@FUZZ
@given(log_inputs)
def test_log_parser_answers_anything(data):
    log = parse_skyscan_log(data, source="fuzz.log")  # tolerant: never raises
    issues = check_skyscan_log(log)
    log.summary  # a malformed value is None, never an exception  # noqa: B018
    try:
        parse_skyscan_log(data, source="fuzz.log", validate=True)
    except SkyScanLogError as err:
        assert issues and "fuzz.log" in str(err)
    else:
        assert not issues
    with contextlib.suppress(ValueError):  # SkyScanLogError is one, a lacking key the other
        ConeGeometry.from_skyscan_log(log)


positive = st.floats(0.1, 1e4)  # SkyScan writes a camera pixel with 2 decimals: >= 0.01


@st.composite
def physical_logs(draw) -> dict[str, dict[str, object]]:
    """Logs a scanner could write: the calibrated pixel within 10% of what the distances give,
    and the angles of at most one turn (a full turn when Use 360 Rotation says so)."""
    source_to_object = draw(st.floats(1.0, 500.0))
    source_to_detector = source_to_object + draw(st.floats(1.0, 500.0))
    camera = round(draw(positive), 2) or 0.01  # as the log writes it: 2 decimals
    binning = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    calibration = draw(st.floats(0.9, 1.1))
    pitch = camera * binning[0]
    image_pixel = min(pitch * source_to_object / source_to_detector * calibration, 0.99 * pitch)
    step = draw(st.floats(0.01, 10.0))
    full_turn = draw(st.booleans())
    turn = math.floor(360 / step)
    files = turn + 1 if full_turn else draw(st.integers(1, max(1, min(turn, 10_000))))
    return {
        "System": {"Camera Pixel Size (um)": camera},
        "Acquisition": {
            "Number Of Files": files,
            "Number of Rows": draw(st.integers(1, 10_000)),
            "Number of Columns": draw(st.integers(1, 10_000)),
            "Camera binning": f"{binning[0]}x{binning[1]}",
            "Image Pixel Size (um)": max(image_pixel, 1e-6),
            "Object to Source (mm)": source_to_object,
            "Camera to Source (mm)": source_to_detector,
            "Rotation Step (deg)": step,
            "Use 360 Rotation": full_turn,
            "Postalignment": draw(st.floats(-50.0, 50.0)),
        },
    }


@FUZZ
@given(physical_logs())
def test_valid_logs_round_trip_their_values(sections):
    data = format_skyscan_log(sections)
    log = parse_skyscan_log(data, source="ok.log", validate=True)
    assert check_skyscan_log(log) == []
    summary = log.summary
    acquisition = sections["Acquisition"]
    for field, key in [
        ("image_pixel_size_um", "Image Pixel Size (um)"),
        ("object_to_source_mm", "Object to Source (mm)"),
        ("camera_to_source_mm", "Camera to Source (mm)"),
        ("rotation_step_deg", "Rotation Step (deg)"),
        ("postalignment", "Postalignment"),
    ]:
        decimals = FLOAT_DECIMALS[normalise_key(key)]
        assert math.isclose(getattr(summary, field), acquisition[key], abs_tol=10**-decimals)
    assert summary.number_of_files == acquisition["Number Of Files"]
    assert summary.camera_binning == tuple(map(int, acquisition["Camera binning"].split("x")))
    assert summary.use_360_rotation is acquisition["Use 360 Rotation"]
    assert ConeGeometry.from_skyscan_log(log).n_rows == acquisition["Number of Rows"]


# ------------------------------------------------------------------------------ record.csv

cells = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
    st.sampled_from(["1", "2.5", "-3", "NA", "", "week 2", "2023-01-02", "1e999", '"', ",", ";",
                     "\n", "zarr.json", "Animal ID", "Week", "18446744073709551615", "True",
                     "9223372036854775808", "19000000000000000000", "3,5"]),
)  # fmt: skip


@st.composite
def csv_files(draw) -> bytes:
    n_columns = draw(st.integers(1, 5))
    rows = [
        [draw(cells) for _ in range(draw(st.integers(max(0, n_columns - 1), n_columns + 1)))]
        for _ in range(draw(st.integers(1, 7)))
    ]
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(delimiter.join(row) for row in rows)
    try:
        return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16"])))
    except UnicodeEncodeError:
        return text.encode("utf-8")


@FUZZ
@given(st.one_of(st.binary(max_size=400), csv_files()))
def test_csv_reader_answers_anything_and_its_table_round_trips(data):
    result = load_records_csv(data, path="fuzz.csv")  # never raises on content
    assert all(p.path == "fuzz.csv" and "'fuzz.csv'" in p.message for p in result.problems)
    try:
        read_records_csv(data, path="fuzz.csv")
    except RecordsCsvError as err:
        assert result.table is None and "fuzz.csv" in str(err)
    else:
        assert result.table is not None
    if result.table is None:
        return
    assert len(result.lines) == len(result.table)
    root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    assert import_records(root, data, path="fuzz.csv")[: len(result.problems)] == result.problems
    pd.testing.assert_frame_equal(read_records(root), result.table)
