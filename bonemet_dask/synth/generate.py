"""Write a synthetic BoneMet tree: the published folder layout, file naming, logs and records.

One task per (animal, week) renders that scan's projections, its hindlimb reconstruction, both
Seg-CT crops, both registered tibiae and both RoI composites, streaming slabs so that memory stays
bounded at full size.  Tasks are independent and seeded, so the tree is byte-identical for a seed
whether it runs serially or on a Dask cluster.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import imagecodecs
import numpy as np

from bonemet_dask import naming
from bonemet_dask.geometry import VolumeGrid
from bonemet_dask.synth import imaging, records
from bonemet_dask.synth.anatomy import (
    MU_SOFT,
    LegAnatomy,
    hindlimb_phantom,
    leg_phantom,
    pose_matrix,
    random_pose,
)
from bonemet_dask.synth.config import (
    AIR_COUNTS,
    GREY_NOISE_SIGMA,
    REGIST_TOP_Z_MM,
    SEG_MARGIN_MM,
    WINDOW_MAX_PER_MM,
    SynthConfig,
)
from bonemet_dask.synth.render import line_integrals, voxelize
from bonemet_dask.synth.truth import find_junction_z

logger = logging.getLogger(__name__)

TRUTH_FILE = "synthetic_truth.json"
"""Name of the ground-truth sidecar at the root of a generated tree."""
THRESHOLD = 75
"""Grey level separating bone from soft tissue in 8-bit products (BoneMet's global threshold)."""
SLAB_BYTES = 64 * 2**20
"""Budget of one float32 working slab when voxelising, bytes."""

_BONE = ("tibia", "trabecular", "fibula")
_TIBIA = ("tibia", "trabecular")


@dataclass(frozen=True)
class MousePlan:
    """Everything random about one animal, drawn up front from the seed."""

    number: int
    mouse: str
    injected_side: str | None
    legs: dict[str, LegAnatomy]


def plan_mice(config: SynthConfig) -> list[MousePlan]:
    """Draw every animal's anatomy; deterministic for ``config.seed``."""
    root = np.random.SeedSequence(config.seed)
    plans = []
    for number, (mouse, child) in enumerate(
        zip(config.mouse_ids, root.spawn(config.mice), strict=True)
    ):
        rng = np.random.default_rng(child)
        tumour = bool(number % 2 == 0) if config.mice > 1 else True
        injected = str(rng.choice(["left", "right"])) if tumour else None
        legs = {side: LegAnatomy.random(rng, side, side == injected) for side in ("left", "right")}
        plans.append(MousePlan(number, mouse, injected, legs))
    return plans


def _rng(config: SynthConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, *key]))


def _to_grey(mu: np.ndarray) -> np.ndarray:
    """Attenuation (1/mm) to NRecon-like 8-bit grey: the ``.log``'s window, rounded."""
    return np.clip(np.rint(mu * (255.0 / WINDOW_MAX_PER_MM)), 0, 255).astype(np.uint8)


