"""Where ``export`` writes each store group: folder, file names and ``.log`` (the naming rules).

See :mod:`bonemet_dask.ops.export` for the rules; this module only decides names, it writes
nothing and reads only metadata and the small ``slice_index`` arrays.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from bonemet_dask import __version__
from bonemet_dask.io.scans import ScanRef, list_scans
from bonemet_dask.io.skyscan_log import format_skyscan_log
from bonemet_dask.io.store import read_ome_scale
from bonemet_dask.kernels.png_encode import PNG_DTYPES
from bonemet_dask.naming import (
    COMPONENTS,
    component_folder_name,
    parse_component,
    scan_folder_name,
    slice_file_name,
    week_folder_name,
)
from bonemet_dask.selection import Selection

__all__ = ["DATASET_FOLDER", "WHOLE_SCAN", "ExportTarget", "derived_log", "plan_export"]

logger = logging.getLogger(__name__)

DATASET_FOLDER: Final = "Imagery_Dataset"
"""The published folder above the component folders."""
WHOLE_SCAN: Final = frozenset({"rotation_xray", "recon_ct"})
"""Components whose derived files keep the store's slice index as their number."""


@dataclass(frozen=True)
class ExportTarget:
    """Where one store group goes: its folder under OUT, file names, ``.log``, shards."""

    group_path: str
    folder: str
    names: tuple[str, ...]
    log_name: str | None
    log: bytes | None
    derived: bool
    shards: tuple[tuple[int, int], ...]
    shape: tuple[int, int]
    dtype: str


def _safe_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not set("/\\\0") & set(name)


def _relative_folder(folder: str, component: str, sources: Sequence[str]) -> str | None:
    """A converted group's source folder relative to its source root (None: no safe answer)."""
    folder = folder.rstrip("/")
    found = []
    for source in sources:
        text = str(source)
        root = text.split("://", 1)[1] if "://" in text else os.path.abspath(text)
        root = root.rstrip("/")
        if root and folder.startswith(root + "/"):
            found.append(folder[len(root) + 1 :])
    if found:
        relative = min(found, key=len)  # the deepest recorded root above it
    else:
        parts = folder.split("/")
        hits = [i for i, part in enumerate(parts) if parse_component(part) == component]
        if not hits:
            return None
        first = hits[-1]
        if first and parts[first - 1].lower() == DATASET_FOLDER.lower():
            first -= 1
        relative = "/".join(parts[first:])
    return relative if all(_safe_name(p) for p in relative.split("/")) else None


def _published_folder(component: str, mouse: str, side: str, week: int) -> str:
    return "/".join((DATASET_FOLDER, component_folder_name(component),
                     scan_folder_name(component, mouse, side), week_folder_name(week)))  # fmt: skip


def _default_log_name(component: str, mouse: str) -> str:
    return f"{mouse}_rec.log" if component == "recon_ct" else f"{mouse}.log"


def _source_names(source: dict[str, Any], indices: np.ndarray) -> list[str] | None:
    template, names = source.get("file_name"), source.get("file_names")
    if isinstance(template, str):
        try:
            return [template.format(index=int(i)) for i in indices]
        except (KeyError, IndexError, ValueError):
            return None
    if isinstance(names, list) and len(names) == len(indices):
        return [str(n) for n in names]
    return None


def derived_log(
    group_path: str,
    attrs: dict[str, Any],
    shape: tuple[int, int, int],
    voxel_um: float,
    numbers: Sequence[int],
    indices: Sequence[int],
) -> bytes:
    """The ``.log`` written beside a stage's product: what it is, from what, how.

    Parameters
    ----------
    group_path : str
        The store group.
    attrs : dict
        Its ``bonemet`` attributes (provenance, legend, fingerprint).
    shape : tuple of int
        ``(slices, height, width)``.
    voxel_um : float
        Voxel size in x (micrometres).
    numbers, indices : sequence of int
        The exported file numbers and the store's ``slice_index``.

    Returns
    -------
    bytes
        A SkyScan-style log (:func:`~bonemet_dask.io.skyscan_log.format_skyscan_log`).
    """
    provenance = attrs.get("provenance") or {}
    stage = str(provenance.get("stage", "unknown"))
    inputs = provenance.get("inputs") or {}
    version = str(provenance.get("version", __version__))
    parameters = json.dumps(provenance.get("parameters") or {}, sort_keys=True)
    reconstruction: dict[str, object] = {
        "Image Pixel Size (um)": float(voxel_um),
        "Result Image Width (pixels)": int(shape[2]),
        "Result Image Height (pixels)": int(shape[1]),
        "Sections Count": int(shape[0]),
        "First Section": int(numbers[0]) if len(numbers) else 0,
        "Last Section": int(numbers[-1]) if len(numbers) else 0,
        "Source Dataset": "; ".join(f"{k}={v}" for k, v in inputs.items()) or "unknown",
        "Processing": f"bonemet-dask {stage} {parameters}",
    }
    legend = attrs.get("legend")
    if isinstance(legend, dict):
        reconstruction["Legend"] = ", ".join(f"{k} {v}" for k, v in legend.items())
    own = {
        "Store Group": group_path,
        "Stage": stage,
        "Version": version,
        "Fingerprint": str(attrs.get("fingerprint", "")),
        "Store Slice Index": f"{int(indices[0])}..{int(indices[-1])}" if len(indices) else "",
    }
    return format_skyscan_log(
        {"System": {"Program": f"bonemet-dask {version}"}, "Reconstruction": reconstruction,
         "bonemet-dask": own}
    )  # fmt: skip


