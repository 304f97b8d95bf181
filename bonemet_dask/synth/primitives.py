"""Analytic phantom primitives: convex shapes, density terms, rigid poses.

A phantom is a sum of *terms*.  A term is a constant attenuation added on the intersection of up to
three convex shapes, minus up to three other convex shapes::

    mu(p) = sum_t density_t * [p in (S_t1 & S_t2 & S_t3) - (E_t1 | E_t2 | E_t3)]

Every shape is the affine image of a unit solid (unit ball, unit cylinder
``x^2 + y^2 < 1, |z| <= 1``, or a truncated unit cone whose radius goes linearly from 1 at
``z = -1`` to ``tau`` at ``z = +1``).
A line meets a convex shape in one interval, so the line integral of a term is exact and closed
form: the length of the include-intersection minus, by inclusion-exclusion, its overlaps with the
excluded shapes.  This is how RTK's geometric phantoms work, extended with clipping so that a
lesion can remove cortex without driving marrow negative.  The same shapes voxelise to the ground
truth, so tests compare a reconstruction with a phantom that was never voxel-projected.

Units are millimetres and attenuation per millimetre throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ELLIPSOID, CYLINDER, CONE = 0, 1, 2
MAX_INCLUDES, MAX_EXCLUDES = 3, 3

# Packed shape row: kind, centre(3), inverse linear map M (3x3 row-major), tau, sphere (3), radius
SHAPE_ROW = 18


@dataclass(frozen=True)
class Shape:
    """A convex solid: the image ``p = centre + rotation @ diag(semi_axes) @ q`` of a unit solid.

    Attributes
    ----------
    kind : int
        ``ELLIPSOID``, ``CYLINDER`` or ``CONE``.
    centre : numpy.ndarray
        (3,) world position of the unit solid's origin, mm.
    rotation : numpy.ndarray
        (3, 3) matrix whose columns are the solid's local axes in the world (may include a mirror).
    semi_axes : numpy.ndarray
        (3,) half-extents along the local axes, mm (for a cone: the base radii and the half-height).
    tau : float
        Cone only: top radius over base radius (any positive value; 1 is a cylinder).
    """

    kind: int
    centre: np.ndarray
    rotation: np.ndarray
    semi_axes: np.ndarray
    tau: float = 1.0

    def moved(self, rotation: np.ndarray, translation: np.ndarray) -> Shape:
        """The shape after the rigid (or mirrored) map ``p -> rotation @ p + translation``."""
        return Shape(
            self.kind,
            rotation @ self.centre + translation,
            rotation @ self.rotation,
            self.semi_axes,
            self.tau,
        )

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """A sphere that contains the shape: (centre, radius), mm."""
        if self.kind == ELLIPSOID:
            unit_radius = 1.0
        elif self.kind == CYLINDER:
            unit_radius = np.sqrt(2.0)
        else:
            unit_radius = np.sqrt(max(1.0, self.tau) ** 2 + 1.0)
        return self.centre.copy(), float(unit_radius * np.max(self.semi_axes))

    def surface_points(self, n: int = 24) -> np.ndarray:
        """About ``n * n`` points on the shape's surface, (m, 3) in mm: for tight bounding boxes."""
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
        if self.kind == ELLIPSOID:
            polar = np.linspace(0, np.pi, n)
            t, p = np.meshgrid(theta, polar)
            q = np.stack([np.sin(p) * np.cos(t), np.sin(p) * np.sin(t), np.cos(p)], -1).reshape(
                -1, 3
            )
        else:
            z = np.linspace(-1, 1, n)
            t, zz = np.meshgrid(theta, z)
            radius = 1.0 if self.kind == CYLINDER else (1 + self.tau) / 2 + (self.tau - 1) / 2 * zz
            q = np.stack([radius * np.cos(t), radius * np.sin(t), zz], -1).reshape(-1, 3)
        return q @ (self.rotation * self.semi_axes).T + self.centre

    def pack(self) -> np.ndarray:
        """The packed float64 row the numba kernels read (see ``SHAPE_ROW``)."""
        inverse = np.linalg.inv(self.rotation * self.semi_axes)  # (R diag(a))^-1; mirrors allowed
        centre, radius = self.bounding_sphere()
        return np.concatenate(
            [[self.kind], self.centre, inverse.ravel(), [self.tau], centre, [radius]]
        ).astype(np.float64)


