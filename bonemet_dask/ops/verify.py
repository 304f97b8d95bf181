"""Prove a store equals its source: re-decode every PNG, re-read every slice, compare digests.

Per shard, three digests of each slice must agree: the one recorded at conversion, the one of
the pixels now in the store, and the one of the source PNG decoded again.  Anything else is
named slice by slice.  A scan of the source that the store lacks fails the check, and so does
image data the catalog could not take (a link it did not follow, a folder outside the layout:
:attr:`~bonemet_dask.io.catalog.Catalog.left_out`), which can therefore not be in the store.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bonemet_dask.cluster import active_client
from bonemet_dask.io.catalog import Catalog
from bonemet_dask.io.scans import open_root
from bonemet_dask.io.store import (
    ImageLayout,
    get_bonemet_attrs,
    open_zarr_store,
    scan_group_path,
)
from bonemet_dask.kernels.slab import SlabDecodeError, decode_slab, slab_digests
from bonemet_dask.ops.convert import ShardTask, read_files, selected_catalog, shard_tasks
from bonemet_dask.selection import Selection

logger = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`.

    Attributes
    ----------
    checked_slices : int
        Slices compared.
    mismatches : list of tuple
        ``(group path, slice index, source file, what differs)``.
    missing : list of str
        Group paths of source stacks with no complete group in the store.
    folders : dict of str to str
        The source scan folder of each group path in ``missing``.
    left_out : list of tuple of str
        ``(source path, message)`` of image data under a component folder that the catalog
        could not take (see :attr:`~bonemet_dask.io.catalog.Catalog.left_out`): the store cannot
        hold it.
    """

    store: str
    checked_slices: int = 0
    mismatches: list[tuple[str, int, str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    folders: dict[str, str] = field(default_factory=dict)
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the store holds every selected, convertible stack, equal to its source.

        Image data the catalog left out (``left_out``) makes it False: it cannot be in the store.
        """
        return not self.mismatches and not self.missing and not self.left_out


def verify_shard(task: ShardTask, store: Any, fs: Any, storage_options: dict | None = None):
    """Compare one shard: recorded digests vs store pixels vs source PNGs."""
    import zarr

    zstore = open_zarr_store(store, storage_options=storage_options)
    scan = zarr.open_group(zstore, path=task.group_path, mode="r", use_consolidated=False)
    recorded = scan["slice_hash"][task.start : task.stop]
    stored = slab_digests(scan["0"][task.start : task.stop])
    indices = scan["slice_index"][task.start : task.stop]
    problems = []
    try:
        _, source = decode_slab(read_files(fs, task.paths), shape=task.shape, dtype=task.dtype)
    except SlabDecodeError as err:
        source = np.zeros_like(recorded)
        problems.append((int(indices[err.position]), task.paths[err.position], f"source {err}"))
    for k in range(recorded.shape[0]):
        if not recorded[k].any():
            problems.append((int(indices[k]), task.paths[k], "no digest recorded (shard missing)"))
        elif not np.array_equal(stored[k], recorded[k]):
            problems.append((int(indices[k]), task.paths[k], "store pixels differ from recorded"))
        elif not np.array_equal(source[k], recorded[k]):
            problems.append((int(indices[k]), task.paths[k], "source differs from the store"))
    return task.group_path, recorded.shape[0], problems


def verify(
    source: str | os.PathLike | Catalog,
    store: Any,
    *,
    selection: Selection | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    source_storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    **selectors: Any,
) -> VerifyReport:
    """Check that every convertible stack of ``source`` is in ``store``, slice for slice.

    Stacks the catalog marks as not ok (quarantined by ``convert``) are not expected; image data
    the catalog left out (:attr:`~bonemet_dask.io.catalog.Catalog.left_out`: a link not
    followed, a folder outside the layout) makes the report not ok.

    Parameters
    ----------
    source, store, selection, client, progress
        As for :func:`bonemet_dask.ops.convert.convert`.
    **selectors
        ``components``, ``mice``, ``weeks``, ``sides``, narrowing ``selection``.
    storage_options, source_storage_options : dict, optional
        fsspec options for ``store`` and ``source``.

    Returns
    -------
    VerifyReport
    """
    started = time.perf_counter()
    _, catalog = selected_catalog(source, source_storage_options, selection, **selectors)
    root = open_root(store, mode="r", storage_options=storage_options)
    report = VerifyReport(store=str(store))
    report.left_out = [(p.path, p.message) for p in catalog.left_out]
    tasks: list[ShardTask] = []
    for stack in catalog.stacks:
        if not stack.ok:
            continue
        path = scan_group_path(stack.component, stack.mouse, stack.side, stack.week)
        group = root.get(path)
        if group is None or get_bonemet_attrs(group).get("status") != "complete":
            report.missing.append(path)
            report.folders[path] = stack.folder
            continue
        layout = ImageLayout.from_dict(get_bonemet_attrs(group)["provenance"]["layout"])
        tasks.extend(shard_tasks(stack, layout, path))
    client = client or active_client()
    if client is not None:
        futures = [
            client.submit(verify_shard, t, store, catalog.fs, storage_options, pure=False)
            for t in tasks
        ]
        results = (f.result() for f in futures)
    else:
        pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        results = pool.map(lambda t: verify_shard(t, store, catalog.fs, storage_options), tasks)
    for done, (path, n, problems) in enumerate(results, start=1):
        report.checked_slices += n
        report.mismatches.extend((path, *p) for p in problems)
        if progress:
            progress(done, len(tasks))
    if client is None:
        pool.shutdown()
    report.seconds = time.perf_counter() - started
    return report
