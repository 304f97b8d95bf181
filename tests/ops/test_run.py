"""``run`` and the stage engine as users run them: the chain equals the stages one by one, the
user's client does the work, the scheduler's load is bounded, and planning builds no graph."""

import json
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import zarr
from dask.utils import key_split
from distributed import Client, LocalCluster, get_task_stream

import bonemet_dask as bm
from bonemet_dask.diagnostics import TaskPeak, task_peak
from bonemet_dask.io.catalog import Catalog, Stack
from bonemet_dask.ops.composite_store import composite_store
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.reconstruct_store import reconstruct_store
from bonemet_dask.ops.register_store import register_store
from bonemet_dask.ops.run import plan_run, run
from bonemet_dask.ops.segment_store import segment_store
from bonemet_dask.selection import Selection
from bonemet_dask.synth import SynthConfig, generate

SMALL = SynthConfig(
    mice=1, weeks=2, size="small", seed=11, components=("rotation_xray", "recon_ct")
)


@pytest.fixture
def tiny(tiny_published):
    return tiny_published


@pytest.mark.slow
def test_run_equals_the_stages_one_by_one(tmp_path, same_store):
    """From raw projections: ``run`` (CLI, subprocess) and the stages called one by one (API)
    write the same store, array for array and attribute for attribute, and the same metrics."""
    src = tmp_path / "src"
    generate(str(src), SMALL)
    by_stage = tmp_path / "stages.zarr"
    convert(src, str(by_stage), components="rotation_xray")
    reconstruct_store(str(by_stage))
    segment_store(str(by_stage))
    register_store(str(by_stage))
    report = composite_store(str(by_stage), metrics_csv=str(tmp_path / "stages.csv"))
    assert len(report.written) == 4  # two tibiae x two weeks, all from our own FDK volumes
    chained = tmp_path / "run.zarr"
    command = [sys.executable, "-m", "bonemet_dask.cli", "run", str(src), str(chained),
               "--cluster", "none",
               "--csv", str(tmp_path / "run.csv")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    same_store(by_stage, chained)
    assert (tmp_path / "run.csv").read_text() == (tmp_path / "stages.csv").read_text()
    again = run(src, str(chained), metrics_csv=None)
    assert all(not r.written for r in again.stages.values())
    assert again.stages["composite"].counts()["up to date"] == 4 and again.exit_code == 0
    assert len(again.table) == 4


def test_tiny_composites_do_not_crash_the_junction_tracker(tiny):
    """Regression: two fibula tracks ending in one slice made ``list.remove`` compare arrays."""
    report = composite_store(str(tiny / "published.zarr"), out=str(tiny / "c.zarr"))
    assert report.counts()["written"] == 4  # raised "truth value of an array is ambiguous"


def test_stages_run_on_the_active_client(tiny):
    """A notebook: a Client is active, no ``client=`` is passed; every stage's tasks run on its
    workers (the scheduler's task log), named by stage."""
    store, out = str(tiny / "published.zarr"), str(tiny / "notebook.zarr")
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
        as cluster, Client(cluster) as client, get_task_stream(client) as stream,
    ):  # fmt: skip
        bm.convert(str(tiny / "src"), out, components="rotation_xray")
        bm.reconstruct_store(out)
        bm.segment_store(store, out)
        bm.register_store(store, out, roll_starts="bonemet")
        bm.composite_store(store, str(tiny / "notebook-roi.zarr"))  # published regist
    logged = {key_split(task["key"]) for task in stream.data}  # collected as the stream closes
    # (dask fuses a map_blocks into the task that consumes it: ``segment-threshold`` runs
    # inside ``segment-write``)
    assert {"convert_shard", "fdk-filter", "fdk-backproject", "fdk-sum", "reconstruct-write",
            "reconstruct-finish", "segment-write", "register-write", "composite-write",
            "composite-finish"} <= logged  # fmt: skip
    assert not {"rechunk-split", "rechunk-merge"} & logged


