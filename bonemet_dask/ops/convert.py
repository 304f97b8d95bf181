"""PNG stacks -> sharded OME-Zarr: plan, run one task per shard, resume, quarantine.

The graph is flat: one task per shard.  A task reads one slab of PNG files, decodes them into one
block, writes exactly that one shard of the image array and then the matching chunk of
``slice_hash`` (the done-marker, docs/store-layout.md).  All metadata is written by the client
before any task runs, so a killed run leaves only whole shards behind and a rerun writes only
the shards whose marker is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from bonemet_dask import __version__
from bonemet_dask.cluster import active_client
from bonemet_dask.io.catalog import Catalog, Stack, scan_source
from bonemet_dask.io.consolidate import consolidating
from bonemet_dask.io.lock import (
    StoreLockedError,
    is_disk_full,
    store_writer_lock,
    writes_store,
)
from bonemet_dask.io.records import RECORDS_GROUP, import_records
from bonemet_dask.io.scans import open_root
from bonemet_dask.io.skyscan_log import nrecon_reference
from bonemet_dask.io.store import (
    STORE_LAYOUT_VERSION,
    ImageLayout,
    completed_shards,
    create_image_group,
    get_bonemet_attrs,
    open_zarr_store,
    scan_group_path,
    set_status,
    write_scan_shard,
)
from bonemet_dask.kernels.slab import SlabDecodeError, decode_slab
from bonemet_dask.naming import file_name_template
from bonemet_dask.ops.stage import Outcome, StageReport
from bonemet_dask.selection import Selection, mouse_key

logger = logging.getLogger(__name__)

LAYOUT_VERSION = STORE_LAYOUT_VERSION
"""Bumped whenever the meaning of a store's bytes changes; part of every fingerprint."""
ON_ERROR = ("quarantine", "stop")
SHARD_TARGET_BYTES = 256 * 2**20
"""Decoded bytes a shard (one task) aims for: big enough that small stacks (Regist-CT, RoI-CT)
do not multiply objects past DESIGN.md's one per 64 MB of source, small enough for a task to stay
well inside the per-worker memory budget."""

RECORDS_WAIT_S = 120.0
"""Seconds a writer waits while another one (a side-by-side task) writes ``/medirec``."""

RECORDS_LISTED = 100
"""Problems of ``record.csv`` listed one by one in the report (``/medirec`` keeps 200)."""

DEFAULT_CODECS = {"ct": ("blosc-zstd", 1), "projections": ("blosc-lz4", 5)}
"""Codec and level per kind of stack, chosen by benchmarks/bench_convert.py (BENCHMARKS.md):
bit-shuffled zstd stores 8-bit CT smaller than its PNGs at 0.94x the raw decode speed; on noisy
16-bit projections bit-shuffled lz4 compresses as well and is faster (1.16x)."""


class ConversionError(RuntimeError):
    """The conversion cannot proceed (bad inputs with ``on_error='stop'``, a fingerprint clash)."""


