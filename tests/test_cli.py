"""The command line: exit codes, outputs, and the commands chained as a user would."""

import json

import pytest
from typer.testing import CliRunner

from bonemet_dask.cli import app

WIDE = {"COLUMNS": "200"}  # rich tables would otherwise truncate names to the 80-column default


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "src"
    result = CliRunner().invoke(app, ["synth", str(out), "--mice", "1", "--weeks", "2"])
    assert result.exit_code == 0, result.output
    return out


def test_synth_refuses_to_overwrite(tree):
    result = CliRunner().invoke(app, ["synth", str(tree), "--mice", "1"])
    assert result.exit_code == 2
    assert "--overwrite" in result.output


def test_plan_prints_totals_and_json(tree):
    runner = CliRunner()
    result = runner.invoke(app, ["plan", str(tree)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Total" in result.output and "rotation_xray" in result.output
    as_json = runner.invoke(app, ["plan", str(tree), "--json", "--components", "roi_ct"])
    stacks = json.loads(as_json.stdout)["stacks"]
    assert {s["component"] for s in stacks} == {"roi_ct"} and len(stacks) == 4


def test_bad_usage_exits_2(tree):
    runner = CliRunner()
    assert runner.invoke(app, ["plan", str(tree), "--components", "ct"]).exit_code == 2
    assert runner.invoke(app, ["plan", str(tree), "--weeks", "one"]).exit_code == 2
    assert runner.invoke(app, ["synth", "x", "--size", "huge"]).exit_code == 2


def test_convert_verify_info(tree, tmp_path):
    runner = CliRunner()
    store = tmp_path / "store.zarr"
    report = tmp_path / "report.json"
    args = ["convert", str(tree), str(store), "--components", "recon_ct,roi_ct"]
    result = runner.invoke(app, [*args, "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["written"]
    result = runner.invoke(
        app, ["verify", str(tree), str(store), "--components", "recon_ct,roi_ct"]
    )
    assert result.exit_code == 0 and "OK" in result.output
    result = runner.invoke(app, ["info", str(store)])
    assert result.exit_code == 0 and "complete" in result.output and "roi_ct" in result.output


def test_convert_exits_3_on_quarantine(tree, tmp_path):
    import shutil

    damaged = tmp_path / "src"
    shutil.copytree(tree, damaged)
    folder = damaged / "Imagery_Dataset" / "5. ROI-CT" / "851L proximal tibia" / "week 1"
    next(iter(sorted(folder.glob("*.png")))).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = CliRunner().invoke(app, ["convert", str(damaged), str(tmp_path / "s.zarr")], env=WIDE)
    assert result.exit_code == 3
    assert "Quarantined" in result.output
    assert "851L proximal tibia" in result.output


def test_plan_missing_source_exits_1(tmp_path):
    assert CliRunner().invoke(app, ["plan", str(tmp_path / "nope")]).exit_code == 1


def test_convert_codec_options(tree, tmp_path):
    import zarr

    store = tmp_path / "s.zarr"
    args = ["convert", str(tree), str(store), "--components", "roi_ct", "--codec", "zstd"]
    result = CliRunner().invoke(app, [*args, "--level", "3", "--slices-per-shard", "2"])
    assert result.exit_code == 0, result.output
    array = zarr.open_group(str(store), mode="r")["roi_ct/851/left/week0/0"]
    assert array.shards[0] == 2
    assert CliRunner().invoke(app, [*args[:-1], "lzma"]).exit_code == 2


def test_plan_profile_full_sizes_the_published_dataset():
    result = CliRunner().invoke(app, ["plan", "--profile", "full"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "67.9 TB" in result.output and "recon_ct" in result.output
    assert CliRunner().invoke(app, ["plan"]).exit_code == 2


def test_plan_shows_the_conversion_plan(tree):
    result = CliRunner().invoke(app, ["plan", str(tree)], env=WIDE)
    assert "Conversion plan" in result.output and "shards = tasks" in result.output


def test_reconstruct_refuses_an_unknown_backend(tmp_path):
    result = CliRunner().invoke(app, ["reconstruct", str(tmp_path), "--backend", "opencl"])
    assert result.exit_code == 2
    assert "auto, numpy, cupy" in result.output