def _target(root: Any, scan: ScanRef, sources: Sequence[str]) -> ExportTarget | str:
    """The target of one complete group, or why it cannot be exported."""
    group = root[scan.path]
    array = group.get("0")
    if array is None or array.ndim != 3:
        return "no 3-D image array '0'"
    if array.dtype.name not in PNG_DTYPES:
        return f"array '0' is {array.dtype}, which has no PNG form ({', '.join(PNG_DTYPES)})"
    n, height, width = array.shape
    indices = group["slice_index"][:] if "slice_index" in group else np.arange(n)
    attrs, mouse = scan.attrs, scan.mouse
    source = attrs.get("source")
    try:
        published = _published_folder(scan.component, mouse, scan.side, scan.week)
        if isinstance(source, dict) and source.get("folder"):
            derived = False
            folder = _relative_folder(str(source["folder"]), scan.component, sources)
            names = _source_names(source, indices)
            if names is None:
                names = [slice_file_name(scan.component, mouse, scan.side, int(i)) for i in indices]
            log_name = source.get("log_name") or _default_log_name(scan.component, mouse)
            log = format_skyscan_log(source["log"]) if source.get("log") else None
        else:
            derived, folder = True, None
            numbers = indices if scan.component in WHOLE_SCAN else np.arange(n)
            names = [slice_file_name(scan.component, mouse, scan.side, int(i)) for i in numbers]
            log_name = _default_log_name(scan.component, mouse)
            scale = read_ome_scale(group) or (1.0, 1.0, 1.0)
            log = derived_log(scan.path, attrs, (n, height, width), scale[-1], numbers, indices)
    except ValueError as err:  # a side a component cannot have, an unwritable log value
        return str(err)
    if not all(_safe_name(name) for name in (*names, log_name)) or len(set(names)) != n:
        logger.warning("%s: recorded file names are unusable; using the published naming",
                       scan.path)  # fmt: skip
        names = [slice_file_name(scan.component, mouse, scan.side, int(i)) for i in indices]
        log_name = _default_log_name(scan.component, mouse)
    step = (array.shards or array.chunks)[0]
    shards = tuple((s, min(s + step, n)) for s in range(0, n, step))
    return ExportTarget(scan.path, folder or published, tuple(names), log_name if log else None,
                        log, derived, shards, (height, width), array.dtype.name)  # fmt: skip


def plan_export(
    root: Any, selection: Selection, *, where: str = "STORE"
) -> tuple[list[ExportTarget], list[tuple[str, str]]]:
    """The targets of the selected groups, and the selected groups that cannot be exported.

    Parameters
    ----------
    root : zarr.Group
        The store's root group.
    selection : Selection
        Which groups.
    where : str
        How messages name the store.

    Returns
    -------
    targets : list of ExportTarget
        Complete groups, in store order.
    skipped : list of tuple
        ``(group path, reason)``.

    Raises
    ------
    NothingSelectedError
        When the selection matches no group; the message lists what the store holds.
    """
    components = selection.components or COMPONENTS
    sources = root.attrs.get("bonemet", {}).get("sources", [])
    scans = [
        scan
        for component in components
        for scan in list_scans(root, component, selection)
        if selection.matches(week=scan.week)
    ]
    if not scans:
        every = Selection()
        held = [s for c in components for s in list_scans(root, c, every)] or [
            s for c in COMPONENTS for s in list_scans(root, c, every)
        ]
        what = "image" if selection.components is None else ", ".join(selection.components)
        selection.require(0, [(s.mouse, s.side, s.week) for s in held], what=f"{what} scans",
                          where=where)  # fmt: skip
    targets: list[ExportTarget] = []
    skipped: list[tuple[str, str]] = []
    for scan in scans:
        if scan.status != "complete":
            skipped.append((scan.path, f"status {scan.status!r}: finish it first (rerun the "
                                       "convert or stage that writes it)"))  # fmt: skip
            continue
        target = _target(root, scan, sources)
        if isinstance(target, str):
            skipped.append((scan.path, target))
        else:
            targets.append(target)
    return targets, skipped
