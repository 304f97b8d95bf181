"""ML sampling throughput: ``bm.ml.samples`` over the store against decoding the same PNG slices.

Run: ``.venv/bin/python benchmarks/bench_samples.py [--workdir DIR] [--mice 1] [--repeats 2]``

The data: a synthetic BoneMet tree holding Regist-CT at the published size (1538 slices of
539 x 509 per tibia, 2 tibiae per mouse, the phantom voxelised with grey noise, PNG zlib level
6), converted with ``bm.convert`` (default layout: shards of 1024 slices, inner chunks of
64 x 256 x 256, blosc-zstd 1 + bitshuffle).  One mouse is 3076 slices, 844 MB decoded.

What a user of the published dataset does to get the same slices in random order, against
what the store gives, each in its own process pinned to 1 and then 2 cores
(``os.sched_setaffinity``; blosc and zarr get as many threads), warm page cache:

* ``imagecodecs``: read each PNG file and ``imagecodecs.png_decode`` it, in a shuffled order
  (2 cores: 2 processes, each decoding half and sending nothing back, the users' best case:
  a 2-thread pool did not scale) - DESIGN.md's baseline;
* ``pillow``: the same with ``numpy.asarray(PIL.Image.open(path))``;
* ``bonemet_png``: the same with this package's own decoder (``kernels.png_decode``), a
  stronger peer than the users' decoders;
* ``zarr_slabs``: the store read through zarr-python instead, the same 64-slice slabs in a
  shuffled order (2 threads ahead) and every slice copied out: what ``samples`` would cost
  without its shard reader (:mod:`bonemet_dask.ml._shards`);
* ``samples``: ``bm.ml.samples(store, "regist_ct", unit="slice", shuffle=True)`` with its
  defaults (256 MiB shuffle buffer, 2 read units ahead on threads).

Reported per method and core count: slices/s and MB/s (decoded) over wall time, slices per
CPU-second (``time.process_time``: robust when other jobs share the machine), the peak RSS
growth while iterating (``VmHWM`` reset through ``/proc/self/clear_refs``), and for ``samples``
its stated ``memory_bound`` and, in a separate run, the ``tracemalloc`` peak.  The ratios
``samples / imagecodecs`` per core are DESIGN.md's target (>= 3x).  Everything, every repeat
included, goes to ``benchmarks/results/ml-samples.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from suite import machine  # noqa: E402  (the JSON's machine record, shared with the suite)

RESULTS = HERE / "results" / "ml-samples.json"
METHODS = ("imagecodecs", "pillow", "bonemet_png", "zarr_slabs", "samples")
PACKAGES = ("bonemet-dask", "numpy", "zarr", "numcodecs", "imagecodecs", "pillow", "dask")
COMPONENT = "regist_ct"


# ------------------------------------------------------------------------------ the data


def prepare(workdir: Path, mice: int, png_level: int) -> tuple[Path, Path]:
    """Generate the PNG tree and convert it once; reused by later runs with the same workdir."""
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.synth import SynthConfig, generate

    src, store = workdir / "src", workdir / "store.zarr"
    marker = workdir / f"ready-{mice}-{png_level}"
    if not marker.exists():
        config = SynthConfig(mice=mice, weeks=1, size="full", seed=0, products="voxelised",
                             components=(COMPONENT,), png_level=png_level)  # fmt: skip
        started = time.perf_counter()
        generate(str(src), config, overwrite=True)
        print(f"generated {src} in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        convert(str(src), str(store), overwrite=True)
        print(f"converted to {store} in {time.perf_counter() - started:.0f} s", flush=True)
        marker.touch()
    return src, store


def png_files(src: Path) -> list[str]:
    return sorted(str(p) for p in src.glob("Imagery_Dataset/*Regist*/*/*/*.png"))


def warm(paths: list[Path]) -> int:
    """Read every file once so that every method starts from a warm page cache."""
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 24):
                total += len(block)
    return total


# ------------------------------------------------------------------------------ one measurement


def _rss_reset() -> int:
    """Reset the peak RSS (VmHWM) to the current RSS; return the current RSS in bytes."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(method: str, cores: int, src: Path, store: Path, repeats: int, trace: bool) -> dict:
    """Run in a child process pinned to ``cores`` CPUs; returns the JSON-ready result."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(allowed[:cores]))
    import numcodecs
    import numpy as np
    import zarr

    numcodecs.blosc.set_nthreads(cores)
    zarr.config.set({"threading.max_workers": cores})
    files = png_files(src)
    order = [files[k] for k in np.random.default_rng(0).permutation(len(files))]

    if method == "samples":
        import bonemet_dask as bm

        def run() -> tuple[int, int, dict]:
            stream = bm.ml.samples(str(store), COMPONENT, unit="slice", shuffle=True, seed=0)
            n = nbytes = 0
            for sample in stream:
                n += 1
                nbytes += sample.image.nbytes
            info = {"memory_bound": stream.memory_bound, "read_units": len(stream.units),
                    "stats": vars(stream.stats)}  # fmt: skip
            return n, nbytes, info
    elif method == "zarr_slabs":  # the reads samples() replaces: zarr-python, same slabs
        from concurrent.futures import ThreadPoolExecutor

        root = zarr.open_group(str(store), mode="r")
        arrays = [root[f"{COMPONENT}/{path}/0"] for path in _scan_paths(root)]
        slabs = [(a, z) for a in arrays for z in range(0, a.shape[0], 64)]
        slabs = [slabs[k] for k in np.random.default_rng(0).permutation(len(slabs))]

        def run() -> tuple[int, int, dict]:
            n = nbytes = 0
            with ThreadPoolExecutor(max_workers=2) as threads:  # as samples' prefetch=2
                for block in threads.map(lambda s: s[0][s[1] : s[1] + 64], slabs):
                    for plane in block:
                        nbytes += plane.copy().nbytes
                        n += 1
            return n, nbytes, {}
    elif cores == 1:

        def run() -> tuple[int, int, dict]:
            n, nbytes, _ = _decode_files((method, order))
            return n, nbytes, {}
    else:  # one process per core, each decoding its share (nothing sent back: the best case)
        import multiprocessing

        def run() -> tuple[int, int, dict]:
            with multiprocessing.get_context("fork").Pool(cores) as pool:
                parts = pool.map(_decode_files, [(method, order[k::cores]) for k in range(cores)])
            # the workers' CPU time, as process_time does not see it
            return (
                sum(p[0] for p in parts),
                sum(p[1] for p in parts),
                {"worker_cpu_seconds": sum(p[2] for p in parts)},
            )

    if trace:
        import tracemalloc

        tracemalloc.start()
        n, nbytes, info = run()
        info["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"method": method, "cores": cores, "slices": n, "bytes": nbytes, **info}
    runs = []
    for _ in range(repeats):
        rss = _rss_reset()
        wall, cpu = time.perf_counter(), time.process_time()
        n, nbytes, info = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        cpu += info.get("worker_cpu_seconds", 0.0)
        runs.append({"seconds": wall, "cpu_seconds": cpu, "slices": n, "bytes": nbytes,
                     "rss_growth": _status("VmHWM") - rss, **info})  # fmt: skip
    return {"method": method, "cores": cores, "runs": runs, "load": list(os.getloadavg())}


def _scan_paths(root: Any) -> list[str]:
    """``mouse/side/weekK`` of every scan of the component."""
    return sorted(
        "/".join(key.split("/")[:3])
        for key, _ in root[COMPONENT].members(max_depth=3)
        if key.count("/") == 3 and key.endswith("/0")
    )


def _decode_files(task: tuple[str, list[str]]) -> tuple[int, int, float]:
    """Read and decode PNG files one after the other: (count, decoded bytes, CPU seconds)."""
    method, paths = task
    decode = _decoder(method)
    started = time.process_time()
    n = nbytes = 0
    for path in paths:
        with open(path, "rb") as handle:
            nbytes += decode(handle.read()).nbytes
        n += 1
    return n, nbytes, time.process_time() - started


def _decoder(method: str) -> Any:
    import numpy as np

    if method == "imagecodecs":
        import imagecodecs

        return imagecodecs.png_decode
    if method == "pillow":
        import io

        from PIL import Image

        return lambda data: np.asarray(Image.open(io.BytesIO(data)))
    from bonemet_dask.kernels.png_decode import decode_png

    return decode_png


def child(method: str, cores: int, args: argparse.Namespace, *, trace: bool = False) -> dict:
    command = [sys.executable, __file__, "--measure", method, "--cores", str(cores),
               "--workdir", str(args.workdir), "--mice", str(args.mice),
               "--png-level", str(args.png_level), "--repeats", str(args.repeats)]  # fmt: skip
    if trace:
        command.append("--trace")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the report


def summarise(result: dict) -> dict:
    best = min(result["runs"], key=lambda r: r["seconds"])
    cpu = min(r["cpu_seconds"] for r in result["runs"])
    return {
        "slices_per_s": best["slices"] / best["seconds"],
        "mb_per_s": best["bytes"] / 1e6 / best["seconds"],
        "slices_per_cpu_s": best["slices"] / cpu,
        "rss_growth_mb": max(r["rss_growth"] for r in result["runs"]) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the generated tree and store here (reused when present)",
    )
    parser.add_argument("--mice", type=int, default=1, help="mice (2 tibiae of 1538 slices each)")
    parser.add_argument("--png-level", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.measure:  # a child: one method on some cores, JSON on stdout
        src, store = args.workdir / "src", args.workdir / "store.zarr"
        print(json.dumps(measure(args.measure, args.cores, src, store, args.repeats, args.trace)))
        return
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            args.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        args.workdir.mkdir(parents=True, exist_ok=True)
        src, store = prepare(args.workdir, args.mice, args.png_level)
        files = png_files(src)
        png_bytes = warm([Path(f) for f in files])
        store_bytes = warm([p for p in store.rglob("*") if p.is_file()])
        print(f"{len(files)} slices; PNG {png_bytes / 1e6:.0f} MB, store {store_bytes / 1e6:.0f} "
              f"MB; load {os.getloadavg()}", flush=True)  # fmt: skip
        results: dict[str, Any] = {
            "benchmark": "bench_samples", "date": datetime.date.today().isoformat(),
            "machine": machine(PACKAGES), "load_at_start": list(os.getloadavg()),
            "data": {"component": COMPONENT, "slices": len(files), "slice_shape": [539, 509],
                     "png_bytes": png_bytes, "store_bytes": store_bytes, "mice": args.mice,
                     "png_level": args.png_level},
            "measurements": [],
        }  # fmt: skip
        for cores in (1, 2):
            for method in METHODS:
                result = child(method, cores, args)
                result["summary"] = summarise(result)
                results["measurements"].append(result)
                s = result["summary"]
                print(f"{cores} core(s) {method:12s} {s['slices_per_s']:7.0f} slices/s "
                      f"{s['mb_per_s']:6.0f} MB/s {s['slices_per_cpu_s']:7.0f} slices/CPU-s "
                      f"RSS +{s['rss_growth_mb']:.0f} MB", flush=True)  # fmt: skip
        traced = child("samples", 1, args, trace=True)
        results["samples_tracemalloc"] = traced
        results["load_at_end"] = list(os.getloadavg())
    ratios = {}
    for cores in (1, 2):
        by = {m["method"]: m["summary"] for m in results["measurements"] if m["cores"] == cores}
        ratios[cores] = {
            peer: {"wall": by["samples"]["slices_per_s"] / by[peer]["slices_per_s"],
                   "cpu": by["samples"]["slices_per_cpu_s"] / by[peer]["slices_per_cpu_s"]}
            for peer in METHODS[:-1]
        }  # fmt: skip
    results["ratios"] = ratios
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")


def markdown(results: dict) -> str:
    rows = ["| cores | method | slices/s | MB/s | slices per CPU-s | samples / it (wall, CPU) "
            "| peak RSS growth |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in results["measurements"]:
        s, cores = m["summary"], m["cores"]
        ratio = results["ratios"][cores].get(m["method"])
        ratio_text = f"{ratio['wall']:.2f}x, {ratio['cpu']:.2f}x" if ratio else "-"
        rows.append(
            f"| {cores} | {m['method']} | {s['slices_per_s']:.0f} | {s['mb_per_s']:.0f} "
            f"| {s['slices_per_cpu_s']:.0f} | {ratio_text} | {s['rss_growth_mb']:.0f} MB |"
        )
    traced = results["samples_tracemalloc"]
    rows.append(
        f"\n`samples` memory: stated bound {traced['memory_bound'] / 1e6:.0f} MB, tracemalloc "
        f"peak {traced['tracemalloc_peak'] / 1e6:.0f} MB ({results['data']['slices']} slices of "
        f"539 x 509, {traced['read_units']} read units)"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
