"""``bonemet-dask pyramid``: OME-Zarr multiscale levels for every selected image group.

The levels' layout, pixels and resume rule are :mod:`bonemet_dask.io.pyramid`'s; this module
selects the groups, sends their graphs to the user's client with bounded concurrency, reports
per group (a :class:`~bonemet_dask.ops.stage.StageReport` named ``pyramid``) and keeps the
store's consolidated metadata current. ``run`` calls it once after every mouse.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from bonemet_dask.io.consolidate import consolidating
from bonemet_dask.io.lock import writes_store
from bonemet_dask.io.pyramid import DEFAULT_TARGET, TASK_INPUT_BYTES, build_groups, selected_groups
from bonemet_dask.io.scans import open_root
from bonemet_dask.ops.engine import compute as engine_compute
from bonemet_dask.ops.engine import default_concurrency
from bonemet_dask.ops.stage import Outcome, StageReport
from bonemet_dask.selection import Selection

__all__ = ["pyramid"]

logger = logging.getLogger(__name__)


@writes_store("store", operation="pyramid")  # one writer per store (io/lock.py)
def pyramid(
    store: str | os.PathLike[str] | Any,
    *,
    mice: Any = None,
    weeks: Any = None,
    sides: Any = None,
    components: Any = None,
    selection: Selection | None = None,
    target: int = DEFAULT_TARGET,
    task_bytes: int = TASK_INPUT_BYTES,
    rebuild: bool = False,
    client: Any = None,
    concurrency: int | None = None,
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    consolidate: bool = True,
) -> StageReport:
    """Write the multiscale pyramid of every complete selected image group, resumably.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        The store (local path or fsspec URL).
    mice, weeks, sides, components : optional
        Selection (:class:`~bonemet_dask.selection.Selection` rules); default everything.
    selection : Selection, optional
        A parsed selection, narrowed by the selectors.
    target : int
        The coarsest level's largest downsampled axis is at most this (default 256 pixels).
    task_bytes : int
        Decoded bytes of the level above one task reads (at least one chunk depth).
    rebuild : bool
        Write every level again even when the recorded pyramid is current.
    client : distributed.Client, optional
        Where to compute (default: the active client, else dask's configured scheduler).
    concurrency : int, optional
        Groups in flight at once (default 1 without a client, twice the workers with one).
    storage_options : dict, optional
        fsspec options of the store.
    progress : callable, optional
        ``progress(done, total)`` after each group.
    consolidate : bool
        Drop the consolidated metadata first and consolidate at the end (``run`` passes False
        and consolidates once).

    Returns
    -------
    StageReport
        One outcome per image group (label images under ``labels/`` included): ``written``,
        ``resumed`` (after a killed build), ``up to date`` (also for images already within
        ``target``, which have level 0 only) or ``failed``.
    """
    started = time.perf_counter()
    selection = Selection.of(selection, mice=mice, weeks=weeks, sides=sides,
                             components=components)  # fmt: skip
    root = open_root(store, mode="r+", storage_options=storage_options)
    groups = selected_groups(root, selection)
    report = StageReport("pyramid")
    with consolidating(store, storage_options, enabled=consolidate):
        results = build_groups(
            store, groups, storage_options=storage_options, target=target,
            task_bytes=task_bytes, rebuild=rebuild,
            compute=lambda finish: engine_compute(finish, client=client),
            concurrency=concurrency or default_concurrency(client), progress=progress,
        )  # fmt: skip
    for path, status, reason in results:
        report.outcomes.append(Outcome(path, status, reason))
    report.seconds = time.perf_counter() - started
    logger.info("pyramid: %s in %.1f s", report.counts(), report.seconds)
    return report
