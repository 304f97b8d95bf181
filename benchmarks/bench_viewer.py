"""napari and ome-zarr-py on a full-size synthetic Recon-CT scan: what opening it reads.

1. The scan: the synthetic generator's medium Recon-CT (one mouse, ``convert``-ed), upsampled 4x
   (nearest) to the published 2685 x 2428 x 2588 and given the generator's grey noise
   (sigma 2 grey levels) at full resolution, written with the store's CT layout (64-slice
   shards of 64 x 256 x 256 chunks, blosc-zstd + bitshuffle) by the store's own shard writer.
   16.9 GB decoded.
2. ``bonemet-dask pyramid STORE`` adds its levels (timed).
3. Each viewer case runs in its own process (``viewer_reads.py``) with ``--viewer-python``, an
   interpreter that has ``ome-zarr`` and ``napari`` + ``napari-ome-zarr`` (not dependencies of
   this project); napari runs under ``xvfb-run`` when there is no display.

Every step is skipped when its output exists, so a rerun only measures.

    python -m venv /tmp/nv && /tmp/nv/bin/pip install "napari[pyqt5]" napari-ome-zarr ome-zarr
    python benchmarks/bench_viewer.py --workdir /tmp/viewer --viewer-python /tmp/nv/bin/python
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from bonemet_dask.io.store import (
    ImageLayout,
    create_image_group,
    get_bonemet_attrs,
    read_ome_scale,
    set_status,
    write_shard,
)
from bonemet_dask.synth.config import GREY_NOISE_SIGMA

logger = logging.getLogger("bench_viewer")
FULL = (2685, 2428, 2588)
UPSAMPLE = 4
GROUP = "recon_ct/1/both/week0"
HERE = Path(__file__).resolve().parent


def medium_scan(workdir: Path) -> zarr.Array:
    """The generator's medium Recon-CT, converted (generated once)."""
    store = workdir / "medium.zarr"
    if not (store / "zarr.json").exists():
        from bonemet_dask.ops.convert import convert
        from bonemet_dask.synth import SynthConfig, generate

        config = SynthConfig(mice=1, weeks=1, size="medium", seed=3, components=("recon_ct",),
                             products="voxelised")  # fmt: skip
        generate(str(workdir / "src"), config)
        convert(str(workdir / "src"), str(store))
    root = zarr.open_group(str(store), mode="r")
    (mouse,) = root["recon_ct"].group_keys()
    return root[f"recon_ct/{mouse}/both/week0"]


def _upsampled_shard(source: np.ndarray, layout: ImageLayout, shard: int) -> np.ndarray:
    z = layout.shard_slices(shard)
    rows = np.minimum(np.arange(z.start, z.stop) // UPSAMPLE, source.shape[0] - 1)
    block = source[rows].repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
    block = block[:, : FULL[1], : FULL[2]]
    noise = np.random.default_rng(shard).standard_normal(block.shape, dtype=np.float32)
    noise *= np.float32(GREY_NOISE_SIGMA)
    return np.clip(np.rint(block + noise), 0, 255).astype(np.uint8)


def full_scan(workdir: Path, medium: zarr.Group) -> Path:
    """Write the full-size scan (resumable by its status); returns the store path."""
    store = workdir / "full.zarr"
    root = zarr.open_group(str(store), mode="a")
    if GROUP in root and get_bonemet_attrs(root[GROUP]).get("status") == "complete":
        return store
    attrs = get_bonemet_attrs(medium)
    voxel = read_ome_scale(medium)[0] / UPSAMPLE
    layout = ImageLayout.default_for("ct", FULL, "uint8", voxel_size_um=voxel)
    keep = {k: v for k, v in attrs.items() if k in ("component", "side", "week")}
    attrs = {**keep, "mouse": "1", "fingerprint": "bench-viewer"}
    group = create_image_group(root, GROUP, layout, overwrite=True, attrs=attrs)
    source = medium["0"][...]
    t = time.perf_counter()

    def write(shard: int) -> None:
        write_shard(group["0"], shard, _upsampled_shard(source, layout, shard))

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, range(layout.n_shards)))
    set_status(group, "complete")
    stored = sum(p.stat().st_size for p in (store / GROUP / "0").rglob("*") if p.is_file())
    logger.info("full-size scan %s: %d shards, %.2f GB stored (%.1f GB decoded) in %.0f s",
                FULL, layout.n_shards, stored / 1e9, math.prod(FULL) / 1e9,
                time.perf_counter() - t)  # fmt: skip
    return store


def build_pyramid(store: Path) -> float:
    t = time.perf_counter()
    command = [sys.executable, "-m", "bonemet_dask.cli", "pyramid", str(store)]
    subprocess.run(command, check=True)
    return time.perf_counter() - t


def measure(viewer_python: str, case: str, group: Path, workdir: Path) -> dict:
    command = [viewer_python, str(HERE / "viewer_reads.py"), case, str(group)]
    if case.startswith("napari"):
        command += ["--screenshot", str(workdir / f"{case}.png")]
        if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
            command = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--viewer-python", required=True,
                        help="a Python with ome-zarr, napari and napari-ome-zarr")  # fmt: skip
    parser.add_argument("--cases", nargs="*", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = full_scan(args.workdir, medium_scan(args.workdir))
    built = get_bonemet_attrs(zarr.open_group(str(store / GROUP), mode="r")).get("pyramid")
    if (built or {}).get("status") != "complete":
        logger.info("pyramid: %.0f s", build_pyramid(store))
    from viewer_reads import CASES

    results = [measure(args.viewer_python, case, store / GROUP, args.workdir)
               for case in (args.cases or CASES)]  # fmt: skip
    (args.workdir / "viewer-reads.json").write_text(json.dumps(results, indent=1))
    print("| client, view | level shown | shard files read (opens) | bytes read | s |")
    print("|---|---|---|---|---|")
    for r in results:
        rows = [(f"{r['case']} (opening view)", r["opening_level"], r["opening"])] if (
            "opening" in r) else []  # fmt: skip
        rows.append((r["case"], r.get("level", "-"), r))
        for name, level, m in rows:
            print(
                f"| {name} | {level} | {m['distinct']} ({m['chunk_files']}): "
                f"{', '.join(m['files'])} | {m['bytes_read'] / 1e6:.1f} MB | {m['seconds']} |"
            )


if __name__ == "__main__":
    main()
