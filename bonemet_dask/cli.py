"""The ``bonemet-dask`` command line (typer + rich).

Exit codes: 0 ok, 1 failure, 2 bad usage, 3 finished but inputs had (or would be quarantined
for) errors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
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
err_console = Console(stderr=True, soft_wrap=True)  # messages whole: greppable, copyable


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
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    """End the command on SIGTERM (a batch system's time limit, ``kill``) as on Ctrl-C.

    The writer lock is released and groups keep their status, so a rerun from any node
    resumes at once instead of waiting for the lock to go stale.
    """
    err_console.print("[red]terminated (SIGTERM): stopping; rerun the same command to resume[/red]")
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- shared options and errors


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _choices(option: str, value: str | None, allowed: tuple[str, ...]) -> list[str] | None:
    items = _split(value)
    for item in items or ():
        if item not in allowed:
            raise typer.BadParameter(f"{option} {item!r} is not one of {', '.join(allowed)}")
    return items


_FOLLOW_SYMLINKS = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks",
        help="Also follow links in SRC that point outside it (links inside are always followed).",
    ),
]


def _following_links(command):
    """Give a command ``--follow-symlinks``: the ``bonemet.follow-symlinks`` config while it runs.

    Every source listing of the command (``scan_source``) reads the config, so one option
    reaches ``plan``, ``convert``, ``run`` and ``verify`` alike.
    """
    signature = inspect.signature(command, eval_str=True)
    option = inspect.Parameter("follow_symlinks", inspect.Parameter.KEYWORD_ONLY,
                               default=False, annotation=_FOLLOW_SYMLINKS)  # fmt: skip

    @functools.wraps(command)
    def with_links(*args, follow_symlinks: bool = False, **kwargs):
        import dask

        with dask.config.set({"bonemet.follow-symlinks": bool(follow_symlinks)}):
            return command(*args, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind
                  is inspect.Parameter.POSITIONAL_OR_KEYWORD else p
                  for p in signature.parameters.values()]  # fmt: skip
    with_links.__signature__ = signature.replace(parameters=[*parameters, option])
    return with_links


def _selecting(*selectors: str):
    """Give a command the selector options; it receives them as one ``selection`` argument.

    The options (``--mice``, ``--weeks``, ``--sides``, ``--components``) are added after the
    command's arguments and parsed by :meth:`~bonemet_dask.selection.Selection.of`, the one
    rule for every command; a malformed one exits 2 naming the fix.
    """

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != "selection"]
        arguments = [p for p in own if _is_argument(p)]
        keyword = inspect.Parameter.KEYWORD_ONLY
        added = [
            inspect.Parameter(name, keyword, default=None, annotation=_SELECTOR_OPTIONS[name])
            for name in selectors
        ]

        @functools.wraps(command)
        def with_selection(**given):
            from bonemet_dask.selection import Selection

            chosen = {name: given.pop(name) for name in selectors}
            with _user_errors():
                selection = Selection.of(**chosen)
            return command(**given, selection=selection)

        parameters = arguments + added + [p for p in own if not _is_argument(p)]
        with_selection.__signature__ = signature.replace(
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
        )
        with_selection.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_selection

    return decorate


def _is_argument(parameter: inspect.Parameter) -> bool:
    metadata = getattr(parameter.annotation, "__metadata__", ())
    return any(isinstance(m, typer.models.ArgumentInfo) for m in metadata)


@contextlib.contextmanager
def _user_errors():
    """Turn the mistakes a user can make into one red line and the documented exit code."""
    from bonemet_dask.errors import StoreFullError, UsageError
    from bonemet_dask.io.store import StoreLayoutError
    from bonemet_dask.ops.convert import ConversionError

    try:
        yield
    except (UsageError, FileNotFoundError, NotADirectoryError) as err:
        err_console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(EXIT_USAGE) from None
    except (ConversionError, StoreLayoutError, StoreFullError) as err:  # full: rerun resumes
        err_console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(EXIT_FAILURE) from None


_SELECTOR_OPTIONS = {
    "mice": Annotated[str | None, typer.Option(help="Animal ids, comma separated, e.g. 851,852.")],
    "weeks": Annotated[str | None, typer.Option(help="Weeks, e.g. 0,2-4.")],
    "sides": Annotated[str | None, typer.Option(help="left, right, both.")],
    "components": Annotated[
        str | None, typer.Option(help=f"Comma separated: {', '.join(COMPONENTS)}.")
    ],
}
ComponentsOpt = _SELECTOR_OPTIONS["components"]
SourceArg = Annotated[str, typer.Argument(help="BoneMet tree: local folder or fsspec URL.")]
StoreArg = Annotated[str, typer.Argument(help="Zarr store: local folder or fsspec URL.")]
OutOpt = Annotated[
    str | None, typer.Option(help="Write here (read from here first, then STORE); default STORE.")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(help="Replace groups written otherwise (e.g. the published products)."),
]
ClusterOpt = Annotated[
    str,
    typer.Option(
        help="'none' (dask's scheduler here), 'local', 'slurm', 'pbs', 'gpu', a scheduler "
        "address or file; batch jobs sized as KIND:KEY=VALUE,... e.g. "
        "slurm:cores=32,memory=128GiB,walltime=24:00:00,queue=q,account=a,jobs=8 or adapt=0-16."
    ),
]
ConcurrencyOpt = Annotated[
    int | None, typer.Option(help="Units (scans, tibiae, mice) in flight at once.", min=1)
]
ConsolidateOpt = Annotated[
    bool,
    typer.Option(
        help="Consolidate the store's metadata at the end (--no-consolidate for tasks side by "
        "side in one store; then run `bonemet-dask consolidate STORE` once after them)."
    ),
]
ShardOpt = Annotated[
    int | None, typer.Option(help="Slices per shard = per writing task (default: 64 or more).")
]
BackendOpt = Annotated[
    str, typer.Option(help="auto (CuPy on GPU workers, else numpy), numpy or cupy.")
]
ThresholdOpt = Annotated[
    int, typer.Option(help="Bone threshold, grey levels 1..255.", min=1, max=255)
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
    products: Annotated[
        str,
        typer.Option(help="reconstructed (FDK's blur and noise) or voxelised (idealised, sharp)."),
    ] = "reconstructed",
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
            products=products,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    started = time.perf_counter()
    with _client(cluster) as client, _progress("Generating scans") as update:
        try:
            generate(str(out), config, client=client, progress=update, overwrite=overwrite)
        except FileExistsError as err:
            err_console.print(f"[red]{escape(str(err))}[/red]")
            raise typer.Exit(EXIT_USAGE) from None
    console.print(
        f"Wrote {config.mice} animals x {config.weeks} weeks ({size}) to [bold]{out}[/bold] "
        f"in {time.perf_counter() - started:.1f} s"
    )


@app.command()
@_following_links
@_selecting("mice", "weeks", "sides", "components")
def plan(
    src: Annotated[
        str | None, typer.Argument(help="BoneMet tree: local folder or fsspec URL.")
    ] = None,
    selection: Any = None,
    profile: Annotated[
        str | None,
        typer.Option(help="'full': plan the published 67.87 TB from its counts (no SRC needed)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalog as JSON.")] = False,
    max_problems: Annotated[int, typer.Option(help="Problems listed in the table.")] = 50,
    nodes: Annotated[int, typer.Option(help="--profile full: cluster nodes.", min=1)] = 8,
    cores: Annotated[int, typer.Option(help="--profile full: cores per node.", min=1)] = 32,
    gpus: Annotated[int, typer.Option(help="--profile full: GPUs per node.", min=0)] = 1,
    node_memory: Annotated[
        str | None,
        typer.Option(help="--profile full: memory per node, e.g. 256GiB (caps tasks per node)."),
    ] = None,
    rates: Annotated[
        Path | None,
        typer.Option(
            help="--profile full: throughputs, a rates YAML or `bonemet-dask bench` JSON "
            "(default the packaged rates).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Dry run: stacks, totals, problems, and the conversion's shards, objects and core-hours.

    With ``--profile full``: the published 67.87 TB, conversion and then every stage of ``run``
    from the raw projections (bytes, objects, tasks, peak task memory, core- and GPU-hours), and
    the wall time on ``--nodes`` x ``--cores`` (and ``--gpus``).  Exits 3 when a stack has an
    error (it would be quarantined by ``convert``).
    """
    from bonemet_dask.io.catalog import scan_source
    from bonemet_dask.io.catalog_report import catalog_tables
    from bonemet_dask.io.records import check_records_file
    from bonemet_dask.ops.plan import plan_catalog, plan_published

    if profile is not None:
        if profile != "full":
            raise typer.BadParameter(f"--profile {profile!r} is not 'full'")
        console.print(_plan_table(plan_published(), "Conversion plan: published BoneMet (Table 1)"))
        _print_chain_plan(nodes, cores, gpus, node_memory, rates)
        return
    if src is None:
        raise typer.BadParameter("give SRC, or --profile full", param_hint="SRC")
    try:
        catalog = scan_source(src, selection=selection)  # pushed down to a remote listing
    except FileNotFoundError as err:
        err_console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(EXIT_FAILURE) from None
    catalog = catalog.select(selection)
    if as_json:
        frame = catalog.to_dataframe()
        problems = [_problem_dict(p) for p in catalog.all_problems()]
        stacks = json.loads(frame.to_json(orient="records"))
        console.print_json(json.dumps({"stacks": stacks, "problems": problems}))
    else:
        for table in catalog_tables(catalog, max_problems=max_problems):
            console.print(table)
        console.print(_plan_table(plan_catalog(catalog), "Conversion plan"))
    records = check_records_file(catalog.fs, catalog.records_path) if catalog.records_path else ()
    bad_records = any(p.severity != "notice" for p in records)  # logged; convert would exit 3
    if catalog.left_out or bad_records or any(not stack.ok for stack in catalog.stacks):
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
    table.caption = "core-hours at the per-core conversion rates of the packaged stage-rates.yaml"
    return table


def _print_chain_plan(
    nodes: int, cores: int, gpus: int, node_memory: str | None, rates: Path | None
) -> None:
    """The chain from raw projections over the published dataset, and its wall time."""
    from dask.utils import format_bytes, parse_bytes
    from rich.table import Table

    from bonemet_dask.ops.plan_chain import cluster_time, load_rates, plan_chain, stage_frame

    try:
        loaded = load_rates(rates)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--rates") from None
    try:
        memory = None if node_memory is None else int(parse_bytes(node_memory))
    except ValueError as err:
        raise typer.BadParameter(f"{node_memory!r}: {err}; e.g. 256GiB",
                                 param_hint="--node-memory") from None  # fmt: skip
    plans = plan_chain(rates=loaded)
    time = cluster_time(plans, nodes=nodes, cores=cores, gpus=gpus, node_memory=memory)
    frame = stage_frame(plans, time)
    table = Table(title="Run plan: raw projections to metrics, published BoneMet",
                  title_justify="left")  # fmt: skip
    columns = ("stage", "units", "read", "written", "objects", "tasks", "peak task",
               "core-h", "GPU-h", "host core-h", "wall h")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in frame.itertuples():
        units = "" if row.stage == "total" else f"{int(row.units):,} {row.unit}s"
        table.add_row(
            str(row.stage), units, _human_bytes(row.bytes_in), _human_bytes(row.bytes_out),
            f"{int(row.objects):,}", f"{int(row.tasks):,}", format_bytes(int(row.peak_task_bytes)),
            f"{row.core_hours:,.1f}", f"{row.gpu_hours:,.1f}" if row.gpu_hours else "-",
            f"{row.host_core_hours:,.1f}" if row.host_core_hours else "-",
            f"{row.wall_hours:,.2f}",
        )  # fmt: skip
    where = f"{nodes} nodes x {cores} cores" + (f" x {gpus} GPU" if gpus else "")
    table.caption = (
        f"wall h: each stage alone on {where} ({time.workers_per_node} tasks per node); "
        f"rates from {loaded.path}"
    )
    console.print(table)
    console.print(
        f"On {where}: {time.sequential_hours:.1f} h with the stages one after another, "
        f"{time.overlapped_hours:.1f} h with mice overlapping stages; bound by "
        f"[bold]{time.bound}[/bold]; storage must move "
        f"{time.bytes_per_s / 1e9:.2f} GB/s to keep up (the whole run in 24 h: "
        f"{(frame.bytes_in.iloc[-1] + frame.bytes_out.iloc[-1]) / 86400 / 1e9:.2f} GB/s)."
    )


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _problem_dict(problem) -> dict[str, str]:
    return {k: getattr(problem, k) for k in ("severity", "kind", "path", "message")}


@app.command()
@_following_links
@_selecting("mice", "weeks", "sides", "components")
def convert(
    src: SourceArg,
    store: StoreArg,
    selection: Any = None,
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
    consolidate: ConsolidateOpt = True,
) -> None:
    """Convert PNG stacks into one sharded OME-Zarr store (resumable: rerun to finish).

    Exits 3 when scans were quarantined; the report names each file and reason.
    """
    from bonemet_dask.io.store import CODECS
    from bonemet_dask.ops.convert import ON_ERROR
    from bonemet_dask.ops.convert import convert as run_convert

    if on_error not in ON_ERROR:
        raise typer.BadParameter(f"--on-error {on_error!r} is not one of {', '.join(ON_ERROR)}")
    if codec is not None and codec not in CODECS:
        raise typer.BadParameter(f"--codec {codec!r} is not one of {', '.join(CODECS)}")
    with _user_errors(), _client(cluster) as client, _progress("Converting shards") as update:
        result = run_convert(
            src,
            store,
            selection=selection,
            client=client,
            on_error=on_error,
            overwrite=overwrite,
            codec=codec,
            level=level,
            slices_per_shard=slices_per_shard,
            progress=update,
            consolidate=consolidate,
        )
    mb = result.bytes_read / 1e6
    counts = result.counts()
    console.print(
        f"converted {counts['written'] + counts['resumed']} scans ({result.shards_written} "
        f"shards, {mb:.1f} MB of PNG) in {result.seconds:.1f} s; {counts['up to date']} already "
        "complete"
    )
    _print_quarantine(result.quarantined)
    if report is not None:
        report.write_text(json.dumps(_report_dict(result), indent=1))
    raise typer.Exit(result.exit_code)


def _report_dict(report) -> dict:
    """A stage report as JSON: counts, then every outcome."""
    return {
        "stage": report.stage,
        "counts": report.counts(),
        "written": report.written,
        "shards_written": report.shards_written,
        "bytes_read": report.bytes_read,
        "seconds": report.seconds,
        "outcomes": [
            {"path": o.path, "status": o.status, "reason": o.reason, "shards": o.shards}
            for o in report.outcomes
        ],
        "quarantined": {k: [list(p) for p in v] for k, v in report.quarantined.items()},
    }


@app.command()
@_following_links
@_selecting("mice", "weeks", "sides", "components")
def verify(
    src: SourceArg,
    store: Annotated[str, typer.Argument(help="Zarr store written by convert.")],
    selection: Any = None,
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
) -> None:
    """Prove the store equals the source: every slice re-decoded and compared by digest."""
    from bonemet_dask.ops.verify import verify as run_verify

    with _user_errors(), _client(cluster) as client, _progress("Verifying shards") as update:
        result = run_verify(src, store, selection=selection, client=client, progress=update)
    for path in result.missing:
        folder = result.folders.get(path, "")
        err_console.print(f"[red]missing[/red] {path}: the source scan folder {folder!r} is not "
                          "(completely) in the store; convert it (rerun convert)")  # fmt: skip
    for path, message in result.left_out:
        err_console.print(f"[red]left out[/red] {path}: {message}")
    for path, index, file, what in result.mismatches[:50]:
        err_console.print(f"[red]differs[/red] {path} slice {index} ({file}): {what}")
    if result.ok:
        console.print(f"OK: {result.checked_slices} slices equal their source PNGs")
        return
    console.print(
        f"FAILED: {len(result.mismatches)} slices differ, {len(result.missing)} scans missing, "
        f"{len(result.left_out)} source paths left out"
    )
    raise typer.Exit(EXIT_FAILURE)


@app.command()
@_selecting("mice", "weeks", "sides", "components")
def export(
    store: Annotated[str, typer.Argument(help="Zarr store to export from.")],
    out: Annotated[
        str, typer.Argument(help="Folder (or fsspec URL) to write the BoneMet PNG tree under.")
    ],
    selection: Any = None,
    check: Annotated[
        str,
        typer.Option(help="A file is done when it decodes to its recorded digest, or 'exists'."),
    ] = "digest",
    png_level: Annotated[
        int, typer.Option(help="PNG zlib level 0..9 (same pixels at every level).", min=0, max=9)
    ] = 1,
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
) -> None:
    """Write scans back to the published folder layout, file names and .log files (resumable).

    Converted scans go back to their source names; stage products get the published naming
    of their component.  A rerun writes only missing or wrong files.  Exits 3 when a selected
    scan was skipped (incomplete), 1 when a file could not be written.
    """
    from bonemet_dask.ops.export import CHECKS
    from bonemet_dask.ops.export import export as run_export

    if check not in CHECKS:
        raise typer.BadParameter(f"--check {check!r} is not one of {', '.join(CHECKS)}")
    with _user_errors(), _client(cluster) as client, _progress("Exporting shards") as update:
        result = run_export(store, out, selection=selection, client=client, check=check,
                            png_level=png_level, progress=update)  # fmt: skip
    for path, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    for path, reason in result.failures[:50]:
        err_console.print(f"[red]failed[/red] {path}: {reason}")
    console.print(
        f"exported {len(result.folders)} scans to {out}: {result.files_written} PNG files "
        f"written ({result.bytes_written / 1e6:.1f} MB), {result.files_kept} already complete, "
        f"{result.logs_written} .log files written, in {result.seconds:.1f} s"
    )
    raise typer.Exit(result.exit_code)


def _stage_command(stage_class, name: str) -> None:
    """Register the CLI command of a stage, built from its declaration.

    STORE, --out, the selectors, one option per setting of the stage's dataclass (its help
    text from :func:`~bonemet_dask.ops.stage.setting`), --overwrite, --cluster and
    --concurrency: a new stage declares its settings once, for Python and the CLI alike.
    """
    import typing
    from dataclasses import MISSING, fields

    hints = typing.get_type_hints(stage_class)
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("store", keyword, annotation=StoreArg),
        inspect.Parameter("selection", keyword, default=None),
        inspect.Parameter("out", keyword, default=None, annotation=OutOpt),
    ]
    settings = []
    for item in fields(stage_class):
        if item.metadata.get("cli") is False or item.default is MISSING:
            continue
        spelling = item.metadata.get("cli") or "--" + item.name.replace("_", "-")
        option = typer.Option(spelling, help=item.metadata.get("help", ""))
        annotation = Annotated[_cli_type(hints[item.name]), option]
        parameters.append(inspect.Parameter(item.name, keyword, default=item.default,
                                            annotation=annotation))  # fmt: skip
        settings.append(item.name)
    parameters += [
        inspect.Parameter("overwrite", keyword, default=False, annotation=OverwriteOpt),
        inspect.Parameter("cluster", keyword, default="none", annotation=ClusterOpt),
        inspect.Parameter("concurrency", keyword, default=None, annotation=ConcurrencyOpt),
        inspect.Parameter("consolidate", keyword, default=True, annotation=ConsolidateOpt),
    ]

    def command(**given) -> None:
        store, out = given["store"], given["out"]
        chosen = {k: given[k] for k in settings}
        for key, value in stage_class.cli_defaults(store, out).items():
            chosen[key] = value if chosen.get(key) is None else chosen[key]
        _run_stage(lambda: stage_class(**chosen), store, out, given["selection"],
                   given["overwrite"], given["cluster"], given["concurrency"],
                   given["consolidate"])  # fmt: skip

    command.__signature__ = inspect.Signature(parameters)  # what typer reads
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    paragraphs = inspect.cleandoc(stage_class.__doc__ or "").split("\n\n")
    command.__doc__ = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    command.__name__ = name
    selectors = ("mice", "weeks", "sides") if stage_class.per_tibia else ("mice", "weeks")
    app.command(name=name)(_selecting(*selectors)(command))