def _frame(axis: np.ndarray) -> np.ndarray:
    """A rotation whose third column is the unit vector ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    first = np.cross(helper, axis)
    first /= np.linalg.norm(first)
    second = np.cross(axis, first)
    return np.stack([first, second, axis], axis=1)


def ellipsoid(centre, semi_axes, rotation=None) -> Shape:
    """An ellipsoid with the given centre (mm), semi-axes (mm) and optional rotation."""
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    return Shape(ELLIPSOID, np.asarray(centre, np.float64), rot, np.asarray(semi_axes, np.float64))


def rod(start, end, radii) -> Shape:
    """An elliptic cylinder from ``start`` to ``end`` (mm), cross-section semi-axes ``radii``."""
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    axis = end - start
    half = np.linalg.norm(axis) / 2
    return Shape(
        CYLINDER, (start + end) / 2, _frame(axis), np.array([radii[0], radii[1], half], np.float64)
    )


def frustum(z_bottom: float, z_top: float, bottom_radii, top_scale: float, xy=(0.0, 0.0)) -> Shape:
    """A vertical truncated elliptic cone.

    Its radii are ``bottom_radii`` at ``z_bottom`` and ``top_scale`` times those at ``z_top``.
    """
    if not z_top > z_bottom:
        raise ValueError(f"z_top={z_top} must be above z_bottom={z_bottom}")
    centre = np.array([xy[0], xy[1], (z_bottom + z_top) / 2], np.float64)
    semi = np.array([bottom_radii[0], bottom_radii[1], (z_top - z_bottom) / 2], np.float64)
    return Shape(CONE, centre, np.eye(3), semi, float(top_scale))


@dataclass
class Term:
    """``density`` (1/mm) on the intersection of ``includes`` minus the union of ``excludes``."""

    density: float
    includes: tuple[Shape, ...]
    excludes: tuple[Shape, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if not 1 <= len(self.includes) <= MAX_INCLUDES:
            raise ValueError(
                f"a term needs 1 to {MAX_INCLUDES} included shapes, got {len(self.includes)}"
            )
        if len(self.excludes) > MAX_EXCLUDES:
            raise ValueError(
                f"a term takes at most {MAX_EXCLUDES} excluded shapes, got {len(self.excludes)}"
            )

    def moved(self, rotation: np.ndarray, translation: np.ndarray) -> Term:
        """The term after a rigid (or mirrored) map of all its shapes."""
        return Term(
            self.density,
            tuple(s.moved(rotation, translation) for s in self.includes),
            tuple(s.moved(rotation, translation) for s in self.excludes),
            self.label,
        )


@dataclass
class Phantom:
    """A list of terms, each tagged with a group number (the leg it belongs to, for selection)."""

    terms: list[Term] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    def add(self, term: Term, group: int = 0) -> None:
        """Append a term to a group."""
        self.terms.append(term)
        self.groups.append(group)

    def extend(self, other: Phantom, group_offset: int = 0) -> None:
        """Append all terms of another phantom, shifting its group numbers."""
        for term, group in zip(other.terms, other.groups, strict=True):
            self.add(term, group + group_offset)

    def moved(self, rotation: np.ndarray, translation: np.ndarray) -> Phantom:
        """The phantom after a rigid (or mirrored) map."""
        return Phantom([t.moved(rotation, translation) for t in self.terms], list(self.groups))

    def select(self, predicate) -> Phantom:
        """A phantom of the terms whose label satisfies ``predicate(label)``."""
        pairs = [(t, g) for t, g in zip(self.terms, self.groups, strict=True) if predicate(t.label)]
        return Phantom([t for t, _ in pairs], [g for _, g in pairs])

    def bounds(self, predicate=None) -> tuple[np.ndarray, np.ndarray]:
        """Tight axis-aligned bounds (lo, hi) of the first included shape of each selected term, mm.

        ``predicate(label, group)`` selects terms; None takes all.
        """
        points = [
            t.includes[0].surface_points()
            for t, g in zip(self.terms, self.groups, strict=True)
            if predicate is None or predicate(t.label, g)
        ]
        if not points:
            raise ValueError("no term matches the predicate; nothing to bound")
        allpts = np.concatenate(points)
        return allpts.min(0), allpts.max(0)

    def pack(self) -> PackedPhantom:
        """Arrays for the numba kernels (terms in insertion order, shapes shared by identity)."""
        order = range(len(self.terms))
        shapes: list[np.ndarray] = []
        index: dict[int, int] = {}

        def shape_id(shape: Shape) -> int:
            key = id(shape)
            if key not in index:
                index[key] = len(shapes)
                shapes.append(shape.pack())
            return index[key]

        n = len(order)
        density = np.zeros(n)
        includes = -np.ones((n, MAX_INCLUDES), np.int64)
        excludes = -np.ones((n, MAX_EXCLUDES), np.int64)
        spheres = np.zeros((n, 4))
        for row, term_id in enumerate(order):
            term = self.terms[term_id]
            density[row] = term.density
            for k, s in enumerate(term.includes):
                includes[row, k] = shape_id(s)
            for k, s in enumerate(term.excludes):
                excludes[row, k] = shape_id(s)
            best = min((s.bounding_sphere() for s in term.includes), key=lambda cr: cr[1])
            spheres[row, :3], spheres[row, 3] = best
        return PackedPhantom(
            np.asarray(shapes, np.float64).reshape(-1, SHAPE_ROW),
            density,
            includes,
            excludes,
            spheres,
        )


@dataclass(frozen=True)
class PackedPhantom:
    """The numba-ready form of a :class:`Phantom` (see :func:`Phantom.pack`)."""

    shapes: np.ndarray
    density: np.ndarray
    includes: np.ndarray
    excludes: np.ndarray
    spheres: np.ndarray


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation ``Rz(a) @ Ry(b) @ Rx(c)`` for ``angles_deg = (a, b, c)`` about world z, y, x."""
    a, b, c = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx
