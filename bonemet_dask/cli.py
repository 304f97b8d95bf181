"""The ``bonemet-dask`` command line (typer + rich).

Exit codes: 0 ok, 1 failure, 2 bad usage, 3 finished but inputs had (or would be quarantined
for) errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bonemet_dask.naming import COMPONENTS, SIDES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_QUARANTINED = 0, 1, 2, 3

app = typer.Typer(
    name="bonemet-dask",
    help="BoneMet micro-CT: PNG stacks to sharded OME-Zarr and the processing chain on Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    handler = RichHandler(console=err_console, show_path=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("bonemet_dask")
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    package_logger.propagate = False


# ---------------------------------------------------------------- selection helpers


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def parse_weeks(value: str | None) -> list[int] | None:
    """``"0,2-4"`` -> ``[0, 2, 3, 4]``; None stays None."""
    items = _split(value)
    if items is None:
        return None
    weeks: list[int] = []
    for item in items:
        try:
            if "-" in item:
                lo, hi = (int(v) for v in item.split("-", 1))
                weeks.extend(range(lo, hi + 1))
            else:
                weeks.append(int(item))
        except ValueError:
            raise typer.BadParameter(
                f"--weeks {value!r}: {item!r} is not a week number or range like 0,2-4"
            ) from None
    return weeks


def _choices(option: str, value: str | None, allowed: tuple[str, ...]) -> list[str] | None:
    items = _split(value)
    for item in items or ():
        if item not in allowed:
            raise typer.BadParameter(f"{option} {item!r} is not one of {', '.join(allowed)}")
    return items


def _selection(
    mice: str | None, weeks: str | None, sides: str | None, components: str | None
) -> dict:
    """The common selectors, parsed and validated, as keyword arguments of select/convert/verify."""
    return {
        "components": _choices("--components", components, COMPONENTS),
        "mice": _split(mice),
        "weeks": parse_weeks(weeks),
        "sides": _choices("--sides", sides, SIDES),
    }


MiceOpt = Annotated[str | None, typer.Option("--mice", help="Animal ids, comma separated.")]
WeeksOpt = Annotated[str | None, typer.Option("--weeks", help="Weeks, e.g. 0,2-4.")]
SidesOpt = Annotated[str | None, typer.Option("--sides", help="left, right, both.")]
ComponentsOpt = Annotated[
    str | None, typer.Option("--components", help=f"Comma separated: {', '.join(COMPONENTS)}.")
]


# ---------------------------------------------------------------- commands


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic BoneMet tree into.")],
    mice: Annotated[int, typer.Option(help="Number of animals.")] = 2,
    weeks: Annotated[int, typer.Option(help="Weekly scans per animal (weeks 0..K-1).")] = 3,
    size: Annotated[
        str, typer.Option(help="tiny (1/64), small (1/16), medium (1/4), full.")
    ] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes byte-identical trees.")] = 0,
    variants: Annotated[bool, typer.Option(help="Use published naming variants.")] = False,
    components: ComponentsOpt = None,
    cluster: Annotated[
        str, typer.Option(help="'none' (in this process), 'local', 'slurm', 'gpu' or an address.")
    ] = "none",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing tree in OUT.")] = False,
) -> None:
    """Write a synthetic BoneMet tree (published layout, naming, .log files, record.csv)."""
    from bonemet_dask.synth import SynthConfig, generate

    try:
        config = SynthConfig(
            mice=mice,
            weeks=weeks,
            size=size,
            seed=seed,
            variants=variants,
            components=tuple(_choices("--components", components, COMPONENTS) or COMPONENTS),
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    started = time.perf_counter()
    with _client(cluster) as client, _progress("Generating scans") as update:
        try:
            generate(str(out), config, client=client, progress=update, overwrite=overwrite)
        except FileExistsError as err:
            err_console.print(f"[red]{err}[/red]")
            raise typer.Exit(EXIT_USAGE) from None
    console.print(
        f"Wrote {config.mice} animals x {config.weeks} weeks ({size}) to [bold]{out}[/bold] "
        f"in {time.perf_counter() - started:.1f} s"
    )


@app.command()
def plan(
    src: Annotated[
        str | None, typer.Argument(help="BoneMet tree: local folder or fsspec URL.")
    ] = None,
    mice: MiceOpt = None,
    weeks: WeeksOpt = None,
    sides: SidesOpt = None,
    components: ComponentsOpt = None,
    profile: Annotated[
        str | None,
        typer.Option(help="'full': plan the published 67.87 TB from its counts (no SRC needed)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalog as JSON.")] = False,
    max_problems: Annotated[int, typer.Option(help="Problems listed in the table.")] = 50,
) -> None:
    """Dry run: stacks, totals, problems, and the conversion's shards, objects and core-hours.

    Exits 3 when a stack has an error (it would be quarantined by ``convert``).
    """
    from bonemet_dask.io.catalog import scan_source
    from bonemet_dask.io.catalog_report import catalog_tables
    from bonemet_dask.ops.plan import plan_catalog, plan_published

    if profile is not None:
        if profile != "full":
            raise typer.BadParameter(f"--profile {profile!r} is not 'full'")
        console.print(_plan_table(plan_published(), "Conversion plan: published BoneMet (Table 1)"))
        return
    if src is None:
        raise typer.BadParameter("give SRC, or --profile full", param_hint="SRC")
    try:
        catalog = scan_source(src)
    except FileNotFoundError as err:
        err_console.print(f"[red]{err}[/red]")
        raise typer.Exit(EXIT_FAILURE) from None
    catalog = catalog.select(**_selection(mice, weeks, sides, components))
    if as_json:
        frame = catalog.to_dataframe()
        problems = [_problem_dict(p) for p in catalog.all_problems()]
        stacks = json.loads(frame.to_json(orient="records"))
        console.print_json(json.dumps({"stacks": stacks, "problems": problems}))
    else:
        for table in catalog_tables(catalog, max_problems=max_problems):
            console.print(table)
        console.print(_plan_table(plan_catalog(catalog), "Conversion plan"))
    if any(not stack.ok for stack in catalog.stacks):
        raise typer.Exit(EXIT_QUARANTINED)


def _plan_table(plans, title: str):
    from rich.table import Table

    from bonemet_dask.ops.plan import plan_frame

    frame = plan_frame(plans)
    table = Table(title=title, title_justify="left")
    for column in ("component", "scans", "PNG", "shards = tasks", "objects", "MB/object", "core-h"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for row in frame.itertuples():
        table.add_row(
            str(row.component),
            f"{int(row.scans):,}",
            _human_bytes(row.png_bytes),
            f"{int(row.shards_tasks):,}",
            f"{int(row.objects):,}",
            f"{row.mb_per_object:.1f}",
            f"{row.core_hours:.1f}",
        )
    table.caption = (
        "core-hours at the per-core rates of BENCHMARKS.md (config bonemet.convert-rate)"
    )
    return table


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _problem_dict(problem) -> dict[str, str]:
    return {k: getattr(problem, k) for k in ("severity", "kind", "path", "message")}


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="BoneMet tree: local folder or fsspec URL.")],
    store: Annotated[str, typer.Argument(help="Zarr store: local folder or fsspec URL.")],
    mice: MiceOpt = None,
    weeks: WeeksOpt = None,
    sides: SidesOpt = None,
    components: ComponentsOpt = None,
    on_error: Annotated[
        str, typer.Option(help="quarantine: leave bad scans out and go on; stop: abort.")
    ] = "quarantine",
    overwrite: Annotated[
        bool, typer.Option(help="Rewrite groups made with other settings.")
    ] = False,
    codec: Annotated[
        str | None,
        typer.Option(help="blosc-zstd, blosc-lz4, zstd, gzip, none (default: measured)."),
    ] = None,
    level: Annotated[int | None, typer.Option(help="Compression level of --codec.")] = None,
    slices_per_shard: Annotated[
        int | None, typer.Option(help="Slices per shard = per task (default 64 CT, 8 projections).")
    ] = None,
    cluster: Annotated[
        str, typer.Option(help="'local', 'none' (threads here), 'slurm', 'gpu' or an address.")
    ] = "none",
    report: Annotated[Path | None, typer.Option(help="Also write the report as JSON here.")] = None,
) -> None:
    """Convert PNG stacks into one sharded OME-Zarr store (resumable: rerun to finish).

    Exits 3 when scans were quarantined; the report names each file and reason.
    """
    from bonemet_dask.io.store import CODECS
    from bonemet_dask.ops.convert import ON_ERROR, ConversionError
    from bonemet_dask.ops.convert import convert as run_convert

    if on_error not in ON_ERROR:
        raise typer.BadParameter(f"--on-error {on_error!r} is not one of {', '.join(ON_ERROR)}")
    if codec is not None and codec not in CODECS:
        raise typer.BadParameter(f"--codec {codec!r} is not one of {', '.join(CODECS)}")
    with _client(cluster) as client, _progress("Converting shards") as update:
        try:
            result = run_convert(
                src,
                store,
                **_selection(mice, weeks, sides, components),
                client=client,
                on_error=on_error,
                overwrite=overwrite,
                codec=codec,
                level=level,
                slices_per_shard=slices_per_shard,
                progress=update,
            )
        except (ConversionError, FileNotFoundError) as err:
            err_console.print(f"[red]{err}[/red]")
            raise typer.Exit(EXIT_FAILURE) from None
    mb = result.bytes_read / 1e6
    console.print(
        f"converted {len(result.converted)} scans ({result.shards_written} shards, {mb:.1f} MB "
        f"of PNG) in {result.seconds:.1f} s; {len(result.skipped)} already complete"
    )
    _print_quarantine(result.quarantined)
    if report is not None:
        report.write_text(json.dumps(result.to_dict(), indent=1))
    raise typer.Exit(result.exit_code)


@app.command()
def verify(
    src: Annotated[str, typer.Argument(help="BoneMet tree: local folder or fsspec URL.")],
    store: Annotated[str, typer.Argument(help="Zarr store written by convert.")],
    mice: MiceOpt = None,
    weeks: WeeksOpt = None,
    sides: SidesOpt = None,
    components: ComponentsOpt = None,
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
) -> None:
    """Prove the store equals the source: every slice re-decoded and compared by digest."""
    from bonemet_dask.ops.verify import verify as run_verify

    with _client(cluster) as client, _progress("Verifying shards") as update:
        result = run_verify(
            src,
            store,
            **_selection(mice, weeks, sides, components),
            client=client,
            progress=update,
        )
    for path in result.missing:
        err_console.print(f"[red]missing[/red] {path}: not (completely) in the store")
    for path, index, file, what in result.mismatches[:50]:
        err_console.print(f"[red]differs[/red] {path} slice {index} ({file}): {what}")
    if result.ok:
        console.print(f"OK: {result.checked_slices} slices equal their source PNGs")
        return
    console.print(
        f"FAILED: {len(result.mismatches)} slices differ, {len(result.missing)} scans missing"
    )
    raise typer.Exit(EXIT_FAILURE)


@app.command()
def reconstruct(
    store: Annotated[str, typer.Argument(help="Zarr store holding converted projections.")],
    out: Annotated[
        str | None, typer.Option(help="Write recon_ct groups here (default: STORE).")
    ] = None,
    mice: MiceOpt = None,
    weeks: WeeksOpt = None,
    filter_: Annotated[
        str, typer.Option("--filter", help="ramlak, shepp-logan, cosine, hamming, hann.")
    ] = "hamming",
    keep_float: Annotated[bool, typer.Option(help="Also store float32 attenuation.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing recon_ct groups.")] = False,
    backend: Annotated[
        str, typer.Option(help="auto (CuPy on GPU workers, else numpy), numpy or cupy.")
    ] = "auto",
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
) -> None:
    """Cone-beam FDK (Parker short-scan weights) of every selected projection scan."""
    from bonemet_dask._backend import BACKENDS
    from bonemet_dask.ops.reconstruct import WINDOWS
    from bonemet_dask.ops.reconstruct_store import reconstruct_store

    if filter_ not in WINDOWS:
        raise typer.BadParameter(f"--filter {filter_!r} is not one of {', '.join(WINDOWS)}")
    if backend not in BACKENDS:
        raise typer.BadParameter(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    with _client(cluster) as client, _progress("Reconstructing scans") as update:
        result = reconstruct_store(
            store,
            out,
            mice=_split(mice),
            weeks=parse_weeks(weeks),
            filter=filter_,
            keep_float=keep_float,
            overwrite=overwrite,
            backend=backend,
            client=client,
            progress=update,
        )
    console.print(f"reconstructed {len(result.written)} scans in {result.seconds:.1f} s")
    for path, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}")


@app.command()
def segment(
    store: Annotated[str, typer.Argument(help="Zarr store holding recon_ct hindlimb scans.")],
    out: Annotated[
        str | None, typer.Option(help="Write seg_ct groups here (default: STORE).")
    ] = None,
    mice: MiceOpt = None,
    weeks: WeeksOpt = None,
    threshold: Annotated[int, typer.Option(help="Bone threshold, grey levels 1..255.")] = 75,
    margin_um: Annotated[
        float, typer.Option(help="Margin around each tibia's box, micrometres.")
    ] = 300.0,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing seg_ct groups (e.g. the published Seg-CT).")
    ] = False,
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
) -> None:
    """Crop both tibiae (fibula kept, cut below the knee) of every selected hindlimb scan.

    Exits 1 when a scan could not be segmented (the reason is printed).
    """
    from bonemet_dask.ops.segment import segment_store

    if not 1 <= threshold <= 255:
        raise typer.BadParameter(f"--threshold {threshold} is not in 1..255")
    if margin_um < 0:
        raise typer.BadParameter(f"--margin-um {margin_um} must be >= 0")
    with _client(cluster) as client, _progress("Segmenting scans") as update:
        result = segment_store(
            store,
            out,
            mice=_split(mice),
            weeks=parse_weeks(weeks),
            threshold=threshold,
            margin_um=margin_um,
            overwrite=overwrite,
            client=client,
            progress=update,
        )
    console.print(f"segmented {len(result.written)} tibiae in {result.seconds:.1f} s")
    for path, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    for path, reason in result.failed:
        err_console.print(f"[red]failed[/red] {path}: {reason}")
    if result.failed:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def register(
    store: Annotated[str, typer.Argument(help="Zarr store holding seg_ct tibiae.")],
    out: Annotated[
        str | None, typer.Option(help="Write regist_ct groups here (default: STORE).")
    ] = None,
    mice: MiceOpt = None,
    weeks: WeeksOpt = None,
    sides: SidesOpt = None,
    threshold: Annotated[float, typer.Option(help="Bone threshold (grey level).")] = 75,
    roll_starts: Annotated[
        str, typer.Option(help="'full' (32 roll starts) or 'bonemet' (the published 26).")
    ] = "full",
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing regist_ct groups (e.g. the published ones).")
    ] = False,
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
) -> None:
    """Rigid registration: week 0 to the vertical reference, later weeks to week 0.

    Exits 1 when a registration's quality flag fails (the scans and metrics are printed).
    """
    from bonemet_dask.ops.register_store import register_store

    side_list = _choices("--sides", sides, SIDES)
    if roll_starts not in ("full", "bonemet"):
        raise typer.BadParameter(f"--roll-starts {roll_starts!r} is not one of full, bonemet")
    with _client(cluster) as client, _progress("Registering tibiae") as update:
        result = register_store(
            store,
            out,
            mice=_split(mice),
            weeks=parse_weeks(weeks),
            sides=side_list,
            overwrite=overwrite,
            threshold=threshold,
            roll_starts=roll_starts,
            client=client,
            progress=update,
        )
    console.print(f"registered {len(result.written)} tibiae in {result.seconds:.1f} s")
    for path, metric in result.metrics.items():
        console.print(f"  {path}: NCC {metric:.3f}")
    for path, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    for path, metric in result.poor:
        err_console.print(f"[red]poor registration[/red] {path}: NCC {metric:.3f}")
    if result.poor:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def composite(
    store: Annotated[str, typer.Argument(help="Zarr store holding regist_ct groups.")],
    out: Annotated[
        str | None, typer.Option(help="Write roi_ct groups here (default: STORE).")
    ] = None,
    mice: MiceOpt = None,
    weeks: WeeksOpt = None,
    sides: SidesOpt = None,
    threshold: Annotated[float, typer.Option(help="Bone threshold (grey level).")] = 75,
    offset: Annotated[int, typer.Option(help="RoI start, slices below the junction.")] = 0,
    count: Annotated[int, typer.Option(help="RoI length in slices.")] = 300,
    keep_fibula: Annotated[bool, typer.Option(help="Do not remove the fibula.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace roi_ct groups written otherwise (e.g. converted).")
    ] = False,
    csv: Annotated[
        str | None,
        typer.Option(help="Metrics CSV joined with MiceMediRec (default: beside a local STORE)."),
    ] = None,
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
) -> None:
    """Composite of each week against week 0, cropped to the RoI, written to roi_ct.

    180 kept, 240 formed, 60 resorbed; the RoI is COUNT slices below the tibia-fibula junction
    found on week 0, fibula removed; per-scan metrics go to a CSV joined with MiceMediRec.
    """
    from bonemet_dask.ops.composite_store import composite_store

    side_list = _choices("--sides", sides, SIDES)
    if csv is None and "://" not in store:
        local = Path(store.rstrip("/"))
        csv = str(local.parent / f"{local.stem}_roi_metrics.csv")
    with _client(cluster) as client, _progress("Composites") as update:
        result = composite_store(
            store,
            out,
            mice=_split(mice),
            weeks=parse_weeks(weeks),
            sides=side_list,
            threshold=threshold,
            offset=offset,
            count=count,
            remove_fibula=not keep_fibula,
            overwrite=overwrite,
            metrics_csv=csv,
            client=client,
            progress=update,
        )
    for key, junction in result.junctions.items():
        flag = " [yellow](ambiguous)[/yellow]" if junction["ambiguous"] else ""
        console.print(
            f"{key}: junction at slice {junction['slice']}, "
            f"confidence {junction['confidence']:.2f}{flag}"
        )
    console.print(f"wrote {len(result.written)} roi_ct scans in {result.seconds:.1f} s")
    if result.csv:
        console.print(f"metrics: {result.csv}")
    for path, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}")


@app.command()
def preview(
    store: Annotated[str, typer.Argument(help="Zarr store.")],
    mouse: Annotated[str, typer.Option(help="Animal id.")],
    week: Annotated[int, typer.Option(help="Week.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")],
    component: Annotated[str, typer.Option(help=f"One of {', '.join(COMPONENTS)}.")] = "roi_ct",
    side: Annotated[
        str | None, typer.Option(help="left, right or both (default: first found).")
    ] = None,
    metrics: Annotated[
        bool, typer.Option(help="roi_ct: add a panel of volumes per week for this tibia.")
    ] = True,
    slice_: Annotated[
        int | None, typer.Option("--slice", help="Axial slice (default: the middle).")
    ] = None,
    width: Annotated[float, typer.Option(help="Figure width, inches.")] = 12.0,
    height: Annotated[float, typer.Option(help="Figure height, inches.")] = 4.0,
    dpi: Annotated[int, typer.Option(help="Pixels per inch.")] = 100,
) -> None:
    """PNG of orthogonal slices; roi_ct composites colour-coded (kept/formed/resorbed)."""
    from bonemet_dask.preview import preview as write_preview

    if component not in COMPONENTS:
        raise typer.BadParameter(f"--component {component!r} is not one of {', '.join(COMPONENTS)}")
    if side is not None and side not in SIDES:
        raise typer.BadParameter(f"--side {side!r} is not one of {', '.join(SIDES)}")
    try:
        path = write_preview(
            store,
            output,
            component=component,
            mouse=mouse,
            week=week,
            side=side,
            index=(slice_, None, None),
            metrics=metrics,
            size_in=(width, height),
            dpi=dpi,
        )
    except KeyError as err:
        err_console.print(f"[red]{err.args[0]}[/red]")
        raise typer.Exit(EXIT_FAILURE) from None
    console.print(f"wrote {path}")


@app.command()
def info(
    store: Annotated[str, typer.Argument(help="Zarr store written by convert.")],
    max_scans: Annotated[int, typer.Option(help="Scans listed per component.")] = 40,
) -> None:
    """Show the store's scans: shapes, shard counts and conversion status."""
    from bonemet_dask.io.store_report import store_tree

    try:
        console.print(store_tree(store, max_scans=max_scans))
    except FileNotFoundError as err:
        err_console.print(f"[red]store={store!r} cannot be opened: {err}[/red]")
        raise typer.Exit(EXIT_FAILURE) from None


