"""``bonemet-dask demo``: the whole pipeline on a synthetic BoneMet tree and an embedded cluster.

synth -> catalog -> ``run`` from the raw projections (convert, FDK, segment, register,
composite + RoI + metrics, each stage fed the previous stage's own output) -> verify -> preview.
The published synthetic products are converted into a second store, ``published.zarr``, only to
compare every stage's result with them and with the phantom's ground truth
(``synthetic_truth.json``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from rich.console import Console
from rich.table import Table

from bonemet_dask.io.labels import mask_array
from bonemet_dask.preview import preview

Progress = Callable[[str], contextlib.AbstractContextManager[Callable[[int, int], None]]]


def run_demo(
    out: Path,
    *,
    size: str,
    mice: int,
    weeks: int,
    seed: int,
    workers: int | None,
    console: Console,
    progress: Progress,
    stage_progress: Callable[[], contextlib.AbstractContextManager[Any]],
) -> dict[str, Path]:
    """Run every stage; return the paths of what it wrote (printed by the caller)."""
    from bonemet_dask.cluster import connect
    from bonemet_dask.io.catalog import scan_source
    from bonemet_dask.io.catalog_report import catalog_tables
    from bonemet_dask.io.store_report import store_tree
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.ops.run import run
    from bonemet_dask.ops.verify import verify
    from bonemet_dask.synth import TRUTH_FILE, SynthConfig, generate

    source, store, published = out / "source", out / "bonemet.zarr", out / "published.zarr"
    paths = {
        "source tree": source / "Imagery_Dataset",
        "records": source / "MiceMediRec Dataset" / "record.csv",
        "ground truth": source / TRUTH_FILE,
        "Zarr store": store,
        "published": published,
        "metrics CSV": out / "roi_metrics.csv",
        "preview": out / "preview.png",
    }
    for stale in (store, published):  # the demo starts afresh; `run` itself resumes
        shutil.rmtree(stale, ignore_errors=True)
    with connect("local", n_workers=workers) as client:
        console.rule("bonemet-dask demo")
        console.print(f"Dask dashboard: [bold cyan]{client.dashboard_link}[/bold cyan]")
        config = SynthConfig(mice=mice, weeks=weeks, size=size, seed=seed)
        with _timed(console, "wrote the synthetic tree"), progress("synthetic BoneMet") as up:
            generate(str(source), config, client=client, progress=up, overwrite=True)
        catalog = scan_source(str(source))
        for table in catalog_tables(catalog):
            console.print(table)
        console.rule("run: raw projections -> FDK -> segment -> register -> composite")
        with stage_progress() as update:
            result = run(
                catalog, str(store), metrics_csv=paths["metrics CSV"], client=client,
                progress=update,
            )  # fmt: skip
        _run_table(result, console)
        with progress("verify projections against the source") as update:
            checked = verify(catalog, str(store), components="rotation_xray", client=client,
                             progress=update)  # fmt: skip
        console.print(
            f"  verify: {'OK' if checked.ok else 'FAILED'}, {checked.checked_slices} slices"
        )
        console.print(store_tree(str(store), max_scans=6))
        console.rule("against the published products and the phantom")
        with progress("convert the published products (to compare only)") as update:
            convert(catalog, str(published), components=["recon_ct", "seg_ct", "regist_ct"],
                    client=client, progress=update)  # fmt: skip
        truth = json.loads(paths["ground truth"].read_text(encoding="utf-8"))
        _reconstruction(store, published, result.stages["reconstruct"], console)
        _segmentation(store, published, truth, result.stages["segment"], console)
        _registration(store, published, truth, result.stages["register"], console)
        _composites(truth, result, console)
        with progress("preview figure") as update:
            done = [o.path for o in result.stages["composite"].outcomes if o.done]
            if done:
                _, mouse, side, week = done[-1].split("/")
                preview(
                    str(store), paths["preview"], component="roi_ct", mouse=mouse,
                    week=int(week.removeprefix("week")), side=side,
                )  # fmt: skip
            update(1, 1)
    return paths


def _run_table(result, console: Console) -> None:
    from bonemet_dask.ops.stage import OUTCOMES

    table = Table("stage", *OUTCOMES, title=f"run: {len(result.mice)} mice in "
                  f"{result.seconds:.1f} s", title_justify="left")  # fmt: skip
    for name, report in result.stages.items():
        counts = report.counts()
        table.add_row(name, *(str(counts[s]) for s in OUTCOMES))
    console.print(table)
    for report in result.stages.values():
        for path, why in report.failed:
            console.print(f"  [red]failed[/red] {path}: {why}")


@contextlib.contextmanager
def _timed(console: Console, what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    console.print(f"  {what} in {time.perf_counter() - started:.1f} s")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def _done(report) -> list[str]:
    return [o.path for o in report.outcomes if o.done]


def _reconstruction(store: Path, published: Path, report, console: Console) -> None:
    """Every FDK volume of the run against the published (voxelised phantom) Recon-CT."""
    table = Table("recon_ct scan", "mean |error| (grey)", "correlation", "bone Dice",
                  "voxels >= 75: ours / published")  # fmt: skip
    ours_root = zarr.open_group(str(store), mode="r")
    published_root = zarr.open_group(str(published), mode="r")
    for path in _done(report):
        ours = ours_root[path]["0"][:].astype(np.float64)
        truth = published_root[path]["0"][:].astype(np.float64)
        if ours.shape != truth.shape:
            table.add_row(path.split("/", 1)[1], "grid differs", "", "", "")
            continue
        ratio = (ours >= 75).sum() / max(1, (truth >= 75).sum())
        table.add_row(
            path.split("/", 1)[1], f"{np.abs(ours - truth).mean():.2f}",
            f"{np.corrcoef(ours.ravel(), truth.ravel())[0, 1]:.3f}",
            f"{_dice(truth >= 75, ours >= 75):.3f}", f"{ratio:.2f}",
        )  # fmt: skip
    console.print(table)


def _segmentation(store: Path, published: Path, truth, report, console: Console) -> None:
    """The run's segmentation of its own FDK volumes against the published Seg-CT."""
    table = Table("seg_ct scan", "crop box (slice, y, x)", "Dice vs published")
    ours_root = zarr.open_group(str(store), mode="r")
    published_root = zarr.open_group(str(published), mode="r")
    for path in _done(report):
        _, mouse, side, week = path.split("/")
        group = ours_root[path]
        box = group.attrs["bonemet"]["crop_box"]
        ours = mask_array(group)[:].astype(bool)
        published_mask = published_root[path]["0"][:] >= 75
        week_truth = truth["mice"][mouse]["weeks"][week.removeprefix("week")]
        published_lo = week_truth["seg_box"][side]["lo"]
        dice = _dice_in_source(ours, box["lo"], published_mask, published_lo)
        table.add_row(path.split("/", 1)[1], f"{box['lo']} .. {box['hi']}", f"{dice:.3f}")
    console.print(table)


