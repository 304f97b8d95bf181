"""Where a store's writer lock lives: a folder beside the store, local or behind fsspec.

:mod:`bonemet_dask.io.lock` keeps one record per holder in it; this module only reads, writes,
lists and deletes those records, each write whole or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["LOCK_SUFFIX", "Place", "place_of"]

logger = logging.getLogger(__name__)

LOCK_SUFFIX: Final = ".bonemet-lock"
"""Appended to the store's path (or URL) to name the lock folder beside it."""


class _LocalPlace:
    """The lock folder on a local (or network-mounted) file system."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.made: list[str] = []  # folders this lock created (removed again when empty)

    def where(self, name: str = "") -> str:
        return os.path.join(self.folder, name) if name else self.folder

    def names(self) -> list[str]:
        try:
            return os.listdir(self.folder)
        except FileNotFoundError:
            return []

    def read(self, name: str) -> bytes | None:
        try:
            with open(self.where(name), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        missing = []  # the store's parents this lock makes (the store makes none of them)
        path = os.path.dirname(self.folder)
        while not os.path.isdir(path) and path != os.path.dirname(path):
            missing.append(path)
            path = os.path.dirname(path)
        os.makedirs(self.folder, exist_ok=True)
        self.made.extend(p for p in missing if p not in self.made)
        temporary = self.where(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.where(name))  # readers see the old or the new, whole
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.where(name))

    def tidy(self) -> None:
        """Remove the lock folder, and the store's parents this lock created, when empty."""
        for path in [self.folder, *sorted(self.made, key=len, reverse=True)]:
            try:
                os.rmdir(path)
            except OSError:  # not empty (another holder, the store), or gone
                break


class _FsspecPlace:
    """The lock "folder" (a key prefix) on an fsspec file system: S3, GCS, memory..."""

    def __init__(self, fs: Any, folder: str, protocol: str) -> None:
        self.fs, self.folder, self.protocol = fs, folder.rstrip("/"), protocol

    def where(self, name: str = "") -> str:
        path = f"{self.folder}/{name}" if name else self.folder
        return f"{self.protocol}://{path.lstrip('/')}"

    def names(self) -> list[str]:
        self.fs.invalidate_cache(self.folder)
        try:
            listed = self.fs.ls(self.folder, detail=False)
        except FileNotFoundError:
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in listed]

    def read(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self.folder}/{name}")
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.folder}/{name}", data)  # one PUT: whole or absent

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.folder}/{name}")

    def tidy(self) -> None:
        """Object stores have no empty folders to remove."""


Place = _LocalPlace | _FsspecPlace


def place_of(store: Any, storage_options: Mapping[str, Any] | None) -> Place | None:
    """The lock folder of a store (path, URL or zarr store), or None when it cannot be shared."""
    from zarr.storage import FsspecStore, LocalStore

    from bonemet_dask.io.store import check_local_store_path

    if isinstance(store, LocalStore):
        store = str(store.root)
    elif isinstance(store, FsspecStore):
        fs = getattr(store.fs, "sync_fs", None)  # zarr wraps a synchronous file system
        if fs is None:
            options = {**store.fs.storage_options, "asynchronous": False}
            fs = type(store.fs)(**options)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return _FsspecPlace(fs, _beside(fs, store.path), protocol)
    if not isinstance(store, str | os.PathLike):
        logger.debug("no writer lock for %r: only this process can reach it", store)
        return None
    text = os.fspath(store)
    if "://" in text and not text.startswith("file://"):
        import fsspec.core

        fs, path = fsspec.core.url_to_fs(text, **dict(storage_options or {}))
        protocol = text.split("://", 1)[0]
        return _FsspecPlace(fs, _beside(fs, path), protocol)
    path = text.removeprefix("file://")
    check_local_store_path(path)
    real = os.path.realpath(os.path.abspath(path))  # one lock whatever the spelling
    return _LocalPlace(real + LOCK_SUFFIX)


def _beside(fs: Any, path: str) -> str:
    """``bucket/a.zarr`` -> ``bucket/a.zarr.bonemet-lock``; a bucket's root keeps it inside."""
    path = path.rstrip("/")
    bucket_root = fs.root_marker == "" and "/" not in path  # s3://bucket: nothing is beside it
    return f"{path}/{LOCK_SUFFIX}" if bucket_root else path + LOCK_SUFFIX
