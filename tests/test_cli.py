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


@pytest.fixture(scope="module")
def converted(tree, tmp_path_factory):
    """Every component of the tree converted: the published products are in the store."""
    store = tmp_path_factory.mktemp("converted") / "store.zarr"
    assert CliRunner().invoke(app, ["convert", str(tree), str(store)]).exit_code == 0
    return store


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "{src}", "{new}", "--weeks", "7"], "holds mice 851 (weeks 0,1; sides"),
        (["convert", "{src}", "{new}", "--weeks", "5-2"], "runs backwards; write 2-5"),
        (["convert", "{src}", "{new}", "--mice", "853"], "--mice 853 matches none"),
        (["segment", "{store}", "--mice", "85l"], "--mice 85l matches none of the 2 recon_ct"),
        (["segment", "{store}"], "pass --out OTHER.zarr or --overwrite"),
        (["register", "{store}", "--weeks", "1"], "pass --out OTHER.zarr or --overwrite"),
        (["segment", "{src}"], "is a BoneMet source folder, not a Zarr store"),
        (["reconstruct", "{new}"], "does not exist; convert a BoneMet tree into it first"),
        (["composite", "{missing}"], "does not exist"),
        (["verify", "{missing}", "{store}"], "does not exist"),
        (["verify", "{src}", "{missing}"], "does not exist"),
        (["run", "{src}", "{new}", "--mice", "853", "--cluster", "none"], "--mice 853 matches"),
        (["run", "{src}", "{new}", "--from", "nowhere", "--cluster", "none"], "'projections'"),
        (["reconstruct", "{roi_only}"], "holds no rotation_xray scans, which reconstruct reads"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tree, converted, tmp_path, args, message):
    roi_only = tmp_path / "roi.zarr"
    if "{roi_only}" in args:
        CliRunner().invoke(app, ["convert", str(tree), str(roi_only), "--components", "roi_ct"])
    paths = {"src": tree, "store": converted, "new": tmp_path / "new.zarr",
             "missing": tmp_path / "nope", "roi_only": roi_only}  # fmt: skip
    result = CliRunner().invoke(app, [a.format(**{k: str(v) for k, v in paths.items()})
                                      for a in args], env=WIDE)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
    assert not (tmp_path / "new.zarr" / "recon_ct").exists()  # nothing half-made


def test_selection_forms_reach_the_stages(converted, tmp_path):
    """``mice="851"`` is one mouse (not '8', '5', '1'); ``weeks=0`` is week 0."""
    import bonemet_dask as bm

    out = tmp_path / "out.zarr"
    report = bm.segment_store(str(converted), str(out), mice="851", weeks=0)
    assert report.written == ["seg_ct/851/left/week0", "seg_ct/851/right/week0"]
    again = bm.segment_store(str(converted), str(out), mice=851, weeks="0-1")
    assert again.counts()["up to date"] == 2 and again.counts()["written"] == 2
