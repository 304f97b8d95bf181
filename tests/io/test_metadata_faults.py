"""A bad record.csv never blocks the images; a bad .log quarantines only its own scan.

Each test converts a damaged copy of a tiny synthetic tree (1 mouse, 1 week: 8 scans), as a
user would (``convert`` on the folder, once through the CLI), and checks what was written,
what was reported and the exit code, then what the metrics join makes of the stored records.
"""

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from typer.testing import CliRunner

from bonemet_dask.cli import app
from bonemet_dask.io.records import RECORDS_GROUP, read_records
from bonemet_dask.io.store import get_bonemet_attrs
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.metrics import write_metrics_csv
from bonemet_dask.synth import SynthConfig, generate

CONFIG = SynthConfig(mice=1, weeks=1, size="tiny", seed=3)
SCANS = 8  # projections, recon, 2 seg, 2 regist, 2 roi
RECORD = "MiceMediRec Dataset/record.csv"
PROJ_LOG = "Imagery_Dataset/1. Rotation-X-ray/851/week 0/851.log"
PROJ_GROUP = "rotation_xray/851/both/week0"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "src"
    generate(str(root), CONFIG)
    return root


@pytest.fixture
def src(pristine, tmp_path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(pristine, copy)
    return copy


def set_log_value(src: Path, key: str, value: str) -> None:
    log = src / PROJ_LOG
    text, n = re.subn(rf"(?m)^{re.escape(key)}=.*$", f"{key}={value}", log.read_text("latin-1"))
    assert n == 1
    log.write_text(text, encoding="latin-1")


def complete_groups(store: Path) -> set[str]:
    root = zarr.open_group(str(store), mode="r")
    return {
        path
        for path, node in root.members(max_depth=None)
        if isinstance(node, zarr.Group) and get_bonemet_attrs(node).get("status") == "complete"
    }


def damage_record(src: Path) -> None:
    lines = (src / RECORD).read_text().splitlines()
    head = lines[0].split(",")
    cells = lines[1].split(",")
    cells[head.index("Body Weight (g)")] = "heavy"
    lines[1] = ",".join(cells)
    lines[0] = lines[0].replace("Strain", "zarr.json")
    (src / RECORD).write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------- .log


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("Image Pixel Size (um)", "-35.0", "Image Pixel Size (um)='-35.0' must be > 0"),
        ("Image Pixel Size (um)", "nan", "Image Pixel Size (um)='nan' is not a number"),
        ("Object to Source (mm)", "0", "Object to Source (mm)='0' must be > 0"),
        ("Camera to Source (mm)", "10", "is not greater than Object to Source"),
    ],
)
def test_one_bad_log_quarantines_only_its_scan(src, tmp_path, key, value, says):
    set_log_value(src, key, value)
    store = tmp_path / "out.zarr"
    report = convert(src, str(store))
    assert report.exit_code == 3 and len(report.written) == SCANS - 1
    ((folder, problems),) = report.quarantined.items()
    assert folder.endswith("1. Rotation-X-ray/851/week 0")
    ((path, reason),) = problems
    assert path.endswith("851.log") and says in reason and "original .log" in reason
    assert PROJ_GROUP not in complete_groups(store) and len(complete_groups(store)) == SCANS - 1


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02 binary \x03=\x04\r\n"])
def test_an_empty_or_binary_log_is_never_a_silent_1_um(src, tmp_path, content):
    (src / PROJ_LOG).write_bytes(content)
    report = convert(src, str(tmp_path / "out.zarr"))
    assert report.exit_code == 3 and len(report.written) == SCANS - 1
    ((path, reason),) = next(iter(report.quarantined.values()))
    assert path.endswith("851.log") and re.search(r"is empty|binary", reason)


