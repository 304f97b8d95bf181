"""Where a stage reads and writes: the input and output stores, and the scans they hold.

A stage reads from ``OUT`` first, then ``STORE`` (so ``--out`` chains work: the segmentation
of a reconstruction written to ``OUT`` finds it there), and writes to ``OUT`` (``STORE`` when no
``OUT`` is given).  :class:`StoreRoots` opens both once, with errors that name the fix;
:func:`list_scans` lists the scan groups of one component, one listing per selected animal, so
planning one mouse of a 1,000-mouse store reads that mouse's metadata only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import xarray as xr
import zarr

from bonemet_dask.errors import StoreError
from bonemet_dask.io.records import RECORDS_GROUP
from bonemet_dask.io.store import get_bonemet_attrs, open_zarr_store, parse_week_segment
from bonemet_dask.naming import SIDES
from bonemet_dask.selection import Selection, mouse_key

__all__ = ["ScanRef", "StoreRoots", "list_scans", "open_root"]


@dataclass(frozen=True)
class ScanRef:
    """One scan group found in a store, with its ``bonemet`` attributes.

    Attributes
    ----------
    component, side : str
        Canonical keys.
    mouse : str
        The original animal id (``bonemet.mouse``).
    segment : str
        The mouse's path segment in the store.
    week : int
        Week number.
    where : {"out", "store"}
        Which store holds it.
    attrs : dict
        The group's ``bonemet`` attributes (status, fingerprint, provenance...).
    """

    component: str
    mouse: str
    segment: str
    side: str
    week: int
    where: str
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def path(self) -> str:
        """The group path, e.g. ``recon_ct/851/both/week0``."""
        return f"{self.component}/{self.segment}/{self.side}/week{self.week}"

    @property
    def key(self) -> tuple[str, str, int]:
        """``(mouse, side, week)``."""
        return (self.mouse, self.side, self.week)

    @property
    def status(self) -> str:
        """``complete``, ``incomplete`` or ``quarantined``."""
        return str(self.attrs.get("status", "incomplete"))


def _describe(store: Any) -> str:
    return repr(os.fspath(store)) if isinstance(store, str | os.PathLike) else repr(store)


def open_root(
    store: Any, *, mode: str = "r", storage_options: dict | None = None, name: str = "STORE"
) -> zarr.Group:
    """The root group of a bonemet store, or a :class:`StoreError` that names the fix.

    The group ignores the store's consolidated metadata (:mod:`bonemet_dask.io.consolidate`):
    what it reads below the root is each group's current metadata, however stale the
    consolidation, and writing the root's attributes drops the consolidation rather than
    writing an old one back.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        Path, fsspec URL or store.
    mode : {"r", "r+", "a"}
        ``"a"`` creates the store when missing (an output); the others require it.
    storage_options : dict, optional
        fsspec options for a URL.
    name : str
        How the CLI names the argument in messages (``STORE``, ``--out``).

    Raises
    ------
    StoreError
        The path does not exist, is a BoneMet source folder or another folder rather than a
        Zarr store, or cannot be written.
    """
    local = isinstance(store, str | os.PathLike) and "://" not in os.fspath(store)
    if mode != "a" and local and not os.path.exists(os.fspath(store)):  # before LocalStore
        raise StoreError(  # would create the folder
            f"{name} {os.fspath(store)!r} does not exist; convert a BoneMet tree into it "
            f"first: bonemet-dask convert SRC {os.fspath(store)}"
        )
    try:
        zstore = open_zarr_store(store, mode="r" if mode == "r" else "a",
                                 storage_options=storage_options)  # fmt: skip
        # never the consolidated metadata: skip/resume decisions need every group's own attrs
        return zarr.open_group(zstore, mode=mode, use_consolidated=False)
    except PermissionError as err:
        raise StoreError(
            f"{name} {_describe(store)} cannot be written ({err.strerror or err}); pass a "
            "writable location (CLI: --out OTHER.zarr)"
        ) from None
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        pass
    if isinstance(store, str | os.PathLike) and "://" not in os.fspath(store):
        path = os.fspath(store)
        if os.path.isdir(path) and _looks_like_source(path):
            raise StoreError(
                f"{name} {path!r} is a BoneMet source folder, not a Zarr store; convert it "
                f"first (bonemet-dask convert {path} STORE.zarr) and point the stage at STORE.zarr"
            ) from None
        raise StoreError(
            f"{name} {path!r} is not a Zarr store (no zarr.json at its top); pass the folder "
            "that bonemet-dask convert wrote"
        ) from None
    raise StoreError(
        f"{name} {_describe(store)} holds no Zarr store; convert a BoneMet tree into it first"
    ) from None


def _looks_like_source(path: str) -> bool:
    """Whether a folder looks like a BoneMet tree (its published top-level folders or PNGs)."""
    names = {n.lower() for n in os.listdir(path)}
    if {"imagery_dataset", "micemedirec dataset"} & names:
        return True
    from bonemet_dask.naming import parse_component

    return any(parse_component(n) for n in os.listdir(path))


@dataclass
class StoreRoots:
    """The input store and the output store of one stage run, opened once.

    Attributes
    ----------
    store, out : str, os.PathLike or zarr Store
        As the user gave them (``out`` is ``store`` when no other output was given).
    storage_options : dict or None
        fsspec options of both.
    input_root, output_root : zarr.Group
        ``STORE`` opened read-only and ``OUT`` opened for writing (the same group object when
        they are one store).
    """

    store: Any
    out: Any
    storage_options: dict | None
    input_root: zarr.Group
    output_root: zarr.Group

    @classmethod
    def open(
        cls, store: Any, out: Any = None, *, storage_options: dict | None = None
    ) -> StoreRoots:
        """Open ``STORE`` (must exist) and ``OUT`` (created when missing)."""
        same = out is None or (
            isinstance(out, str | os.PathLike)
            and isinstance(store, str | os.PathLike)
            and os.path.normpath(os.fspath(out)) == os.path.normpath(os.fspath(store))
        )
        if same:
            root = open_root(store, mode="r+", storage_options=storage_options)
            return cls(store, store, storage_options, root, root)
        input_root = open_root(store, mode="r", storage_options=storage_options)
        output_root = open_root(out, mode="a", storage_options=storage_options, name="--out")
        return cls(store, out, storage_options, input_root, output_root)

    @property
    def separate(self) -> bool:
        """Whether ``OUT`` is another store than ``STORE``."""
        return self.input_root is not self.output_root

    def reading_order(self) -> list[tuple[str, zarr.Group]]:
        """``[("out", OUT), ("store", STORE)]``: where inputs are looked for, first match wins."""
        if not self.separate:
            return [("store", self.input_root)]
        return [("out", self.output_root), ("store", self.input_root)]

    def root(self, where: str) -> zarr.Group:
        """The root group a :class:`ScanRef` came from."""
        return self.output_root if where == "out" else self.input_root

    def location(self, where: str) -> Any:
        """The store (path or URL) a task opens to reach ``where``."""
        return self.out if where == "out" else self.store

    def scans(self, component: str, selection: Selection) -> list[ScanRef]:
        """The scans of ``component`` in ``OUT`` and ``STORE`` (``OUT`` wins per path)."""
        found: dict[str, ScanRef] = {}
        for where, root in reversed(self.reading_order()):
            for scan in list_scans(root, component, selection, where=where):
                found[scan.path] = scan
        return [found[p] for p in sorted(found, key=lambda p: _order(found[p]))]

    def open_scan(self, scan: ScanRef, *, chunks: str = "inner") -> xr.Dataset:
        """The labelled Dataset of one scan (see :func:`bonemet_dask.io.xr.open_scan`)."""
        from bonemet_dask.io.xr import open_scan

        return open_scan(self.root(scan.where)[scan.path], chunks=chunks)

    def records_location(self) -> Any:
        """The store holding the MiceMediRec table ``/medirec`` (``OUT`` first), or None."""
        for where, root in self.reading_order():
            if RECORDS_GROUP in root:
                return self.location(where)
        return None

    def describe(self) -> str:
        """``store 'a.zarr'`` or ``stores 'out.zarr' and 'a.zarr'`` for messages."""
        if not self.separate:
            return f"STORE {_describe(self.store)}"
        return f"--out {_describe(self.out)} and STORE {_describe(self.store)}"


def _order(scan: ScanRef) -> tuple:
    number = int(scan.segment) if scan.segment.isdigit() else 0
    return (not scan.segment.isdigit(), number, scan.segment, SIDES.index(scan.side), scan.week)


def _mouse_segments(component_group: zarr.Group, selection: Selection) -> list[str]:
    """Mouse groups to list: the selected ids looked up directly, else one listing."""
    if selection.mice is not None:
        direct = [m for m in selection.mice if isinstance(component_group.get(m), zarr.Group)]
        if len(direct) == len(selection.mice):  # every id is its own segment: no listing
            return direct
    names = sorted(component_group.group_keys())
    return [n for n in names if selection.mice is None or mouse_key(n) in selection.mice]


def list_scans(
    root: zarr.Group, component: str, selection: Selection, *, where: str = "store"
) -> Iterator[ScanRef]:
    """The scan groups of one component that match the selection's mice and sides.

    Weeks are not filtered: a per-tibia stage needs a selected week's baseline too.  A
    selection of mice lists the component's mouse names once and then only those mice.
    """
    component_group = root.get(component)
    if not isinstance(component_group, zarr.Group):
        return
    for segment in _mouse_segments(component_group, selection):
        mouse_group = component_group[segment]
        members = mouse_group.members(max_depth=1, use_consolidated_for_children=False)
        for relative, node in sorted(members):
            parts = relative.split("/")
            if len(parts) != 2 or not isinstance(node, zarr.Group):
                continue
            side, week = parts[0], parse_week_segment(parts[1])
            if side not in SIDES or week is None or not selection.matches(side=side):
                continue
            attrs = get_bonemet_attrs(node)
            yield ScanRef(component, str(attrs.get("mouse", segment)), segment, side, week,
                          where, attrs)  # fmt: skip