def reconstructed_slabs(
    phantom: Any,
    grid: VolumeGrid,
    config: SynthConfig,
    seed: Callable[[int], np.random.Generator] | None,
    *,
    offset: float = 0.0,
) -> Any:
    """``(start, grey)`` slabs of a phantom on ``grid`` as the image products show it.

    Voxelised (``offset`` 1/mm added) and, for ``config.products == "reconstructed"``, blurred
    and given FDK's correlated noise (:mod:`bonemet_dask.synth.imaging`), else given white grey
    noise (``"voxelised"``); ``seed(k)`` draws slice ``k``'s noise (None: none); windowed to
    uint8.  Each slab is computed with :data:`~.imaging.HALO_SLICES` more on each side, so the
    volume does not depend on where the slabs split.
    """
    n = grid.shape[0]
    step = max(1, SLAB_BYTES // (4 * grid.shape[1] * grid.shape[2]))
    noise_std = imaging.noise_std_per_mm(grid.voxel_size)
    for start in range(0, n, step):
        stop = min(n, start + step)
        lo, hi = max(0, start - imaging.HALO_SLICES), min(n, stop + imaging.HALO_SLICES)
        mu = voxelize(phantom, grid.slab(lo, hi), supersample=config.voxel_supersample)
        white = None
        if seed is not None:
            white = np.stack([seed(k).standard_normal(grid.shape[1:]) for k in range(lo, hi)])
        mu += np.float32(offset)
        valid = slice(start - lo, stop - lo)
        if config.products == "reconstructed":
            mu = imaging.reconstructed(mu, white, noise_std=noise_std, valid=valid)
        elif white is not None:
            mu = mu[valid] + white[valid] * np.float32(GREY_NOISE_SIGMA * WINDOW_MAX_PER_MM / 255)
        else:
            mu = mu[valid]
        yield start, _to_grey(mu)


class _TreeWriter:
    """Writes files of one scan under the tree root through fsspec."""

    def __init__(self, root: str, config: SynthConfig) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root)
        self.config = config
        self._made: set[str] = set()

    def folder(self, component: str, mouse: str, side: str, week: int) -> str:
        variant = _variant(self.config, component, mouse, side)
        parts = [
            self.root,
            "Imagery_Dataset",
            naming.component_folder_name(component, variant=_variant(self.config, component)),
            naming.scan_folder_name(component, mouse, side, variant=variant),
            naming.week_folder_name(week, variant=_variant(self.config, "week")),
        ]
        return "/".join(p.rstrip("/") for p in parts)

    def put(self, folder: str, name: str, data: bytes) -> None:
        if folder not in self._made:
            self.fs.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        self.fs.pipe_file(f"{folder}/{name}", data)

    def png(self, folder: str, name: str, image: np.ndarray) -> None:
        self.put(folder, name, imagecodecs.png_encode(image, level=self.config.png_level))


def _variant(config: SynthConfig, *key: str) -> int:
    """Deterministic naming variant of a folder (0 = canonical) when ``config.variants``."""
    if not config.variants:
        return 0
    digest = np.random.SeedSequence(
        [config.seed, *(int.from_bytes(k.encode(), "little") for k in key)]
    )
    return int(digest.generate_state(1)[0] % 7)


def generate_scan(root: str, config: SynthConfig, plan: MousePlan, week: int) -> dict[str, Any]:
    """Write every component of one (animal, week) and return its ground truth.

    Parameters
    ----------
    root : str
        Tree root (local path or fsspec URL).
    config : SynthConfig
        What to generate.
    plan : MousePlan
        The animal.
    week : int
        Time point.

    Returns
    -------
    dict
        JSON-ready ground truth: pose, Seg-CT boxes, lesion sizes, RoI change volumes.
    """
    writer = _TreeWriter(root, config)
    pose = random_pose(_rng(config, plan.number, week, 1))
    world = hindlimb_phantom(plan.legs, week, pose_matrix(pose))
    truth: dict[str, Any] = {"pose": pose, "lesion": {}, "seg_box": {}, "roi": {}}
    for side, leg in plan.legs.items():
        semi = leg.lesion_semi_axis(week) * leg.scale * np.array([1.0, 0.85, 1.5])
        truth["lesion"][side] = {
            "semi_axes_mm": semi.tolist(),
            "ellipsoid_volume_mm3": float(4 / 3 * np.pi * np.prod(semi)),
            "centre_mm": (np.asarray(leg.lesion_centre) * leg.scale).tolist(),
        }
    if "rotation_xray" in config.components:
        _write_projections(writer, config, plan, week, world)
    if {"recon_ct", "seg_ct"} & set(config.components):
        truth.update(_write_recon_and_seg(writer, config, plan, week, world))
    for side, leg in plan.legs.items():
        if "regist_ct" in config.components:
            _write_regist(writer, config, plan, week, side, leg)
        if "roi_ct" in config.components:
            truth["roi"][side] = _write_roi(writer, config, plan, week, side, leg)
    return truth


