"""The chain from raw projections against the chain from the published Recon-CT and the truth.

Run: ``.venv/bin/python benchmarks/accuracy_chain.py [--size medium] [--mice 2] [--weeks 3]
[--seed 0] [--workdir DIR] [--json FILE]``

Writes a synthetic tree (one injected mouse with seed 0), then runs ``bm.run`` twice on an
embedded LocalCluster: from the raw projections (our FDK on NRecon's grid and window) and from
the published Recon-CT (which the generator makes like a reconstruction: the phantom with FDK's
measured blur and noise, ``bonemet_dask.synth.imaging``). Per tibia and week it compares both
with each other and with the phantom's analytic truth (``synthetic_truth.json`` and the
phantom's primitives voxelised): segmentation Dice, tibia + fibula bone volume, junction slice,
RoI bone volume, formed and resorbed volume, and how far each time registration (week >= 1 to
the registered week 0) moves the tibia's bone from where the phantom's poses put it. Prints one
table and the checks of issue 11, and writes them as JSON. An error budget of the false change
follows: on the control tibiae (no lesion), the formed and resorbed volume of (a) our chain with
every change cluster counted, (b) our chain as run (clusters of 5 voxels or more), (c) the
generator's published RoI-CT (perfectly aligned by construction, so only a reconstruction's
noise and blur), (d) the same with clusters of 5 or more: (a) - (c) is what registration and
resampling add.
``--workdir`` keeps the tree and stores, so a rerun only recomputes what
changed (``run`` is resumable).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

import bonemet_dask as bm
from bonemet_dask.io.labels import mask_array
from bonemet_dask.synth import THRESHOLD, TRUTH_FILE, SynthConfig, generate
from bonemet_dask.synth.anatomy import MU_SOFT, hindlimb_phantom, pose_matrix
from bonemet_dask.synth.config import WINDOW_MAX_PER_MM
from bonemet_dask.synth.generate import plan_mice, reconstructed_tibia_mask
from bonemet_dask.synth.primitives import Phantom
from bonemet_dask.synth.render import voxelize

SIDES = ("left", "right")
JOINT_MM = 0.4
"""The slices of a Seg-CT this far below its knee cut hold the tibial plateau under the
femoral condyles, where the reconstruction's smear across the joint space decides what bone
is there; ``bone_below_joint_*`` leaves them out."""
BONE = ("tibia", "trabecular", "fibula")


def truth_mask(config: SynthConfig, truth: dict, mouse: str, side: str, week: int, box):
    """The phantom's tibia and fibula (grey >= 75 of their voxels) inside a crop box."""
    plan = next(p for p in plan_mice(config) if p.mouse == mouse)
    pose = truth["mice"][mouse]["weeks"][str(week)]["pose"]
    world = hindlimb_phantom(plan.legs, week, pose_matrix(pose))
    leg = SIDES.index(side)  # groups 8 * leg .. 8 * leg + 7 belong to one leg
    pairs = [(t, g) for t, g in zip(world.terms, world.groups, strict=True)
             if t.label in BONE and 8 * leg <= g < 8 * leg + 8]  # fmt: skip
    phantom = Phantom([t for t, _ in pairs], [g for _, g in pairs])
    crop = config.recon_grid().crop(tuple(box["lo"]), tuple(box["hi"]))
    mu = voxelize(phantom, crop, supersample=4) + np.float32(MU_SOFT)
    return np.rint(mu * (255 / WINDOW_MAX_PER_MM)) >= THRESHOLD


def registration_error(group, config: SynthConfig, truth: dict, mouse: str, side: str,
                       week: int) -> float | None:  # fmt: skip
    """Mean distance (voxels) between where a time registration and the truth put the bone.

    The true map from the registered week 0 to week ``week``'s Seg-CT is the chain's own week-0
    registration followed by the phantom's motion between the two scans (each scan's
    :func:`~bonemet_dask.synth.reference.scan_transform`, the second after the first's
    inverse); it is evaluated at week 0's registered bone.
    """
    from bonemet_dask.synth.reference import scan_transform
    from bonemet_dask.transform import RigidTransform

    paths = [f"regist_ct/{mouse}/{side}/week{w}" for w in (0, week)]
    if week == 0 or any(group.get(p) is None for p in paths):
        return None
    h_um = config.voxel_size * 1000

    def transform(path):
        return RigidTransform.from_dict(group[path].attrs["bonemet"]["registration"]["transform"])

    def scan(w):
        box = group[f"seg_ct/{mouse}/{side}/week{w}"].attrs["bonemet"]["crop_box"]
        return scan_transform(truth, mouse, side, w, box["lo"], h_um)

    motion = scan(week) @ scan(0).inverse()  # week 0's Seg-CT micrometres -> week's
    bone = np.argwhere(group[paths[0]]["0"][:] >= THRESHOLD)[::25].astype(np.float64) * h_um
    expected = motion.apply(transform(paths[0]).apply(bone))
    found = transform(paths[1]).apply(bone)
    return float(np.linalg.norm(found - expected, axis=1).mean() / h_um)


