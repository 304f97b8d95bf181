"""Synthetic BoneMet generation speed per size, and the full-size cost extrapolated from samples.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--sizes tiny small medium] [--full-sample]``

For each size it writes one animal x one week (every component) into a temporary folder after a
warm-up run (numba JIT, page cache) and reports seconds per scan.  ``--full-sample`` times a few
full-size projections and reconstruction slabs and extrapolates to a whole full-size scan; a
full-size tree is never written (it is ~35 GB per scan).  The raw limit quoted beside the
projection rate is the PNG encode of the same images, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import imagecodecs
import numpy as np

from bonemet_dask.synth import SynthConfig, generate, line_integrals, voxelize
from bonemet_dask.synth.anatomy import hindlimb_phantom, pose_matrix, random_pose
from bonemet_dask.synth.generate import plan_mice


def time_size(size: str) -> dict[str, float]:
    config = SynthConfig(mice=1, weeks=1, size=size, seed=1)
    with tempfile.TemporaryDirectory() as warm:
        generate(warm, SynthConfig(mice=1, weeks=1, size="tiny", seed=1))
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        generate(out, config)
        seconds = time.perf_counter() - started
    geo, grid = config.geometry(), config.recon_grid()
    return {
        "seconds_per_scan": seconds,
        "detector": f"{geo.n_rows}x{geo.n_cols}",
        "recon": "x".join(map(str, grid.shape)),
    }


def full_sample(views: int = 4, slices: int = 8) -> dict[str, float]:
    config = SynthConfig(mice=1, weeks=1, size="full", seed=1)
    geo, grid = config.geometry(), config.recon_grid()
    plan = plan_mice(config)[0]
    world = hindlimb_phantom(plan.legs, 1, pose_matrix(random_pose(np.random.default_rng(1))))
    packed = world.pack()
    line_integrals(packed, geo, 0.0)  # warm
    started = time.perf_counter()
    for angle in geo.angles_deg[:: len(geo.angles_deg) // views][:views]:
        integral = line_integrals(packed, geo, float(angle))
    project = (time.perf_counter() - started) / views
    counts = np.clip(40000 * np.exp(-integral), 0, 65535).astype(np.uint16)
    started = time.perf_counter()
    imagecodecs.png_encode(counts, level=config.png_level)
    encode16 = time.perf_counter() - started
    middle = grid.shape[0] // 2
    started = time.perf_counter()
    mu = voxelize(packed, grid.slab(middle, middle + slices), supersample=config.voxel_supersample)
    voxel = (time.perf_counter() - started) / slices
    grey = np.clip(mu[0] * (255 / 0.11), 0, 255).astype(np.uint8)
    started = time.perf_counter()
    imagecodecs.png_encode(grey, level=config.png_level)
    encode8 = time.perf_counter() - started
    rays = geo.n_rows * geo.n_cols
    scan = len(geo.angles_deg) * (project + encode16) + grid.shape[0] * (voxel + encode8)
    return {
        "projection_s_per_view": project,
        "projection_Mrays_per_s": rays / project / 1e6,
        "png16_encode_s_per_view": encode16,
        "recon_s_per_slice": voxel,
        "png8_encode_s_per_slice": encode8,
        "projections_plus_recon_s_per_scan_extrapolated": scan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=["tiny", "small", "medium"])
    parser.add_argument("--full-sample", action="store_true")
    args = parser.parse_args()
    for size in args.sizes:
        result = time_size(size)
        print(f"{size:7s} {result}", flush=True)
    if args.full_sample:
        for key, value in full_sample().items():
            print(f"full    {key}: {value:.3f}", flush=True)


if __name__ == "__main__":
    main()