def _write_projections(writer, config, plan, week, world) -> None:
    geo = config.geometry()
    folder = writer.folder("rotation_xray", plan.mouse, "both", week)
    packed = world.pack()
    for view, angle in enumerate(geo.angles_deg):
        integral = line_integrals(packed, geo, float(angle), subpixels=config.detector_subpixels)
        counts = _rng(config, plan.number, week, 2, view).poisson(AIR_COUNTS * np.exp(-integral))
        image = np.clip(counts, 0, 65535).astype(np.uint16)
        writer.png(folder, naming.slice_file_name("rotation_xray", plan.mouse, "both", view), image)
    writer.put(
        folder, f"{plan.mouse}.log", records.acquisition_log(config, plan.mouse, week, plan.number)
    )


def seg_boxes(config: SynthConfig, world) -> dict[str, tuple[list[int], list[int]]]:
    """Seg-CT crop of each tibia (with its fibula) in recon-grid indices: ``(lo, hi)`` per side.

    The box bounds the posed tibia and fibula primitives plus a margin; its top is the tibial
    plateau (the cut below the knee).  Left is the leg at negative world ``x``.
    """
    grid = config.recon_grid()
    out = {}
    for number, side in enumerate(("left", "right")):
        lo_w, hi_w = world.bounds(
            lambda label, group, n=number: label in _BONE and 8 * n <= group < 8 * n + 8
        )
        corners = np.array(
            [
                [x, y, z]
                for x in (lo_w[0], hi_w[0])
                for y in (lo_w[1], hi_w[1])
                for z in (lo_w[2], hi_w[2])
            ]
        )
        index = grid.world_to_index(corners)
        margin = SEG_MARGIN_MM / grid.voxel_size
        lo = np.floor(index.min(0) - margin).astype(int)
        hi = np.ceil(index.max(0) + margin).astype(int) + 1
        lo[0] = int(np.floor(index[:, 0].min()))  # no margin above the plateau: cut below the knee
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, grid.shape)
        out[side] = (lo.tolist(), hi.tolist())
    return out


def _write_recon_and_seg(writer, config, plan, week, world) -> dict[str, Any]:
    grid = config.recon_grid()
    first_index = int(_rng(config, plan.number, week, 3).integers(0, 31))
    boxes = seg_boxes(config, world)
    recon_folder = writer.folder("recon_ct", plan.mouse, "both", week)
    seg_folders = {s: writer.folder("seg_ct", plan.mouse, s, week) for s in boxes}
    seed = functools.partial(_rng, config, plan.number, week, 4)
    for start, slab in reconstructed_slabs(world.pack(), grid, config, seed):
        for k in range(start, start + slab.shape[0]):
            grey = slab[k - start]
            if "recon_ct" in config.components:
                name = naming.slice_file_name("recon_ct", plan.mouse, "both", first_index + k)
                writer.png(recon_folder, name, grey)
            if "seg_ct" not in config.components:
                continue
            for side, (lo, hi) in boxes.items():
                if lo[0] <= k < hi[0]:
                    name = naming.slice_file_name("seg_ct", plan.mouse, side, k - lo[0])
                    writer.png(
                        seg_folders[side],
                        name,
                        np.ascontiguousarray(grey[lo[1] : hi[1], lo[2] : hi[2]]),
                    )
    if "recon_ct" in config.components:
        log = records.reconstruction_log(config, plan.mouse, week, first_index, grid.shape[0])
        writer.put(recon_folder, f"{plan.mouse}_rec.log", log)
    if "seg_ct" in config.components:
        for side, (lo, hi) in boxes.items():
            note = (
                f"crop z {lo[0]}:{hi[0]} y {lo[1]}:{hi[1]} x {lo[2]}:{hi[2]} of the reconstruction"
            )
            log = records.derived_log(config, f"{plan.mouse} week {week}", hi[0] - lo[0], note)
            writer.put(seg_folders[side], f"{plan.mouse}.log", log)
    return {
        "recon_first_index": first_index,
        "seg_box": {s: {"lo": lo, "hi": hi} for s, (lo, hi) in boxes.items()},
    }


