"""Scheduler load and client memory of ``run`` as the number of mice grows.

Run: ``.venv/bin/python benchmarks/bench_run.py [--mice 10 50] [--concurrency 2]
[--until segment] [--json]``

Starts a scheduler and two one-thread workers as separate processes (``dask scheduler`` and
``dask worker`` joined by a scheduler file, as on a cluster), so the client's memory is the
client's alone.  For each number of mice it writes a tiny synthetic tree (Recon-CT only) and
runs ``bm.run(..., start="recon_ct")`` on a fresh store, with a scheduler plugin recording the
most tasks the scheduler held at once and the largest graph one call submitted.  Prints, per
run: seconds per mouse, peak tasks, largest graph, and the client's RSS after the first mouse,
after 10 and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import bonemet_dask as bm
from bonemet_dask.diagnostics import TaskPeak, task_peak
from bonemet_dask.synth import SynthConfig, generate


def cluster(workdir: Path) -> tuple[list[subprocess.Popen], str]:
    """A scheduler and two one-thread workers in their own processes."""
    bin_dir = os.path.dirname(sys.executable)
    scheduler_file = str(workdir / "scheduler.json")
    scheduler = subprocess.Popen(
        [f"{bin_dir}/dask", "scheduler", "--scheduler-file", scheduler_file, "--host",
         "127.0.0.1", "--dashboard-address", ":0", "--no-show"], stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while not os.path.exists(scheduler_file):
        time.sleep(0.05)
    workers = subprocess.Popen(
        [f"{bin_dir}/dask", "worker", "--scheduler-file", scheduler_file, "--nworkers", "2",
         "--nthreads", "1", "--no-dashboard"], stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return [workers, scheduler], scheduler_file


def measure(client, workdir: Path, mice: int, concurrency: int, until: str) -> dict:
    src = workdir / f"src-{mice}"
    config = SynthConfig(mice=mice, weeks=2, size="tiny", seed=1, components=("recon_ct",))
    generate(str(src), config)
    rss: list[float] = []

    def memory(stage: str, done: int, total: int) -> None:
        if stage == until and done:
            rss.append(psutil.Process().memory_info().rss / 2**20)

    client.run_on_scheduler(task_peak)  # reset
    started = time.perf_counter()
    report = bm.run(str(src), str(workdir / f"store-{mice}.zarr"), start="recon_ct", until=until,
                    client=client,
                    concurrency=concurrency, progress=memory)  # fmt: skip
    seconds = time.perf_counter() - started
    peak, largest = client.run_on_scheduler(task_peak)
    return {
        "mice": mice,
        "concurrency": concurrency,
        "seconds_per_mouse": round(seconds / mice, 3),
        "peak_tasks": peak,
        "largest_graph": largest,
        "max_unit_graph": report.max_graph_tasks,
        "rss_mib_first": round(rss[0], 1),
        "rss_mib_after_10": round(rss[min(9, len(rss) - 1)], 1),
        "rss_mib_last": round(rss[-1], 1),
        "outputs": {name: r.counts()["written"] for name, r in report.stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mice", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--until", default="segment")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        processes, scheduler_file = cluster(Path(tmp))
        try:
            with bm.connect(scheduler_file) as client:
                client.wait_for_workers(2, timeout=60)
                client.register_plugin(TaskPeak())
                rows = [measure(client, Path(tmp), n, args.concurrency, args.until)
                        for n in args.mice]  # fmt: skip
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'mice':>5} {'s/mouse':>8} {'peak tasks':>11} {'largest graph':>14} "
          f"{'RSS MiB: 1st':>13} {'10th':>7} {'last':>7}")  # fmt: skip
    for row in rows:
        print(f"{row['mice']:>5} {row['seconds_per_mouse']:>8.2f} {row['peak_tasks']:>11} "
              f"{row['largest_graph']:>14} {row['rss_mib_first']:>13.1f} "
              f"{row['rss_mib_after_10']:>7.1f} {row['rss_mib_last']:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