def _print_quarantine(quarantined: dict[str, list[tuple[str, str]]]) -> None:
    from rich.table import Table

    if not quarantined:
        return
    table = Table(title=f"Quarantined scans ({len(quarantined)})", title_justify="left")
    table.add_column("scan folder")
    table.add_column("file")
    table.add_column("reason")
    for folder, problems in quarantined.items():
        for file, reason in problems:
            table.add_row(folder, file, reason)
    err_console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its data.")] = Path(
        "demo-output"
    ),
    size: Annotated[str, typer.Option(help="Synthetic size preset.")] = "small",
    mice: Annotated[int, typer.Option(help="Animals.")] = 2,
    weeks: Annotated[int, typer.Option(help="Weeks.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="LocalCluster workers.")] = None,
) -> None:
    """Run the whole pipeline on a synthetic BoneMet tree and an embedded LocalCluster.

    synth, catalog, convert, verify, FDK reconstruction, segmentation, registration, composite +
    RoI + bone metrics, preview figure; each result is compared with the phantom's ground truth.
    """
    from bonemet_dask.demo import run_demo

    paths = run_demo(
        out, size=size, mice=mice, weeks=weeks, seed=seed, workers=workers, console=console,
        progress=_progress,
    )  # fmt: skip
    console.rule("results")
    for label, path in paths.items():
        console.print(f"{label + ':':<15}{path.resolve()}")


# ---------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _client(cluster: str):
    if cluster == "none":
        yield None
        return
    from bonemet_dask.cluster import connect

    try:
        client = connect(cluster)
    except (ValueError, ImportError) as err:
        raise typer.BadParameter(str(err), param_hint="--cluster") from None
    with client:
        err_console.print(f"Dask dashboard: {client.dashboard_link}")
        yield client


@contextlib.contextmanager
def _progress(label: str):
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def main() -> None:  # pragma: no cover - console-script entry
    """Entry point of the console script."""
    app()


if __name__ == "__main__":  # python -m bonemet_dask.cli
    main()
