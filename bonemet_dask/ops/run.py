"""``bonemet-dask run``: the whole chain, mouse by mouse, resumable, on the user's cluster.

For each selected mouse: convert what of its source is not yet in the store, then FDK (from the
raw projections; or start from the published Recon-CT), segment, register (week 0 first, then
the later weeks) and composite with RoI and metrics.  Mice are independent units: at most
``concurrency`` of them are in flight, each submitting one stage's graph at a time, so the
scheduler holds a bounded number of tasks and the client a bounded amount of state however many
mice the dataset has.  When fewer mice than ``concurrency`` are selected, each mouse's stages
run that many more of its scans at once (a few mice on a large cluster would otherwise leave
workers idle while the client prepares each scan), never more than ``concurrency`` scans in all.
Planning reads the source catalog only (no graph per scan up front).  A rerun skips every
finished output and finishes every unfinished one, shard by shard.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any, Final

from bonemet_dask.errors import UsageError
from bonemet_dask.io.catalog import Catalog, scan_source
from bonemet_dask.io.consolidate import consolidating
from bonemet_dask.io.lock import is_disk_full, writes_store
from bonemet_dask.io.scans import StoreRoots, open_root
from bonemet_dask.ops.composite_store import (
    Composite,
    default_metrics_csv,
    metrics_of,
    write_store_metrics_csv,
)
from bonemet_dask.ops.convert import convert, write_source_records
from bonemet_dask.ops.engine import default_concurrency, run_stage
from bonemet_dask.ops.reconstruct_store import Reconstruct
from bonemet_dask.ops.register_store import Register
from bonemet_dask.ops.segment_store import Segment
from bonemet_dask.ops.stage import Outcome, Stage, StageReport
from bonemet_dask.selection import Selection, mouse_key

__all__ = ["STAGES", "STARTS", "RunReport", "plan_run", "run"]

logger = logging.getLogger(__name__)

STAGES: Final = ("convert", "reconstruct", "segment", "register", "composite")
"""The chain, in order (``composite`` includes the RoI and the metrics)."""
STARTS: Final = {"projections": "rotation_xray", "recon_ct": "recon_ct"}
"""Where the chain can start, and the source component it converts."""
_STAGE_CLASSES: Final[dict[str, type[Stage]]] = {
    "reconstruct": Reconstruct,
    "segment": Segment,
    "register": Register,
    "composite": Composite,
}


@dataclass
class RunReport:
    """What ``run`` did: one :class:`~bonemet_dask.ops.stage.StageReport` per stage, all mice.

    Attributes
    ----------
    stages : dict of str to StageReport
        In chain order; only the stages that ran.
    mice : list of str
        The mice processed.
    table : pandas.DataFrame or None
        Per-scan RoI metrics (written or up to date).
    csv : str or None
        Where the metrics were written, joined with MiceMediRec.
    seconds : float
        Wall time.
    """

    stages: dict[str, StageReport] = field(default_factory=dict)
    mice: list[str] = field(default_factory=list)
    table: Any = None
    csv: str | None = None
    seconds: float = 0.0

    @property
    def max_graph_tasks(self) -> int:
        """Tasks of the largest graph one unit submitted, over every stage."""
        return max((r.max_graph_tasks for r in self.stages.values()), default=0)

    @property
    def exit_code(self) -> int:
        """1 when an output failed, else 3 when a scan was quarantined, else 0."""
        codes = {r.exit_code for r in self.stages.values()}
        return 1 if 1 in codes else (3 if 3 in codes else 0)


def plan_run(catalog: Catalog, selection: Selection, *, start: str = "projections") -> list[str]:
    """The mice a run works on, from the catalog alone: ids, in catalog order; no graphs.

    Raises
    ------
    NothingSelectedError
        When the selection matches no stack of the start component; the message lists what
        the source holds.
    """
    component = _start_component(start)
    chosen = selection.narrowed(components=component)
    mice: dict[str, None] = {}
    available = []
    for stack in catalog.stacks:
        if stack.component != component:
            continue
        available.append((stack.mouse, stack.side, stack.week))
        if chosen.matches(mouse=stack.mouse, side=stack.side, week=stack.week):
            mice.setdefault(stack.mouse)
    selection.require(
        len(mice), available, what=f"{component} scans", where=f"source {catalog.root!r}"
    )
    return list(mice)


def _start_component(start: str) -> str:
    if start not in STARTS:
        raise UsageError(f"start={start!r} is not one of {', '.join(map(repr, STARTS))}")
    return STARTS[start]


def _chain(start: str, until: str) -> list[str]:
    if until not in STAGES:
        raise UsageError(f"until={until!r} is not one of {', '.join(map(repr, STAGES))}")
    chain = list(STAGES[: STAGES.index(until) + 1])
    if start == "recon_ct" and "reconstruct" in chain:
        chain.remove("reconstruct")
    return chain


@writes_store("store", operation="run")  # one writer per store (io/lock.py); re-entrant
def run(
    source: str | os.PathLike | Catalog,
    store: Any,
    *,
    mice: Any = None,
    weeks: Any = None,
    sides: Any = None,
    selection: Selection | None = None,
    start: str = "projections",
    until: str = "composite",
    options: dict[str, dict[str, Any]] | None = None,
    backend: str = "auto",
    overwrite: bool = False,
    metrics_csv: str | os.PathLike | None = None,
    client: Any = None,
    concurrency: int | None = None,
    storage_options: dict | None = None,
    source_storage_options: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    consolidate: bool = True,
    pyramid: bool = False,
) -> RunReport:
    """Run the chain from a BoneMet tree to RoI metrics, mouse by mouse, resumably.

    Parameters
    ----------
    source : str, os.PathLike or Catalog
        BoneMet tree (local path or fsspec URL) or its catalog.
    store : str, os.PathLike or zarr Store
        The one store everything is written to.
    mice, weeks, sides : optional
        Selection (:class:`~bonemet_dask.selection.Selection` rules).  A later week is
        registered and composited against its tibia's week 0, which must be in the store (or
        selected too).
    selection : Selection, optional
        A parsed selection, narrowed by ``mice``, ``weeks``, ``sides``.
    start : {"projections", "recon_ct"}
        Reconstruct from the raw projections (FDK), or start from the published Recon-CT.
    until : {"convert", "reconstruct", "segment", "register", "composite"}
        Last stage to run.
    options : dict, optional
        Per-stage settings, e.g. ``{"segment": {"threshold": 75}, "register": {"roll_starts":
        "bonemet"}}``
        (the keyword arguments of :class:`~bonemet_dask.ops.reconstruct_store.Reconstruct`,
        ``Segment``, ``Register``, ``Composite``; ``"convert"``: those of
        :func:`~bonemet_dask.ops.convert.convert`).
    backend : {"auto", "numpy", "cupy"}
        Where the reconstruction kernels run.
    overwrite : bool
        Replace groups written otherwise (e.g. published products converted earlier).
    metrics_csv : str or os.PathLike, optional
        Where the per-scan metrics go, joined with MiceMediRec; default beside a local store
        (``<store>_roi_metrics.csv``); none for a URL store unless given.
    client : distributed.Client, optional
        Where to compute (default: the active client, else dask's configured scheduler).
    concurrency : int, optional
        Scans in flight at once (default 1 without a client, twice the workers with one): that
        many mice, or, with fewer mice, ``concurrency // mice`` scans of each.
    storage_options, source_storage_options : dict, optional
        fsspec options of the store and of the source.
    progress : callable, optional
        ``progress(stage, done, total)`` whenever a mouse finishes a stage.
    consolidate : bool
        Consolidate the store's metadata when the run ends (False: only drop the old
        consolidation, for runs side by side in one store; consolidate once after them).
    pyramid : bool
        After every mouse, build the multiscale pyramids of the selected mice's complete
        groups (:mod:`bonemet_dask.ops.pyramid`; stage ``pyramid`` of the report).  Off by
        default: the levels (child groups ``level{k}``, whose dims cannot align with their
        image's) make ``xr.open_datatree`` refuse the whole store; ``bm.open_store`` and
        ``xr.open_zarr(store, group=...)`` still read it, napari and neuroglancer use them.

    Returns
    -------
    RunReport

    Notes
    -----
    The store's consolidated metadata is dropped before the first write and written once at
    the end, failed mice included (:mod:`bonemet_dask.io.consolidate`): a plain
    ``xr.open_datatree(store, engine="zarr")`` then reads the whole tree in one request.
    """
    started = time.perf_counter()
    options = {name: dict(value) for name, value in (options or {}).items()}
    unknown = set(options) - set(STAGES)
    if unknown:
        raise UsageError(f"options={sorted(unknown)} names no stage; stages are {STAGES}")
    chain = _chain(start, until)
    selection = Selection.of(selection, mice=mice, weeks=weeks, sides=sides)
    catalog = (
        source
        if isinstance(source, Catalog)
        else scan_source(source, storage_options=source_storage_options, mice=selection.mice)
    )
    if not catalog.stacks and selection.mice is not None and not isinstance(source, Catalog):
        # nothing of those mice: list the tree (names only) so the error says what it holds
        catalog = scan_source(source, storage_options=source_storage_options, read_headers=False)
    plan = plan_run(catalog, selection, start=start)
    per_mouse = _split_by_mouse(catalog)
    stages = _stages(chain, options, backend)
    convert_options = options.get("convert", {})
    report = RunReport(mice=list(plan))
    for name in chain:
        report.stages[name] = StageReport(name)
    root = open_root(store, mode="a", storage_options=storage_options)  # created once, up front
    roots = StoreRoots.open(store, storage_options=storage_options)
    lock = threading.Lock()
    done = dict.fromkeys(chain, 0)

    def one_mouse(mouse: str) -> dict[str, StageReport]:
        parts: dict[str, StageReport] = {}
        chosen = selection.narrowed(mice=mouse)
        for name in chain:
            try:
                if name == "convert":
                    parts[name] = convert(
                        per_mouse[mouse_key(mouse)], store,
                        selection=chosen.narrowed(components=STARTS[start]), client=client,
                        overwrite=overwrite, storage_options=storage_options,
                        require_match=False, records=False, consolidate=False,
                        **convert_options,
                    )  # fmt: skip
                else:
                    parts[name] = run_stage(
                        stages[name], store, selection=chosen, overwrite=overwrite,
                        client=client, concurrency=scans_per_mouse, require_match=False,
                        roots=roots, consolidate=False,
                    )  # fmt: skip
            except UsageError:
                raise
            except Exception as err:  # one mouse's failure must not stop a thousand-mouse run
                if is_disk_full(err) or isinstance(err, PermissionError):
                    raise  # ...but a full or refusing store stops every mouse: say so once
                logger.warning("mouse %s: %s failed: %s", mouse, name, err)
                logger.debug("mouse %s: %s failed", mouse, name, exc_info=True)
                failed = StageReport(name)
                failed.outcomes.append(
                    Outcome(f"mouse {mouse}", "failed", f"{type(err).__name__}: {err}")
                )
                parts[name] = failed
                _advance(chain[chain.index(name) :])  # the mouse leaves the chain here
                break
            _advance([name])
        return parts

    def _advance(names: list[str]) -> None:
        for name in names:
            with lock:
                done[name] += 1
                count = done[name]
            if progress:
                progress(name, count, len(plan))

    # the consolidated metadata: dropped now, written once after every mouse (failed ones too)
    with consolidating(store, storage_options, enabled=consolidate):
        if (  # the records once, not once per mouse; a bad record.csv is reported (exit 3)
            "convert" in chain
            and catalog.records_path
            and (records_outcome := write_source_records(root, catalog)) is not None
        ):
            report.stages["convert"].outcomes.append(records_outcome)
        if progress:
            for name in chain:
                progress(name, 0, len(plan))
        workers = concurrency or default_concurrency(client)
        scans_per_mouse = max(1, workers // max(len(plan), 1))
        results: dict[str, dict[str, StageReport]] = {}
        if workers <= 1 or len(plan) <= 1:
            for mouse in plan:
                results[mouse] = one_mouse(mouse)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="run") as pool:
                futures = {pool.submit(one_mouse, mouse): mouse for mouse in plan}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
        for mouse in plan:  # catalog order, whatever finished first
            for name, part in results[mouse].items():
                report.stages[name].extend(part)
        _metrics(report, roots, metrics_csv)
        if pyramid:
            _pyramids(report, store, selection.narrowed(mice=list(plan)) if plan else None,
                      client, storage_options, progress)  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report


def _stages(chain: list[str], options: dict[str, dict[str, Any]], backend: str) -> dict:
    stages = {}
    for name in chain:
        if name == "convert":
            continue
        settings = dict(options.get(name, {}))
        if name == "reconstruct":
            settings.setdefault("backend", backend)
        try:
            stages[name] = _STAGE_CLASSES[name](**settings)
        except (TypeError, ValueError) as err:  # an unknown or out-of-range setting
            raise UsageError(f"options[{name!r}]: {err}") from None
    return stages


def _split_by_mouse(catalog: Catalog) -> dict[str, Catalog]:
    """One catalog per mouse (every component: convert reads the Recon-CT .log beside)."""
    stacks: dict[str, list] = {}
    for stack in catalog.stacks:
        stacks.setdefault(mouse_key(stack.mouse), []).append(stack)
    return {key: replace(catalog, stacks=tuple(value)) for key, value in stacks.items()}


def _pyramids(report: RunReport, store: Any, selection: Selection | None, client: Any,
              storage_options: dict | None, progress: Any) -> None:  # fmt: skip
    """The pyramids of the run's mice, once after every mouse (inside the consolidation)."""
    from bonemet_dask.ops.pyramid import pyramid

    if selection is None:
        return
    update = (lambda done, total: progress("pyramid", done, total)) if progress else None
    report.stages["pyramid"] = pyramid(store, selection=selection, client=client,
                                       storage_options=storage_options, progress=update,
                                       consolidate=False)  # fmt: skip


def _metrics(report: RunReport, roots: StoreRoots, metrics_csv: Any) -> None:
    """The run's metrics as ``report.table``; the whole store's in the CSV.

    ``report.table`` holds the run's own scans (written or up to date), one row each.  The CSV
    (``metrics_csv``, default beside a local store) holds every complete RoI of the store,
    this run's and earlier runs'
    (:func:`~bonemet_dask.ops.composite_store.write_store_metrics_csv`), joined with
    MiceMediRec and sorted by mouse (numerically), side and week: ``run --mice 2`` after
    ``run --mice 1`` keeps mouse 1's rows, and a rerun duplicates none.
    """
    composite = report.stages.get("composite")
    if composite is None:
        return
    report.table = metrics_of(composite, roots.output_root)
    metrics_csv = metrics_csv or default_metrics_csv(roots.store)
    if metrics_csv is not None:
        report.csv = write_store_metrics_csv(roots, metrics_csv)