def _dice_in_source(ours, ours_lo, published, published_lo) -> float:
    """Dice of two crops placed in the source volume by their first voxels (index space)."""
    lo = np.minimum(ours_lo, published_lo)
    hi = np.maximum(np.add(ours_lo, ours.shape), np.add(published_lo, published.shape))
    canvas_a = np.zeros(tuple(hi - lo), bool)
    canvas_b = np.zeros(tuple(hi - lo), bool)
    a0, b0 = np.subtract(ours_lo, lo), np.subtract(published_lo, lo)
    canvas_a[tuple(slice(s, s + n) for s, n in zip(a0, ours.shape, strict=True))] = ours
    canvas_b[tuple(slice(s, s + n) for s, n in zip(b0, published.shape, strict=True))] = published
    return _dice(canvas_a, canvas_b)


def _registration(store: Path, published: Path, truth, report, console: Console) -> None:
    """Every registration of the run: pose error against the phantom's generating pose."""
    from bonemet_dask.synth.reference import scan_transform
    from bonemet_dask.transform import RigidTransform

    table = Table("regist_ct scan", "NCC", "flag", "pose error", "Dice vs published")
    ours_root = zarr.open_group(str(store), mode="r")
    published_root = zarr.open_group(str(published), mode="r")
    h_um = truth["grids"]["recon"]["voxel_size_mm"] * 1000
    for path in _done(report):
        _, mouse, side, week = path.split("/")
        group = ours_root[path]
        record = group.attrs["bonemet"].get("registration", {})
        found = RigidTransform.from_dict(record["transform"])
        crop_lo = ours_root[f"seg_ct/{mouse}/{side}/{week}"].attrs["bonemet"]["crop_box"]["lo"]
        expected = scan_transform(truth, mouse, side, int(week.removeprefix("week")), crop_lo, h_um)
        angle, shift = _pose_error(found, expected, record["output_shape"], h_um)
        ours = group["0"][:] >= 75
        reference = published_root[path]["0"][:] >= 75 if path in published_root else None
        same = reference is not None and reference.shape == ours.shape
        table.add_row(
            path.split("/", 1)[1], f"{record.get('metric', {}).get('value', float('nan')):.3f}",
            str(record.get("quality", "?")), f"{angle:.2f}° / {shift:.2f} voxel",
            f"{_dice(ours, reference):.3f}" if same else "n/a",
        )  # fmt: skip
    console.print(table)
    console.print(
        "  pose error: the found transform against the phantom's pose, leg placement and crop; "
        "the reference is the average leg, so anatomy differences count too"
    )
    for path, flag in report.flagged:
        console.print(f"  [yellow]{path}[/yellow]: {flag}")


