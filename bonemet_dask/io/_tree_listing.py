"""List a source tree without opening a file: regular files, folders, and every entry left out.

Private to :mod:`bonemet_dask.io.catalog`.  A local tree is walked with ``os.scandir`` and
``lstat``, so a FIFO, socket or device is seen for what it is and never opened (opening a FIFO
blocks until something writes to it), and symbolic links are followed only where their target
stays inside the tree (or everywhere with ``follow_symlinks=True``), never round a loop.  Other
filesystems are listed with ``fs.find(detail=True)``, or, given a ``descend`` rule (a selection
pushed down: the hub, an object store), folder by folder with ``fs.ls``, never into a folder the
rule refuses; an entry whose ``type`` is neither ``file`` nor ``directory`` is left out the same
way.  Zarr stores under the tree (a folder holding
``zarr.json``, ``.zgroup`` or ``.zarray`` and no PNG) are not descended into.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

logger = logging.getLogger(__name__)

SkipKind = Literal[
    "link-outside", "broken-link", "link-loop", "not-regular-file", "unreadable-entry"
]

ZARR_MARKERS: Final = frozenset({"zarr.json", ".zgroup", ".zarray"})
"""A folder holding one of these (and no PNG) is a Zarr store or group, not image stacks."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry the listing left out.

    Attributes
    ----------
    path : str
        The entry, as spelled under the root (a link's own path, not its target).
    kind : str
        ``link-outside``, ``broken-link``, ``link-loop``, ``not-regular-file`` or
        ``unreadable-entry``.
    detail : str
        The link's target, what the entry is (``"FIFO (named pipe)"``), or the error.
    """

    path: str
    kind: SkipKind
    detail: str


@dataclass
class Listing:
    """What :func:`list_tree` found under one root.

    Attributes
    ----------
    files : dict of str to int
        Regular files (after following links) and their sizes.
    dirs : set of str
        Folders, the root included.
    skipped : list of Skipped
        Entries left out, each with its reason.
    stores : list of tuple of str
        ``(folder, marker file)`` of each topmost Zarr store or group, not descended into.
    """

    files: dict[str, int] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    skipped: list[Skipped] = field(default_factory=list)
    stores: list[tuple[str, str]] = field(default_factory=list)


def list_tree(
    fs: Any,
    root_path: str,
    *,
    follow_symlinks: bool = False,
    descend: Callable[[str], bool] | None = None,
) -> Listing:
    """List every regular file and folder under ``root_path``, and what was left out.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The filesystem; a local one is walked with ``os.scandir`` (links and special files
        recognised), any other is listed with ``fs.find(withdirs=True, detail=True)``.
    root_path : str
        The root as the filesystem spells it.
    follow_symlinks : bool, default False
        Also follow links whose target lies outside the tree (those inside are always followed).
    descend : callable, optional
        ``descend(folder)`` says whether a folder below the root is listed at all.  Given, a
        filesystem other than the local one is listed folder by folder (one ``ls`` each) and
        what a refused folder holds is never requested; a local tree is walked whole.

    Returns
    -------
    Listing
        With Zarr stores and the contents of folders named like a PNG removed (the folder itself
        is a ``not-regular-file`` entry).

    Raises
    ------
    OSError
        If the root itself cannot be listed.
    """
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        listing = _walk_local(root_path, follow_symlinks=follow_symlinks)
    elif descend is not None:
        listing = _walk_pruned(fs, root_path, descend)
    else:
        listing = _from_find(root_path, fs.find(root_path, withdirs=True, detail=True))
    _drop_png_folders(listing)
    _drop_stores(listing)
    return listing


def _from_find(root_path: str, found: dict[str, dict[str, Any]]) -> Listing:
    listing = Listing(dirs={root_path})
    for name, info in found.items():
        path = str(info.get("name", name)).rstrip("/")
        if path == root_path or not path.startswith(root_path.rstrip("/") + "/"):
            continue
        kind = info.get("type")
        if kind == "directory":
            listing.dirs.add(path)
        elif kind == "file":
            listing.files[path] = int(info.get("size") or 0)
        else:
            listing.skipped.append(Skipped(path, "not-regular-file", str(kind or "special file")))
    return listing


def _walk_pruned(fs: Any, root_path: str, descend: Callable[[str], bool]) -> Listing:
    """List ``root_path`` folder by folder, skipping the folders ``descend`` refuses."""
    listing = Listing(dirs={root_path})
    pending = [root_path]
    while pending:
        folder = pending.pop()
        try:
            entries = fs.ls(folder, detail=True)
        except OSError as exc:
            if folder == root_path:
                raise
            listing.skipped.append(Skipped(folder, "unreadable-entry", _reason(exc)))
            continue
        for info in entries:
            path = str(info.get("name", "")).rstrip("/")
            if not path or path == folder or not path.startswith(folder.rstrip("/") + "/"):
                continue
            kind = info.get("type")
            if kind == "directory":
                if descend(path):
                    listing.dirs.add(path)
                    pending.append(path)
            elif kind == "file":
                listing.files[path] = int(info.get("size") or 0)
            else:
                kind_text = str(kind or "special file")
                listing.skipped.append(Skipped(path, "not-regular-file", kind_text))
    return listing


def _walk_local(root_path: str, *, follow_symlinks: bool) -> Listing:
    """Walk a local tree with ``scandir``/``lstat``: nothing is opened, no link loops round."""
    real_root = os.path.realpath(root_path)
    listing = Listing(dirs={root_path})
    root_info = os.stat(root_path)
    # (folder as spelled under the root, (device, inode) of every folder from the root to it)
    todo: list[tuple[str, frozenset[tuple[int, int]]]] = [
        (root_path, frozenset({(root_info.st_dev, root_info.st_ino)}))
    ]
    while todo:
        folder, above = todo.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            if folder == root_path:
                raise
            listing.dirs.discard(folder)  # not an empty folder: one whose contents are unknown
            listing.skipped.append(Skipped(folder, "unreadable-entry", _reason(exc)))
            continue
        if _holds_store(entries):
            listing.files.update((posixpath.join(folder, e.name), 0) for e in entries
                                 if e.name in ZARR_MARKERS)  # fmt: skip
            continue
        for entry in entries:
            path = posixpath.join(folder, entry.name)
            try:
                target = os.readlink(path) if entry.is_symlink() else None
                info = (
                    entry.stat(follow_symlinks=False)
                    if target is None
                    else _target(path, target, real_root, follow_symlinks)
                )
            except FileNotFoundError:  # removed while listing: nothing to read
                continue
            except OSError as exc:
                listing.skipped.append(Skipped(path, "unreadable-entry", _reason(exc)))
                continue
            if isinstance(info, Skipped):
                listing.skipped.append(info)
            elif stat.S_ISDIR(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                if identity in above:  # a link (or a mount) to a folder above it: a loop
                    detail = target or "a folder mounted inside itself"
                    listing.skipped.append(Skipped(path, "link-loop", detail))
                    continue
                listing.dirs.add(path)
                todo.append((path, above | {identity}))
            elif stat.S_ISREG(info.st_mode):
                listing.files[path] = info.st_size
            else:
                listing.skipped.append(Skipped(path, "not-regular-file", _what(info.st_mode)))
    return listing


def _target(
    path: str, target: str, real_root: str, follow_symlinks: bool
) -> Skipped | os.stat_result:
    """The ``stat`` of what the link ``path`` points at (``target``), or why it is not followed."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Skipped(path, "link-loop", target)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return Skipped(path, "broken-link", target)
        raise
    real = os.path.realpath(path)
    inside = real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
    if not inside and not follow_symlinks:
        return Skipped(path, "link-outside", target)
    return info


def _holds_store(entries: Iterable[os.DirEntry]) -> bool:
    names = [e.name for e in entries]
    return any(n in ZARR_MARKERS for n in names) and not any(_named_png(n) for n in names)


def _named_png(name: str) -> bool:
    return name.lower().endswith(".png") and not name.startswith("._")


def _what(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


def _drop_png_folders(listing: Listing) -> None:
    """A folder named like a PNG slice is an entry that is not a regular file; drop its contents."""
    png_dirs = sorted(d for d in listing.dirs if _named_png(posixpath.basename(d)))
    top = [d for i, d in enumerate(png_dirs) if not _under(d, png_dirs[:i])]
    if not top:
        return
    _remove_under(listing, top)
    listing.skipped += [Skipped(d, "not-regular-file", "directory") for d in top]


def _drop_stores(listing: Listing) -> None:
    """Remove the contents of Zarr stores and groups; record each topmost one."""
    by_folder: dict[str, list[str]] = {}
    for path in listing.files:
        by_folder.setdefault(posixpath.dirname(path), []).append(posixpath.basename(path))
    stores = sorted(
        (folder, min(n for n in names if n in ZARR_MARKERS))
        for folder, names in by_folder.items()
        if any(n in ZARR_MARKERS for n in names) and not any(_named_png(n) for n in names)
    )
    top: list[tuple[str, str]] = []
    for folder, marker in stores:
        if not _under(folder, [t for t, _ in top]):
            top.append((folder, marker))
    if not top:
        return
    _remove_under(listing, [t for t, _ in top])
    listing.stores = top


def _remove_under(listing: Listing, folders: list[str]) -> None:
    """Remove ``folders`` and everything under them from the listing."""

    def gone(path: str) -> bool:
        return _under(path, folders)

    listing.files = {p: s for p, s in listing.files.items() if not gone(p)}
    listing.dirs = {d for d in listing.dirs if not gone(d)}
    listing.skipped = [s for s in listing.skipped if not gone(s.path)]