def test_a_log_without_pixel_size_is_a_named_default(src, tmp_path, caplog):
    log = src / PROJ_LOG
    log.write_bytes(re.sub(rb"Image Pixel Size \(um\)=[^\r\n]*\r\n", b"", log.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="bonemet_dask.ops.convert"):
        report = convert(src, str(tmp_path / "out.zarr"))
    assert report.exit_code == 0 and len(report.written) == SCANS
    assert "851.log" in caplog.text and "1 um voxels" in caplog.text
    scan = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")[PROJ_GROUP]
    assert get_bonemet_attrs(scan)["voxel_size_known"] is False


def test_cli_exits_3_and_names_the_log(src, tmp_path):
    set_log_value(src, "Image Pixel Size (um)", "-35.0")
    result = CliRunner().invoke(
        app, ["convert", str(src), str(tmp_path / "out.zarr")], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "851.log" in result.output and "Image Pixel Size" in result.output


# ------------------------------------------------------------------------------ record.csv


def test_a_bad_record_csv_never_blocks_the_images(src, tmp_path):
    damage_record(src)
    store = tmp_path / "out.zarr"
    report = convert(src, str(store))
    assert len(report.written) == SCANS and report.exit_code == 3  # every scan, then exit 3
    ((folder, problems),) = report.quarantined.items()
    assert folder.endswith("record.csv")
    reasons = " | ".join(reason for _, reason in problems)
    assert "line 2, column 'Body Weight (g)': 'heavy' is not a number" in reasons
    assert "'zarr.json' would be the store key" in reasons
    records = read_records(zarr.open_group(str(store), mode="r"))
    assert np.isnan(records["Body Weight (g)"].iloc[0]) and "zarr.json" in records.columns
    assert len(complete_groups(store)) == SCANS


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty"), (bytes(range(256)) * 8, "not a text table")],
)
def test_an_unreadable_record_csv_never_blocks_the_images(src, tmp_path, content, says):
    (src / RECORD).write_bytes(content)
    store = tmp_path / "out.zarr"
    report = convert(src, str(store))
    assert len(report.written) == SCANS and report.exit_code == 3
    ((_, reason),) = report.quarantined[str(src / RECORD)]
    assert says in reason and RECORDS_GROUP not in zarr.open_group(str(store), mode="r")


def test_a_cp1252_record_csv_is_read_and_said(src, tmp_path, caplog):
    text = (src / RECORD).read_text().replace("none", "déjà vu", 1)
    (src / RECORD).write_bytes(text.encode("cp1252"))
    with caplog.at_level(logging.WARNING):
        report = convert(src, str(tmp_path / "out.zarr"))
    assert report.exit_code == 0 and len(report.written) == SCANS
    assert "record.csv" in caplog.text and "cp1252" in caplog.text
    records = read_records(zarr.open_group(str(tmp_path / "out.zarr"), mode="r"))
    assert "déjà vu" in set(records["Treatment"])


def test_a_failing_import_is_reported_not_raised(src, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr("bonemet_dask.ops.convert.import_records", broken)
    report = convert(src, str(tmp_path / "out.zarr"))
    assert len(report.written) == SCANS and report.exit_code == 3
    ((_, reason),) = report.quarantined[str(src / RECORD)]
    assert "OSError: disk quota exceeded" in reason and "record.csv" in reason


# ----------------------------------------------------------------------- the metrics join


def metrics() -> pd.DataFrame:
    return pd.DataFrame({"mouse": ["851"], "side": ["left"], "week": [0], "bv_mm3": [1.0]})


def test_the_join_warns_about_records_left_out(src, tmp_path, caplog):
    damage_record(src)  # the cell emptied is mouse 851's week-0 body weight
    store = tmp_path / "out.zarr"
    convert(src, str(store))
    with caplog.at_level(logging.WARNING):
        table = write_metrics_csv(metrics(), tmp_path / "m.csv", store=str(store))
    assert "imported from" in caplog.text and "record.csv" in caplog.text
    assert table["Animal ID"].iloc[0] == "851" and np.isnan(table["Body Weight (g)"].iloc[0])


def test_the_join_without_animal_ids_writes_the_metrics_and_says_why(src, tmp_path, caplog):
    frame = pd.read_csv(src / RECORD, dtype=str)
    frame.drop(columns=["Animal ID"]).to_csv(src / RECORD, index=False)
    store = tmp_path / "out.zarr"
    assert convert(src, str(store)).exit_code == 3
    with caplog.at_level(logging.WARNING):
        table = write_metrics_csv(metrics(), tmp_path / "m.csv", store=str(store))
    assert "no animal id column" in caplog.text and list(table.columns) == list(metrics().columns)
    assert (tmp_path / "m.csv").exists()


def test_run_reports_a_bad_record_csv_and_converts_every_scan(src, tmp_path):
    from bonemet_dask.ops.run import run

    damage_record(src)
    report = run(src, str(tmp_path / "out.zarr"), until="convert")
    convert_report = report.stages["convert"]
    assert convert_report.written == [PROJ_GROUP]  # run converts only the projections
    assert report.exit_code == 3 and str(src / RECORD) in convert_report.quarantined