def test_one_mouse_on_a_client_runs_its_scans_side_by_side(tiny, monkeypatch, same_store):
    """One mouse, a client of concurrency 2: its stages run two scans at once (the engine's
    pool gets two threads), and the store equals the one a serial run writes."""
    from bonemet_dask.ops import engine

    pools = []

    class Recorded(engine.ThreadPoolExecutor):  # the real pool, its size written down
        def __init__(self, max_workers=None, thread_name_prefix="", **kwargs):
            pools.append((thread_name_prefix, max_workers))
            super().__init__(max_workers, thread_name_prefix, **kwargs)

    src = str(tiny / "src")
    chain = {"start": "recon_ct", "until": "segment", "metrics_csv": None, "pyramid": False}
    serial = run(src, str(tiny / "serial.zarr"), concurrency=1, **chain)
    assert not pools and serial.exit_code == 0
    monkeypatch.setattr(engine, "ThreadPoolExecutor", Recorded)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
        as cluster, Client(cluster) as client,
    ):  # fmt: skip
        side_by_side = run(src, str(tiny / "side.zarr"), client=client, concurrency=2, **chain)
    assert side_by_side.exit_code == 0
    assert ("segment", 2) in pools  # two weeks of the one mouse at once
    same_store(tiny / "serial.zarr", tiny / "side.zarr")


def test_compute_false_returns_the_lazy_graph(tiny):
    store = str(tiny / "published.zarr")
    eager = reconstruct_store(store, str(tiny / "eager.zarr"))
    lazy = reconstruct_store(store, str(tiny / "lazy.zarr"), compute=False)
    group = zarr.open_group(str(tiny / "lazy.zarr"), mode="r")["recon_ct/851/both/week0"]
    assert group.attrs["bonemet"]["status"] == "incomplete" and not group["0"].nchunks_initialized
    report = lazy.compute()
    assert report.written == eager.written and report.shards_written == eager.shards_written
    for path in eager.written:
        a = zarr.open_group(str(tiny / "eager.zarr"), mode="r")[path]
        b = zarr.open_group(str(tiny / "lazy.zarr"), mode="r")[path]
        np.testing.assert_array_equal(a["0"][:], b["0"][:])
        assert b.attrs["bonemet"]["status"] == "complete"


