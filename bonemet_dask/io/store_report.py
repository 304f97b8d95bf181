"""A rich view of a store: the scan hierarchy with shapes, status and sizes."""

from __future__ import annotations

from typing import Any

import zarr
from rich.tree import Tree

from bonemet_dask.io.store import get_bonemet_attrs, open_zarr_store

_STATUS_STYLE = {"complete": "green", "incomplete": "yellow", "quarantined": "red"}


def store_tree(store: Any, *, storage_options: dict | None = None, max_scans: int = 40) -> Tree:
    """The store's ``component / mouse / side / week`` hierarchy as a rich Tree.

    Each scan shows its array shape, dtype, shard count and status; after ``max_scans`` scans per
    component the rest are summarised in one line.
    """
    root = zarr.open_group(
        open_zarr_store(store, mode="r", storage_options=storage_options), mode="r",
        use_consolidated=False,  # each scan's current status, not the last consolidation
    )  # fmt: skip
    view = Tree(f"[bold]{store}[/bold]")
    for component, component_group in sorted(root.groups()):
        if not isinstance(component_group, zarr.Group) or component == "medirec":
            continue
        branch = view.add(f"[bold]{component}[/bold]")
        shown = hidden = 0
        for path, scan in _scans(component_group):
            if shown >= max_scans:
                hidden += 1
                continue
            array = scan["0"]
            status = get_bonemet_attrs(scan).get("status", "?")
            style = _STATUS_STYLE.get(status, "white")
            shards = array.shards or array.chunks
            n_shards = -(-array.shape[0] // shards[0])
            branch.add(
                f"{path}  {array.shape} {array.dtype}  {n_shards} shard(s)  "
                f"[{style}]{status}[/{style}]"
            )
            shown += 1
        if hidden:
            branch.add(f"... and {hidden} more scans")
    if "medirec" in root:
        records = root["medirec"]
        n = get_bonemet_attrs(records).get("n_records", "?")
        view.add(f"[bold]medirec[/bold]  {n} records x {len(list(records.array_keys()))} arrays")
    return view


def _scans(group: zarr.Group, prefix: str = ""):
    for name, child in sorted(group.groups()):
        path = f"{prefix}{name}"
        if "0" in child and "slice_hash" in child:
            yield path, child
        else:
            yield from _scans(child, path + "/")