class ShardWriterError(ValueError):
    """Two tasks would write one shard, or a task would write a partial shard."""


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: the files of one shard of one scan."""

    group_path: str
    shard: int
    start: int
    stop: int
    paths: tuple[str, ...]
    shape: tuple[int, int]
    dtype: str


def default_slices_per_shard(kind: str, shape: tuple[int, int, int], dtype: str) -> int:
    """Slices per shard: a multiple of the inner chunk depth reaching ``SHARD_TARGET_BYTES``.

    The depth is 64 for CT and 8 for projections.  A full-size Recon-CT shard is 64 slices
    (402 MB decoded), a Regist-CT shard 1024 slices (281 MB), a projection shard 16 views.
    """
    depth = 8 if kind == "projections" else 64
    slice_bytes = shape[1] * shape[2] * np.dtype(dtype).itemsize
    slices = max(1, -(-SHARD_TARGET_BYTES // slice_bytes))
    return depth * -(-slices // depth)


def layout_for(
    stack: Stack,
    *,
    slices_per_shard: int | None = None,
    codec: str | None = None,
    level: int | None = None,
) -> ImageLayout:
    """The array layout of a stack: CT or projection defaults, voxel size from its ``.log``.

    ``slices_per_shard`` (per writing task), ``codec`` and ``level`` override the defaults:
    see :data:`DEFAULT_CODECS`.
    """
    if stack.shape is None or stack.dtype is None:
        raise ValueError(f"stack {stack.folder!r} has no consistent shape; it must be quarantined")
    voxel = voxel_size_um(stack)
    kind = "projections" if stack.component == "rotation_xray" else "ct"
    if slices_per_shard is None:
        slices_per_shard = default_slices_per_shard(kind, stack.shape, stack.dtype)
    layout = ImageLayout.default_for(
        kind,
        stack.shape,
        stack.dtype,
        voxel_size_um=voxel,
        slices_per_shard=slices_per_shard,
    )
    default_codec, default_level = DEFAULT_CODECS[kind]
    return replace(
        layout,
        codec=codec or default_codec,
        level=default_level if level is None else level,
    )


def voxel_size_um(stack: Stack) -> float:
    """The stack's voxel size (µm): its ``.log``'s ``Image Pixel Size (um)``.

    A stack without one is stored at 1 µm with a warning naming its folder and ``.log``, and
    ``voxel_size_known`` false in its attributes.

    Raises
    ------
    ValueError
        If the ``.log`` states a size that is not finite and > 0 (``scan_source`` reports such
        a log as ``invalid-log`` and ``convert`` quarantines its scan before this is reached).
    """
    voxel = stack.log.summary.image_pixel_size_um if stack.log is not None else None
    if voxel is None:
        where = repr(stack.log_path) if stack.log_path else f"folder {stack.folder!r} (no .log)"
        logger.warning(
            "%s states no Image Pixel Size (um): the scan is stored with 1 um voxels "
            "(voxel_size_known false); put the scanner's .log beside its PNGs and convert "
            "again with overwrite", where,
        )  # fmt: skip
        return 1.0
    if not (math.isfinite(voxel) and voxel > 0):
        raise ValueError(
            f"{stack.log_path!r}: Image Pixel Size (um)={voxel} must be finite and > 0; fix the "
            ".log (scan_source reports it as invalid-log) and convert again"
        )
    return voxel


def fingerprint(stack: Stack, layout: ImageLayout) -> str:
    """Hash of everything that would make two conversions of a stack differ."""
    files = [
        (
            os.path.basename(f.path),
            f.index,
            f.nbytes,
            f.header.width,
            f.header.height,
            f.header.bit_depth,
            f.header.colour_type,
        )
        for f in stack.files
    ]
    payload = {"files": files, "layout": layout.to_dict(), "layout_version": LAYOUT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def shard_tasks(stack: Stack, layout: ImageLayout, group_path: str) -> list[ShardTask]:
    """One task per shard of the stack's image array, checked to have exactly one writer each."""
    paths = [f.path for f in stack.files]
    tasks = []
    for shard in range(layout.n_shards):
        rows = layout.shard_slices(shard)
        tasks.append(
            ShardTask(
                group_path,
                shard,
                rows.start,
                rows.stop,
                tuple(paths[rows]),
                tuple(layout.shape[1:]),
                layout.dtype,
            )
        )
    check_single_writer(tasks, layout)
    return tasks


def check_single_writer(tasks: Sequence[ShardTask], layout: ImageLayout) -> None:
    """Refuse task lists in which a shard has two writers or a task covers a partial shard.

    Parallel writers into one shard silently lose data (zarr-python#3514), so this runs before
    anything is submitted.

    Raises
    ------
    ShardWriterError
        Naming the shard and how to fix the plan.
    """
    owner: dict[int, ShardTask] = {}
    for task in tasks:
        expected = layout.shard_slices(task.shard)
        if (task.start, task.stop) != (expected.start, expected.stop):
            raise ShardWriterError(
                f"task for {task.group_path} shard {task.shard} covers slices "
                f"{task.start}:{task.stop} but the shard is {expected.start}:{expected.stop}; "
                "plan tasks with shard_tasks() so each writes one whole shard"
            )
        if task.shard in owner:
            raise ShardWriterError(
                f"{task.group_path} shard {task.shard} has two writers; each shard must be "
                "written by exactly one task: deduplicate the task list"
            )
        owner[task.shard] = task