def test_run_cli_reports_quarantine_with_exit_3(tiny, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from bonemet_dask.cli import app

    damaged = tmp_path / "src"
    shutil.copytree(tiny / "src", damaged)
    week = damaged / "Imagery_Dataset" / "2. Recon-CT" / "851" / "week 1"
    sorted(week.glob("*.png"))[3].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = ["run", str(damaged), str(tmp_path / "s.zarr"), "--from", "recon_ct", "--cluster",
            "none", "--roll-starts", "bonemet"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 3, result.output
    assert "quarantined convert" in result.output and "week 1" in result.output
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root["seg_ct/851/left/week0"].attrs["bonemet"]["status"] == "complete"  # week 0 goes on
    assert "week1" not in root["seg_ct/851/left"]


def fake_catalog(n_mice: int, weeks: int) -> Catalog:
    stacks = [
        Stack(component=component, mouse=str(1000 + m), side="both", week=w,
              folder=f"{component}/{1000 + m}/week {w}", scan_folder_name=str(1000 + m),
              files=())
        for m in range(n_mice) for w in range(weeks)
        for component in ("rotation_xray", "recon_ct")
    ]  # fmt: skip
    return Catalog(root="memory://bonemet", stacks=tuple(stacks))


def test_planning_10000_scan_records_builds_no_graph():
    catalog = fake_catalog(2000, 5)  # 10,000 projection scans (and their Recon-CT)
    tracemalloc.start()
    started = time.perf_counter()
    mice = plan_run(catalog, Selection())
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(mice) == 2000 and all(isinstance(m, str) for m in mice)
    assert peak < 4 * 2**20  # measured 0.74 MiB: ids only, no graph, no per-scan object kept
    assert seconds < 5  # measured 0.01 s (under tracemalloc)
    assert plan_run(catalog, Selection.of(mice="1007,1999", weeks=4)) == ["1007", "1999"]


@pytest.mark.slow
def test_scheduler_load_and_client_memory_stay_flat(tmp_path):
    """30 mice on a running cluster (scheduler and workers in other processes, joined by
    scheduler file): the scheduler never holds more than ``concurrency`` units' graphs, and the
    client's memory does not grow with the mice done.  The chain stops after segmentation: the
    bound is the run's orchestration, the same for every stage."""
    config = SynthConfig(mice=30, weeks=2, size="tiny", seed=1, components=("recon_ct",))
    generate(str(tmp_path / "src"), config)
    bin_dir = os.path.dirname(sys.executable)
    scheduler_file = str(tmp_path / "scheduler.json")
    scheduler = subprocess.Popen(
        [f"{bin_dir}/dask", "scheduler", "--scheduler-file", scheduler_file, "--host",
         "127.0.0.1", "--dashboard-address", ":0", "--no-show"], stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers = None
    try:
        while not os.path.exists(scheduler_file):
            time.sleep(0.05)
        workers = subprocess.Popen(
            [f"{bin_dir}/dask", "worker", "--scheduler-file", scheduler_file, "--nworkers", "2",
             "--nthreads", "1", "--no-dashboard"], stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import psutil

        client = bm.connect(scheduler_file)
        client.wait_for_workers(2, timeout=60)
        client.register_plugin(TaskPeak())
        rss: list[float] = []

        def memory(stage, done, total):
            if stage == "segment" and done:
                rss.append(psutil.Process().memory_info().rss / 2**20)

        with client:
            report = run(str(tmp_path / "src"), str(tmp_path / "s.zarr"), start="recon_ct",
                         until="segment", concurrency=2, progress=memory)  # fmt: skip
            peak, largest = client.run_on_scheduler(task_peak)
    finally:
        for process in (workers, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    assert report.stages["segment"].counts()["written"] == 120 and len(report.mice) == 30
    assert largest <= 2 * report.max_graph_tasks  # one unit's graph, whatever the mice
    assert peak <= 2 * largest  # measured 24 = 2 x 12: two mice in flight, never more
    assert len(rss) == 30 and rss[-1] - rss[9] < 12  # MiB over 20 mice; 3.7 over 40 measured
    json.dumps(report.stages["segment"].counts())  # the report is plain data


def test_a_run_keeps_the_metrics_rows_of_earlier_runs(tmp_path):
    """``run`` over mouse A, then over mouse B, into one store: the CSV is the store's, so it
    holds both mice's rows (sorted by numeric id: 99 before 100), and rerunning A adds none;
    ``report.table`` stays the run's own rows.  ``composite_store`` writes the same CSV."""
    import pandas as pd

    # seed 2: every tiny tibia has a fibula the junction tracker finds
    config = SynthConfig(mice=2, weeks=2, size="tiny", seed=2, products="voxelised",
                         components=("recon_ct",), first_mouse_id=99)  # fmt: skip
    generate(str(tmp_path / "src"), config)
    a, b = config.mouse_ids
    assert (a, b) == ("99", "100")
    store, csv = str(tmp_path / "s.zarr"), tmp_path / "metrics.csv"
    common = {"start": "recon_ct", "until": "composite", "metrics_csv": str(csv),
              "options": {"register": {"roll_starts": "bonemet"}}}  # fmt: skip

    def rows() -> list[tuple[str, str, int]]:
        table = pd.read_csv(csv, dtype={"mouse": str})
        assert {"Animal ID", "bone_volume_mm3"} <= set(table.columns)  # joined with the records
        return list(zip(table["mouse"], table["side"], table["week"], strict=True))

    first = run(str(tmp_path / "src"), store, mice=a, **common)
    assert first.exit_code == 0 and first.csv == str(csv)
    scans = [(m, s, w) for m in (a, b) for s in ("left", "right") for w in (0, 1)]
    assert rows() == scans[:4]
    second = run(str(tmp_path / "src"), store, mice=b, **common)
    assert second.stages["composite"].counts()["written"] == 4
    assert list(second.table["mouse"].unique()) == [b]  # the table: this run's scans only
    assert rows() == scans  # mouse A's rows kept, numeric order
    before = csv.read_text()
    again = run(str(tmp_path / "src"), store, mice=a, **common)
    assert again.stages["composite"].counts()["up to date"] == 4
    assert rows() == scans and csv.read_text() == before  # no duplicate, the same values
    csv.unlink()
    report = composite_store(store, mice=b, metrics_csv=str(csv))  # the stage on its own
    assert report.counts()["up to date"] == 4 and len(report.table) == 4
    assert rows() == scans and csv.read_text() == before
