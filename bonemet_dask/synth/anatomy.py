"""A physical mouse-hindlimb phantom built from analytic primitives.

Each leg is modelled in its *anatomical frame*: millimetres, origin at the centre of the tibial
plateau, ``+z`` proximal (towards the knee and femur), ``+x`` lateral (the fibula's side), ``+y``
anterior (the tibial crest and patella).  The parts:

* soft tissue: an elliptic thigh cone and a tapering shank cone;
* femur: a cortical shaft tube and trabecular condyles, cut at the top of the field; a patella;
* tibia: a flared proximal metaphysis (cortical shell, cortical plateau, trabecular rods inside), a
  tapering cortical shaft with a marrow cavity, an anterior crest and a distal epiphysis;
* fibula: a head that touches the tibia just below the knee (the proximal tibia-fibula junction),
  a shaft that bows laterally away from the tibia, and a distal part that fuses with the tibial
  shaft around mid-shaft;
* an osteolytic lesion (an ellipsoid that removes cortex and trabeculae) growing weekly in an
  injected tibia, periosteal woven bone appearing next to it from week 2, and endosteal apposition
  (the marrow cavity narrows) in every tibia, so that composites show formation and resorption.

The *side frame* of a leg is its anatomical frame mirrored for the left leg (lateral becomes
``-x``), so that in the scan the fibula of either leg points away from the midline; registered
products (Regist-CT, RoI-CT) are drawn in the side frame.  Attenuation is in 1/mm: soft tissue
0.025, cortical bone 0.10, trabecular 0.075, woven bone 0.065.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bonemet_dask.synth.primitives import (
    Phantom,
    Term,
    ellipsoid,
    frustum,
    rod,
    rotation_matrix,
)

MU_SOFT = 0.025
MU_CORTICAL = 0.075  # on top of soft tissue
MU_TRABECULAR = 0.050
MU_WOVEN = 0.040

PART_GROUPS = {"soft": 0, "femur": 1, "patella": 1, "tibia": 2, "trabecular": 3, "fibula": 4}
"""Culling group of each part within a leg (a leg owns groups ``8 * leg + value``)."""

LEG_OFFSET_X = 5.0
"""Distance of each leg's plateau centre from the rotation axis, mm (left leg at ``-x``)."""
KNEE_Z = 3.6
"""World height of the tibial plateau before the weekly pose, mm."""


@dataclass(frozen=True)
class LegAnatomy:
    """Per-animal, per-leg shape parameters (fixed over weeks).

    Attributes
    ----------
    side : str
        ``"left"`` or ``"right"``.
    scale : float
        Isotropic size factor of the whole leg.
    injected : bool
        Whether this tibia received tumour cells (grows an osteolytic lesion).
    lesion_centre : tuple of float
        Lesion centre in the anatomical frame, mm.
    lesion_growth : float
        Lesion semi-axis growth per week after week 0, mm.
    fibula_head : tuple of float
        Centre of the fibular head, anatomical frame, mm.
    fibula_bow : tuple of float
        Point where the fibular shaft is farthest from the tibia, anatomical frame, mm.
    trabecular_seed : int
        Seed of the trabecular rod pattern.
    leg_yaw_deg : float
        Rotation of the leg about its long axis in the holder, degrees.
    """

    side: str
    scale: float
    injected: bool
    lesion_centre: tuple[float, float, float]
    lesion_growth: float
    fibula_head: tuple[float, float, float]
    fibula_bow: tuple[float, float, float]
    trabecular_seed: int
    leg_yaw_deg: float

    @classmethod
    def random(cls, rng: np.random.Generator, side: str, injected: bool) -> LegAnatomy:
        """Draw plausible parameters for one leg."""
        return cls(
            side=side,
            scale=float(rng.uniform(0.97, 1.03)),
            injected=injected,
            lesion_centre=(
                float(rng.uniform(0.0, 0.3)),
                float(rng.uniform(0.25, 0.45)),
                float(rng.uniform(-2.6, -2.1)),
            ),
            lesion_growth=float(rng.uniform(0.18, 0.28)),
            fibula_head=(1.3, -0.35, float(rng.uniform(-1.45, -1.1))),
            fibula_bow=(float(rng.uniform(1.85, 2.05)), -0.25, float(rng.uniform(-5.6, -4.8))),
            trabecular_seed=int(rng.integers(0, 2**31 - 1)),
            leg_yaw_deg=float(rng.uniform(-8.0, 8.0)),
        )

    def lesion_semi_axis(self, week: int) -> float:
        """Lesion base semi-axis at a week, mm (0 for uninjected tibiae and at week 0)."""
        if not self.injected or week <= 0:
            return 0.0
        return float(min(0.3 + self.lesion_growth * (week - 1), 0.95))

    def woven_scale(self, week: int) -> float:
        """Size factor of periosteal woven bone (from week 2 on, in injected tibiae only)."""
        if not self.injected or week < 2:
            return 0.0
        return float(min(0.5 + 0.25 * (week - 2), 1.0))