def selected_catalog(
    source: str | os.PathLike | Catalog,
    storage_options: dict | None,
    selection: Selection | None = None,
    *,
    require_match: bool = True,
    **selectors: Any,
) -> tuple[Catalog, Catalog]:
    """The catalog of ``source`` (scanned unless it already is one) and its selected part.

    Raises
    ------
    NothingSelectedError
        When ``require_match`` and the selection matches no stack; the message lists what the
        source holds.
    """
    chosen = Selection.of(selection, **selectors)
    full = (
        source
        if isinstance(source, Catalog)
        # mice and weeks pushed down to the listing; all components, as the projections'
        # conversion records NRecon's grid from the Recon-CT of the same scan
        else scan_source(
            source, storage_options=storage_options, mice=chosen.mice, weeks=chosen.weeks
        )
    )
    selected = full.select(chosen)
    if require_match and not selected.stacks:
        if not chosen.everything and not isinstance(source, Catalog):  # list what there is
            full = scan_source(source, storage_options=storage_options, read_headers=False)
        of_components = [s for s in full.stacks if chosen.matches(component=s.component)]
        what = "image stacks" if chosen.components is None else ", ".join(chosen.components)
        chosen.require(0, [(s.mouse, s.side, s.week) for s in of_components or full.stacks],
                       what=f"{what} scans", where=f"source {full.root!r}")  # fmt: skip
    return full, selected


def read_files(fs: Any, paths: Sequence[str]) -> list[bytes]:
    """The bytes of several files, fetched concurrently where the filesystem can (object stores)."""
    blobs = fs.cat(list(paths), on_error="raise")
    if not isinstance(blobs, dict):  # a single path comes back as bytes
        blobs = {paths[0]: blobs}
    stripped = {fs._strip_protocol(k): v for k, v in blobs.items()}
    return [stripped[fs._strip_protocol(p)] for p in paths]


def convert_shard(
    task: ShardTask, store: Any, fs: Any, storage_options: dict | None = None
) -> tuple[ShardTask, int, str | None, str | None]:
    """Run one shard task: read, decode, write the shard, then its digests.

    Returns
    -------
    tuple
        ``(task, bytes_read, failed_path, reason)``; ``failed_path`` is None on success.  A bad
        file is reported, never filled in.
    """
    import zarr

    data = read_files(fs, task.paths)
    nbytes = sum(len(b) for b in data)
    try:
        slab, digests = decode_slab(data, shape=task.shape, dtype=task.dtype)
    except SlabDecodeError as err:
        return task, nbytes, task.paths[err.position], str(err)
    zstore = open_zarr_store(store, storage_options=storage_options)
    group = zarr.open_group(zstore, path=task.group_path, mode="r+", use_consolidated=False)
    write_scan_shard(group, task.shard, {"0": slab}, digests)
    return task, nbytes, None, None


