"""Rigid transforms of CT volumes in physical micrometres: the one place their conventions live.

Conventions
-----------
* **Axes.** Points are 3-vectors ordered like the array axes, ``(slice, y, x)``, in micrometres.
  The physical position of voxel ``(k, i, j)`` of a volume with voxel size ``(ds, dy, dx)`` is
  ``(k * ds, i * dy, j * dx)`` (plus the volume's ``origin_um`` attribute when it has one): the
  same numbers as the ``y`` / ``x`` coordinates :func:`bonemet_dask.open_store` attaches.
  ``(slice, y, x)`` is a right-handed frame (slice runs distally, i.e. world ``-z`` of
  :mod:`bonemet_dask.geometry`), so rotations are proper (determinant +1).
* **Direction.** A :class:`RigidTransform` maps **fixed / output coordinates to moving / input
  coordinates**: ``T(p_fixed) = p_moving``.  Resampling a moving volume with ``T`` gives
  ``out[p] = moving[T(p)]`` (the convention of ``scipy.ndimage.affine_transform`` and of ITK's
  ``Resample``); :func:`bonemet_dask.register` returns the ``T`` for which the resampled moving
  volume matches the fixed one.
* **Form.** ``T(p) = R @ (p - c) + c + t`` with rotation ``R``, centre ``c`` and translation ``t``
  (all in micrometres).  The centre does not change the map; it only makes the parameters
  readable (a rotation about the bone's centroid has a small translation).
* **Parameters.** ``rotation_vector``: axis times angle (radians) in the ``(slice, y, x)`` frame.
  ``angles_deg = (a, b, c)``: ``R = R_slice(a) @ R_y(b) @ R_x(c)``, each a right-handed rotation
  about that axis (intrinsic ``XYZ`` of :class:`scipy.spatial.transform.Rotation` with the vector
  components read in ``(slice, y, x)`` order).
* **Composition.** ``(a @ b)(p) == a(b(p))``: ``b`` is applied first, as for 4x4 matrices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["RigidTransform"]

CONVENTION = (
    "p_moving = R @ (p_fixed - centre) + centre + translation; points (slice, y, x) in "
    "micrometres; maps fixed/output coordinates to moving/input coordinates"
)
"""The text stored beside every serialised transform."""

_ORTHO_TOL = 1e-6


def _as_vector(value: Any, name: str) -> np.ndarray:
    vector = np.asarray(value, dtype=np.float64).reshape(-1)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise ValueError(f"{name}={value!r} must be 3 finite numbers (slice, y, x)")
    return vector


def _as_rotation(value: Any) -> np.ndarray:
    rotation = np.asarray(value, dtype=np.float64)
    if rotation.shape != (3, 3) or not np.all(np.isfinite(rotation)):
        raise ValueError(f"rotation must be a finite 3x3 matrix, got shape {rotation.shape}")
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=_ORTHO_TOL) or not np.isclose(
        np.linalg.det(rotation), 1.0, atol=_ORTHO_TOL
    ):
        raise ValueError(
            "rotation is not a proper rotation (R @ R.T != I or det(R) != 1); build it with "
            "RigidTransform.from_rotation_vector / from_euler, or orthonormalise it first"
        )
    return rotation


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """A rotation and a translation in physical micrometres about a stated centre.

    ``T(p) = rotation @ (p - centre) + centre + translation`` maps fixed / output points to
    moving / input points, ``(slice, y, x)`` micrometres (module docstring).

    Parameters
    ----------
    rotation : array_like, shape (3, 3)
        Proper rotation matrix (orthonormal, determinant +1).
    translation : array_like, shape (3,)
        Micrometres.
    centre : array_like, shape (3,)
        Centre of rotation, micrometres (default the origin).

    Examples
    --------
    A quarter turn about the ``x`` axis takes ``+y`` to ``-slice``:

    >>> t = RigidTransform.from_euler((0.0, 0.0, 90.0), translation=(5.0, 0, 0))
    >>> t.apply([[0.0, 1.0, 0.0]]).round(6).tolist()
    [[4.0, 0.0, 0.0]]
    >>> (t.inverse() @ t).is_identity()
    True
    """

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotation", _as_rotation(self.rotation))
        object.__setattr__(self, "translation", _as_vector(self.translation, "translation"))
        object.__setattr__(self, "centre", _as_vector(self.centre, "centre"))
        for array in (self.rotation, self.translation, self.centre):
            array.flags.writeable = False

    # ------------------------------------------------------------------ constructors

    @classmethod
    def identity(cls, centre: Sequence[float] = (0.0, 0.0, 0.0)) -> RigidTransform:
        """The identity map (about ``centre``)."""
        return cls(np.eye(3), np.zeros(3), centre)

    @classmethod
    def from_rotation_vector(
        cls,
        rotation_vector: Sequence[float],
        translation: Sequence[float] = (0.0, 0.0, 0.0),
        centre: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> RigidTransform:
        """From a rotation vector (axis times angle, radians, ``(slice, y, x)`` frame)."""
        vector = _as_vector(rotation_vector, "rotation_vector")
        return cls(Rotation.from_rotvec(vector).as_matrix(), translation, centre)

    @classmethod
    def from_euler(
        cls,
        angles_deg: Sequence[float],
        translation: Sequence[float] = (0.0, 0.0, 0.0),
        centre: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> RigidTransform:
        """From ``angles_deg = (a, b, c)``: ``R = R_slice(a) @ R_y(b) @ R_x(c)``, degrees."""
        angles = _as_vector(angles_deg, "angles_deg")
        return cls(
            Rotation.from_euler("XYZ", angles, degrees=True).as_matrix(), translation, centre
        )

    @classmethod
    def from_matrix(cls, matrix: Any, centre: Sequence[float] = (0.0, 0.0, 0.0)) -> RigidTransform:
        """From a 4x4 homogeneous matrix ``[[R, d], [0, 0, 0, 1]]`` (``p -> R p + d``).

        Parameters
        ----------
        matrix : array_like, shape (4, 4)
            Homogeneous matrix of the map in ``(slice, y, x)`` micrometres.
        centre : array_like, shape (3,)
            Centre to express it about (the map is the same for every centre).

        Raises
        ------
        ValueError
            If the matrix is not 4x4, its last row is not ``(0, 0, 0, 1)`` or its block is not a
            proper rotation.
        """
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0)):
            raise ValueError(
                f"matrix must be 4x4 with last row (0, 0, 0, 1), got shape {m.shape}; a rigid "
                "transform has no perspective part"
            )
        rotation = _as_rotation(m[:3, :3])
        c = _as_vector(centre, "centre")
        return cls(rotation, m[:3, 3] - c + rotation @ c, c)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> RigidTransform:
        """Inverse of :meth:`to_dict` (also accepts its JSON text)."""
        if isinstance(data, str):
            data = json.loads(data)
        if data.get("type") != "rigid" or "matrix" not in data:
            raise ValueError(
                "data is not a serialised RigidTransform (needs type='rigid' and 'matrix'); "
                "write it with RigidTransform.to_dict()"
            )
        units = data.get("units", "micrometer")
        if units != "micrometer":
            raise ValueError(f"units={units!r}: only 'micrometer' transforms are understood")
        return cls.from_matrix(data["matrix"], data.get("centre_um", (0.0, 0.0, 0.0)))

    # ------------------------------------------------------------------ views

    @property
    def offset(self) -> np.ndarray:
        """``d`` of the affine form ``p -> R p + d``, micrometres."""
        return self.centre + self.translation - self.rotation @ self.centre

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix of the map (``p_moving = M @ [p_fixed, 1]``)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.offset
        return m

    @property
    def rotation_vector(self) -> np.ndarray:
        """Axis times angle, radians, ``(slice, y, x)`` frame."""
        return Rotation.from_matrix(self.rotation).as_rotvec()

    @property
    def angles_deg(self) -> np.ndarray:
        """``(a, b, c)`` with ``R = R_slice(a) @ R_y(b) @ R_x(c)``, degrees."""
        return Rotation.from_matrix(self.rotation).as_euler("XYZ", degrees=True)

    @property
    def angle_deg(self) -> float:
        """Total rotation angle, degrees (0 to 180)."""
        # the rotation vector's norm stays accurate near 0, where arccos of the trace does not
        return float(np.degrees(np.linalg.norm(self.rotation_vector)))

    # ------------------------------------------------------------------ algebra

    def apply(self, points: Any) -> np.ndarray:
        """Map points ``(n, 3)`` (or one ``(3,)``) from fixed to moving micrometres."""
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1] != 3:
            raise ValueError(f"points must have shape (n, 3) or (3,), got {p.shape}")
        return p @ self.rotation.T + self.offset

    __call__ = apply

    def compose(self, other: RigidTransform) -> RigidTransform:
        """``self ∘ other``: apply ``other`` first, then ``self`` (centre of ``other`` kept)."""
        if not isinstance(other, RigidTransform):
            raise TypeError(f"can only compose with a RigidTransform, got {type(other).__name__}")
        return RigidTransform.from_matrix(self.matrix @ other.matrix, other.centre)

    def __matmul__(self, other: RigidTransform) -> RigidTransform:
        return self.compose(other)

    def inverse(self) -> RigidTransform:
        """The inverse map (moving to fixed), about the same centre."""
        rt = self.rotation.T
        return RigidTransform(rt, -rt @ self.translation, self.centre)

    def with_centre(self, centre: Sequence[float]) -> RigidTransform:
        """The same map, its parameters expressed about another centre."""
        return RigidTransform.from_matrix(self.matrix, centre)

    def is_identity(self, *, atol: float = 1e-9) -> bool:
        """Whether the map is the identity within ``atol`` (matrix entries, micrometres)."""
        return bool(np.allclose(self.matrix, np.eye(4), atol=atol))

    def allclose(
        self, other: RigidTransform, *, angle_deg: float = 1e-6, distance_um: float = 1e-6
    ) -> bool:
        """Whether two maps differ by at most ``angle_deg`` and ``distance_um`` (at the centre)."""
        diff = self.inverse() @ other
        shift = np.linalg.norm(diff.apply(self.centre) - self.centre)
        return diff.angle_deg <= angle_deg and shift <= distance_um

    def index_affine(
        self,
        fixed_spacing: Sequence[float],
        moving_spacing: Sequence[float],
        *,
        fixed_origin: Sequence[float] = (0.0, 0.0, 0.0),
        moving_origin: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, offset)`` taking fixed voxel indices to moving voxel indices.

        ``moving_index = matrix @ fixed_index + offset``: the arguments of
        ``scipy.ndimage.affine_transform`` for resampling a moving volume onto a fixed grid.

        Parameters
        ----------
        fixed_spacing, moving_spacing : sequence of 3 float
            Voxel sizes ``(slice, y, x)``, micrometres.
        fixed_origin, moving_origin : sequence of 3 float
            Physical position of voxel ``(0, 0, 0)`` of each grid, micrometres.
        """
        sf = _as_vector(fixed_spacing, "fixed_spacing")
        sm = _as_vector(moving_spacing, "moving_spacing")
        if np.any(sf <= 0) or np.any(sm <= 0):
            raise ValueError(f"spacings must be positive, got {sf.tolist()} and {sm.tolist()}")
        of = _as_vector(fixed_origin, "fixed_origin")
        om = _as_vector(moving_origin, "moving_origin")
        matrix = (self.rotation * sf[None, :]) / sm[:, None]
        offset = (self.rotation @ of + self.offset - om) / sm
        return matrix, offset

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (group attributes): matrix and readable parameters.

        :meth:`from_dict` reads ``matrix`` and ``centre_um``; the other entries are for people.
        """
        return {
            "type": "rigid",
            "convention": CONVENTION,
            "axes": ["slice", "y", "x"],
            "units": "micrometer",
            "matrix": self.matrix.tolist(),
            "centre_um": self.centre.tolist(),
            "translation_um": self.translation.tolist(),
            "rotation_vector_rad": self.rotation_vector.tolist(),
            "angles_deg": self.angles_deg.tolist(),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict())

    def __repr__(self) -> str:
        angles = ", ".join(f"{a:.3f}" for a in self.angles_deg)
        shift = ", ".join(f"{v:.2f}" for v in self.translation)
        centre = ", ".join(f"{v:.1f}" for v in self.centre)
        return (
            f"RigidTransform(angles_deg=({angles}), translation_um=({shift}), centre_um=({centre}))"
        )
