"""Consolidated metadata: the whole hierarchy's metadata in the root ``zarr.json``.

A store-writing command (``convert``, a stage, ``run``) drops the root's consolidated metadata
before its first write and consolidates again when it finishes, failed outputs or not: a
reader that trusts consolidated metadata (``xr.open_datatree(store, engine="zarr")``, one
request for the whole tree on S3) sees the store as the last finished command left it, and
while a command runs, or after one was killed, there is none to mislead it (it lists the
store instead).

The package's own readers never trust it: they open groups with ``use_consolidated=False``
(a rerun's decisions, resume above all, must see every group's current attributes), and so
do its writers, since zarr writes a group's consolidated view back with any attribute change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Final

import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.errors import ZarrUserWarning

from bonemet_dask.io.store import open_zarr_store

__all__ = [
    "consolidate_store",
    "consolidated_paths",
    "consolidating",
    "drop_consolidated",
    "try_consolidate",
]

logger = logging.getLogger(__name__)

_ROOT_DOCUMENT: Final = "zarr.json"
_KEY: Final = "consolidated_metadata"


def consolidate_store(
    store: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Consolidate the metadata of every group and array into the root group's ``zarr.json``.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        Local path, fsspec URL (``memory://``, ``s3://``) or store; see
        :func:`~bonemet_dask.io.store.open_zarr_store`. Must be writable.
    storage_options : mapping, optional
        fsspec options for a URL.

    Returns
    -------
    int
        Nodes (groups and arrays below the root) now described by the root.

    Raises
    ------
    FileNotFoundError
        If the store has no root ``zarr.json`` (nothing is created then).
    TypeError
        If the store does not support consolidated metadata.

    Notes
    -----
    Reads every node's own metadata (never an older consolidation) with one concurrent walk,
    then rewrites the root document; zarr keeps this under ``consolidated_metadata`` in the
    root ``zarr.json`` (not yet part of the Zarr v3 specification: zarr-python's warning
    about that is silenced here).
    """
    try:  # read-only first: opening a missing local store for writing would create it
        found = _root_document(open_zarr_store(store, mode="r", storage_options=storage_options))
    except FileNotFoundError:
        found = None
    if found is None:
        raise FileNotFoundError(
            f"store {_describe(store)} has no root zarr.json: not a Zarr store; check the path"
        )
    zstore = open_zarr_store(store, mode="a", storage_options=storage_options)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata is currently not", ZarrUserWarning)
        group = zarr.consolidate_metadata(zstore)
    consolidated = group.metadata.consolidated_metadata
    count = len(consolidated.flattened_metadata) if consolidated is not None else 0
    logger.info(
        "consolidated the metadata of %d nodes of %s in %.2f s",
        count, _describe(store), time.perf_counter() - started,
    )  # fmt: skip
    return count


def drop_consolidated(
    store: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
) -> bool:
    """Remove the consolidated metadata from the root ``zarr.json``, keeping everything else.

    A writer calls this before it changes the store, so that nothing describes the store as it
    was before: readers list the store until :func:`consolidate_store` runs again.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        Local path, fsspec URL or store.
    storage_options : mapping, optional
        fsspec options for a URL.

    Returns
    -------
    bool
        Whether there was consolidated metadata to remove (one read, and then one write).
    """
    zstore = open_zarr_store(store, mode="a", storage_options=storage_options)
    document = _root_document(zstore)
    if document is None or document.get(_KEY) is None:
        return False
    del document[_KEY]
    data = json.dumps(document, indent=2).encode()
    sync(zstore.set(_ROOT_DOCUMENT, default_buffer_prototype().buffer.from_bytes(data)))
    logger.debug("dropped the consolidated metadata of %s", _describe(store))
    return True


def consolidated_paths(
    store: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
) -> set[str] | None:
    """The node paths the root's consolidated metadata lists, or None when it has none.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        Local path, fsspec URL or store.
    storage_options : mapping, optional
        fsspec options for a URL.

    Returns
    -------
    set of str or None
        Paths relative to the root, e.g. ``"recon_ct/851/both/week0/0"``.
    """
    zstore = open_zarr_store(store, mode="r", storage_options=storage_options)
    document = _root_document(zstore)
    if document is None or document.get(_KEY) is None:
        return None
    paths: set[str] = set()

    def walk(metadata: Mapping[str, Any], prefix: str) -> None:
        for name, node in metadata.items():
            path = f"{prefix}{name}"
            paths.add(path)
            nested = (node.get(_KEY) or {}).get("metadata") if isinstance(node, dict) else None
            if nested:
                walk(nested, f"{path}/")

    walk(document[_KEY].get("metadata") or {}, "")
    return paths


@contextlib.contextmanager
def consolidating(
    store: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
    *,
    enabled: bool = True,
) -> Iterator[None]:
    """Around the writes of one command: drop the consolidated metadata, consolidate at the end.

    The store is consolidated whether the block finishes or raises an :class:`Exception` (the
    metadata then describes what is on disk, failed outputs included); not on
    ``KeyboardInterrupt`` or ``SystemExit``, which leave the store without consolidated
    metadata.  A consolidation that fails is logged as a warning and never replaces the
    block's own outcome: the data is written, only the shortcut for readers is missing.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        The store the block writes (it must exist: open or create it first).
    storage_options : mapping, optional
        fsspec options for a URL.
    enabled : bool, optional
        False: drop the consolidated metadata (a stale copy must not hide what this block
        writes) but leave consolidating to the caller, who does it once after several
        commands: ``run`` for its per-mouse ``convert`` and stage calls, ``bonemet-dask
        consolidate STORE`` after the tasks of a job array.
    """
    drop_consolidated(store, storage_options)
    if not enabled:
        yield
        return
    try:
        yield
    except Exception:
        try_consolidate(store, storage_options)
        raise
    try_consolidate(store, storage_options)


def try_consolidate(
    store: str | os.PathLike[str] | Store, storage_options: Mapping[str, Any] | None = None
) -> bool:
    """:func:`consolidate_store`, logging a failure as a warning instead of raising it.

    Returns
    -------
    bool
        Whether the store was consolidated.
    """
    try:
        consolidate_store(store, storage_options)
    except Exception as err:  # the outputs are on disk; only the readers' shortcut is missing
        logger.warning(
            "could not consolidate the metadata of %s (%s: %s); readers list the store instead. "
            "Retry with bonemet_dask.io.consolidate.consolidate_store(store)",
            _describe(store), type(err).__name__, err,
        )  # fmt: skip
        logger.debug("consolidation failed", exc_info=True)
        return False
    return True


def _root_document(zstore: Store) -> dict[str, Any] | None:
    buffer = sync(zstore.get(_ROOT_DOCUMENT, prototype=default_buffer_prototype()))
    if buffer is None:
        return None
    document = json.loads(buffer.to_bytes())
    return document if isinstance(document, dict) else None


def _describe(store: Any) -> str:
    return repr(os.fspath(store)) if isinstance(store, str | os.PathLike) else repr(store)
