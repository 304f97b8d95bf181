"""Dry-run arithmetic for a conversion: shards (= tasks), stored objects, core-hours.

Works from a catalog (what is on disk) or from the published BoneMet counts (``profile="full"``,
DESIGN.md section 1), so the 67.87 TB job can be sized before a byte is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bonemet_dask.io.store import ImageLayout

if TYPE_CHECKING:
    import pandas as pd

    from bonemet_dask.io.catalog import Catalog

COORDINATE_OBJECTS = 6
"""The coordinate arrays of a scan group (:mod:`bonemet_dask.io.coords`): 3 axes, each a
``zarr.json`` and one chunk."""

# Published BoneMet counts (DESIGN.md section 1, the paper's Table 1): scans, typical stack shape
# (n, height, width), bytes of PNG.  The 5,105 hindlimb scans give 10,210 tibiae.
PUBLISHED: dict[str, tuple[int, tuple[int, int, int], str, float]] = {
    "rotation_xray": (5105, (260, 2688, 4032), "uint16", 20.93e12),
    "recon_ct": (5105, (2685, 2428, 2588), "uint8", 45.23e12),
    "seg_ct": (10210, (1700, 900, 700), "uint8", 1.53e12),
    "regist_ct": (10210, (1538, 539, 509), "uint8", 0.18e12),
    "roi_ct": (10210, (300, 539, 509), "uint8", 8.0e9),
}


@dataclass(frozen=True)
class ComponentPlan:
    """Planned work for one component."""

    component: str
    scans: int
    png_bytes: float
    shards: int
    objects: int
    core_hours: float

    @property
    def mb_per_object(self) -> float:
        """Source megabytes per stored object (DESIGN.md budget: at least 64)."""
        return self.png_bytes / 1e6 / max(self.objects, 1)


def scan_objects(n_shards: int, *, images: int = 1, labels: int = 0) -> int:
    """Stored objects of one scan group, as the conversion and the stages write it.

    Each image and label array holds one object per shard, and ``slice_hash`` one per shard
    (the shard's done-marker); ``slice_index`` is one chunk; every group and array has its
    ``zarr.json`` (a label is a group and its array ``0``, under one ``labels`` group); the
    coordinate arrays add :data:`COORDINATE_OBJECTS`.  ``tests/ops/test_plan_chain.py`` counts
    the files of a real run against it.

    Parameters
    ----------
    n_shards : int
        Shards of the scan's image (:attr:`ImageLayout.n_shards`).
    images : int
        Image arrays of the group: ``0``, and the composite's ``greyscale``.
    labels : int
        OME-Zarr label images under ``labels/`` (the mask, the composite).
    """
    shards = (images + labels + 1) * n_shards + 1
    documents = 1 + images + 2 + (1 + 2 * labels if labels else 0)
    return shards + documents + COORDINATE_OBJECTS


def _kind(component: str) -> str:
    return "projections" if component == "rotation_xray" else "ct"


def _rate(kind: str) -> float:
    """PNG bytes converted per core-second (the packaged ``stage-rates.yaml``, BENCHMARKS.md)."""
    from bonemet_dask.ops.plan_chain import load_rates

    return load_rates().convert_mb_per_core_s[kind] * 1e6


def _scan_plan(kind: str, shape: tuple[int, int, int], dtype: str) -> tuple[int, int]:
    from bonemet_dask.ops.convert import default_slices_per_shard

    per_shard = default_slices_per_shard(kind, shape, dtype)
    layout = ImageLayout.default_for(
        kind, shape, dtype, voxel_size_um=1.0, slices_per_shard=per_shard
    )
    return layout.n_shards, scan_objects(layout.n_shards)


def plan_catalog(catalog: Catalog) -> list[ComponentPlan]:
    """Plan the conversion of every convertible stack of a catalog, per component."""
    totals: dict[str, list[float]] = {}
    for stack in catalog.stacks:
        if not stack.ok or stack.shape is None or stack.dtype is None:
            continue
        shards, objects = _scan_plan(_kind(stack.component), stack.shape, stack.dtype)
        row = totals.setdefault(stack.component, [0, 0.0, 0, 0])
        row[0] += 1
        row[1] += stack.nbytes
        row[2] += shards
        row[3] += objects
    return [
        ComponentPlan(c, int(n), b, int(s), int(o), b / _rate(_kind(c)) / 3600)
        for c, (n, b, s, o) in totals.items()
    ]


def plan_published() -> list[ComponentPlan]:
    """Plan the conversion of the whole published dataset from its counts."""
    out = []
    for component, (scans, shape, dtype, png_bytes) in PUBLISHED.items():
        shards, objects = _scan_plan(_kind(component), shape, dtype)
        out.append(
            ComponentPlan(
                component,
                scans,
                png_bytes,
                scans * shards,
                scans * objects,
                png_bytes / _rate(_kind(component)) / 3600,
            )
        )
    return out


def plan_frame(plans: list[ComponentPlan]) -> pd.DataFrame:
    """The plans as a table with a total row."""
    import pandas as pd

    rows = [
        {
            "component": p.component,
            "scans": p.scans,
            "png_bytes": p.png_bytes,
            "shards_tasks": p.shards,
            "objects": p.objects,
            "mb_per_object": p.mb_per_object,
            "core_hours": p.core_hours,
        }
        for p in plans
    ]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        total = frame.drop(columns="component").sum()
        total["mb_per_object"] = total["png_bytes"] / 1e6 / max(total["objects"], 1)
        frame.loc[len(frame)] = {"component": "total", **total.to_dict()}
    return frame