@writes_store("store", operation="convert")  # one writer per store (io/lock.py)
def convert(
    source: str | os.PathLike | Catalog,
    store: Any,
    *,
    components: Sequence[str] | str | None = None,
    mice: Sequence[str] | str | None = None,
    weeks: Sequence[int] | int | None = None,
    sides: Sequence[str] | str | None = None,
    selection: Selection | None = None,
    client: Any = None,
    on_error: Literal["quarantine", "stop"] = "quarantine",
    overwrite: bool = False,
    slices_per_shard: int | None = None,
    codec: str | None = None,
    level: int | None = None,
    storage_options: dict | None = None,
    source_storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    require_match: bool = True,
    records: bool = True,
    consolidate: bool = True,
) -> StageReport:
    """Convert the image stacks of a BoneMet tree into one sharded OME-Zarr store.

    Parameters
    ----------
    source : str, path or Catalog
        BoneMet tree (local path or fsspec URL) or a catalog of it.
    store : str, path or zarr Store
        Destination (local path, ``memory://``, ``s3://`` ... or a zarr store object).
    components, mice, weeks, sides : optional
        Selection (:class:`~bonemet_dask.selection.Selection` rules), narrowing ``selection``.
    selection : Selection, optional
        A parsed selection.
    client : distributed.Client, optional
        Run the shard tasks on this cluster (the store must be reachable from the workers);
        default the active client, and without one a local thread pool.
    on_error : {"quarantine", "stop"}
        What to do with a bad stack: leave it out and report it (exit code 3 in the CLI), or stop.
    overwrite : bool
        Rewrite scan groups written with other parameters instead of refusing.
    slices_per_shard : int, optional
        Slices (projections) per shard, i.e. per task (default
        :func:`default_slices_per_shard`).
    codec, level : str, int, optional
        Compression of the image arrays (``bonemet_dask.io.store.CODECS``); default
        :data:`DEFAULT_CODECS`.
    storage_options : dict, optional
        fsspec options for ``store``.
    source_storage_options : dict, optional
        fsspec options for ``source`` (when it is a URL).
    progress : callable, optional
        ``progress(done, total)`` after every shard.
    require_match : bool
        Raise :class:`~bonemet_dask.selection.NothingSelectedError` when the selection matches
        no stack.
    records : bool
        Also write the source's MiceMediRec table to ``/medirec`` (``run`` writes it once).
    consolidate : bool
        Drop the store's consolidated metadata before the first write and consolidate it at
        the end, quarantined stacks included (see :mod:`bonemet_dask.io.consolidate`);
        ``run`` passes False and consolidates once, after every mouse.

    Returns
    -------
    StageReport
        ``written``: groups completed by this run; ``up to date``: already complete;
        ``quarantined``: stack folder -> ``[(file, reason)]``; ``shards_written`` and
        ``bytes_read``.  Each projection group records, under ``nrecon``, the grid and grey
        window of the same scan's published Recon-CT when the source has its ``.log``.

    Raises
    ------
    ConversionError
        With ``on_error="stop"`` on the first bad stack or file, or when a group already holds
        a conversion with another fingerprint and ``overwrite`` is False.
    StoreLockedError
        When another process writes ``store`` (:mod:`bonemet_dask.io.lock`); the message names
        it.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not one of {', '.join(map(repr, ON_ERROR))}")
    started = time.perf_counter()
    full, catalog = selected_catalog(
        source, source_storage_options, selection, require_match=require_match,
        components=components, mice=mice, weeks=weeks, sides=sides,
    )  # fmt: skip
    report = StageReport("convert")
    options = {"slices_per_shard": slices_per_shard, "codec": codec, "level": level}
    bad = [s for s in catalog.stacks if not s.ok]
    for stack in bad:
        errors = [(p.path, p.message) for p in stack.problems if p.severity == "error"]
        path = scan_group_path(stack.component, stack.mouse, stack.side, stack.week)
        details = {"folder": stack.folder, "problems": errors}
        reason = errors[0][1] if errors else "catalog error"
        report.outcomes.append(Outcome(path, "quarantined", reason, details=details))
    for problem in catalog.left_out:  # image data the catalog could not take: links, odd folders
        details = {"folder": problem.path, "problems": [(problem.path, problem.message)]}
        report.outcomes.append(Outcome(problem.path, "quarantined", problem.message, details))
    if report.outcomes and on_error == "stop":
        first = report.outcomes[0]
        raise ConversionError(
            f"{len(report.outcomes)} stack(s) or folder(s) have errors, first "
            f"{first.details['folder']!r}: "
            f"{first.reason}; fix them or use on_error='quarantine'"
        )
    root = open_root(store, mode="a", storage_options=storage_options)
    with consolidating(store, storage_options, enabled=consolidate):
        root_attrs = dict(root.attrs.get("bonemet", {}))
        wanted = root_attrs | {"layout": LAYOUT_VERSION, "package": "bonemet-dask"}
        wanted["sources"] = sorted({*root_attrs.get("sources", []), str(catalog.root)})
        if wanted != root_attrs:  # a rerun leaves the root document untouched
            root.attrs["bonemet"] = wanted
        references = {
            (mouse_key(s.mouse), s.week): nrecon_reference(s.log, s.shape)
            for s in full.stacks
            if s.component == "recon_ct"
        }
        tasks: list[ShardTask] = []
        pending: dict[str, Outcome] = {}
        for stack in catalog.stacks:
            if not stack.ok:
                continue
            reference = references.get((mouse_key(stack.mouse), stack.week))
            group_path, todo, resumed = _prepare_stack(
                root, stack, overwrite=overwrite, options=options, reference=reference
            )
            if todo is None:
                report.outcomes.append(Outcome(group_path, "up to date", "already converted"))
                continue
            tasks.extend(todo)
            pending[group_path] = Outcome(group_path, "resumed" if resumed else "written",
                                          shards=len(todo))  # fmt: skip
        records_outcome = (  # never blocks the images: its problems are reported
            write_source_records(root, catalog) if records and catalog.records_path else None
        )
        if records_outcome is not None:
            report.outcomes.append(records_outcome)
        client = client or active_client()
        failures = _run(tasks, store, catalog.fs, storage_options, client, report, progress,
                        on_error)  # fmt: skip
        for group_path, outcome in pending.items():
            scan = root[group_path]
            if group_path in failures:
                set_status(scan, "quarantined")
                problems = failures[group_path]
                scan.attrs["bonemet"] = get_bonemet_attrs(scan) | {"problems": problems}
                folder = get_bonemet_attrs(scan)["source"]["folder"]
                outcome = Outcome(group_path, "quarantined", problems[0][1],
                                  details={"folder": folder, "problems": problems})  # fmt: skip
            else:
                set_status(scan, "complete")
            report.outcomes.append(outcome)
    report.seconds = time.perf_counter() - started
    logger.info("convert: %s in %.1f s", report.counts(), report.seconds)
    return report


def _prepare_stack(
    root, stack: Stack, *, overwrite: bool, options: dict[str, Any], reference: dict | None
) -> tuple[str, list[ShardTask] | None, bool]:
    """Create (or check) a stack's group: its path, the shard tasks to run, whether resumed."""
    layout = layout_for(stack, **options)
    group_path = scan_group_path(stack.component, stack.mouse, stack.side, stack.week)
    print_ = fingerprint(stack, layout)
    existing = root.get(group_path)
    if existing is not None:
        attrs = get_bonemet_attrs(existing)
        if attrs.get("fingerprint") not in (None, print_) and not overwrite:
            raise ConversionError(
                f"store group {group_path!r} holds a conversion with other parameters or other "
                f"source files (fingerprint {attrs.get('fingerprint')[:12]} != {print_[:12]}); "
                "pass overwrite=True (CLI --overwrite) to replace it, or use another store"
            )
        if attrs.get("fingerprint") == print_ and attrs.get("status") == "complete":
            return group_path, None, False
        if attrs.get("fingerprint") != print_:
            existing = None  # stale or half-created metadata: recreate below
    if existing is None:
        attrs = _scan_attrs(stack, layout, print_, reference)
        scan = create_image_group(root, group_path, layout, attrs=attrs, overwrite=True)
        scan["slice_index"][:] = np.asarray(stack.indices, dtype=np.int64)
        set_status(scan, "incomplete")
        done: set[int] = set()
    else:
        done = completed_shards(existing)
    todo = [t for t in shard_tasks(stack, layout, group_path) if t.shard not in done]
    return group_path, todo, bool(done)


