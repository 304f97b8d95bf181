"""``plan --profile full`` for every stage: the chain's arithmetic against the real graphs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bonemet_dask.cli import app
from bonemet_dask.geometry import VolumeGrid
from bonemet_dask.ops.plan_chain import (
    RATES_FILE,
    ScanSizes,
    cluster_time,
    load_rates,
    plan_chain,
    reconstruction_graph,
    stage_frame,
    work_units,
)
from bonemet_dask.ops.reconstruct import slab_slices_in_shard

REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "250"}


def test_reconstruction_tasks_are_the_ones_run_submits(tiny_published, tmp_path):
    from bonemet_dask.ops.reconstruct_store import reconstruct_store

    report = reconstruct_store(
        str(tiny_published / "published.zarr"), str(tmp_path / "recon.zarr"), weeks=[0]
    )
    assert len(report.written) == 1
    tasks, largest = reconstruction_graph(ScanSizes.synthetic("tiny"))
    assert tasks == report.max_graph_tasks
    assert largest > 0


def test_full_size_reconstruction_graph_fits_the_memory_budget():
    tasks, largest = reconstruction_graph(ScanSizes.published())
    # 84 slabs of 32 slices, 10 angle blocks of 26, 84 row bands of 32: thousands, not millions
    assert 1_000 < tasks < 10_000
    # a slab's tree sum holds three float32 slabs: 64-slice slabs (4.8 GB) got 4 GiB workers
    # killed (benchmarks/full_slab_memory.py); 32-slice ones (2.4 GB) peak at 3.5 GiB
    assert largest < 0.6 * 4 * 2**30  # bonemet.memory-budget: 4 GiB a worker
    sizes = ScanSizes.published()
    grid = VolumeGrid(sizes.recon, sizes.geometry.voxel_size)
    assert slab_slices_in_shard(64, grid, sizes.geometry) == 32
    medium = ScanSizes.synthetic("medium")
    grid = VolumeGrid(medium.recon, medium.geometry.voxel_size)
    assert slab_slices_in_shard(64, grid, medium.geometry) == 64  # one slab a shard
    updates = work_units("reconstruct", ScanSizes.published())["updates"]
    assert updates == pytest.approx(4.39e12, rel=0.01)  # BENCHMARKS.md: one full scan


def test_stages_read_what_the_stage_before_wrote():
    plans = {p.stage: p for p in plan_chain()}
    assert list(plans) == ["convert", "reconstruct", "segment", "register", "composite"]
    assert plans["reconstruct"].bytes_in == plans["convert"].bytes_out
    assert plans["segment"].bytes_in == plans["reconstruct"].bytes_out
    assert plans["register"].bytes_in == plans["segment"].bytes_out
    assert plans["composite"].bytes_in == pytest.approx(2 * plans["register"].bytes_out)
    assert plans["convert"].bytes_in == pytest.approx(20.93e12)  # the published projections
    assert plans["register"].units == 2 * plans["reconstruct"].units == 10_210
    # the chain's stores stay near a million objects, as the conversion's (docs/store-layout.md,
    # "Stored objects"): the stages' shards hold about 256 MiB decoded, not 64 slices
    total = sum(p.objects for p in plans.values())
    assert total < 1.4e6  # 1,327,300


def test_cluster_time_scales_and_names_the_bound():
    plans = plan_chain()
    cpu = cluster_time(plans, nodes=8, cores=32)
    assert cpu.bound == "reconstruct"
    assert cpu.overlapped_hours == pytest.approx(sum(p.core_hours for p in plans) / 256)
    twice = cluster_time(plans, nodes=16, cores=32)
    assert twice.overlapped_hours == pytest.approx(cpu.overlapped_hours / 2)
    gpu = cluster_time(plans, nodes=8, cores=32, gpus=1)
    recon = next(p for p in plans if p.stage == "reconstruct")
    assert gpu.stage_hours["reconstruct"] == pytest.approx(
        max(recon.gpu_hours / 8, recon.host_core_hours / 256)
    )
    host = sum(p.host_core_hours if p.gpu_hours else p.core_hours for p in plans) / 256
    assert gpu.overlapped_hours == pytest.approx(max(host, recon.gpu_hours / 8))
    assert gpu.overlapped_hours < cpu.overlapped_hours / 4  # the backprojection moved off
    # a node that holds only 4 of the largest tasks runs 4 at a time, whatever its cores
    largest = max(p.peak_task_bytes for p in plans)
    small = cluster_time(plans, nodes=8, cores=32, node_memory=4 * largest + 1)
    assert small.workers_per_node == 4
    assert small.overlapped_hours == pytest.approx(cpu.overlapped_hours * 8)
    with pytest.raises(ValueError, match="nodes=0"):
        cluster_time(plans, nodes=0, cores=32)
    frame = stage_frame(plans, gpu)
    assert frame["stage"].iloc[-1] == "total"
    assert frame["core_hours"].iloc[-1] == pytest.approx(sum(p.core_hours for p in plans))


def test_rates_file_errors_name_the_key_and_the_file(tmp_path):
    raw = yaml.safe_load(Path(RATES_FILE).read_text())
    raw["cpu"]["segment_core_s_per_mvox"] = -1
    bad = tmp_path / "rates.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"cpu\.segment_core_s_per_mvox=-1"):
        load_rates(bad)
    with pytest.raises(FileNotFoundError, match=r"bench_stages\.py"):
        load_rates(tmp_path / "none.yaml")
    result = CliRunner().invoke(app, ["plan", "--profile", "full", "--rates", str(bad)], env=WIDE)
    assert result.exit_code == 2 and "segment_core_s_per_mvox" in result.output


def test_packaged_rates_are_the_benchmarks_measurement():
    packaged = load_rates()
    measured = load_rates(REPO / "benchmarks" / "results" / "stage-rates.yaml")
    assert packaged.cpu == measured.cpu
    assert "bench_stages.py" in packaged.measured["cpu"]
    half = load_rates()
    assert all(v > 0 and math.isfinite(v) for v in half.cpu.values())


def test_cli_prints_the_chain_and_the_answer():
    args = ["plan", "--profile", "full", "--nodes", "8", "--cores", "32", "--gpus", "0"]
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    for stage in ("convert", "reconstruct", "segment", "register", "composite"):
        assert stage in result.output
    assert "bound by reconstruct" in result.output and "GB/s" in result.output
    memory = CliRunner().invoke(app, [*args, "--node-memory", "lots"], env=WIDE)
    assert memory.exit_code == 2 and "lots" in memory.output


def test_plan_counts_the_objects_a_run_writes(tiny_published, tmp_path):
    """``plan``'s stored objects per scan group are the files ``convert`` and ``run`` write:
    shards, done-markers, metadata documents, labels and coordinate arrays."""
    import zarr

    from bonemet_dask.ops.plan_chain import STAGE_ARRAYS, scan_objects
    from bonemet_dask.ops.run import run

    store = tmp_path / "chain.zarr"
    report = run(tiny_published / "src", str(store), start="recon_ct", metrics_csv=None)
    assert report.exit_code == 0
    groups = {"reconstruct": "recon_ct", "segment": "seg_ct", "register": "regist_ct",
              "composite": "roi_ct"}  # fmt: skip
    checked = 0
    for root, stages in ((tiny_published / "published.zarr", {"convert": "rotation_xray"}),
                         (store, groups)):  # fmt: skip
        tree = zarr.open_group(str(root), mode="r")
        for stage, component in stages.items():
            for mouse in tree[component].group_keys():
                for side in tree[f"{component}/{mouse}"].group_keys():
                    for week in tree[f"{component}/{mouse}/{side}"].group_keys():
                        path = f"{component}/{mouse}/{side}/{week}"
                        image = tree[path]["0"]
                        n_shards = math.ceil(image.shape[0] / image.shards[0])
                        images, labels = STAGE_ARRAYS[stage]
                        files = [p for p in (root / path).rglob("*") if p.is_file()]
                        expected = scan_objects(n_shards, images=images, labels=labels)
                        assert len(files) == expected, (path, sorted(map(str, files)))
                        checked += 1
    assert checked == 2 + 2 + 4 + 4 + 4