def _write_regist(writer, config, plan, week, side, leg) -> None:
    grid = config.regist_grid(side)
    folder = writer.folder("regist_ct", plan.mouse, side, week)
    seed = functools.partial(_rng, config, plan.number, week, 5 if side == "left" else 6)
    for start, slab in reconstructed_slabs(leg_phantom(leg, week).pack(), grid, config, seed):
        for k in range(start, start + slab.shape[0]):
            name = naming.slice_file_name("regist_ct", plan.mouse, side, k)
            writer.png(folder, name, slab[k - start])
    note = "rigidly registered to the vertical reference (week 0) or to the animal's week 0"
    writer.put(
        folder,
        f"{plan.mouse}.log",
        records.derived_log(config, f"{plan.mouse} {side} tibia", grid.shape[0], note),
    )


def tibia_bone_mask(
    config: SynthConfig, leg: LegAnatomy, week: int, grid: VolumeGrid
) -> np.ndarray:
    """Noise-free bone mask (grey >= THRESHOLD) of the tibia alone, fibula removed, on ``grid``."""
    tibia = leg_phantom(leg, week).select(lambda label: label in _TIBIA)
    mu = voxelize(tibia, grid, supersample=config.voxel_supersample) + np.float32(MU_SOFT)
    return _to_grey(mu) >= THRESHOLD


def reconstructed_tibia_mask(
    config: SynthConfig,
    plan: MousePlan,
    side: str,
    week: int,
    first: int,
    count: int,
    *,
    noise: bool = True,
) -> np.ndarray:
    """Bone (grey >= THRESHOLD) of the tibia alone, as a reconstruction shows it.

    Slices ``first:first + count`` of the side's Regist-CT grid, fibula removed, blurred and
    with that week's Regist-CT noise (``noise=False``: none, the blur's effect alone): what the
    published RoI-CT composites are thresholded from.
    """
    grid = config.regist_grid(side)
    lo, hi = (
        max(0, first - imaging.HALO_SLICES),
        min(grid.shape[0], first + count + imaging.HALO_SLICES),
    )
    tibia = leg_phantom(plan.legs[side], week).select(
        lambda label: label in ("tibia", "trabecular")
    )
    seed = functools.partial(_rng, config, plan.number, week, 5 if side == "left" else 6)
    slabs = reconstructed_slabs(tibia.pack(), grid.slab(lo, hi), config,
                                (lambda k: seed(lo + k)) if noise else None,
                                offset=MU_SOFT)  # fmt: skip
    grey = np.concatenate([slab for _, slab in slabs])
    return grey[first - lo : first - lo + count] >= THRESHOLD


def roi_grid(config: SynthConfig, side: str, first_slice: int) -> tuple[int, VolumeGrid]:
    """The RoI-CT sub-grid of a side's Regist-CT grid from ``first_slice``: ``(start, grid)``.

    The RoI is shifted up when it would run off the bottom of the grid.
    """
    grid = config.regist_grid(side)
    stop = min(grid.shape[0], max(first_slice, 0) + config.roi_slices)
    start = max(0, stop - config.roi_slices)
    return start, grid.slab(start, stop)