def leg_phantom(leg: LegAnatomy, week: int, *, frame: str = "side") -> Phantom:
    """The phantom of one leg at one week.

    Parameters
    ----------
    leg : LegAnatomy
        Shape parameters.
    week : int
        Scan week (lesion size, woven bone and endosteal apposition depend on it).
    frame : {"side", "anatomical"}
        ``"anatomical"``: lateral is ``+x`` for both legs; ``"side"``: mirrored for the left leg.

    Returns
    -------
    Phantom
        Terms labelled ``soft``, ``femur``, ``patella``, ``tibia``, ``trabecular`` (tibial) or
        ``fibula``.
    """
    if frame not in ("side", "anatomical"):
        raise ValueError(f"frame={frame!r} is not one of 'side', 'anatomical'")
    s = leg.scale

    def p(*v: float) -> np.ndarray:
        return s * np.asarray(v, dtype=np.float64)

    ph = Phantom()

    def add(density: float, includes, excludes=(), part: str = "tibia") -> None:
        ph.add(Term(density, tuple(includes), tuple(excludes), part), PART_GROUPS[part])

    # soft tissue
    add(MU_SOFT, [frustum(s * 0.3, s * 7.6, p(2.9, 2.6), 1.25)], part="soft")
    add(MU_SOFT, [frustum(s * -14.8, s * 0.3, p(1.1, 0.95), 2.5, xy=p(0.35, 0.0))], part="soft")

    # femur and patella
    condyle = ellipsoid(p(0, -0.1, 1.0), p(1.45, 1.25, 0.85))
    condyle_inner = ellipsoid(p(0, -0.1, 1.0), p(1.45, 1.25, 0.85) * 0.78)
    femur_shaft = frustum(s * 1.0, s * 7.5, p(0.75, 0.68), 0.95)
    femur_marrow = frustum(s * 0.7, s * 7.8, p(0.53, 0.47), 0.95)
    add(MU_CORTICAL, [condyle], [condyle_inner], part="femur")
    add(MU_TRABECULAR, [condyle_inner], part="femur")
    add(MU_CORTICAL, [femur_shaft], [femur_marrow, condyle], part="femur")
    add(MU_CORTICAL, [ellipsoid(p(0, 1.55, 0.6), p(0.35, 0.22, 0.55))], part="patella")

    # tibia
    flare = 2.4
    prox_outer = frustum(s * -4.0, 0.0, p(0.65, 0.55), flare)
    kappa = 0.8  # marrow-to-outer radius ratio in the metaphysis
    z_lo, z_hi = -4.3, -0.25  # inner cone: open into the shaft below, closed plateau above

    def prox_radius(z: float) -> float:
        return 1 + (flare - 1) * (z + 4.0) / 4.0

    prox_inner = frustum(
        s * z_lo,
        s * z_hi,
        p(0.65, 0.55) * kappa * prox_radius(z_lo),
        prox_radius(z_hi) / prox_radius(z_lo),
    )
    shaft_outer = frustum(s * -13.9, s * -4.0, p(0.5, 0.42), 1.3)
    kappa_shaft = 0.68 - 0.012 * max(week, 0)  # endosteal apposition: the cavity narrows weekly
    taper = 0.3 / 9.9  # shaft radius gain per mm upwards, relative to its base

    def shaft_radius(z: float) -> float:
        return 1 + taper * (z + 13.9)

    shaft_inner = frustum(
        s * -14.2,
        s * -3.7,
        p(0.5, 0.42) * kappa_shaft * shaft_radius(-14.2),
        shaft_radius(-3.7) / shaft_radius(-14.2),
    )
    distal = ellipsoid(p(0, 0, -14.15), p(0.85, 0.7, 0.55))
    distal_inner = ellipsoid(p(0, 0, -14.15), p(0.62, 0.5, 0.38))
    crest = rod(p(0, 0.45, -2.2), p(0, 0.5, -6.0), p(0.1, 0.25))

    r = leg.lesion_semi_axis(week)
    lesion = (ellipsoid(p(*leg.lesion_centre), s * r * np.array([1.0, 0.85, 1.5])),) if r else ()

    add(MU_CORTICAL, [prox_outer], [prox_inner, *lesion])
    add(MU_CORTICAL, [shaft_outer], [shaft_inner, *lesion])
    add(MU_CORTICAL, [distal], [distal_inner, shaft_outer])
    add(MU_TRABECULAR, [distal_inner], [shaft_outer])
    add(MU_CORTICAL, [crest], [prox_outer, shaft_outer, *lesion])

    rng = np.random.default_rng(leg.trabecular_seed)
    for _ in range(28):
        z = rng.uniform(-2.6, -0.4)
        rad = 0.8 * kappa * prox_radius(z)
        ang, frac = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1))
        centre = np.array([0.65 * rad * frac * np.cos(ang), 0.55 * rad * frac * np.sin(ang), z])
        tilt, azimuth = rng.uniform(0, np.deg2rad(35)), rng.uniform(0, 2 * np.pi)
        direction = np.array(
            [np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), np.cos(tilt)]
        )
        half = rng.uniform(0.25, 0.45)
        thickness = rng.uniform(0.045, 0.06)
        strut = rod(
            s * (centre - half * direction), s * (centre + half * direction), (s * thickness,) * 2
        )
        add(MU_TRABECULAR, [strut, prox_inner], lesion, part="trabecular")

    w = leg.woven_scale(week)
    if w:
        woven = ellipsoid(p(0.55, -0.35, -3.0), s * w * np.array([0.55, 0.35, 1.1]))
        add(MU_WOVEN, [woven], [prox_outer, shaft_outer, *lesion])

    # fibula
    hx, hy, hz = leg.fibula_head
    bx, by, bz = leg.fibula_bow
    head = ellipsoid(p(hx, hy, hz), p(0.36, 0.3, 0.45))
    joint = ellipsoid(p(bx, by, bz), p(0.17, 0.17, 0.17))
    upper = rod(p(hx + 0.15, hy + 0.02, hz - 0.25), p(bx, by, bz), p(0.16, 0.14))
    lower = rod(p(bx, by, bz), p(0.5, -0.2, -9.0), p(0.15, 0.13))
    add(MU_CORTICAL, [head], [prox_outer], part="fibula")
    add(MU_CORTICAL, [joint], part="fibula")
    add(MU_CORTICAL, [upper], [head, joint], part="fibula")
    add(MU_CORTICAL, [lower], [joint, upper, shaft_outer], part="fibula")

    if frame == "side" and leg.side == "left":
        return ph.moved(np.diag([-1.0, 1.0, 1.0]), np.zeros(3))
    return ph