def _cli_type(hint):
    """The option type of a setting: ``int | None`` stays, ``str | Sequence`` becomes ``str``."""
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        simple = [a for a in args if a in (str, int, float, bool)]
        return (simple[0] | None) if type(None) in typing.get_args(hint) else simple[0]
    return hint


def _run_stage(
    make_stage, store, out, selection, overwrite, cluster, concurrency, consolidate=True
) -> None:
    """What every stage command does: check options, run the stage, print, exit."""
    from bonemet_dask.ops.engine import run_stage

    try:
        stage = make_stage()
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    label = f"{stage.name}: {stage.writes}"
    with _user_errors(), _client(cluster) as client, _progress(label) as update:
        report = run_stage(stage, store, out, selection=selection, overwrite=overwrite,
                           client=client, concurrency=concurrency, progress=update,
                           consolidate=consolidate)  # fmt: skip
    _print_report(report, stage)
    if report.refused and not any(o.done for o in report.outcomes):
        err_console.print(
            f"[red]{stage.writes} groups exist in {out or store} and were not written by this "
            "stage with these settings: pass --out OTHER.zarr or --overwrite[/red]"
        )
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(report.exit_code or (EXIT_FAILURE if report.flagged else EXIT_OK))


def _register_stage_commands() -> None:
    from bonemet_dask.ops.composite_store import Composite
    from bonemet_dask.ops.reconstruct_store import Reconstruct
    from bonemet_dask.ops.register_store import Register
    from bonemet_dask.ops.segment_store import Segment

    for stage_class in (Reconstruct, Segment, Register, Composite):
        _stage_command(stage_class, stage_class.name)