def _scan_attrs(
    stack: Stack, layout: ImageLayout, print_: str, reference: dict | None
) -> dict[str, Any]:
    log = stack.log
    names = [os.path.basename(f.path) for f in stack.files]
    template = file_name_template(names)  # `export` spells the files back from it
    attrs: dict[str, Any] = {
        "component": stack.component,
        "mouse": stack.mouse,
        "side": stack.side,
        "week": stack.week,
        "fingerprint": print_,
        "voxel_size_known": bool(log and log.summary.image_pixel_size_um),
        "source": {
            "folder": stack.folder,
            "scan_folder_name": stack.scan_folder_name,
            "n_files": stack.n_files,
            "first_index": stack.indices[0],
            "log": log.to_dict() if log is not None else None,
            "log_name": os.path.basename(stack.log_path) if stack.log_path else None,
            "file_name": template,
            **({} if template else {"file_names": names}),
        },
        "provenance": {
            "package": "bonemet-dask",
            "version": __version__,
            "stage": "convert",
            "layout": layout.to_dict(),
        },
    }
    if stack.component == "rotation_xray":
        step = log.summary.rotation_step_deg if log is not None else None
        if step:
            attrs["angles_deg"] = [round(i * step, 6) for i in stack.indices]
        if reference:  # how NRecon reconstructed this scan: `reconstruct` follows it
            attrs["nrecon"] = reference
    return attrs


