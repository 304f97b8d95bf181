"""The ``segment`` stage: both tibiae of every selected hindlimb volume, as ``seg_ct`` groups.

Reads ``recon_ct/{mouse}/both/week{k}`` (a reconstruction of ours, or the published Recon-CT
converted from PNGs), writes ``seg_ct/{mouse}/{left,right}/week{k}``: the greyscale crop as
image ``0`` (as the published Seg-CT), the bone mask as the OME-Zarr label image ``labels/mask``
(array ``labels/mask/0``, uint8, 1 = bone of this tibia and fibula; same layout as ``0``; read
it with :func:`bonemet_dask.io.labels.mask_array`, or as ``mask`` in ``open_store``), and
``crop_box`` (``lo``/``hi`` voxel indices in the reconstruction), ``threshold``, ``knee_slice``
in the group's ``bonemet`` attributes.  One task
writes one shard of both arrays, then its done-marker (:mod:`bonemet_dask.ops.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bonemet_dask.io.labels import MASK_LABEL, MASK_LABEL_COLOURS, label_array_path, label_extra
from bonemet_dask.io.scans import ScanRef
from bonemet_dask.io.store import read_ome_scale
from bonemet_dask.ops.engine import UnitContext, run_declared
from bonemet_dask.ops.segment import SIDES_BY_X, SegmentationError, segment_tibiae
from bonemet_dask.ops.stage import Output, Product, Stage, StageFailure, StageReport, setting

__all__ = ["MASK_ATTRIBUTES", "Segment", "segment_store"]

MASK_ATTRIBUTES = {"bonemet": {"kind": "mask", "values": {"0": "other", "1": "bone"}}}
"""Attributes of the mask array (``labels/mask/0``) of a ``seg_ct`` group."""


@dataclass(frozen=True, kw_only=True)
class Segment(Stage, name="segment", reads="recon_ct", writes="seg_ct"):
    """Crop both tibiae (fibula kept, cut below the knee) with their bone masks."""

    threshold: int = setting(75, "Bone threshold, grey levels 1..255.")
    margin_um: float = setting(300.0, "Margin around each tibia's box, micrometres.")
    binning: int = setting(4, "Bin edge (voxels) of the copy the bones are found on.")
    knee_level: str = setting(
        "edge", "Knee cut: 'edge' (just above the tibial plateau) or 'bottom' (joint floor)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.threshold, bool) or not 1 <= int(self.threshold) <= 255:
            raise ValueError(f"threshold={self.threshold!r} must be a grey level in 1..255")
        if not float(self.margin_um) >= 0:
            raise ValueError(f"margin_um={self.margin_um!r} must be >= 0 micrometres")
        if self.knee_level not in ("edge", "bottom"):
            raise ValueError(f"knee_level={self.knee_level!r} is not 'edge' or 'bottom'")

    def outputs(self, scans: list[ScanRef]) -> list[Output]:
        """A left and a right tibia per hindlimb volume."""
        return [self.output_for(scan, side=side)
                for scan in scans if scan.side == "both" for side in SIDES_BY_X]  # fmt: skip

    def build(self, output: Output, context: UnitContext) -> Product:
        """The crop of one side, and its mask, from the volume's one segmentation."""
        scan = output.inputs["input"]
        key = ("segment", scan.path)
        if key not in context.memo:  # one segmentation serves both sides
            context.memo[key] = self._segment(scan, context)
        crops = context.memo[key]
        if isinstance(crops, StageFailure):
            raise crops
        crop = crops[output.side]
        scale = read_ome_scale(context.roots.root(scan.where)[scan.path]) or (1.0, 1.0, 1.0)
        layout = self.output_layout(crop.shape, scale)
        attrs = dict(crop.attrs["bonemet"])
        attrs["provenance"] = {"operation": attrs["provenance"]["operation"]}
        mask = label_array_path(MASK_LABEL)  # the OME-Zarr label image labels/mask
        return Product(
            layout,
            {"0": crop.data, mask: crop["mask"].data.astype(np.uint8)},
            attrs,
            extras={mask: label_extra(MASK_LABEL_COLOURS, attributes=MASK_ATTRIBUTES)},
        )

    def _segment(self, scan: ScanRef, context: UnitContext) -> Any:
        image = context.open(scan)["image"]
        scale = read_ome_scale(context.roots.root(scan.where)[scan.path]) or (1.0, 1.0, 1.0)
        try:
            return segment_tibiae(image, int(self.threshold), margin_um=self.margin_um,
                                  binning=self.binning, knee_level=self.knee_level,
                                  voxel_size_um=scale[2])  # fmt: skip
        except SegmentationError as err:
            return StageFailure(str(err))


def segment_store(store: Any, out: Any = None, **options: Any) -> StageReport:
    """Segment every selected ``recon_ct/{mouse}/both/week{k}`` scan into ``seg_ct`` groups.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        Store holding hindlimb reconstructions (read from ``out`` first).
    out : str, os.PathLike or zarr Store, optional
        Where ``seg_ct/{mouse}/{left,right}/week{k}`` go (default ``store``).
    **options
        ``mice`` and ``weeks``; the settings of :class:`Segment` (``threshold``, ``margin_um``,
        ``knee_level``, ``binning``, ``slices_per_shard``, as in
        :func:`~bonemet_dask.ops.segment.segment_tibiae`); the engine's (``overwrite``,
        ``client``, ``concurrency``, ``compute``, ``storage_options``, ``progress``).
        Without ``overwrite``, groups of the published Seg-CT are refused, not replaced.

    Returns
    -------
    StageReport
        Scans that cannot be segmented (one leg, no bone) are ``failed`` with the reason; the
        run goes on.
    """
    return run_declared(Segment, store, out, **options)
