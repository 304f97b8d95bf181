"""``bonemet-dask demo``: the whole pipeline on a synthetic BoneMet tree and an embedded cluster.

synth -> catalog -> convert -> verify -> reconstruct (one scan) -> segment -> register ->
composite + RoI + metrics -> preview.  Each derived stage writes to ``derived.zarr`` beside the
converted store, so the converted (published-like) groups stay and every result is compared with
them and with the phantom's ground truth (``synthetic_truth.json``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from rich.console import Console
from rich.table import Table

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
) -> dict[str, Path]:
    """Run every stage; return the paths of what it wrote (printed by the caller)."""
    from bonemet_dask.cluster import connect
    from bonemet_dask.io.catalog import scan_source
    from bonemet_dask.io.catalog_report import catalog_tables
    from bonemet_dask.io.store_report import store_tree
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.ops.verify import verify
    from bonemet_dask.synth import TRUTH_FILE, SynthConfig, generate

    source, store, derived = out / "source", out / "bonemet.zarr", out / "derived.zarr"
    paths = {
        "source tree": source / "Imagery_Dataset",
        "records": source / "MiceMediRec Dataset" / "record.csv",
        "ground truth": source / TRUTH_FILE,
        "Zarr store": store,
        "FDK output": out / "reconstructed.zarr",
        "derived store": derived,
        "metrics CSV": out / "roi_metrics.csv",
        "preview": out / "preview.png",
    }
    with connect("local", n_workers=workers) as client:
        console.rule("bonemet-dask demo")
        console.print(f"Dask dashboard: [bold cyan]{client.dashboard_link}[/bold cyan]")
        config = SynthConfig(mice=mice, weeks=weeks, size=size, seed=seed)
        with _timed(console, "wrote the synthetic tree"), progress("1/8 synthetic BoneMet") as up:
            generate(str(source), config, client=client, progress=up, overwrite=True)
        catalog = scan_source(str(source))
        for table in catalog_tables(catalog):
            console.print(table)
        with progress("2/8 convert to sharded OME-Zarr") as update:
            report = convert(catalog, str(store), client=client, progress=update, overwrite=True)
        console.print(
            f"  converted {len(report.converted)} scans ({report.shards_written} shards, "
            f"{report.bytes_read / 1e6:.1f} MB of PNG) in {report.seconds:.1f} s"
        )
        with progress("3/8 verify store against source") as update:
            checked = verify(catalog, str(store), client=client, progress=update)
        console.print(
            f"  verify: {'OK' if checked.ok else 'FAILED'}, {checked.checked_slices} slices"
        )
        console.print(store_tree(str(store), max_scans=6))
        truth = json.loads(paths["ground truth"].read_text(encoding="utf-8"))
        _reconstruct(store, paths["FDK output"], client, console, progress)
        _segment(store, derived, truth, client, console, progress)
        _register(derived, store, truth, client, console, progress)
        roi_slices = max(1, round(300 * config.linear_scale))  # 300 at full size
        _composite(derived, store, truth, roi_slices, paths, client, console, progress)
    return paths


@contextlib.contextmanager
def _timed(console: Console, what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    console.print(f"  {what} in {time.perf_counter() - started:.1f} s")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def _reconstruct(store: Path, out: Path, client: Any, console: Console, progress: Progress):
    """FDK of the first scan's projections, compared with the phantom's Recon-CT."""
    from bonemet_dask.ops.reconstruct_store import reconstruct_store

    first = sorted(zarr.open_group(str(store), mode="r")["rotation_xray"].group_keys())[0]
    started = time.perf_counter()
    with progress("4/8 FDK reconstruction (Parker short scan)") as update:
        report = reconstruct_store(
            str(store), str(out), mice=[first], weeks=[0], overwrite=True, client=client,
            progress=update,
        )  # fmt: skip
    path = report.written[0]
    ours = zarr.open_group(str(out), mode="r")[path]["0"][:].astype(np.float64)
    truth = zarr.open_group(str(store), mode="r")[path]["0"][:].astype(np.float64)
    console.print(
        f"  FDK of {path} in {time.perf_counter() - started:.1f} s against the phantom: mean "
        f"|error| {np.abs(ours - truth).mean():.2f} grey levels, correlation "
        f"{np.corrcoef(ours.ravel(), truth.ravel())[0, 1]:.3f}, bone Dice "
        f"{_dice(truth >= 75, ours >= 75):.3f}"
    )


def _segment(store: Path, derived: Path, truth, client, console: Console, progress: Progress):
    """Segment every converted Recon-CT; compare with the published (synthetic) Seg-CT."""
    from bonemet_dask.ops.segment import segment_store

    with progress("5/8 segment tibiae (threshold 75)") as update:
        report = segment_store(
            str(store), str(derived), overwrite=True, client=client, progress=update
        )
    table = Table("seg_ct scan", "crop box (slice, y, x)", "Dice vs published")
    ours_root = zarr.open_group(str(derived), mode="r")
    published_root = zarr.open_group(str(store), mode="r")
    for path in report.written:
        _, mouse, side, week = path.split("/")
        group = ours_root[path]
        box = group.attrs["bonemet"]["crop_box"]
        ours = group["mask"][:].astype(bool)
        published = published_root[path]["0"][:] >= 75
        week_truth = truth["mice"][mouse]["weeks"][week.removeprefix("week")]
        published_lo = week_truth["seg_box"][side]["lo"]
        dice = _dice_in_source(ours, box["lo"], published, published_lo)
        table.add_row(path.split("/", 1)[1], f"{box['lo']} .. {box['hi']}", f"{dice:.3f}")
    console.print(table)
    console.print(f"  segmented {len(report.written)} tibiae in {report.seconds:.1f} s")
    for path, why in report.failed:
        console.print(f"  [red]failed[/red] {path}: {why}")


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


def _register(derived: Path, store: Path, truth, client, console: Console, progress: Progress):
    """Register every segmented tibia; pose errors against the phantom's generating pose."""
    from bonemet_dask.ops.register_store import register_store
    from bonemet_dask.synth.reference import scan_transform
    from bonemet_dask.transform import RigidTransform

    with progress("6/8 register tibiae (week 0 vertical, later weeks to week 0)") as update:
        report = register_store(str(derived), overwrite=True, client=client, progress=update)
    table = Table("regist_ct scan", "NCC", "flag", "pose error", "Dice vs published")
    ours_root = zarr.open_group(str(derived), mode="r")
    published_root = zarr.open_group(str(store), mode="r")
    h_um = truth["grids"]["recon"]["voxel_size_mm"] * 1000
    for path in report.written:
        _, mouse, side, week = path.split("/")
        group = ours_root[path]
        record = group.attrs["bonemet"].get("registration", {})
        found = RigidTransform.from_dict(record["transform"])
        crop_lo = ours_root[f"seg_ct/{mouse}/{side}/{week}"].attrs["bonemet"]["crop_box"]["lo"]
        expected = scan_transform(truth, mouse, side, int(week.removeprefix("week")), crop_lo, h_um)
        angle, shift = _pose_error(found, expected, record["output_shape"], h_um)
        ours = group["0"][:] >= 75
        published = published_root[path]["0"][:] >= 75 if path in published_root else None
        same = published is not None and published.shape == ours.shape
        table.add_row(
            path.split("/", 1)[1], f"{record.get('metric', {}).get('value', float('nan')):.3f}",
            str(record.get("quality", "?")), f"{angle:.2f}° / {shift:.2f} voxel",
            f"{_dice(ours, published):.3f}" if same else "n/a",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"  registered {len(report.written)} tibiae in {report.seconds:.1f} s (pose error: the "
        "found transform against the phantom's pose, leg placement and crop; the reference is "
        "the average leg, so anatomy differences count too)"
    )
    for path, metric in report.poor:
        console.print(f"  [yellow]poor registration[/yellow] {path}: metric {metric:.3f}")