_register_stage_commands()


_OUTCOME_STYLE = {"written": "green", "resumed": "green", "up to date": "dim",
                  "refused": "yellow", "failed": "red", "quarantined": "red"}  # fmt: skip


def _print_report(report, stage, max_rows: int = 60) -> None:
    """One row per output (the first ``max_rows``), then the counts."""
    from rich.table import Table

    table = Table(title=f"{report.stage}: {len(report.outcomes)} outputs", title_justify="left")
    for column in ("group", "outcome", "details"):
        table.add_column(column, overflow="fold")
    for outcome in report.outcomes[:max_rows]:
        style = _OUTCOME_STYLE.get(outcome.status, "")
        note = stage.note(outcome) if stage is not None else outcome.reason
        table.add_row(outcome.path, f"[{style}]{outcome.status}[/{style}]", note)
    if len(report.outcomes) > max_rows:
        table.caption = f"... and {len(report.outcomes) - max_rows} more"
    console.print(table)
    for outcome in report.outcomes:  # whole reasons, never cut to the table's width
        if outcome.status in ("failed", "quarantined", "refused"):
            style = _OUTCOME_STYLE[outcome.status]
            err_console.print(f"[{style}]{outcome.status}[/{style}] {outcome.path}: "
                              f"{outcome.reason}", soft_wrap=True)  # fmt: skip
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    console.print(f"{report.stage}: {counts or 'nothing to do'} in {report.seconds:.1f} s")
    if report.csv:
        console.print(f"metrics: {report.csv}")


