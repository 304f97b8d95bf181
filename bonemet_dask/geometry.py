"""Scanner and volume geometry: the one place the orientation conventions are defined.

Conventions (used by the synthetic generator, reconstruction and every test):

* World coordinates are millimetres.  The rotation axis is the world ``z`` axis, pointing up
  (proximal, towards the knee of a hanging hindlimb).
* At angle ``theta`` (degrees) the source sits at ``Rz(theta) @ (0, -SOD, 0)`` and the detector
  centre at ``Rz(theta) @ (0, SDD - SOD, 0)``, where ``Rz`` turns counter-clockwise seen from
  ``+z``.  Equivalently the specimen turns by ``-theta`` in a fixed beam, as on a SkyScan.
* Detector column index grows along ``Rz(theta) @ (1, 0, 0)``; row index grows downwards (``-z``),
  so row 0 is the top of the image, as in a PNG.
* A volume ``(slice, y, x)`` indexes voxel centres at ``x = cx + (j - (nx-1)/2) h``,
  ``y = cy + (i - (ny-1)/2) h`` and ``z = cz + ((nz-1)/2 - k) h``: slice 0 is the top (proximal)
  slice, image rows follow ``+y``, image columns ``+x``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bonemet_dask.io.skyscan_log import SkyScanLog


@dataclass(frozen=True)
class ConeGeometry:
    """Circular cone-beam geometry of a flat-panel micro-CT scan.

    Parameters
    ----------
    source_to_object : float
        Source to rotation axis distance (SkyScan ``Object to Source (mm)``), mm.
    source_to_detector : float
        Source to detector distance (SkyScan ``Camera to Source (mm)``), mm.
    detector_pixel : float
        Detector pixel pitch at the detector, mm (``Camera Pixel Size (um)`` times binning / 1000).
    n_rows, n_cols : int
        Detector rows and columns of one projection.
    angles_deg : numpy.ndarray
        Gantry angle of each projection, degrees, in acquisition order.
    cor_offset : float
        Column offset of the rotation axis' projection from the detector centre, pixels.
    optical_axis_row : float or None
        Row hit by the central ray (SkyScan ``Optical Axis (line)``); None means the centre row.
    calibration : Mapping or None
        How the values were read from a scanner's ``.log`` (stated and effective distances,
        the voxel size's origin, every key's decision; JSON-able), recorded in the
        reconstruction's provenance.  Not compared.
    """

    source_to_object: float
    source_to_detector: float
    detector_pixel: float
    n_rows: int
    n_cols: int
    angles_deg: np.ndarray = field(repr=False)
    cor_offset: float = 0.0
    optical_axis_row: float | None = None
    calibration: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.source_to_object < self.source_to_detector:
            raise ValueError(
                f"need 0 < source_to_object ({self.source_to_object}) < source_to_detector "
                f"({self.source_to_detector}); check the .log's Object/Camera to Source values"
            )
        if self.n_rows < 1 or self.n_cols < 1 or self.detector_pixel <= 0:
            raise ValueError(
                f"detector must have positive size and pitch, got {self.n_rows}x{self.n_cols} "
                f"pixels of {self.detector_pixel} mm"
            )
        object.__setattr__(self, "angles_deg", np.asarray(self.angles_deg, dtype=np.float64))

    @classmethod
    def from_skyscan_log(
        cls,
        log: SkyScanLog,
        *,
        n_projections: int | None = None,
        n_rows: int | None = None,
        n_cols: int | None = None,
        full_detector_columns: int | None = None,
    ) -> ConeGeometry:
        """The geometry a SkyScan acquisition ``.log`` describes, as NRecon reads it.

        The voxel is the log's calibrated ``Image Pixel Size``: the source to axis distance is
        derived from it (the stated one is kept in :attr:`calibration`).  Rotation direction,
        start angle, full 360-degree scans, a cropped detector and NRecon's ``Postalignment``
        set the angles and the axis column; connected (oversize) scans are refused.  Every
        decision: :func:`bonemet_dask.io.skyscan_geometry.read_geometry`.

        Parameters
        ----------
        log : SkyScanLog
            The acquisition ``.log`` (or NRecon's, which repeats its acquisition section).
        n_projections, n_rows, n_cols : int, optional
            Override the counts (e.g. from the PNG headers when the log lacks them).
        full_detector_columns : int, optional
            Columns of the uncropped detector at binning 1, for a ``Partial Width=ON`` scan
            (default: the ``bonemet.skyscan.full-detector-columns`` config, by scanner model).

        Raises
        ------
        ValueError
            Naming each key the log lacks and that no argument supplied;
            :class:`~bonemet_dask.io.skyscan_log.SkyScanLogError` (a ValueError) naming each
            malformed, unphysical or unsupported value (``Object to Source (mm)='0' must be >
            0``, ``Number of connected scans='2'``...) with its fix.
        """
        from bonemet_dask.io.skyscan_geometry import read_geometry

        return read_geometry(
            log,
            n_projections=n_projections,
            n_rows=n_rows,
            n_cols=n_cols,
            full_detector_columns=full_detector_columns,
        ).geometry

    @property
    def magnification(self) -> float:
        """Detector distance over object distance."""
        return self.source_to_detector / self.source_to_object

    @property
    def voxel_size(self) -> float:
        """Detector pitch projected onto the rotation axis, mm (SkyScan ``Image Pixel Size``)."""
        return self.detector_pixel / self.magnification

    @property
    def centre_row(self) -> float:
        """Row index of the central ray."""
        return (self.n_rows - 1) / 2 if self.optical_axis_row is None else self.optical_axis_row

    @property
    def centre_col(self) -> float:
        """Column index where the rotation axis projects."""
        return (self.n_cols - 1) / 2 + self.cor_offset

    @property
    def fan_half_angle_deg(self) -> float:
        """Half of the horizontal fan angle covered by the detector, degrees."""
        half_width = max(self.centre_col, self.n_cols - 1 - self.centre_col) + 0.5
        return float(
            np.degrees(np.arctan(half_width * self.detector_pixel / self.source_to_detector))
        )

    def view_frame(self, angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Source, centre of pixel (0, 0), column step and row step of one view (world mm)."""
        theta = np.deg2rad(angle_deg)
        c, s = np.cos(theta), np.sin(theta)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        source = rot @ np.array([0.0, -self.source_to_object, 0.0])
        det_centre = rot @ np.array([0.0, self.source_to_detector - self.source_to_object, 0.0])
        col_step = rot @ np.array([self.detector_pixel, 0.0, 0.0])
        row_step = np.array([0.0, 0.0, -self.detector_pixel])
        origin = det_centre - self.centre_col * col_step - self.centre_row * row_step
        return source, origin, col_step, row_step

    def project_points(self, points: np.ndarray, angle_deg: float) -> np.ndarray:
        """Detector (row, col) of world points (n, 3) in one view: pure pinhole geometry."""
        source, origin, col_step, row_step = self.view_frame(angle_deg)
        det_centre = origin + self.centre_col * col_step + self.centre_row * row_step
        axis = (det_centre - source) / np.linalg.norm(det_centre - source)
        rel = np.asarray(points, np.float64) - source
        depth = rel @ axis
        on_plane = source + rel * (self.source_to_detector / depth)[:, None]
        offset = on_plane - origin
        col = offset @ col_step / self.detector_pixel**2
        row = offset @ row_step / self.detector_pixel**2
        return np.stack([row, col], axis=1)


@dataclass(frozen=True)
class ParallelGeometry:
    """Parallel-beam geometry (synchrotron data, previews): every detector row is one slice.

    Parameters
    ----------
    pixel : float
        Detector pixel = voxel size, mm.
    n_rows, n_cols : int
        Detector rows and columns.
    angles_deg : numpy.ndarray
        Projection angles, degrees, covering 180 or 360 degrees uniformly.
    cor_offset : float
        Column offset of the rotation axis from the detector centre, pixels.

    Notes
    -----
    Same orientation as the cone geometry's central plane: at angle ``theta`` a point projects to
    ``s = x cos(theta) + y sin(theta)`` along the columns; row 0 is slice 0 (the top).
    """

    pixel: float
    n_rows: int
    n_cols: int
    angles_deg: np.ndarray = field(repr=False)
    cor_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.pixel <= 0 or self.n_rows < 1 or self.n_cols < 1:
            raise ValueError(
                f"pixel={self.pixel}, n_rows={self.n_rows}, n_cols={self.n_cols} must be positive"
            )
        object.__setattr__(self, "angles_deg", np.asarray(self.angles_deg, dtype=np.float64))

    @property
    def voxel_size(self) -> float:
        """Reconstructed voxel edge, mm (the detector pixel)."""
        return self.pixel

    @property
    def centre_col(self) -> float:
        """Column index of the rotation axis."""
        return (self.n_cols - 1) / 2 + self.cor_offset


@dataclass(frozen=True)
class VolumeGrid:
    """A regular voxel grid ``(slice, y, x)`` in world millimetres (conventions in the module doc).

    Parameters
    ----------
    shape : tuple of int
        ``(n_slices, n_y, n_x)``.
    voxel_size : float
        Isotropic voxel edge, mm.
    centre : tuple of float
        World position of the grid centre, mm.
    """

    shape: tuple[int, int, int]
    voxel_size: float
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape={self.shape} must be three positive sizes (slice, y, x)")
        if self.voxel_size <= 0:
            raise ValueError(f"voxel_size={self.voxel_size} must be positive (mm)")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "centre", tuple(float(c) for c in self.centre))

    @property
    def steps(self) -> np.ndarray:
        """World step per index along (slice, y, x), rows of a (3, 3) array."""
        h = self.voxel_size
        return np.array([[0.0, 0.0, -h], [0.0, h, 0.0], [h, 0.0, 0.0]])

    @property
    def origin(self) -> np.ndarray:
        """World centre of voxel (0, 0, 0)."""
        nz, ny, nx = self.shape
        cx, cy, cz = self.centre
        h = self.voxel_size
        return np.array([cx - (nx - 1) / 2 * h, cy - (ny - 1) / 2 * h, cz + (nz - 1) / 2 * h])

    def slab(self, start: int, stop: int) -> VolumeGrid:
        """The sub-grid of slices ``start:stop`` (same voxels, same world positions)."""
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"slab {start}:{stop} is outside 0:{self.shape[0]}")
        nz = self.shape[0]
        shift = ((nz - 1) / 2 - (start + stop - 1) / 2) * self.voxel_size
        cx, cy, cz = self.centre
        return VolumeGrid((stop - start, *self.shape[1:]), self.voxel_size, (cx, cy, cz + shift))

    def crop(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> VolumeGrid:
        """The sub-grid of voxels ``lo <= index < hi`` along (slice, y, x)."""
        lo_w = self.index_to_world(np.array([lo], np.float64))[0]
        hi_w = self.index_to_world(np.array([hi], np.float64) - 1)[0]
        shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
        return VolumeGrid(shape, self.voxel_size, tuple((lo_w + hi_w) / 2))

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """World positions (n, 3) of fractional (slice, y, x) indices (n, 3)."""
        return self.origin + np.asarray(index, np.float64) @ self.steps

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Fractional (slice, y, x) indices (n, 3) of world points (n, 3)."""
        steps = self.steps
        return (np.asarray(points, np.float64) - self.origin) @ steps.T / self.voxel_size**2
