"""The ``reconstruct`` stage: FDK of every selected projection scan into a ``recon_ct`` group.

Reads ``rotation_xray/{mouse}/both/week{k}``, writes ``recon_ct/{mouse}/both/week{k}``: the
NRecon-like uint8 volume as image ``0`` (one shard per z-slab, each written by the task that
reconstructs it) and, with ``keep_float``, the float32 attenuation beside it.  The grid and the
grey window follow what NRecon used for the published reconstruction of the same scan when it
is known (its ``.log``, recorded by ``convert`` with the projections, or a converted Recon-CT
group): the same voxels, and grey 75 meaning what it means in the published volumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.base import tokenize

from bonemet_dask import _backend
from bonemet_dask.geometry import VolumeGrid
from bonemet_dask.io.scans import ScanRef
from bonemet_dask.io.skyscan_log import format_skyscan_log, nrecon_reference, parse_skyscan_log
from bonemet_dask.io.store import ImageLayout
from bonemet_dask.kernels.intensity import to_uint8
from bonemet_dask.ops.engine import UnitContext, run_declared
from bonemet_dask.ops.reconstruct import (
    WINDOWS,
    default_grid,
    geometry_from_attrs,
    reconstruct,
    slab_slices_in_shard,
)
from bonemet_dask.ops.stage import Output, Product, Stage, StageFailure, StageReport, setting

__all__ = ["Reconstruct", "reconstruct_store"]

logger = logging.getLogger(__name__)

WINDOW_FROM_LOG = "NRecon .log (Minimum/Maximum for CS to Image Conversion)"


@dataclass(frozen=True, kw_only=True)
class Reconstruct(Stage, name="reconstruct", reads="rotation_xray", writes="recon_ct"):
    """Cone-beam FDK (Parker weights for a short scan) of every selected projection scan."""

    filter: str = setting("hamming", f"Ramp window: {', '.join(WINDOWS)}.")
    window: tuple[float, float] | None = setting(
        None, "Attenuation (1/mm) at grey 0 and 255; default NRecon's (.log).", cli=False
    )
    keep_float: bool = setting(False, "Also store the float32 attenuation.")
    backend: str = setting(  # both backends agree within float tolerance: not fingerprinted
        "auto", "auto (CuPy on GPU workers, else numpy), numpy or cupy.", fingerprint=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.filter not in WINDOWS:
            raise ValueError(f"filter={self.filter!r} is not one of {', '.join(WINDOWS)}")
        if self.backend not in _backend.BACKENDS:
            raise ValueError(
                f"backend={self.backend!r} is not one of {', '.join(_backend.BACKENDS)}"
            )
        window = self.window
        if window is not None:
            if not (len(window) == 2 and float(window[1]) > float(window[0])):
                raise ValueError(f"window={window!r} must be (minimum, maximum), maximum larger")
            object.__setattr__(self, "window", (float(window[0]), float(window[1])))

    def outputs(self, scans: list[ScanRef]) -> list[Output]:
        """One ``recon_ct`` hindlimb volume per projection scan."""
        return [self.output_for(scan, side="both") for scan in scans if scan.side == "both"]

    def reference(self, output: Output, context: UnitContext) -> dict[str, Any]:
        """The NRecon reference of a scan: recorded with its projections, or a converted group."""
        scan = output.inputs["input"]
        recorded = scan.attrs.get("nrecon")
        if recorded:
            return recorded
        for _, root in context.roots.reading_order():
            group = root.get(output.path)
            if group is None:
                continue
            attrs = dict(group.attrs.get("bonemet", {}))
            if (attrs.get("provenance") or {}).get("stage", "convert") != "convert":
                continue  # our own earlier output: its grid is no evidence of NRecon's
            log = (attrs.get("source") or {}).get("log")
            parsed = parse_skyscan_log(format_skyscan_log(log)) if log else None
            return nrecon_reference(parsed, group["0"].shape) or {}
        return {}

    def identity(self, output: Output, context: UnitContext) -> dict[str, Any]:
        """The grid and window the volume will have (they change every voxel)."""
        reference = self.reference(output, context)
        return {
            "shape": reference.get("shape"),
            "window": list(self.window or ()) or reference.get("window_per_mm"),
        }

    def build(self, output: Output, context: UnitContext) -> Product:
        """The lazy FDK volume, windowed, one z-slab per shard."""
        node = context.open(output.inputs["input"])
        projections = node["image"].assign_attrs(bonemet=dict(node.attrs))
        try:
            geometry = geometry_from_attrs(projections.attrs)
        except ValueError as err:
            raise StageFailure(f"{output.inputs['input'].path}: {err}") from None
        reference = self.reference(output, context)
        shape = reference.get("shape")
        grid = VolumeGrid(tuple(shape), geometry.voxel_size) if shape else default_grid(geometry)
        layout = ImageLayout.default_for(
            "ct", grid.shape, "uint8", voxel_size_um=geometry.voxel_size * 1000,
            slices_per_shard=self.slices_per_shard,
        )  # fmt: skip
        slab = slab_slices_in_shard(layout.slices_per_shard, grid, geometry)
        volume = reconstruct(projections, geometry, filter=self.filter, grid=grid,
                             slab_slices=slab, backend=self.backend)  # fmt: skip
        window, source = self._window(output, reference, volume)
        lo, hi = window
        grey = volume.data.map_blocks(
            to_uint8, lo, hi, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8),
            name="fdk-window-" + tokenize(volume.data.name, lo, hi),
        )  # fmt: skip
        arrays, extras = {"0": grey}, {}
        if self.keep_float:
            arrays["attenuation"] = volume.data
            extras["attenuation"] = {"dtype": "float32", "attributes": {"units": "1/mm"}}
        provenance = dict(volume.attrs["bonemet"]["provenance"])
        provenance.pop("stage", None)
        provenance.update(window_per_mm=[lo, hi], window_from=source, grid_shape=list(grid.shape))
        return Product(layout, arrays, {"provenance": provenance}, extras=extras)

    def _window(self, output, reference, volume) -> tuple[tuple[float, float], str]:
        if self.window:
            return self.window, "window parameter"
        if reference.get("window_per_mm"):
            return tuple(reference["window_per_mm"]), WINDOW_FROM_LOG
        recorded = ((output.resume or {}).get("provenance") or {}).get("window_per_mm")
        if recorded:  # resuming: the window the finished shards were written with
            return tuple(recorded), "0.1/99.9 percentiles of the volume"
        logger.warning(
            "%s: no NRecon window known (no Recon-CT .log); grey levels come from the 0.1 and "
            "99.9 percentiles, so threshold 75 may not mean what it means in BoneMet",
            output.path,
        )
        sample = np.asarray(volume.data[:: max(1, volume.shape[0] // 8)])
        lo, hi = np.percentile(sample, (0.1, 99.9))
        return (float(lo), float(hi)), "0.1/99.9 percentiles of the volume"


def reconstruct_store(store: Any, out: Any = None, **options: Any) -> StageReport:
    """FDK-reconstruct every selected ``rotation_xray`` scan into ``recon_ct`` groups.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        Store holding converted projections.
    out : str, os.PathLike or zarr Store, optional
        Where the volumes go (default ``store``).  A ``recon_ct`` group converted from the
        source (the published reconstruction) is refused unless ``overwrite=True``.
    **options
        ``mice`` and ``weeks`` (:class:`~bonemet_dask.selection.Selection` rules); the settings
        of :class:`Reconstruct` (``filter``, ``window``: attenuation at grey 0 and 255, default
        NRecon's from the Recon-CT ``.log``, else the volume's 0.1/99.9 percentiles with a
        warning; ``keep_float``, ``backend``, ``slices_per_shard``); and the engine's
        (``overwrite``, ``client``, ``concurrency``, ``compute``, ``storage_options``,
        ``progress``: :func:`~bonemet_dask.ops.engine.run_stage`).

    Returns
    -------
    StageReport
        Or, with ``compute=False``, a ``dask.delayed`` that writes everything and returns it.
    """
    return run_declared(Reconstruct, store, out, **options)
