"""bonemet-dask: BoneMet micro-CT PNG stacks to labelled, sharded Zarr, processed as Dask graphs.

>>> import bonemet_dask as bm
>>> catalog = bm.scan_source("BoneMet/")          # doctest: +SKIP
>>> report = bm.convert("BoneMet/", "bonemet.zarr") # doctest: +SKIP
>>> tree = bm.open_store("bonemet.zarr")           # doctest: +SKIP
>>> client = bm.connect()                         # doctest: +SKIP

Heavy modules (dask.distributed, numba kernels) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "scan_source": ("bonemet_dask.io.catalog", "scan_source"),
    "Catalog": ("bonemet_dask.io.catalog", "Catalog"),
    "Stack": ("bonemet_dask.io.catalog", "Stack"),
    "Problem": ("bonemet_dask.io.catalog", "Problem"),
    "parse_skyscan_log": ("bonemet_dask.io.skyscan_log", "parse_skyscan_log"),
    "read_skyscan_log": ("bonemet_dask.io.skyscan_log", "read_skyscan_log"),
    "connect": ("bonemet_dask.cluster", "connect"),
    "convert": ("bonemet_dask.ops.convert", "convert"),
    "verify": ("bonemet_dask.ops.verify", "verify"),
    "export": ("bonemet_dask.ops.export", "export"),
    "open_store": ("bonemet_dask.io.xr", "open_store"),
    "consolidate_store": ("bonemet_dask.io.consolidate", "consolidate_store"),
    "stack": ("bonemet_dask.io.xr", "stack"),
    "ConeGeometry": ("bonemet_dask.geometry", "ConeGeometry"),
    "ParallelGeometry": ("bonemet_dask.geometry", "ParallelGeometry"),
    "reconstruct": ("bonemet_dask.ops.reconstruct", "reconstruct"),
    "to_uint8": ("bonemet_dask.ops.reconstruct", "to_uint8"),
    "reconstruct_store": ("bonemet_dask.ops.reconstruct_store", "reconstruct_store"),
    "segment_tibiae": ("bonemet_dask.ops.segment", "segment_tibiae"),
    "segment_store": ("bonemet_dask.ops.segment_store", "segment_store"),
    "composite": ("bonemet_dask.ops.composite", "composite"),
    "find_tf_junction": ("bonemet_dask.ops.roi", "find_tf_junction"),
    "Junction": ("bonemet_dask.ops.roi", "Junction"),
    "drop_small_changes": ("bonemet_dask.ops.composite", "drop_small_changes"),
    "crop_roi": ("bonemet_dask.ops.roi", "crop_roi"),
    "bone_metrics": ("bonemet_dask.ops.metrics", "bone_metrics"),
    "metrics_table": ("bonemet_dask.ops.metrics", "metrics_table"),
    "write_metrics_csv": ("bonemet_dask.ops.metrics", "write_metrics_csv"),
    "composite_store": ("bonemet_dask.ops.composite_store", "composite_store"),
    "preview": ("bonemet_dask.preview", "preview"),
    "RigidTransform": ("bonemet_dask.transform", "RigidTransform"),
    "register": ("bonemet_dask.ops.register", "register"),
    "resample": ("bonemet_dask.ops.resample", "resample"),
    "register_store": ("bonemet_dask.ops.register_store", "register_store"),
    "run": ("bonemet_dask.ops.run", "run"),
    "Selection": ("bonemet_dask.selection", "Selection"),
    "StageReport": ("bonemet_dask.ops.stage", "StageReport"),
    "VolumeGrid": ("bonemet_dask.geometry", "VolumeGrid"),
    "SynthConfig": ("bonemet_dask.synth", "SynthConfig"),
    "synth": ("bonemet_dask.synth", None),
    "naming": ("bonemet_dask.naming", None),
    "ml": ("bonemet_dask.ml", None),
}

__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:
    from bonemet_dask import ml, naming, synth
    from bonemet_dask.cluster import connect
    from bonemet_dask.geometry import ConeGeometry, ParallelGeometry, VolumeGrid
    from bonemet_dask.io.catalog import Catalog, Problem, Stack, scan_source
    from bonemet_dask.io.consolidate import consolidate_store
    from bonemet_dask.io.skyscan_log import parse_skyscan_log, read_skyscan_log
    from bonemet_dask.io.xr import open_store, stack
    from bonemet_dask.ops.composite import composite, drop_small_changes
    from bonemet_dask.ops.composite_store import composite_store
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.ops.export import export
    from bonemet_dask.ops.metrics import bone_metrics, metrics_table, write_metrics_csv
    from bonemet_dask.ops.reconstruct import reconstruct, to_uint8
    from bonemet_dask.ops.reconstruct_store import reconstruct_store
    from bonemet_dask.ops.register import register
    from bonemet_dask.ops.register_store import register_store
    from bonemet_dask.ops.resample import resample
    from bonemet_dask.ops.roi import Junction, crop_roi, find_tf_junction
    from bonemet_dask.ops.run import run
    from bonemet_dask.ops.segment import segment_tibiae
    from bonemet_dask.ops.segment_store import segment_store
    from bonemet_dask.ops.stage import StageReport
    from bonemet_dask.ops.verify import verify
    from bonemet_dask.preview import preview
    from bonemet_dask.selection import Selection
    from bonemet_dask.synth import SynthConfig
    from bonemet_dask.transform import RigidTransform


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'bonemet_dask' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
