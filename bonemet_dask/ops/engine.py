"""The stage engine: runs any :class:`~bonemet_dask.ops.stage.Stage` over a store, resumably.

For every selected unit of input (one scan, or every week of one tibia) the engine asks the
stage for its outputs, then for each output:

1. fingerprints it (stage, parameters, the inputs' fingerprints, the stage's identity);
2. decides from the existing group in ``OUT``: absent -> write it; the same fingerprint and
   complete -> up to date; the same fingerprint, unfinished -> resume it, writing only the
   shards whose ``slice_hash`` chunk (the done-marker every stage and ``convert`` share) is
   missing; written by another stage or with other settings -> refused unless ``overwrite``;
3. builds the stage's lazy :class:`~bonemet_dask.ops.stage.Product` and wires one writing task
   per missing shard (exactly one writer per shard) and one ``finish`` task that records the
   measures and marks the group complete once every shard is on disk.

Units run with bounded concurrency; their graphs go to the Dask client the user has active
(or the one passed), else to dask's configured scheduler: nothing here picks a scheduler.
The output store's consolidated metadata is dropped before the first write and rewritten when
the stage ends; every decision above reads the groups' own metadata, never the consolidated
copy (:mod:`bonemet_dask.io.consolidate`).

Faults: a worker lost mid-stage costs only the tasks it held, which the scheduler reruns (the
writes are idempotent and the done-marker goes last).  An output one of whose tasks killed
every worker it ran on (``distributed.scheduler.allowed-failures`` + 1 workers; dask's default
is 3, bonemet-dask keeps it) ends ``failed``, its reason naming the group, its input scan and
the fix, while the other outputs finish.  A store that refuses access (``PermissionError``,
e.g. S3 ``AccessDenied``) or has vanished stops the stage with a
:class:`~bonemet_dask.errors.StoreError` naming the store.  Either way a group is marked
complete only once every shard of it is on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import fields
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize

from bonemet_dask import __version__
from bonemet_dask._backend import to_host
from bonemet_dask.errors import StoreError, UsageError
from bonemet_dask.io.consolidate import consolidating, drop_consolidated, try_consolidate
from bonemet_dask.io.lock import writes_store
from bonemet_dask.io.scans import ScanRef, StoreRoots
from bonemet_dask.io.store import (
    STORE_LAYOUT_VERSION,
    completed_shards,
    create_image_group,
    get_bonemet_attrs,
    open_zarr_store,
    write_scan_shard,
)
from bonemet_dask.ops.stage import Outcome, Output, Product, Stage, StageFailure, StageReport, plain
from bonemet_dask.selection import NothingSelectedError, Selection, summarize

__all__ = ["UnitContext", "compute", "default_concurrency", "run_declared", "run_stage"]

logger = logging.getLogger(__name__)

_GROUPS_LOCK = threading.Lock()
"""Groups are created by the client one at a time (units run in threads; parents are shared)."""


def compute(*collections: Any, client: Any = None) -> list[Any]:
    """Compute on ``client`` when given, else on whatever dask is configured to use.

    dask's default already sends work to an active ``distributed.Client``; this never forces
    a local scheduler behind the user's back.
    """
    if client is not None:
        return list(dask.compute(*collections, scheduler=client))
    return list(dask.compute(*collections))


class UnitContext:
    """What a stage's :meth:`~bonemet_dask.ops.stage.Stage.build` may use for one run.

    Attributes
    ----------
    roots : StoreRoots
        The input and output stores.
    client : distributed.Client or None
        The client computations go to (None: dask's configured scheduler).
    memo : dict
        Per-unit cache (e.g. one segmentation shared by the left and right outputs).
    """

    def __init__(self, roots: StoreRoots, client: Any, *, lazy: bool = False) -> None:
        self.roots = roots
        self.client = client
        self.memo: dict[Any, Any] = {}
        self._lazy = lazy
        self._products: dict[str, xr.DataArray] = {}

    def open(self, scan: ScanRef) -> xr.Dataset:
        """The labelled Dataset of an input scan."""
        return self.roots.open_scan(scan)

    def compute(self, *collections: Any) -> list[Any]:
        """Compute eagerly on the run's client (a registration search, a junction)."""
        return compute(*collections, client=self.client)

    def written(self, path: str) -> xr.DataArray | None:
        """The image of an output this run already made (lazily when not computing), or None."""
        if path in self._products:
            return self._products[path]
        group = self.roots.output_root.get(path)
        if not isinstance(group, zarr.Group) or get_bonemet_attrs(group).get("status") != (
            "complete"
        ):
            return None
        from bonemet_dask.io.xr import open_scan

        image = open_scan(group)["image"]
        return image.assign_attrs(bonemet=get_bonemet_attrs(group))

    def remember(self, path: str, product: Product, attrs: dict[str, Any]) -> None:
        """Keep a lazy product for later outputs of the unit when nothing is computed yet."""
        if self._lazy:
            data = product.arrays["0"]
            scale = product.layout.scale
            coords = {d: np.arange(n) * s for d, n, s in zip(("slice", "y", "x"), data.shape,
                                                              scale, strict=True)}  # fmt: skip
            coords["slice"] = np.arange(data.shape[0])
            self._products[path] = xr.DataArray(
                data, dims=("slice", "y", "x"), coords=coords, name="image",
                attrs={"bonemet": attrs},
            )  # fmt: skip


def _fingerprint(stage: Stage, output: Output, identity: dict[str, Any]) -> str:
    payload = {
        "stage": stage.name,
        "parameters": stage.parameters,
        "inputs": {
            role: [scan.path, scan.attrs.get("fingerprint")]
            for role, scan in sorted(output.inputs.items())
        },
        "identity": identity,
        "layout": STORE_LAYOUT_VERSION,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _existing_outcome(stage: Stage, output: Output, root: zarr.Group, overwrite: bool):
    """Up to date / refused for an existing group, or None (write it; maybe resume)."""
    group = root.get(output.path)
    if group is None:
        return None
    attrs = get_bonemet_attrs(group) if isinstance(group, zarr.Group) else {}
    by = (attrs.get("provenance") or {}).get("stage", "convert")
    if by != stage.name or attrs.get("fingerprint") != output.fingerprint:
        if overwrite:
            output.replace = True
            return None
        what = (
            f"written by {by}" + (" from the published PNGs" if by == "convert" else "")
            if by != stage.name
            else "made from other inputs or with other settings"
        )
        return Outcome(
            output.path, "refused",
            f"exists ({what}); pass --overwrite (overwrite=True) to replace it, or --out "
            "OTHER.zarr to write elsewhere",
        )  # fmt: skip
    if attrs.get("status") == "complete":
        return Outcome(output.path, "up to date", "up to date", details=_recorded(attrs))
    output.resume = attrs
    return None


def _recorded(attrs: dict[str, Any]) -> dict[str, Any]:
    return {key: attrs[key] for key in ("metrics", "flag", "junction") if key in attrs}


def _input_outcome(output: Output) -> Outcome | None:
    for scan in output.inputs.values():
        if scan.status == "quarantined":
            return Outcome(
                output.path, "quarantined",
                f"input {scan.path} was quarantined (see `bonemet-dask info`)",
                details={"problems": [(scan.path, "quarantined input")]},
            )  # fmt: skip
        if scan.status != "complete":
            return Outcome(
                output.path, "failed",
                f"input {scan.path} is unfinished (status {scan.status}); rerun the command "
                "that writes it",
            )  # fmt: skip
    return None


def _open_output(location: Any, storage_options: dict | None, path: str) -> zarr.Group:
    """An output group, opened by its own metadata; the root is not read.

    Never a consolidated copy of its metadata: the task's attribute writes would carry that
    copy back into the group's ``zarr.json``.
    """
    store = open_zarr_store(location, storage_options=storage_options)
    return zarr.open_group(store, path=path, mode="r+", use_consolidated=False)


def _write_task(location, storage_options, path, shard, names, *blocks):
    """Task: write one shard of every array of one output group, then its done-marker."""
    group = _open_output(location, storage_options, path)
    write_scan_shard(group, shard, {n: to_host(b) for n, b in zip(names, blocks, strict=True)})
    return shard


def _finish_task(location, storage_options, path, written, measures):
    """Task: after the writes, check every shard is on disk, record measures, mark complete."""
    group = _open_output(location, storage_options, path)
    n_shards = group["slice_hash"].cdata_shape[0]
    missing = sorted(set(range(n_shards)) - completed_shards(group))
    if missing:
        raise RuntimeError(f"{path}: shards {missing} were not written; rerun to finish them")
    attrs = get_bonemet_attrs(group)
    if measures:
        attrs["metrics"] = {name: plain(np.asarray(value)) for name, value in measures.items()}
    attrs["status"] = "complete"
    group.attrs.update({"bonemet": attrs})
    return {"shards": len(written), "metrics": attrs.get("metrics")}


def _shard_blocks(name: str, array: da.Array, product: Product, path: str) -> list[Any]:
    """The delayed block of each shard of one array: exactly one block (writer) per shard."""
    layout = product.layout
    if tuple(array.shape) != layout.shape:
        raise ValueError(f"{path}/{name}: shape {array.shape} is not the layout's {layout.shape}")
    step = layout.slices_per_shard
    wanted = tuple(min(step, layout.shape[0] - i) for i in range(0, layout.shape[0], step))
    if array.chunks[0] != wanted or len(array.chunks[1]) != 1 or len(array.chunks[2]) != 1:
        array = array.rechunk((wanted, -1, -1))  # one block per shard: one writer per shard
    blocks = array.to_delayed().ravel().tolist()
    if len(blocks) != layout.n_shards:  # pragma: no cover - guarded by the rechunk above
        raise ValueError(f"{path}/{name}: {len(blocks)} blocks for {layout.n_shards} shards")
    return blocks


class _Runner:
    """One stage over one pair of stores: plans units, runs them, collects outcomes."""

    def __init__(self, stage, roots, *, overwrite, client, compute):
        self.stage, self.roots, self.overwrite = stage, roots, overwrite
        self.client, self.compute = client, compute
        self.wired: dict[str, Output] = {}

    def unit(self, scans: list[ScanRef], selection: Selection) -> tuple[StageReport, list]:
        """Run (or, lazily, wire) one unit; returns its report and its pending finish tasks."""
        stage = self.stage
        report = StageReport(stage.name)
        context = UnitContext(self.roots, self.client, lazy=not self.compute)
        pending: list[tuple[Outcome, Any]] = []
        for output in stage.outputs(scans):
            if not selection.matches(week=output.week):
                continue
            outcome = _input_outcome(output)
            if outcome is None:
                output.fingerprint = _fingerprint(stage, output, stage.identity(output, context))
                outcome = _existing_outcome(stage, output, self.roots.output_root, self.overwrite)
            if outcome is not None:
                report.outcomes.append(outcome)
                continue
            try:
                product = stage.build(output, context)
            except StageFailure as err:
                logger.info("%s: %s", output.path, err)
                report.outcomes.append(Outcome(output.path, "failed", str(err)))
                continue
            except PermissionError as err:
                raise self._store_error(err, [output.path]) from err
            except Exception as err:  # a search computed in build() killed its workers
                if not _is_killed_worker(err):
                    raise
                report.outcomes.append(_killed(output.path, output, err))
                continue
            try:
                outcome, finish = self._wire(output, product, context)
            except PermissionError as err:
                raise self._store_error(err, [output.path]) from err
            self.wired[output.path] = output  # named should a task of it kill its workers
            report.outcomes.append(outcome)
            pending.append((outcome, finish))
            if stage.chained and self.compute:
                self._run(pending, report)
                pending = []
        if self.compute:
            self._run(pending, report)
            pending = []
        return report, pending

    def _wire(self, output: Output, product: Product, context: UnitContext):
        stage, roots = self.stage, self.roots
        attrs = {
            "component": stage.writes,
            "mouse": output.mouse,
            "side": output.side,
            "week": output.week,
            "fingerprint": output.fingerprint,
            **{k: v for k, v in product.attrs.items() if k != "provenance"},
            "provenance": {
                "package": "bonemet-dask",
                "version": __version__,
                "stage": stage.name,
                "inputs": {role: scan.path for role, scan in sorted(output.inputs.items())},
                "parameters": stage.parameters,
                **product.attrs.get("provenance", {}),
            },
        }
        with _GROUPS_LOCK:
            group = create_image_group(roots.output_root, output.path, product.layout,
                                       attrs=attrs, overwrite=output.replace,
                                       extras=product.extras)  # fmt: skip
            n = product.layout.shape[0]
            index = np.arange(n) if product.slice_index is None else product.slice_index
            group["slice_index"][:] = np.asarray(index, dtype=np.int64)
            done = completed_shards(group) if output.resume is not None else set()
        names = ["0", *product.extras]
        blocks = {name: _shard_blocks(name, product.arrays[name], product, output.path)
                  for name in names}  # fmt: skip
        token = tokenize(output.path, output.fingerprint)
        writes = [
            dask.delayed(_write_task, pure=False)(
                roots.out,
                roots.storage_options,
                output.path,
                shard,
                tuple(names),
                *(blocks[name][shard] for name in names),
                dask_key_name=f"{stage.name}-write-{token}-{shard}",
            )
            for shard in range(product.layout.n_shards)
            if shard not in done
        ]
        finish = dask.delayed(_finish_task, pure=False)(
            roots.out, roots.storage_options, output.path, writes, product.measures,
            dask_key_name=f"{stage.name}-finish-{token}",
        )  # fmt: skip
        context.remember(output.path, product, attrs)
        status = "resumed" if output.resume is not None else "written"
        details = {key: attrs[key] for key in ("flag", "junction") if key in attrs}
        return Outcome(output.path, status, details=details), finish

    def _run(self, pending: list[tuple[Outcome, Any]], report: StageReport) -> None:
        if not pending:
            return
        finishes = [finish for _, finish in pending]
        keys: set = set()
        for finish in finishes:
            keys.update(finish.__dask_graph__().keys())
        report.max_graph_tasks = max(report.max_graph_tasks, len(keys))
        try:
            results = _compute_each(finishes, self.client)
        except (PermissionError, FileNotFoundError) as err:
            raise self._store_error(err, [outcome.path for outcome, _ in pending]) from err
        for (outcome, _), result in zip(pending, results, strict=True):
            output = self.wired.pop(outcome.path, None)
            if isinstance(result, Exception):  # a task of this output killed its workers
                failed = _killed(outcome.path, output, result)
                outcome.status, outcome.reason = failed.status, failed.reason
                continue
            outcome.shards = result["shards"]
            report.shards_written += result["shards"]
            if result["metrics"] is not None:
                outcome.details["metrics"] = result["metrics"]

    def _store_error(self, err: OSError, paths: list[str]) -> StoreError:
        """A store that refuses access or has vanished, as a StoreError naming it and the fix."""
        what = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        if isinstance(err, PermissionError):
            why = "refused access"
            fix = "check the credentials and the bucket policy or permissions (storage_options)"
        else:
            why = "lost an object or its bucket"
            fix = "check that the store (and its bucket) still exists"
        logger.error("%s %s at %s: %s", self.roots.describe(), why, what, err)
        return StoreError(
            f"{self.stage.name}: {self.roots.describe()} {why} at {what} "
            f"({type(err).__name__}: {err}); {fix}, then rerun the command: the groups already "
            "complete are kept, and these, left incomplete, resume"
        )


def _distributed_client(client: Any) -> Any:
    """The ``distributed.Client`` a computation goes to (given, or dask's configured), or None."""
    if "distributed" not in sys.modules:  # nobody made a client: no need to import it
        return None
    from distributed import Client

    if client is None:
        get = dask.base.get_scheduler()  # the active client's ``get`` when one is configured
        client = getattr(get, "__self__", None)
    return client if isinstance(client, Client) else None


def _is_killed_worker(err: BaseException) -> bool:
    """Whether ``err`` is distributed's ``KilledWorker`` (a task that killed its workers)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import KilledWorker

    return isinstance(err, KilledWorker)


def _compute_each(finishes: list[Any], client: Any) -> list[Any]:
    """Compute the finish tasks of several outputs; a ``KilledWorker`` comes back as a value.

    On a distributed cluster each output is its own future, so a task that kills every worker
    it lands on fails only the output it belongs to: the other outputs finish.  Any other
    error is raised, as :func:`compute` raises it.  Without a cluster: :func:`compute`.
    """
    cluster = _distributed_client(client)
    if cluster is None:
        return compute(*finishes, client=client)
    from distributed import wait

    futures = cluster.compute(finishes)
    wait(futures)
    results: list[Any] = []
    for future in futures:
        error = future.exception() if future.status == "error" else None
        results.append(error if _is_killed_worker(error) else future.result())
    return results


def killed_worker_reason(err: Exception, doing: str, kept: str) -> str:
    """Why an output or scan failed when its task killed every worker it ran on, and the fix.

    Parameters
    ----------
    err : distributed.KilledWorker
        The scheduler's verdict (its ``allowed_failures`` and ``last_worker``).
    doing : str
        What the task did, e.g. ``"converting shard 0 (files 0..63) of this scan"``.
    kept : str
        What a rerun keeps, e.g. ``"the other scans are kept"``.
    """
    tries = err.allowed_failures + 1
    worker = getattr(err.last_worker, "address", err.last_worker)
    return (
        f"the Dask worker process died {tries} times {doing} (last on {worker}), so the "
        f"scheduler gave up on it (distributed.scheduler.allowed-failures="
        f"{err.allowed_failures}); a worker dies like this out of memory or in a crashing "
        "native library: read that worker's log, give the workers more memory (memory_limit=, "
        f"bonemet.memory-budget) or leave its mouse out (--mice); once that is done, rerun: {kept}"
    )


def _killed(path: str, output: Output | None, err: Exception) -> Outcome:
    """The failed outcome of an output one of whose tasks killed every worker it ran on."""
    inputs = ", ".join(scan.path for scan in output.inputs.values()) if output else "?"
    reason = killed_worker_reason(
        err, f"running a task of this output (input {inputs}; task {err.task!r})",
        "the other outputs are kept, and this one resumes",
    )  # fmt: skip
    logger.error("%s: %s", path, reason)
    return Outcome(path, "failed", reason)


@writes_store("out", "store", operation="stage")  # one writer per store (io/lock.py)
def run_stage(
    stage: Stage,
    store: Any,
    out: Any = None,
    *,
    selection: Selection | None = None,
    overwrite: bool = False,
    client: Any = None,
    concurrency: int | None = None,
    compute: bool = True,
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    require_match: bool = True,
    roots: StoreRoots | None = None,
    consolidate: bool = True,
) -> Any:
    """Run a stage over every selected unit of ``store`` (reading ``out`` first), writing ``out``.

    Parameters
    ----------
    stage : Stage
        What to run, with its parameters.
    store, out : str, os.PathLike or zarr Store
        Input store and output store (default ``store``); inputs are looked for in ``out``
        first, then ``store``.
    selection : Selection, optional
        Mice, weeks and sides (default: everything).  Weeks select outputs; a per-tibia stage
        still reads the baseline week of a selected tibia.
    overwrite : bool
        Replace output groups that another stage wrote or that were made with other inputs or
        settings.  Groups this stage made with the same inputs and settings are kept: complete
        ones are up to date, unfinished ones are resumed.
    client : distributed.Client, optional
        Where to compute; default: the active client, else dask's configured scheduler.
    concurrency : int, optional
        Units in flight at once (default: 1 without a client; twice the workers with one).
    compute : bool
        False: create the groups and return a ``dask.delayed`` whose computation writes
        every shard and returns the :class:`StageReport` (as ``xarray``'s ``to_zarr``).
    storage_options : dict, optional
        fsspec options of the stores.
    progress : callable, optional
        ``progress(done, total)`` after each unit.
    require_match : bool
        Raise :class:`~bonemet_dask.selection.NothingSelectedError` when the selection matches
        no input (``run`` turns it off: a mouse whose segmentation failed has nothing to
        register).
    roots : StoreRoots, optional
        Already opened stores (``run`` opens them once).
    consolidate : bool
        Drop the output store's consolidated metadata before the first write and consolidate
        it when the stage is done, failed outputs included (with ``compute=False``: when the
        returned object is computed); see :mod:`bonemet_dask.io.consolidate`.  ``run`` passes
        False and consolidates once, after every mouse.

    Returns
    -------
    StageReport or dask.delayed.Delayed
    """
    started = time.perf_counter()
    selection = selection or Selection()
    roots = roots or StoreRoots.open(store, out, storage_options=storage_options)
    scans = roots.scans(stage.reads, selection)
    units: dict[tuple, list[ScanRef]] = {}
    for scan in scans:
        units.setdefault(stage.unit_key(scan), []).append(scan)
    selected = {key: unit for key, unit in units.items()
                if any(selection.matches(week=s.week) for s in unit)}  # fmt: skip
    if require_match and not selected:
        _nothing_selected(stage, roots, selection)
    runner = _Runner(stage, roots, overwrite=overwrite, client=client, compute=compute)
    if not compute:
        if consolidate:
            drop_consolidated(roots.out, roots.storage_options)
        report = StageReport(stage.name)
        pending = []
        for unit in selected.values():
            part, finishes = runner.unit(unit, selection)
            report.extend(part)
            pending.extend(finish for _, finish in finishes)
        return dask.delayed(_assemble, pure=False)(
            report, pending, started, consolidate=consolidate, store=roots.out,
            storage_options=roots.storage_options,
        )  # fmt: skip
    with consolidating(roots.out, roots.storage_options, enabled=consolidate):
        report = _run_units(runner, selected, selection, concurrency, client, progress)
        stage.finish(report, UnitContext(roots, client))
    report.seconds = time.perf_counter() - started
    logger.info("%s: %s in %.1f s", stage.name, report.counts(), report.seconds)
    return report


def _run_units(
    runner: _Runner,
    selected: dict[tuple, list[ScanRef]],
    selection: Selection,
    concurrency: int | None,
    client: Any,
    progress: Callable[[int, int], None] | None,
) -> StageReport:
    """Run every selected unit, ``concurrency`` at a time; their reports in store order."""
    report = StageReport(runner.stage.name)
    workers = concurrency or default_concurrency(client)
    total = len(selected)
    parts: dict[tuple, StageReport] = {}
    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        for done, (key, unit) in enumerate(selected.items(), start=1):
            parts[key], _ = runner.unit(unit, selection)
            if progress:
                progress(done, total)
    else:
        name = runner.stage.name
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
            futures = {pool.submit(runner.unit, unit, selection): key
                       for key, unit in selected.items()}  # fmt: skip
            for done, future in enumerate(as_completed(futures), start=1):
                parts[futures[future]], _ = future.result()
                if progress:
                    progress(done, total)
    for key in selected:  # store order, whatever finished first
        report.extend(parts[key])
    return report


ENGINE_OPTIONS = (
    "overwrite",
    "client",
    "concurrency",
    "compute",
    "storage_options",
    "progress",
    "consolidate",
)
"""Keyword arguments of :func:`run_stage` that :func:`run_declared` passes on."""


def run_declared(stage_class: type[Stage], store: Any, out: Any = None, **options: Any) -> Any:
    """Run a stage class with mixed keywords: selectors, its settings, the engine's options.

    ``mice``/``weeks``/``sides`` make the :class:`~bonemet_dask.selection.Selection`,
    :data:`ENGINE_OPTIONS` go to :func:`run_stage`, the rest are the stage's settings.

    Raises
    ------
    TypeError
        For a keyword that is none of these; the message lists the stage's settings.
    """
    selection = Selection.of(**{k: options.pop(k) for k in ("mice", "weeks", "sides")
                                if k in options})  # fmt: skip
    engine = {k: options.pop(k) for k in ENGINE_OPTIONS if k in options}
    try:
        stage = stage_class(**options)
    except TypeError:
        allowed = ", ".join(f.name for f in fields(stage_class))
        raise TypeError(
            f"{stage_class.__name__} takes the settings {allowed}, the selectors mice, weeks, "
            f"sides and the options {', '.join(ENGINE_OPTIONS)}; got {sorted(options)}"
        ) from None
    return run_stage(stage, store, out, selection=selection, **engine)


def _assemble(
    report: StageReport,
    results: list[dict],
    started: float,
    *,
    consolidate: bool = False,
    store: Any = None,
    storage_options: dict | None = None,
) -> StageReport:
    """The report of a lazily run stage once its finish tasks have run; then consolidate."""
    pending = [o for o in report.outcomes if o.status in ("written", "resumed")]
    for outcome, result in zip(pending, results, strict=True):
        outcome.shards = result["shards"]
        report.shards_written += result["shards"]
        if result["metrics"] is not None:
            outcome.details["metrics"] = result["metrics"]
    if consolidate:
        try_consolidate(store, storage_options)
    report.seconds = time.perf_counter() - started
    return report


def default_concurrency(client: Any) -> int:
    """Units in flight at once: 1 on dask's local scheduler, twice the workers on a cluster."""
    if client is None:
        from bonemet_dask.cluster import active_client

        client = active_client()
    if client is None:
        return 1
    try:
        workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except TypeError:  # older distributed: no n_workers argument
        workers = len(client.scheduler_info().get("workers", {}))
    return max(2, 2 * workers)


def _nothing_selected(stage: Stage, roots: StoreRoots, selection: Selection) -> None:
    every = roots.scans(stage.reads, Selection())
    if not every:
        raise UsageError(
            f"{roots.describe()} holds no {stage.reads} scans, which {stage.name} reads: "
            f"{stage.produced_by} first"
        )
    raise NothingSelectedError(
        f"{selection.describe()} matches none of the {len(every)} {stage.reads} scans in "
        f"{roots.describe()}; it holds {summarize(s.key for s in every)}"
    )
