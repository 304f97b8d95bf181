"""Per-core throughput of every stage of ``run``: the rates of ``bonemet-dask plan --profile full``.

Generates a synthetic tree (one mouse, two weeks, raw projections and the Recon-CT whose ``.log``
gives NRecon's window), then runs the chain one stage at a time (``run --until STAGE``, so each
call computes that stage only) on a LocalCluster of one-thread workers with numba pinned to one
thread, recording the task stream.  Core-seconds are the summed compute time of the stage's
tasks (idle and scheduling left out); each stage's work comes from the store it wrote (voxels,
tibia-weeks) and :func:`bonemet_dask.ops.plan_chain.work_units`.  The result is a rates file
(``--out``) with the ``cpu:`` block measured here and the other blocks copied from the packaged
file::

    .venv/bin/python benchmarks/bench_stages.py --size medium --workdir /tmp/bench-stages \\
        --out benchmarks/results/stage-rates.yaml

Copy the file over ``bonemet_dask/stage-rates.yaml`` to make it the package's default.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def measure(size: str, workdir: Path, workers: int) -> dict:
    """Run the chain stage by stage; return the ``cpu:`` rates and a per-stage table."""
    os.environ["NUMBA_NUM_THREADS"] = "1"  # before the workers start: they inherit it
    from chain_rates import stage_rates, stage_seconds
    from distributed import Client, LocalCluster, get_task_stream

    import bonemet_dask as bm
    from bonemet_dask.ops.plan_chain import ScanSizes
    from bonemet_dask.synth import SynthConfig, generate

    src, store = workdir / "src", str(workdir / "out.zarr")
    if not (src / "Imagery_Dataset").exists():
        started = time.perf_counter()
        generate(str(src), SynthConfig(mice=1, weeks=2, size=size, seed=3,
                                       components=("rotation_xray", "recon_ct")))  # fmt: skip
        print(f"generated {size} tree in {time.perf_counter() - started:.0f} s")
    shutil.rmtree(store, ignore_errors=True)  # every stage computes: nothing is up to date
    sizes = ScanSizes.synthetic(size)
    rows, rates = [], {}
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        for stage in ("convert", "reconstruct", "segment", "register", "composite"):
            started = time.perf_counter()
            with get_task_stream(client=client) as stream:
                report = bm.run(str(src), store, until=stage, client=client, overwrite=True,
                                metrics_csv=str(workdir / "metrics.csv"))  # fmt: skip
            wall = time.perf_counter() - started
            part = report.stages[stage]
            if part.failed:
                raise SystemExit(f"{stage} failed: {part.failed}")
            spent = stage_seconds(stream.data)
            core_s, bp_s, search_s = spent["total"], spent["backproject"], spent["search"]
            found, units = stage_rates(stage, spent, store, sizes)
            rates.update(found)
            rows.append((stage, units, wall, core_s, bp_s, search_s))
    return {"rates": rates, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table, write the rates file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="medium", choices=("tiny", "small", "medium"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-stages"))
    parser.add_argument("--workers", type=int, default=2, help="one-thread workers")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stage-rates.yaml"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = measure(args.size, args.workdir, args.workers)
    print("\n| stage | work | wall s | core-s | of which backprojection / search |")
    print("|---|---|---:|---:|---:|")
    for stage, units, wall, core_s, bp_s, search_s in result["rows"]:
        extra = f"{bp_s:.1f}" if bp_s else (f"{search_s:.1f}" if search_s else "")
        print(f"| {stage} | {units} | {wall:.1f} | {core_s:.1f} | {extra} |")
    from bonemet_dask.ops.plan_chain import CPU_RATE_KEYS, RATES_FILE

    with open(RATES_FILE, encoding="utf-8") as handle:
        text = handle.read()
    packaged = yaml.safe_load(text)
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    packaged["measured"]["cpu"] = (
        f"benchmarks/bench_stages.py --size {args.size} --workers {args.workers} "
        f"({datetime.date.today()}, {os.cpu_count()} cores, {platform.machine()}; one mouse x 2 "
        "weeks, core-seconds = summed task compute time)"
    )
    packaged["cpu"] = {key: float(f"{result['rates'][key]:.4g}") for key in CPU_RATE_KEYS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + yaml.safe_dump(packaged, sort_keys=False), encoding="utf-8")
    print(f"\nrates: {packaged['cpu']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