@app.command(name="run")
@_following_links
@_selecting("mice", "weeks", "sides")
def run_chain(
    src: SourceArg,
    store: StoreArg,
    selection: Any = None,
    start: Annotated[
        str,
        typer.Option(
            "--from", help="projections (FDK from the raw X-rays) or recon_ct (published)."
        ),
    ] = "projections",
    until: Annotated[
        str, typer.Option(help="Last stage: convert, reconstruct, segment, register, composite.")
    ] = "composite",
    threshold: ThresholdOpt = 75,
    filter_: Annotated[
        str, typer.Option("--filter", help="FDK ramp window: ramlak, shepp-logan, hamming...")
    ] = "hamming",
    roll_starts: Annotated[str, typer.Option(help="'full' or 'bonemet' roll starts.")] = "full",
    length_um: Annotated[
        float, typer.Option(help="RoI length below the junction, micrometres (BoneMet: 3000).")
    ] = 3000.0,
    csv: Annotated[
        str | None, typer.Option(help="Metrics CSV (default: beside a local STORE).")
    ] = None,
    backend: BackendOpt = "auto",
    slices_per_shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
    cluster: Annotated[
        str, typer.Option(help="'local' (embedded cluster), 'none', 'slurm', 'gpu' or an address.")
    ] = "local",
    concurrency: Annotated[int | None, typer.Option(help="Mice in flight at once.", min=1)] = None,
    consolidate: ConsolidateOpt = True,
    pyramid: Annotated[
        bool,
        typer.Option(
            help="Build the multiscale pyramids of the run's groups at the end (for napari and "
            "neuroglancer; xr.open_datatree then refuses the store, bm.open_store reads it)."
        ),
    ] = False,
) -> None:
    """The whole chain, mouse by mouse, resumable: the main command.

    convert (what is not yet in STORE) -> FDK (--from projections) -> segment -> register (week 0
    first) -> composite, RoI and metrics CSV.  A rerun skips what is finished and finishes what
    is not.  Exits 3 when a scan was quarantined, 1 when an output failed.
    """
    from bonemet_dask.ops.run import run

    shard = {"slices_per_shard": slices_per_shard}
    options = {
        "convert": shard,
        "reconstruct": {"filter": filter_, **shard},
        "segment": {"threshold": threshold, **shard},
        "register": {"threshold": threshold, "roll_starts": roll_starts, **shard},
        "composite": {"threshold": threshold, "length_um": length_um, **shard},
    }
    with _user_errors(), _client(cluster) as client, _stage_progress() as update:
        result = run(src, store, selection=selection, start=start, until=until,
                     options=options, backend=backend, overwrite=overwrite,
                     metrics_csv=csv, client=client, concurrency=concurrency,
                     progress=update, consolidate=consolidate, pyramid=pyramid)  # fmt: skip
    _print_run(result)
    raise typer.Exit(result.exit_code)


