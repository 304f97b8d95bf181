"""Configuration of the synthetic BoneMet generator: sizes, scanner geometry, grids, intensities."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Final

import numpy as np

from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.naming import COMPONENTS

SIZES: Final[dict[str, float]] = {"tiny": 1 / 64, "small": 1 / 16, "medium": 1 / 4, "full": 1.0}
"""Linear scale of each size preset relative to the published BoneMet image sizes."""

# Published sizes (DESIGN.md section 1), (rows, cols) or (slices, height, width).
PUBLISHED_DETECTOR: Final = (2688, 4032)
PUBLISHED_RECON: Final = (2685, 2428, 2588)
PUBLISHED_REGIST: Final = (1538, 539, 509)
PUBLISHED_ROI_SLICES: Final = 300

# SkyScan 1276-like geometry at full size: 35 um camera pixels, magnification 3.5 -> 10 um voxels.
# The horizontal half fan is 13.5 deg, inside the 13.6 deg slack of a 260 x 0.8 deg short scan.
SOURCE_TO_OBJECT_MM: Final = 84.0
SOURCE_TO_DETECTOR_MM: Final = 294.0
CAMERA_PIXEL_MM: Final = 0.035
N_PROJECTIONS: Final = 260
ROTATION_STEP_DEG: Final = 0.8

AIR_COUNTS: Final = 40000.0
"""Mean detector counts of an unattenuated ray (flat field), before Poisson noise."""
WINDOW_MAX_PER_MM: Final = 0.11
"""Attenuation mapped to grey 255 in the 8-bit products (NRecon's CS-to-image maximum), 1/mm."""
GREY_NOISE_SIGMA: Final = 2.0
"""Standard deviation of the white noise of ``products="voxelised"`` image products, grey."""
PRODUCTS: Final = ("reconstructed", "voxelised")
"""How the image products are made: like a reconstruction (the phantom with FDK's measured
blur and noise, :mod:`bonemet_dask.synth.imaging`; the default), or the phantom voxelised with
white grey noise (idealised: sharp edges a reconstruction never has; at ``tiny`` size, where
the blur erases the fibula, it keeps the anatomy for plumbing tests)."""
REGIST_TOP_Z_MM: Final = 0.1
"""Height of Regist-CT slice 0 above the tibial plateau, side frame, mm."""
REGIST_CENTRE_LATERAL_MM: Final = 0.35
"""Lateral shift of the Regist-CT grid centre from the tibial axis (room for the fibula), mm."""
SEG_MARGIN_MM: Final = 0.3
"""Margin around the tibia + fibula bounding box of a Seg-CT crop, mm."""


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Parameters
    ----------
    mice : int
        Number of animals; ids count up from ``first_mouse_id``.
    weeks : int
        Weekly time points per animal (weeks ``0 .. weeks-1``).
    size : {"tiny", "small", "medium", "full"}
        Image size preset: 1/64, 1/16, 1/4 or 1 times the published sizes (linear).
    seed : int
        Seed of everything random: anatomy, poses, noise, naming variants.
    scale : float or None
        Overrides the preset's linear scale (e.g. 1/32); None uses the preset.
    variants : bool
        Spell folders with randomly chosen published variants (``Rotation-X-Ray``, ``RoI-CT``,
        ``851 Left Tibia``, ``Week 3``...) instead of the canonical spelling.
    components : tuple of str
        Which components to write (default all five).
    first_mouse_id : int
        Id of the first animal (BoneMet ids are 3-digit integers such as 851).
    png_level : int
        zlib level of the written PNGs (1 fastest; the content is identical at any level).
    products : {"reconstructed", "voxelised"}
        How the image products (Recon-, Seg-, Regist-, RoI-CT) are made: see :data:`PRODUCTS`.
    """

    mice: int = 2
    weeks: int = 3
    size: str = "tiny"
    seed: int = 0
    scale: float | None = None
    variants: bool = False
    components: tuple[str, ...] = COMPONENTS
    first_mouse_id: int = 851
    png_level: int = 1
    products: str = "reconstructed"
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size={self.size!r} is not one of {', '.join(map(repr, SIZES))}")
        if self.products not in PRODUCTS:
            raise ValueError(
                f"products={self.products!r} is not one of {', '.join(map(repr, PRODUCTS))}"
            )
        if self.mice < 1 or self.weeks < 1:
            raise ValueError(f"mice={self.mice} and weeks={self.weeks} must both be >= 1")
        if self.scale is not None and not 0 < self.scale <= 1:
            raise ValueError(f"scale={self.scale} must be in (0, 1]")
        unknown = set(self.components) - set(COMPONENTS)
        if unknown:
            raise ValueError(
                f"components={sorted(unknown)} are unknown; choose from {', '.join(COMPONENTS)}"
            )
        object.__setattr__(self, "components", tuple(self.components))

    @property
    def linear_scale(self) -> float:
        """Image size relative to the published sizes."""
        return SIZES[self.size] if self.scale is None else float(self.scale)

    @property
    def mouse_ids(self) -> list[str]:
        """The animal ids, as text."""
        return [str(self.first_mouse_id + n) for n in range(self.mice)]

    def geometry(self) -> ConeGeometry:
        """Scanner geometry at this size (same physical scanner, coarser detector pixels)."""
        f = self.linear_scale
        rows, cols = (max(8, round(n * f)) for n in PUBLISHED_DETECTOR)
        return ConeGeometry(
            source_to_object=SOURCE_TO_OBJECT_MM,
            source_to_detector=SOURCE_TO_DETECTOR_MM,
            detector_pixel=CAMERA_PIXEL_MM * (PUBLISHED_DETECTOR[1] / cols),
            n_rows=rows,
            n_cols=cols,
            angles_deg=np.arange(N_PROJECTIONS) * ROTATION_STEP_DEG,
            optical_axis_row=float(rows // 2),  # an integer row, as SkyScan logs state it
        )

    @property
    def voxel_size(self) -> float:
        """Reconstructed voxel edge, mm (the detector pitch at the rotation axis)."""
        return self.geometry().voxel_size

    def recon_grid(self) -> VolumeGrid:
        """Hindlimb reconstruction grid, centred on the rotation axis."""
        f = self.linear_scale
        return VolumeGrid(tuple(max(4, round(n * f)) for n in PUBLISHED_RECON), self.voxel_size)

    def regist_grid(self, side: str) -> VolumeGrid:
        """Registered tibia grid in a leg's side frame (slice 0 just above the tibial plateau)."""
        f = self.linear_scale
        shape = tuple(max(4, round(n * f)) for n in PUBLISHED_REGIST)
        h = self.voxel_size
        lateral = -REGIST_CENTRE_LATERAL_MM if side == "left" else REGIST_CENTRE_LATERAL_MM
        return VolumeGrid(shape, h, (lateral, 0.0, REGIST_TOP_Z_MM - (shape[0] - 1) / 2 * h))

    @property
    def detector_subpixels(self) -> int:
        """Rays per detector pixel edge: 2 on downscaled detectors, 1 at half size and above.

        Downscaled detector pixels are coarse enough for edge aliasing to show.
        """
        return 2 if self.linear_scale < 0.5 else 1

    @property
    def voxel_supersample(self) -> int:
        """Point samples per voxel edge of the image products (partial volume on coarse grids)."""
        return 2 if self.linear_scale < 0.5 else 1

    @property
    def roi_slices(self) -> int:
        """Slices in a RoI-CT stack."""
        return max(2, round(PUBLISHED_ROI_SLICES * self.linear_scale))

    def describe(self) -> dict:
        """JSON-ready description (for the truth sidecar and logs)."""
        out = asdict(self)
        out.pop("extra")
        out["components"] = list(self.components)
        out["linear_scale"] = self.linear_scale
        return out
