"""verify fails, naming the source folder, when the source holds a scan the store lacks.

A tiny synthetic Recon-CT tree is converted once; each test copies the tree, adds a scan the
store never saw (through a symbolic link, the way it used to slip past), and verifies the copy
against the store with the Python API and the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bonemet_dask.cli import app
from bonemet_dask.io.store import scan_group_path
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.verify import verify
from bonemet_dask.synth import SynthConfig, generate

RECON = Path("Imagery_Dataset", "2. Recon-CT")
WIDE = {"COLUMNS": "400"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("verify")
    src, store = base / "src", base / "store.zarr"
    generate(str(src), SynthConfig(mice=1, weeks=1, components=("recon_ct",), seed=2))
    report = convert(src, str(store))
    assert report.exit_code == 0 and len(report.written) == 1
    return src, store


@pytest.fixture
def src(converted, tmp_path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(converted[0], copy, symlinks=True)
    return copy


def run_cli(*args: str):
    result = CliRunner().invoke(app, list(args), env=WIDE)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result, " ".join(result.output.split())


def test_the_converted_tree_verifies(converted, src):
    assert verify(src, str(converted[1])).ok
    result, _ = run_cli("verify", str(src), str(converted[1]))
    assert result.exit_code == 0 and "OK" in result.output


def test_a_scan_linked_inside_the_tree_after_conversion_fails(converted, src):
    elsewhere = src / "elsewhere" / "852"
    shutil.copytree(src / RECON / "851", elsewhere)
    (src / RECON / "852").symlink_to(elsewhere, target_is_directory=True)
    result = verify(src, str(converted[1]))
    group = scan_group_path("recon_ct", "852", "both", 0)
    assert not result.ok and result.missing == [group] and result.left_out == []
    assert result.folders == {group: str(src / RECON / "852" / "week 0")}
    assert result.checked_slices > 0 and not result.mismatches  # 851 was still compared
    cli, text = run_cli("verify", str(src), str(converted[1]))
    assert cli.exit_code == 1
    assert f"missing {group}" in text and str(src / RECON / "852" / "week 0") in text
    assert "rerun convert" in text and "1 scans missing" in text
    assert verify(src, str(converted[1]), mice="851").ok  # the selection leaves 852 out


def test_a_scan_linked_from_outside_the_tree_fails_and_is_named(converted, src, tmp_path):
    outside = tmp_path / "outside" / "852"
    shutil.copytree(src / RECON / "851", outside)
    link = src / RECON / "852"
    link.symlink_to(outside, target_is_directory=True)
    result = verify(src, str(converted[1]))
    assert not result.ok and result.missing == []
    ((path, message),) = result.left_out
    assert path == str(link) and "follow_symlinks=True" in message
    cli, text = run_cli("verify", str(src), str(converted[1]))
    assert cli.exit_code == 1
    assert f"left out {link}" in text and "1 source paths left out" in text
    assert verify(src, str(converted[1]), mice="851").ok


def test_convert_reports_what_it_left_out_and_plan_agrees(converted, src, tmp_path):
    outside = tmp_path / "outside" / "852"
    shutil.copytree(src / RECON / "851", outside)
    link = src / RECON / "852"
    link.symlink_to(outside, target_is_directory=True)
    store = tmp_path / "again.zarr"
    report = convert(src, str(store))
    assert report.exit_code == 3 and len(report.written) == 1
    assert list(report.quarantined) == [str(link)]
    ((file, reason),) = report.quarantined[str(link)]
    assert file == str(link) and "symbolic link" in reason
    planned, plan_text = run_cli("plan", str(src))
    assert planned.exit_code == 3 and "link-outside" in plan_text
    converted_cli, text = run_cli("convert", str(src), str(tmp_path / "cli.zarr"))
    assert converted_cli.exit_code == 3 and str(link) in text
    assert run_cli("plan", str(src), "--mice", "851")[0].exit_code == 0