def _print_run(result) -> None:
    from rich.table import Table

    from bonemet_dask.ops.stage import OUTCOMES

    table = Table(title=f"run: {len(result.mice)} mice in {result.seconds:.1f} s",
                  title_justify="left")  # fmt: skip
    table.add_column("stage")
    for status in OUTCOMES:
        table.add_column(status, justify="right")
    for name, report in result.stages.items():
        counts = report.counts()
        table.add_row(name, *(str(counts[s]) for s in OUTCOMES))
    console.print(table)
    for name, report in result.stages.items():
        for path, reason in report.failed:
            err_console.print(f"[red]failed[/red] {name} {path}: {reason}")
        for folder, problems in report.quarantined.items():
            err_console.print(f"[red]quarantined[/red] {name} {folder}: {problems[0][1]}")
        for path, flag in report.flagged:
            err_console.print(f"[yellow]flagged[/yellow] {path}: {flag}")
    if result.csv:
        console.print(f"metrics: {result.csv}")


@app.command()
def consolidate(store: StoreArg) -> None:
    """Consolidate STORE's metadata into its root (after --no-consolidate tasks in one store).

    Readers that trust consolidated metadata (``xr.open_datatree(STORE, engine="zarr")``)
    then read the whole tree in one request; the package's own commands never need it.
    """
    from bonemet_dask.io.consolidate import consolidate_store

    with _user_errors():
        nodes = consolidate_store(store)
    console.print(f"consolidated {nodes:,} groups and arrays into the root of {store}")


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
        err_console.print(f"[red]{escape(str(err.args[0]))}[/red]")
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