def _write_roi(writer, config, plan, week, side, leg) -> dict[str, Any]:
    grid = config.regist_grid(side)
    junction_z = find_junction_z(leg)
    junction_slice = round((REGIST_TOP_Z_MM - junction_z) / grid.voxel_size)
    first, roi = roi_grid(config, side, junction_slice)
    base = tibia_bone_mask(config, leg, 0, roi)
    follow = base if week == 0 else tibia_bone_mask(config, leg, week, roi)
    # the published composite thresholds the registered reconstructions (blurred, noisy);
    # the truth below counts the phantom's own voxels
    seen_base, seen = base, follow
    if config.products == "reconstructed":
        n = roi.shape[0]
        seen_base = reconstructed_tibia_mask(config, plan, side, 0, first, n)
        seen = (
            seen_base if week == 0 else reconstructed_tibia_mask(config, plan, side, week, first, n)
        )
    composite = np.zeros(base.shape, np.uint8)
    composite[seen_base & seen] = 180
    composite[~seen_base & seen] = 240
    composite[seen_base & ~seen] = 60
    folder = writer.folder("roi_ct", plan.mouse, side, week)
    for k in range(composite.shape[0]):
        writer.png(folder, naming.slice_file_name("roi_ct", plan.mouse, side, k), composite[k])
    note = "composite of registered week 0 and this week: 180 kept, 240 formed, 60 resorbed, 0 none"
    writer.put(
        folder,
        f"{plan.mouse}.log",
        records.derived_log(config, f"{plan.mouse} {side} tibia", composite.shape[0], note),
    )
    voxel_mm3 = grid.voxel_size**3
    return {
        "junction_z_mm": junction_z,
        "junction_regist_slice": int(junction_slice),
        "first_regist_slice": int(first),
        "n_slices": int(roi.shape[0]),
        "kept_mm3": float((base & follow).sum() * voxel_mm3),
        "formed_mm3": float((~base & follow).sum() * voxel_mm3),
        "resorbed_mm3": float((base & ~follow).sum() * voxel_mm3),
        "baseline_bone_mm3": float(base.sum() * voxel_mm3),
    }