def _pose_error(found, expected, shape, h_um: float) -> tuple[float, float]:
    """Rotation (degrees) and shift at the grid centre (voxels) between two transforms."""
    difference = found.inverse() @ expected
    angle = float(np.degrees(np.linalg.norm(difference.rotation_vector)))
    centre = (np.asarray(shape, np.float64) - 1) / 2 * h_um
    shift = float(np.linalg.norm(found.apply(centre) - expected.apply(centre)) / h_um)
    return angle, shift


def _composites(truth, result, console: Console) -> None:
    """Junctions, RoI bone, formed and resorbed volumes of every RoI against the truth."""
    table = Table("roi_ct", "junction", "RoI bone", "formed", "resorbed",
                  caption="ours (truth); volumes in mm³")  # fmt: skip
    for outcome in result.stages["composite"].outcomes:
        if not outcome.done:
            continue
        _, mouse, side, week = outcome.path.split("/")
        junction = outcome.details.get("junction", {})
        weeks = truth["mice"].get(mouse, {}).get("weeks", {})
        expected = weeks.get(week.removeprefix("week"), {}).get("roi", {}).get(side, {})
        row = _metrics_row(result.table, mouse, side, int(week.removeprefix("week")))
        bone_truth = expected.get("kept_mm3", float("nan")) + expected.get("formed_mm3", 0.0)
        table.add_row(
            outcome.path.split("/", 1)[1],
            f"{junction.get('slice', '?')} ({expected.get('junction_regist_slice', '?')})",
            f"{row.get('bone_volume_mm3', float('nan')):.2f} ({bone_truth:.2f})",
            f"{row.get('formed_volume_mm3', float('nan')):.3f} "
            f"({expected.get('formed_mm3', float('nan')):.3f})",
            f"{row.get('resorbed_volume_mm3', float('nan')):.3f} "
            f"({expected.get('resorbed_mm3', float('nan')):.3f})",
        )  # fmt: skip
    console.print(table)
    injected = {m: t.get("injected_side") for m, t in truth["mice"].items()}
    console.print(
        f"  injected tibiae: {injected}. Truth: the phantom's own voxels (sharp); at this voxel "
        "size a reconstruction's blur thickens bone at grey 75 (BENCHMARKS.md, the chain's "
        "accuracy)"
    )


def _metrics_row(frame, mouse: str, side: str, week: int) -> dict[str, Any]:
    if frame is None or len(frame) == 0:
        return {}
    hits = frame[
        (frame["mouse"].astype(str) == mouse) & (frame["side"] == side) & (frame["week"] == week)
    ]
    return hits.iloc[0].to_dict() if len(hits) else {}