@app.command()
@_selecting("mice", "weeks", "sides", "components")
def pyramid(
    store: StoreArg,
    selection: Any = None,
    target: Annotated[
        int, typer.Option(help="Coarsest level: largest axis at most this many pixels.", min=1)
    ] = 256,
    rebuild: Annotated[bool, typer.Option(help="Write every level again.")] = False,
    cluster: Annotated[str, typer.Option(help="'none', 'local' or an address.")] = "none",
    consolidate: ConsolidateOpt = True,
) -> None:
    """OME-Zarr multiscale levels (2x, mean; masks and composites: mode) for every image group.

    Resumable: a rerun writes only the missing shards of each level.  Exits 1 when a group
    failed.  napari and neuroglancer then zoom out without reading full resolution; plain
    ``xr.open_datatree`` refuses a store with levels (a level's dims cannot align with its
    image's), ``bm.open_store`` and ``xr.open_zarr(store, group=...)`` read it.
    """
    from bonemet_dask.ops.pyramid import pyramid as build

    with _user_errors(), _client(cluster) as client, _progress("Pyramids") as update:
        report = build(store, selection=selection, target=target, rebuild=rebuild,
                       client=client, progress=update, consolidate=consolidate)  # fmt: skip
    counts = report.counts()
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for path, reason in report.failed:
        err_console.print(f"[red]failed[/red] pyramid {path}: {reason}")
    raise typer.Exit(report.exit_code)


def _print_quarantine(quarantined: dict[str, list[tuple[str, str]]]) -> None:
    from rich.table import Table

    if not quarantined:
        return
    table = Table(title=f"Quarantined scans ({len(quarantined)})", title_justify="left")
    table.add_column("scan folder")
    table.add_column("file")
    table.add_column("reason")
    for folder, problems in quarantined.items():
        for file, reason in problems:  # user text: "[p/s]" in a column name is not markup
            table.add_row(escape(folder), escape(file), escape(reason))
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
        progress=_progress, stage_progress=_stage_progress,
    )  # fmt: skip
    console.rule("results")
    for label, path in paths.items():
        console.print(f"{label + ':':<15}{path.resolve()}")


@app.command()
def bench(
    stages: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated (default all): convert, fdk, fbp, resample, composite, "
            "register, chain."
        ),
    ] = None,
    size: Annotated[str, typer.Option(help="Workload: tiny, small, medium or full.")] = "small",
    repeat: Annotated[int, typer.Option(help="Timed runs per measurement.", min=1)] = 3,
    out: Annotated[
        Path, typer.Option(help="Results (JSON); the figure goes beside it (.png).")
    ] = Path("bench.json"),
) -> None:
    """Every stage against its peers and limits, in one run: JSON results and a figure.

    Runs ``benchmarks/suite.py`` of a source checkout (the peers: pip install -e '.[bench]').
    """
    suite = _bench_suite()
    chosen = list(suite.STAGES) if stages is None else [s.strip() for s in stages.split(",")]
    chosen = [s for s in chosen if s]
    try:
        results = suite.run_suite(
            chosen, size, repeat, out, progress=lambda text: err_console.print(text)
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    from rich.table import Table

    table = Table(title=f"bonemet-dask bench, size {size}", title_justify="left")
    for column in ("stage", "ratio", "value", "target", "met"):
        table.add_column(column, justify="left" if column in ("stage", "ratio") else "right")
    for name, record in results["stages"].items():
        lines = [(r["name"], r["value"], r["target"], r["met"]) for r in record.get("ratios", [])]
        if "scaling" in record:
            scaling = record["scaling"]
            lines.append(("1 -> 2 workers", scaling["1_to_2"], scaling["target"], scaling["met"]))
        for label, value, target, met in lines:
            shown = "-" if met is None else ("yes" if met else "no")
            table.add_row(name, escape(label), "-" if value is None else f"{value:.3g}",
                          "-" if target is None else f"{target:g}", shown)  # fmt: skip
        for peer, why in record.get("skipped", {}).items():
            table.add_row(name, escape(f"{peer}: skipped"), "-", "-", escape(why))
    console.print(table)
    console.print(f"results: {out.resolve()}\nfigure:  {out.with_suffix('.png').resolve()}")


def _bench_suite():
    """``benchmarks/suite.py`` of the checkout this package runs from, or exit 2 saying why."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
    if not path.is_file():
        err_console.print(
            f"bench runs the suite of a source checkout and {path} does not exist: git clone "
            "the project and pip install -e '.[test,bench]' in it"
        )
        raise typer.Exit(EXIT_USAGE)
    spec = importlib.util.spec_from_file_location("bonemet_bench_suite", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ---------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _client(cluster: str):
    if cluster == "none":
        yield None
        return
    from bonemet_dask.cluster import connect, dashboard_hint, parse_cluster_spec

    try:
        kind, options = parse_cluster_spec(cluster)
        client = connect(kind, **options)
    except (ValueError, ImportError) as err:
        raise typer.BadParameter(str(err), param_hint="--cluster") from None
    with client:
        err_console.print(dashboard_hint(client), markup=False, highlight=False)
        yield client


def _bars(width: int = 0) -> Progress:
    """Rich progress bars on stderr: label, bar, done/total, elapsed."""
    label = TextColumn("{task.description:<" + str(width) + "}" if width else "{task.description}")
    columns = (label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=err_console, transient=False)


@contextlib.contextmanager
def _progress(label: str):
    with _bars() as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@contextlib.contextmanager
def _stage_progress():
    """One progress bar per stage of ``run``: mice done out of mice selected."""
    with _bars(width=12) as progress:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield update


def main() -> None:  # pragma: no cover - console-script entry
    """Entry point of the console script."""
    app()


if __name__ == "__main__":  # python -m bonemet_dask.cli
    main()