def generate(
    out: str,
    config: SynthConfig | None = None,
    *,
    client=None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic BoneMet tree and its ground-truth sidecar.

    Parameters
    ----------
    out : str
        Root folder (local path or fsspec URL).  Existing files with the same names are replaced.
    config : SynthConfig, optional
        What to generate (default: 2 tiny animals, 3 weeks).
    client : distributed.Client, optional
        Run one task per (animal, week) on this cluster; ``out`` must be reachable by the workers.
    progress : callable, optional
        Called as ``progress(done, total)`` after each scan.
    overwrite : bool
        Replace a tree already in ``out`` (its ``Imagery_Dataset``, ``MiceMediRec Dataset`` and
        truth file are deleted first); otherwise an existing tree is an error.

    Returns
    -------
    dict
        The ground truth written to ``<out>/synthetic_truth.json``.

    Raises
    ------
    FileExistsError
        If ``out`` already holds a tree and ``overwrite`` is False.
    """
    config = config or SynthConfig()
    _clear_tree(out, overwrite=overwrite)
    plans = plan_mice(config)
    jobs = [(plan, week) for plan in plans for week in range(config.weeks)]
    logger.info("generating %d scans (%s) into %s", len(jobs), config.size, out)
    results: dict[tuple[str, int], dict] = {}
    if client is None:
        for done, (plan, week) in enumerate(jobs, start=1):
            results[(plan.mouse, week)] = generate_scan(out, config, plan, week)
            if progress:
                progress(done, len(jobs))
    else:
        from distributed import as_completed

        futures = {
            client.submit(generate_scan, out, config, plan, week, pure=False): (plan.mouse, week)
            for plan, week in jobs
        }
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress:
                progress(done, len(jobs))
    truth = _assemble_truth(config, plans, results)
    writer = _TreeWriter(out, config)
    writer.put(writer.root, TRUTH_FILE, json.dumps(truth, indent=1, sort_keys=True).encode())
    writer.put(
        f"{writer.root}/MiceMediRec Dataset",
        "record.csv",
        records.records_csv(_record_rows(config, plans, results)),
    )
    return truth


def _clear_tree(out: str, *, overwrite: bool) -> None:
    fs, root = fsspec.core.url_to_fs(out)
    existing = [f"{root}/{name}" for name in ("Imagery_Dataset", "MiceMediRec Dataset", TRUTH_FILE)]
    existing = [path for path in existing if fs.exists(path)]
    if not existing:
        return
    if not overwrite:
        raise FileExistsError(
            f"out={out!r} already holds a BoneMet tree ({', '.join(existing)}); pass "
            "overwrite=True (CLI: --overwrite) to replace it, or choose an empty folder"
        )
    for path in existing:
        fs.rm(path, recursive=True)


def _assemble_truth(config, plans, results) -> dict[str, Any]:
    geo = config.geometry()
    mice = {}
    for plan in plans:
        mice[plan.mouse] = {
            "injected_side": plan.injected_side,
            "legs": {
                side: leg.__dict__ | {"lesion_centre": list(leg.lesion_centre)}
                for side, leg in plan.legs.items()
            },
            "weeks": {str(w): results[(plan.mouse, w)] for w in range(config.weeks)},
        }
    return {
        "generator": {"package": "bonemet-dask", "config": config.describe()},
        "conventions": (
            "see bonemet_dask.geometry; left leg at world -x; slices run proximal to distal"
        ),
        "geometry": {
            "source_to_object_mm": geo.source_to_object,
            "source_to_detector_mm": geo.source_to_detector,
            "detector_pixel_mm": geo.detector_pixel,
            "detector_shape": [geo.n_rows, geo.n_cols],
            "angles_deg": geo.angles_deg.tolist(),
            "air_counts": AIR_COUNTS,
        },
        "grids": {
            "recon": _grid_dict(config.recon_grid()),
            "regist_left": _grid_dict(config.regist_grid("left")),
            "regist_right": _grid_dict(config.regist_grid("right")),
        },
        "window_max_per_mm": WINDOW_MAX_PER_MM,
        "threshold": THRESHOLD,
        "mice": mice,
    }


def _grid_dict(grid: VolumeGrid) -> dict[str, Any]:
    return {
        "shape": list(grid.shape),
        "voxel_size_mm": grid.voxel_size,
        "centre_mm": list(grid.centre),
    }


def _record_rows(config, plans, results) -> list[dict[str, object]]:
    rows = []
    for plan in plans:
        rng = _rng(config, plan.number, 99)
        weight = rng.uniform(19.0, 24.0)
        weight_trend = (
            -0.5 if plan.injected_side else 0.3
        )  # g/week: tumour-bearing mice lose weight
        for week in range(config.weeks):
            truth = results[(plan.mouse, week)]
            side = plan.injected_side or "left"
            lesion = truth["lesion"][side]["ellipsoid_volume_mm3"]
            roi = truth["roi"].get(side, {})
            when = records.scan_date(config, plan.number, week)
            rows.append(
                {
                    "Experiment Date": when.date().isoformat(),
                    "Animal ID": plan.mouse,
                    "Week": week,
                    "Age (weeks)": 6 + week,
                    "Sex": "F",
                    "Strain": "BALB/c",
                    "Inoculation Date": records.scan_date(config, plan.number, 0).date().isoformat()
                    if plan.injected_side
                    else "",
                    "Injected Limb": plan.injected_side or "",
                    "Body Weight (g)": f"{weight + weight_trend * week:.1f}",
                    "Treatment": "none",
                    "Diagnosis": "bone lesion" if plan.injected_side and week > 0 else "no lesion",
                    "Metastatic Sites": f"{plan.injected_side} tibia"
                    if plan.injected_side and week > 0
                    else "",
                    "Average Radiant Efficiency ([p/s]/[uW/cm2])": f"{1e6 + 4e8 * lesion:.4g}",
                    "Bone Volume RoI (mm3)": f"{roi['kept_mm3'] + roi['formed_mm3']:.4f}"
                    if roi
                    else "",
                }
            )
    return rows