def measure(root: Path, config: SynthConfig, stores: dict[str, Path]) -> list[dict]:
    truth = json.loads((root / "src" / TRUTH_FILE).read_text())
    h_mm = config.voxel_size
    plans = plan_mice(config)
    rows = []
    groups = {name: zarr.open_group(str(path), mode="r") for name, path in stores.items()}
    for mouse, per_mouse in truth["mice"].items():
        for week_text, per_week in per_mouse["weeks"].items():
            week = int(week_text)
            for side in SIDES:
                row = {"mouse": mouse, "side": side, "week": week,
                       "injected": per_mouse.get("injected_side") == side}  # fmt: skip
                roi_truth = per_week["roi"][side]
                row["junction_truth"] = roi_truth["junction_regist_slice"]
                row["roi_bone_truth"] = roi_truth["kept_mm3"] + roi_truth["formed_mm3"]
                plan = next(p for p in plans if p.mouse == mouse)
                first, count = roi_truth["first_regist_slice"], roi_truth["n_slices"]
                blurred = reconstructed_tibia_mask(config, plan, side, week, first, count,
                                                   noise=False)  # fmt: skip
                row["roi_bone_blurred_truth"] = float(blurred.sum() * h_mm**3)
                if week:  # the phantom's own change as a reconstruction blurs it, no noise
                    before = reconstructed_tibia_mask(config, plan, side, 0, first, count,
                                                      noise=False)  # fmt: skip
                    row["formed_blurred_truth"] = float((blurred & ~before).sum() * h_mm**3)
                    row["resorbed_blurred_truth"] = float((before & ~blurred).sum() * h_mm**3)
                row["formed_truth"] = roi_truth["formed_mm3"]
                row["resorbed_truth"] = roi_truth["resorbed_mm3"]
                for name, root_group in groups.items():
                    seg = root_group.get(f"seg_ct/{mouse}/{side}/week{week}")
                    if seg is not None:
                        mask = mask_array(seg)[:].astype(bool)
                        box = seg.attrs["bonemet"]["crop_box"]
                        row[f"bone_{name}"] = float(mask.sum() * h_mm**3)
                        below = round(JOINT_MM / h_mm)
                        row[f"bone_below_joint_{name}"] = float(mask[below:].sum() * h_mm**3)
                        if name == "projections":
                            sharp = truth_mask(config, truth, mouse, side, week, box)
                            row["bone_truth"] = float(sharp.sum() * h_mm**3)
                            row["dice_projections"] = _dice(mask, sharp)
                    row[f"registration_error_{name}"] = registration_error(
                        root_group, config, truth, mouse, side, week
                    )
                    roi = root_group.get(f"roi_ct/{mouse}/{side}/week{week}")
                    if roi is not None:
                        attrs = roi.attrs["bonemet"]
                        metrics = attrs.get("metrics", {})
                        row[f"junction_{name}"] = attrs["junction_slice"]
                        row[f"roi_bone_{name}"] = metrics.get("bone_volume_mm3")
                        row[f"formed_{name}"] = metrics.get("formed_volume_mm3")
                        row[f"resorbed_{name}"] = metrics.get("resorbed_volume_mm3")
                rows.append(row)
    return rows


