"""Store -> the published BoneMet folder layout: one PNG per slice and the ``.log`` of each stack.

Where each group goes (docs/pipeline.md, "Export"):

* A **converted** group (it has ``bonemet.source`` attributes) goes back where it came from:
  its source folder relative to the source root (the root recorded in the store's root
  attributes; else from the ``Imagery_Dataset`` or component folder down), its files spelled
  by the recorded ``source.file_name`` template (or ``source.file_names``) from the store's
  ``slice_index``, and its ``.log`` named ``source.log_name`` with the key/values convert read.
  Stores converted before the names were recorded get the published naming below.
* A **derived** group (written by a stage: ``seg_ct``, ``regist_ct``, ``roi_ct``, a
  reconstructed ``recon_ct``) gets the published naming of its component
  (:mod:`bonemet_dask.naming`, as :mod:`bonemet_dask.synth` writes it):
  ``Imagery_Dataset/3. Seg-CT/851 left tibia/week 0/851_left_tibia_00000000.png``.  Whole-scan
  components keep the store's slice index as file number (NRecon section numbers); per-tibia
  components are numbered from 0 in stack order, as the published crops, registrations and
  RoIs are.  Beside them a ``.log`` (``<mouse>_rec.log`` for ``recon_ct``, else ``<mouse>.log``)
  with the voxel size, slice count, input groups, stage and parameters, and a ``[bonemet-dask]``
  section with the group path, fingerprint and the store's slice index.

Only array ``0`` (the published product) is written; a stage's side arrays (``mask``,
``greyscale``) are not.  One task per shard of array ``0`` writes that shard's PNGs.  A rerun
keeps every file that decodes to its slice's recorded digest (``check="digest"``) or that
exists (``check="exists"``) and writes the rest; each PNG is written to a hidden temporary name
and renamed, so an interrupted export never leaves a truncated file under a slice's name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from bonemet_dask.cluster import active_client
from bonemet_dask.errors import UsageError
from bonemet_dask.io.scans import open_root
from bonemet_dask.io.skyscan_log import parse_skyscan_log
from bonemet_dask.io.store import open_zarr_store
from bonemet_dask.kernels.png_encode import encode_png_slab, png_matches
from bonemet_dask.kernels.slab import slab_digests
from bonemet_dask.ops.export_plan import ExportTarget, plan_export
from bonemet_dask.selection import Selection

__all__ = ["CHECKS", "ExportReport", "ExportTarget", "ExportTask", "export", "export_slab"]

logger = logging.getLogger(__name__)

CHECKS: Final = ("digest", "exists")
"""How a rerun decides a file is done: it decodes to the recorded digest, or it exists."""
_TMP_RE: Final = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.part$")


@dataclass(frozen=True)
class ExportTask:
    """One unit of work: the slices ``start:stop`` of a group (one shard), written as PNGs."""

    group_path: str
    start: int
    stop: int
    folder: str
    names: tuple[str, ...]
    shape: tuple[int, int]
    dtype: str


@dataclass
class ExportReport:
    """Outcome of :func:`export`.

    Attributes
    ----------
    store, out : str
        As given.
    folders : dict
        Group path -> its folder relative to ``out``, for every group exported.
    skipped : list of tuple
        ``(group path, reason)`` of selected groups not exported (incomplete, quarantined, no
        PNG form).
    failures : list of tuple
        ``(group path or file, reason)`` of what could not be written.
    files_written, files_kept : int
        PNG files written by this run, and found complete and correct.
    logs_written : int
        ``.log`` files written (a log with the same key/values is kept).
    bytes_written : int
        PNG bytes written.
    seconds : float
        Wall time.
    """

    store: str
    out: str
    folders: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    files_written: int = 0
    files_kept: int = 0
    logs_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """1 when something failed, else 3 when a selected group was skipped, else 0."""
        return 1 if self.failures else 3 if self.skipped else 0


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _write_atomic(fs: Any, path: str, data: bytes) -> None:
    """Write a file whole or not at all: a temporary name renamed (local), one PUT (objects)."""
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.part")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _present(fs: Any, folder: str, names: Sequence[str]) -> set[str]:
    """Names of ``names`` present in ``folder``; stale temporaries of them are removed."""
    try:
        listing = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return set()
    wanted = set(names)
    if _is_local(fs):
        for entry in listing:
            match = _TMP_RE.match(entry)
            if match and match.group("name") in wanted:  # left by an interrupted export
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))
    return wanted & set(listing)


def export_slab(
    task: ExportTask,
    store: Any,
    fs: Any,
    storage_options: dict | None = None,
    *,
    check: str = "digest",
    level: int = 1,
) -> tuple[ExportTask, int, int, int, str | None]:
    """Write the PNGs of one shard that are not already complete and correct.

    Returns
    -------
    tuple
        ``(task, files_written, files_kept, bytes_written, problem)``; ``problem`` is None on
        success, else what went wrong, naming the file or slice.
    """
    import zarr

    zstore = open_zarr_store(store, mode="r", storage_options=storage_options)
    group = zarr.open_group(zstore, path=task.group_path, mode="r", use_consolidated=False)
    recorded = group["slice_hash"][task.start : task.stop]
    paths = [f"{task.folder}/{name}" for name in task.names]
    present = _present(fs, task.folder, task.names)
    if check == "digest":
        existing = [p for p, n in zip(paths, task.names, strict=True) if n in present]
        blobs = fs.cat(existing, on_error="omit") if existing else {}
        content = {fs._strip_protocol(k): v for k, v in blobs.items()}
        found = [content.get(fs._strip_protocol(p)) for p in paths]
        keep = png_matches(found, recorded, shape=task.shape, dtype=task.dtype)
    else:
        keep = np.array([name in present for name in task.names], dtype=bool)
    todo = np.flatnonzero(~keep)
    if not todo.size:
        return task, 0, int(keep.sum()), 0, None
    slab = group["0"][task.start : task.stop]
    stored = slab_digests(slab[todo])
    damaged = [
        k for k, digest in zip(todo, stored, strict=True) if not np.array_equal(digest, recorded[k])
    ]
    if damaged:
        problem = (
            f"slice {task.start + damaged[0]} of {task.group_path} differs from its recorded "
            "digest (an incomplete or damaged shard); check it with bonemet-dask verify, then "
            "rerun the stage that wrote it"
        )
        return task, 0, int(keep.sum()), 0, problem
    files = nbytes = 0
    for k, blob in zip(todo, encode_png_slab(slab[todo], level=level), strict=True):
        try:
            _write_atomic(fs, paths[k], blob)
        except OSError as err:
            problem = f"cannot write {paths[k]!r} ({err}); free space or pass another OUT"
            return task, files, int(keep.sum()), nbytes, problem
        files, nbytes = files + 1, nbytes + len(blob)
    return task, files, int(keep.sum()), nbytes, None


def _write_log(fs: Any, path: str, data: bytes) -> bool:
    """Write a ``.log`` unless one with the same key/values is there; True when written."""
    try:
        if parse_skyscan_log(fs.cat_file(path)).to_dict() == parse_skyscan_log(data).to_dict():
            return False
    except FileNotFoundError:
        pass
    _write_atomic(fs, path, data)
    return True


def _check_out(store: Any, out: str | os.PathLike) -> None:
    """Refuse an OUT inside (or equal to) the store."""
    if not isinstance(store, str | os.PathLike):
        return
    left, right = os.fspath(store), os.fspath(out)
    if "://" in left.removeprefix("file://") or "://" in right.removeprefix("file://"):
        inside = (right.rstrip("/") + "/").startswith(left.rstrip("/") + "/")
        suggestion = left.rstrip("/") + "-export"
    else:
        store_path = Path(left.removeprefix("file://")).resolve()
        out_path = Path(right.removeprefix("file://")).resolve()
        inside = out_path == store_path or store_path in out_path.parents
        suggestion = str(store_path.with_name(store_path.stem + "-export"))
    if inside:
        raise UsageError(
            f"OUT {right!r} is inside STORE {left!r}: the PNG tree would be written into the "
            f"Zarr store; pass a folder outside it, e.g. {suggestion}"
        )


def export(
    store: Any,
    out: str | os.PathLike,
    *,
    components: Sequence[str] | str | None = None,
    mice: Sequence[str] | str | None = None,
    weeks: Sequence[int] | int | str | None = None,
    sides: Sequence[str] | str | None = None,
    selection: Selection | None = None,
    client: Any = None,
    check: Literal["digest", "exists"] = "digest",
    png_level: int = 1,
    storage_options: dict | None = None,
    out_storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write groups of a store back to the published BoneMet folder layout, resumably.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        The store (path or fsspec URL).
    out : str or os.PathLike
        Folder (or fsspec URL) the tree is written under; created when missing; files of other
        names in it are left alone.  Must not be inside ``store``.
    components, mice, weeks, sides : optional
        Selection (:class:`~bonemet_dask.selection.Selection` rules), narrowing ``selection``.
    selection : Selection, optional
        A parsed selection.
    client : distributed.Client, optional
        Run the shard tasks there (``out`` must be reachable from the workers); default the
        active client, and without one a local thread pool.
    check : {"digest", "exists"}
        What makes an existing file done: it decodes to its slice's recorded digest, or it
        exists (every file is renamed into place whole, so an existing one is complete).
    png_level : int
        zlib level of the PNGs, 0..9; the pixels are the same at every level.
    storage_options, out_storage_options : dict, optional
        fsspec options of ``store`` and ``out``.
    progress : callable, optional
        ``progress(done, total)`` after every shard.

    Returns
    -------
    ExportReport

    Raises
    ------
    UsageError
        ``out`` inside ``store`` or a file; ``check`` or ``png_level`` not allowed; the
        selection matches nothing (:class:`~bonemet_dask.selection.NothingSelectedError`).
    StoreError
        ``store`` is not a store.
    """
    import fsspec

    if check not in CHECKS:
        raise UsageError(f"check={check!r} is not one of {', '.join(map(repr, CHECKS))}")
    if isinstance(png_level, bool) or not isinstance(png_level, int) or not 0 <= png_level <= 9:
        raise UsageError(f"png_level={png_level!r} must be an int in 0..9, e.g. png_level=1")
    started = time.perf_counter()
    selection = Selection.of(selection, components=components, mice=mice, weeks=weeks,
                             sides=sides)  # fmt: skip
    _check_out(store, out)
    root = open_root(store, mode="r", storage_options=storage_options)
    where = f"STORE {os.fspath(store)!r}" if isinstance(store, str | os.PathLike) else "STORE"
    targets, skipped = plan_export(root, selection, where=where)
    report = ExportReport(store=str(store), out=os.fspath(out), skipped=skipped)
    fs, out_root = fsspec.core.url_to_fs(os.fspath(out), **(out_storage_options or {}))
    if fs.isfile(out_root):
        raise UsageError(f"OUT {os.fspath(out)!r} is a file; pass a folder to write the tree in")
    owners: dict[str, str] = {}
    tasks: list[ExportTask] = []
    for target in targets:
        if target.folder in owners:
            report.failures.append((target.group_path, f"would be written to {target.folder!r} "
                                    f"as {owners[target.folder]} is; export them one at a time "
                                    "with --components/--mice"))  # fmt: skip
            continue
        owners[target.folder] = target.group_path
        folder = f"{out_root.rstrip('/')}/{target.folder}"
        try:
            fs.makedirs(folder, exist_ok=True)
            if target.log is not None and target.log_name is not None:
                report.logs_written += _write_log(fs, f"{folder}/{target.log_name}", target.log)
        except OSError as err:
            report.failures.append((folder, f"cannot write under OUT ({err}); pass a writable "
                                    "folder with enough space"))  # fmt: skip
            continue
        report.folders[target.group_path] = target.folder
        for start, stop in target.shards:
            names = target.names[start:stop]
            tasks.append(ExportTask(target.group_path, start, stop, folder, names, target.shape,
                                    target.dtype))  # fmt: skip
    _run(tasks, store, fs, storage_options, client or active_client(), report, progress,
         check=check, level=png_level)  # fmt: skip
    report.seconds = time.perf_counter() - started
    logger.info("export: %d files written, %d kept, %d logs in %.1f s", report.files_written,
                report.files_kept, report.logs_written, report.seconds)  # fmt: skip
    return report


def _run(tasks, store, fs, storage_options, client, report, progress, *, check, level) -> None:
    """Run the shard tasks (on ``client``, else a thread pool) and add their counts."""
    if progress:
        progress(0, len(tasks))
    options = {"check": check, "level": level}
    if client is not None:
        from distributed import as_completed

        futures = [client.submit(export_slab, t, store, fs, storage_options, pure=False,
                                 **options) for t in tasks]  # fmt: skip
        results = (f.result() for f in as_completed(futures))
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        results = pool.map(lambda t: export_slab(t, store, fs, storage_options, **options), tasks)
    try:
        for done, (task, written, kept, nbytes, problem) in enumerate(results, start=1):
            report.files_written += written
            report.files_kept += kept
            report.bytes_written += nbytes
            if problem is not None:
                report.failures.append((task.group_path, problem))
            if progress:
                progress(done, len(tasks))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
