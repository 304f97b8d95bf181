"""The sparse-view reconstruction task: FDK from 260, 130, 65 and 26 views, scored by PSNR and SSIM.

BoneMet's published sparse-angle benchmark reconstructs a scan from fewer projections of the
same arc and scores each volume by PSNR and SSIM against the reconstruction from every view
(260 views of 0.8 degrees over a 208 degree short scan): the baseline a learned method must
beat.  This script runs it on a synthetic scan: it generates one mouse, one week (projections
and Recon-CT, seed 0), converts it, reconstructs it with ``bm.reconstruct`` (FDK, Parker
short-scan weights, Hamming window, on NRecon's grid) from every view and from
``bm.ml.sparse_views(scan, n)`` for each ``n``, and scores each with
``bm.ml.sparse_view_scores`` (scikit-image's metrics; data range max - min of the full
reconstruction) over the whole volume, inside the object (Otsu threshold of the full
reconstruction) and inside the bone (grey >= 75 in NRecon's window).  It writes every number,
the machine and the versions to ``benchmarks/results/sparse-views.json``, one central slice per
``n`` to ``benchmarks/results/sparse-views.png`` and prints the markdown table of BENCHMARKS.md.

Run: ``.venv/bin/python benchmarks/sparse_views.py [--size small] [--views 260 130 65 26]
[--seed 0] [--workdir DIR] [--json FILE] [--figure FILE]``

Every synthetic size writes 260 views over 208 degrees; ``small`` (1/16 of the published size:
252 x 168 pixel projections, a 168 x 152 x 162 volume of 160 um voxels) takes about a minute on
two cores.  Reconstruction runs on dask's threaded scheduler; the time of each is also given as
a ratio to the full reconstruction's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SCAN = "rotation_xray/851/both/week0"
RESULTS = HERE / "results"


def _reconstruct(projections) -> tuple[np.ndarray, float, list[str]]:
    """The volume, the wall seconds it took, and the distinct warnings it raised."""
    import bonemet_dask as bm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        volume = bm.reconstruct(projections).compute()
        seconds = time.perf_counter() - start
    return volume, seconds, sorted({str(w.message) for w in caught})


def run(size: str, views: list[int], seed: int, workdir: Path) -> dict[str, Any]:
    """Generate, convert, reconstruct from every view and from each count, score; all numbers."""
    from skimage.filters import threshold_otsu

    import bonemet_dask as bm
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.ops.reconstruct import geometry_from_attrs
    from bonemet_dask.synth import THRESHOLD, SynthConfig, generate

    config = SynthConfig(
        mice=1, weeks=1, size=size, seed=seed, components=("rotation_xray", "recon_ct")
    )
    source, store = workdir / "src", workdir / "store.zarr"
    start = time.perf_counter()
    if not store.exists():
        generate(str(source), config)
        convert(str(source), str(store), components="rotation_xray")
    prepared = time.perf_counter() - start
    scan = bm.open_store(str(store))[SCAN]
    image = scan.dataset["image"]
    _reconstruct(bm.ml.sparse_views(scan, 26))  # warm-up: numba's compiled kernels load once
    full, full_seconds, full_warnings = _reconstruct(scan)
    reference = full.values
    objects = reference > threshold_otsu(reference)
    bone = bm.to_uint8(full.chunk()).values >= THRESHOLD
    geometry = geometry_from_attrs(image.attrs)
    rows = []
    for n in views:
        sparse = bm.ml.sparse_views(scan, n)
        volume, seconds, raised = _reconstruct(sparse)
        values = volume.values
        angles = sparse.angle.values
        row = {
            "n_views": n,
            "stride": int(sparse.index.values[1] - sparse.index.values[0]),
            "step_deg": float(angles[1] - angles[0]),
            "arc_deg": float(angles[-1] - angles[0]),
            "seconds": seconds,
            "time_ratio_to_full": seconds / full_seconds,
            "object_mean_ratio": float(values[objects].mean() / reference[objects].mean()),
            "whole": bm.ml.sparse_view_scores(reference, values),
            "object": bm.ml.sparse_view_scores(reference, values, mask=objects),
            "bone": bm.ml.sparse_view_scores(reference, values, mask=bone),
            "warnings": raised,
            "central_slice": values[values.shape[0] // 2],
        }
        rows.append(row)
        print(
            f"{n:4d} views: PSNR {row['whole']['psnr_db']:.2f} dB, SSIM {row['whole']['ssim']:.4f}"
            f", {seconds:.2f} s",
            flush=True,
        )
    return {
        "size": size,
        "seed": seed,
        "scan": SCAN,
        "projections": list(image.shape),
        "volume": list(reference.shape),
        "voxel_size_um": float(geometry.voxel_size * 1000),
        "half_fan_deg": geometry.fan_half_angle_deg,
        "full_arc_deg": float(geometry.angles_deg[-1] - geometry.angles_deg[0]),
        "filter": "hamming",
        "scheduler": "dask threaded (default), no distributed cluster",
        "masks": {
            "object": {
                "rule": "full reconstruction > Otsu threshold",
                "voxels": int(objects.sum()),
            },
            "bone": {
                "rule": f"bm.to_uint8(full) >= {THRESHOLD} (NRecon's window of the scan)",
                "voxels": int(bone.sum()),
            },
        },
        "prepare_seconds": prepared,
        "full": {"seconds": full_seconds, "warnings": full_warnings},
        "central_slice_full": reference[reference.shape[0] // 2],
        "rows": rows,
    }


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and infinities as the string "inf"."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def table(result: dict[str, Any]) -> str:
    """The markdown table of BENCHMARKS.md."""
    lines = [
        "| views | step | arc | PSNR whole (dB) | SSIM whole | PSNR object | SSIM object | "
        "PSNR bone | SSIM bone | object mean / full | time / full |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        cells = [f"{row['n_views']}", f"{row['step_deg']:.1f} deg", f"{row['arc_deg']:.1f} deg"]
        for part in ("whole", "object", "bone"):
            psnr, ssim = row[part]["psnr_db"], row[part]["ssim"]
            cells += ["inf" if psnr == float("inf") else f"{psnr:.2f}", f"{ssim:.4f}"]
        cells += [f"{row['object_mean_ratio']:.4f}", f"{row['time_ratio_to_full']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(result: dict[str, Any], path: Path) -> None:
    """One central slice per view count, on one grey scale (the full reconstruction's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    full = result["central_slice_full"]
    lo, hi = np.percentile(full, (0.5, 99.5))
    fig, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 3.2), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        ax.imshow(row["central_slice"], cmap="gray", vmin=lo, vmax=hi)
        psnr = row["whole"]["psnr_db"]
        label = (
            "reference"
            if psnr == float("inf")
            else f"{psnr:.1f} dB, SSIM {row['whole']['ssim']:.3f}"
        )
        ax.set_title(f"{row['n_views']} views\n{label}", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(
        f"FDK from fewer views of the same {result['full_arc_deg']:.0f} deg arc "
        f"(synthetic {result['size']}, central slice)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line: run, write the JSON and figure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=("tiny", "small", "medium"))
    parser.add_argument("--views", type=int, nargs="+", default=[260, 130, 65, 26])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "sparse-views.json")
    parser.add_argument("--figure", type=Path, default=RESULTS / "sparse-views.png")
    args = parser.parse_args(argv)
    from suite import machine

    load = list(os.getloadavg())  # other jobs on the machine: times are ratios for this reason
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.size, args.views, args.seed, workdir)
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        figure(result, args.figure)
    result.pop("central_slice_full")
    for row in result["rows"]:
        row.pop("central_slice")
    result["machine"] = machine()
    result["machine"]["load_average_at_start"] = load
    result["date"] = time.strftime("%Y-%m-%d")
    given = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(["python benchmarks/sparse_views.py", *given])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