def write_source_records(root, catalog: Catalog) -> Outcome | None:
    """Write the catalog's ``record.csv`` to the store's ``/medirec`` (replacing it).

    The animal id column is stored as text (:func:`~bonemet_dask.io.records.import_records`),
    so it compares equal to the store's ``mouse`` coords. Nothing about the file's content
    raises: a bad ``record.csv`` must never block the images.

    Returns
    -------
    Outcome or None
        ``/medirec`` ``quarantined`` when the file had errors or warnings (records or cells
        left out, columns missing or renamed, not readable at all): ``details`` names the file
        and lists every problem, and ``convert`` exits 3. None when it was read whole (how it
        was read, e.g. as cp1252 or semicolon-separated, is only logged).
    """
    path = catalog.records_path
    try:
        with catalog.fs.open(path, "rb") as handle:
            data = handle.read()
        # side-by-side writers (the tasks of a job array) write /medirec in turn (io/lock.py)
        with store_writer_lock(root.store, section="medirec", wait=RECORDS_WAIT_S):
            problems = [p for p in import_records(root, data, path=path) if p.severity != "notice"]
        reported = [(path, p.message) for p in problems[:RECORDS_LISTED]]
        if len(problems) > RECORDS_LISTED:
            reported.append((path, f"... and {len(problems) - RECORDS_LISTED} more problem(s)"))
    except Exception as exc:  # an I/O or store failure: the images go on, the report says it
        if isinstance(exc, StoreLockedError) or is_disk_full(exc):
            raise  # the whole store is at stake, not the table: stop with its own message
        logger.debug("importing %s failed", path, exc_info=True)
        message = (f"{path!r} could not be imported to /{RECORDS_GROUP} ({type(exc).__name__}: "
                   f"{exc}); the images are converted without it: fix the cause and convert "
                   "again")  # fmt: skip
        logger.error("%s", message)
        reported = [(path, message)]
    if not reported:
        return None
    return Outcome(RECORDS_GROUP, "quarantined", reported[0][1],
                   details={"folder": path, "problems": reported})  # fmt: skip


def _results_or_killed(done: Any, tasks: dict[Any, ShardTask]) -> Any:
    """Yield each finished future's result; a shard that killed its workers is its failure.

    A task that killed every worker it ran on (distributed's ``KilledWorker``) becomes the
    failure of that shard, naming its scan, instead of ending the conversion.
    """
    from distributed import KilledWorker

    from bonemet_dask.ops.engine import killed_worker_reason

    for future in done:
        try:
            yield future.result()
        except KilledWorker as err:
            task = tasks[future]
            reason = killed_worker_reason(
                err, f"converting shard {task.shard} (files {task.start}..{task.stop - 1}) of "
                "this scan", "the other scans are kept",
            )  # fmt: skip
            logger.error("%s: %s", task.group_path, reason)
            yield task, 0, task.paths[0] if task.paths else task.group_path, reason


def _run(tasks, store, fs, storage_options, client, report, progress, on_error):
    """Run shard tasks; return failures as {group_path: [(file, reason)]}."""
    failures: dict[str, list[tuple[str, str]]] = {}
    total = len(tasks)
    if progress:
        progress(0, total)
    if client is not None:
        from distributed import as_completed as dask_as_completed

        futures = [
            client.submit(convert_shard, t, store, fs, storage_options, pure=False, retries=1)
            for t in tasks
        ]
        completed = _results_or_killed(
            dask_as_completed(futures), dict(zip(futures, tasks, strict=True))
        )
    else:
        pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        futures = [pool.submit(convert_shard, t, store, fs, storage_options) for t in tasks]
        completed = (f.result() for f in as_completed(futures))
    try:
        for done, (task, nbytes, failed_path, reason) in enumerate(completed, start=1):
            report.bytes_read += nbytes
            if failed_path is None:
                report.shards_written += 1
            else:
                failures.setdefault(task.group_path, []).append((failed_path, reason))
                if on_error == "stop":
                    for future in futures:
                        future.cancel()
                    raise ConversionError(f"{failed_path!r}: {reason}")
            if progress:
                progress(done, total)
    finally:
        if client is None:
            pool.shutdown(wait=True, cancel_futures=True)
    return failures