def false_change(root: Path, rows: list[dict], h_mm: float) -> list[dict]:
    """Formed and resorbed volume of the control tibiae at weeks >= 1, by source of error."""
    from bonemet_dask.kernels.composite import drop_small_changes

    every = zarr.open_group(str(root / "every_cluster.zarr"), mode="r")
    published = zarr.open_group(str(root / "published_roi.zarr"), mode="r")
    out = []
    for row in rows:
        if row["injected"] or row["week"] == 0:
            continue
        path = f"roi_ct/{row['mouse']}/{row['side']}/week{row['week']}"
        metrics = every[path].attrs["bonemet"]["metrics"]
        codes = published[path]["0"][:]
        cleaned = drop_small_changes(codes, min_voxels=5)
        voxel = h_mm**3
        out.append({
            "tibia": path.removeprefix("roi_ct/"),
            "truth": (row["formed_truth"], row["resorbed_truth"]),
            "ours_every_cluster": (metrics["formed_volume_mm3"], metrics["resorbed_volume_mm3"]),
            "ours_clusters_5": (row["formed_projections"], row["resorbed_projections"]),
            "published_every_cluster": (float((codes == 240).sum() * voxel),
                                        float((codes == 60).sum() * voxel)),
            "published_clusters_5": (float((cleaned == 240).sum() * voxel),
                                     float((cleaned == 60).sum() * voxel)),
        })  # fmt: skip
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def checks(rows: list[dict], weeks: int) -> dict:
    """Issue 11's figures: relative differences, slice differences, separation."""

    def rel(a, b):
        return abs(a / b - 1) if a is not None and b else float("nan")

    out = {
        "bone_projections_vs_recon": max(
            rel(r.get("bone_projections"), r.get("bone_recon")) for r in rows
        ),
        "junction_projections_vs_recon": max(
            abs(r["junction_projections"] - r["junction_recon"]) for r in rows
        ),
        "bone_below_joint_projections_vs_recon": max(
            rel(r.get("bone_below_joint_projections"), r.get("bone_below_joint_recon"))
            for r in rows
        ),
        "roi_bone_projections_vs_recon": max(
            rel(r["roi_bone_projections"], r["roi_bone_recon"]) for r in rows
        ),
        "junction_vs_truth": max(
            abs(r["junction_projections"] - r["junction_truth"]) for r in rows
        ),
        "roi_bone_vs_truth": max(rel(r["roi_bone_projections"], r["roi_bone_truth"]) for r in rows),
        "blur_bias_roi_bone": max(
            rel(r["roi_bone_blurred_truth"], r["roi_bone_truth"]) for r in rows
        ),
        "roi_bone_vs_blurred_truth": max(
            rel(r["roi_bone_projections"], r["roi_bone_blurred_truth"]) for r in rows
        ),
    }
    later = [r for r in rows if r["week"] >= 1]
    for name in ("projections", "recon"):
        errors = [r[f"registration_error_{name}"] for r in later
                  if r.get(f"registration_error_{name}") is not None]  # fmt: skip
        if errors:
            out[f"registration_error_{name}_voxels"] = max(errors)
    for week in range(1, weeks):
        injected = [r["resorbed_projections"] for r in later if r["injected"] and r["week"] == week]
        controls = [r["resorbed_projections"] for r in later
                    if not r["injected"] and r["week"] == week]  # fmt: skip
        if injected and controls:
            out[f"week{week}_min_injected_minus_max_control_resorbed_mm3"] = min(injected) - max(
                controls
            )
    last = [r for r in rows if r["injected"] and r["week"] == weeks - 1]
    if last:
        out["resorbed_error_fraction_of_lesion"] = max(
            abs(r["resorbed_projections"] - r["resorbed_truth"]) / r["resorbed_truth"] for r in last
        )
        out["blur_bias_resorbed_fraction_of_lesion"] = max(
            abs(r["resorbed_blurred_truth"] - r["resorbed_truth"]) / r["resorbed_truth"]
            for r in last
        )
        out["resorbed_vs_blurred_truth_fraction_of_lesion"] = max(
            abs(r["resorbed_projections"] - r["resorbed_blurred_truth"]) / r["resorbed_truth"]
            for r in last
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--mice", type=int, default=2)
    parser.add_argument("--weeks", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = SynthConfig(mice=args.mice, weeks=args.weeks, size=args.size, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        timings = {}
        started = time.perf_counter()
        if not (root / "src" / TRUTH_FILE).exists():
            generate(str(root / "src"), config)
        timings["synth_s"] = time.perf_counter() - started
        stores = {"projections": root / "from_projections.zarr", "recon": root / "from_recon.zarr"}
        with bm.connect("local", n_workers=args.workers) as client:
            for name, store in stores.items():
                started = time.perf_counter()
                start = "projections" if name == "projections" else "recon_ct"
                bm.run(str(root / "src"), str(store), start=start, client=client)
                timings[f"run_{name}_s"] = time.perf_counter() - started
            every = root / "every_cluster.zarr"  # the same composites, every cluster counted
            bm.composite_store(str(stores["projections"]), str(every), min_change_voxels=1,
                               client=client)  # fmt: skip
            published = root / "published_roi.zarr"
            bm.convert(str(root / "src"), str(published), components="roi_ct", client=client)
        rows = measure(root, config, stores)
        budget = false_change(root, rows, config.voxel_size)
    summary = {"config": config.describe(), "timings": timings, "checks": checks(rows, args.weeks),
               "false_change_controls": budget, "rows": rows}  # fmt: skip
    columns = ["mouse", "side", "week", "dice_projections", "bone_projections", "bone_recon",
               "bone_truth", "junction_projections", "junction_recon", "junction_truth",
               "roi_bone_projections", "roi_bone_recon", "roi_bone_truth",
               "roi_bone_blurred_truth", "registration_error_projections", "formed_projections",
               "formed_recon", "formed_truth", "resorbed_projections", "resorbed_recon",
               "resorbed_truth", "resorbed_blurred_truth"]  # fmt: skip
    print(" ".join(f"{c[:14]:>14}" for c in columns))
    for row in rows:
        print(" ".join(f"{_cell(row.get(c)):>14}" for c in columns))
    print(json.dumps(summary["checks"], indent=1))
    print("false change of the controls, (formed, resorbed) mm^3:")
    for item in budget:
        print("  " + ", ".join(f"{k}: {_pair(v)}" if isinstance(v, tuple) else f"{k}: {v}"
                                for k, v in item.items()))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


def _pair(pair) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in pair) + ")"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


if __name__ == "__main__":
    main()