def hindlimb_phantom(
    legs: dict[str, LegAnatomy], week: int, pose: tuple[np.ndarray, np.ndarray]
) -> Phantom:
    """Both legs at their places in the holder, then the scan's rigid pose ``p -> R p + t``.

    The left leg stands at ``x = -LEG_OFFSET_X``, the right at ``+LEG_OFFSET_X``; both plateaus at
    ``z = KNEE_Z``.  Groups are ``8 * leg_number + part group``.
    """
    rotation, translation = pose
    out = Phantom()
    for number, side in enumerate(("left", "right")):
        leg = legs[side]
        place_r, place_t = leg_placement(leg)
        placed = leg_phantom(leg, week, frame="side").moved(place_r, place_t)
        out.extend(placed.moved(rotation, translation), group_offset=8 * number)
    return out


def leg_placement(leg: LegAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """Rigid map from a leg's side frame to the holder frame (before the weekly pose)."""
    x = -LEG_OFFSET_X if leg.side == "left" else LEG_OFFSET_X
    yaw = leg.leg_yaw_deg if leg.side == "right" else -leg.leg_yaw_deg
    return rotation_matrix((yaw, 0.0, 0.0)), np.array([x, 0.0, KNEE_Z])


def random_pose(rng: np.random.Generator) -> dict[str, list[float]]:
    """A random rigid pose of one scan's specimen: angles (deg, about z, y, x), shift (mm)."""
    return {
        "angles_deg": [
            float(rng.uniform(-25.0, 25.0)),
            float(np.clip(rng.normal(0.0, 1.2), -2.5, 2.5)),
            float(np.clip(rng.normal(0.0, 1.2), -2.5, 2.5)),
        ],
        "translation_mm": [
            float(rng.uniform(-0.5, 0.5)),
            float(rng.uniform(-0.5, 0.5)),
            float(rng.uniform(-0.2, 0.2)),
        ],
    }


def pose_matrix(pose: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, translation) of a pose dict from :func:`random_pose`."""
    return rotation_matrix(pose["angles_deg"]), np.asarray(pose["translation_mm"], np.float64)