def _pose_error(found, expected, shape, h_um: float) -> tuple[float, float]:
    """Rotation (degrees) and shift at the grid centre (voxels) between two transforms."""
    difference = found.inverse() @ expected
    angle = float(np.degrees(np.linalg.norm(difference.rotation_vector)))
    centre = (np.asarray(shape, np.float64) - 1) / 2 * h_um
    shift = float(np.linalg.norm(found.apply(centre) - expected.apply(centre)) / h_um)
    return angle, shift


def _composite(derived: Path, store: Path, truth, roi_slices, paths, client, console, progress):
    """Composite, RoI (``roi_slices`` below the junction), metrics CSV, one preview figure."""
    from bonemet_dask.ops.composite_store import composite_store
    from bonemet_dask.ops.metrics import write_metrics_csv
    from bonemet_dask.preview import preview

    with progress("7/8 composite, RoI and bone metrics") as update:
        report = composite_store(
            str(derived), count=roi_slices, overwrite=True, client=client, progress=update
        )
    table = Table("roi_ct scan", "junction found / truth", "confidence", "formed mm³",
                  "resorbed mm³")  # fmt: skip
    for path in report.written:
        _, mouse, side, week = path.split("/")
        junction = report.junctions.get(f"{mouse}/{side}", {})
        expected = truth["mice"].get(mouse, {}).get("weeks", {}).get(week.removeprefix("week"), {})
        expected = expected.get("roi", {}).get(side, {}).get("junction_regist_slice", "?")
        row = _metrics_row(report.metrics, mouse, side, int(week.removeprefix("week")))
        table.add_row(
            path.split("/", 1)[1], f"{junction.get('slice', '?')} / {expected}",
            f"{junction.get('confidence', float('nan')):.2f}",
            f"{row.get('formed_volume_mm3', float('nan')):.3f}",
            f"{row.get('resorbed_volume_mm3', float('nan')):.3f}",
        )  # fmt: skip
    console.print(table)
    write_metrics_csv(report.metrics, paths["metrics CSV"], store=str(store))
    console.print(f"  wrote {len(report.written)} RoI composites in {report.seconds:.1f} s")
    with progress("8/8 preview figure") as update:
        first = report.written[-1] if report.written else None
        if first is not None:
            _, mouse, side, week = first.split("/")
            preview(
                str(derived), paths["preview"], component="roi_ct", mouse=mouse,
                week=int(week.removeprefix("week")), side=side,
            )  # fmt: skip
        update(1, 1)


def _metrics_row(frame, mouse: str, side: str, week: int) -> dict[str, Any]:
    if frame is None or len(frame) == 0:
        return {}
    hits = frame[
        (frame["mouse"].astype(str) == mouse) & (frame["side"] == side) & (frame["week"] == week)
    ]
    return hits.iloc[0].to_dict() if len(hits) else {}
