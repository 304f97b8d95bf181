"""The geometry a SkyScan acquisition ``.log`` describes: every key decided, each one recorded.

Real logs (SkyScan 1272, 1275, 1276, 1278) say more than the three distances. What each key does
here (``docs/skyscan-logs.md`` has the same table with examples):

``Image Pixel Size (um)``
    The voxel size. It is the scanner's calibrated object-plane pixel. It can differ from
    what the distances give: a 1275 log states 7.000817 µm where its distances give 6.4917.
    NRecon's output voxel follows it (``Pixel Size (um)=7.00082`` in that log's
    reconstruction section). So the source-to-axis distance is derived from it, and the
    detector's distance and pixel are kept: ``SOD = SDD * image pixel / detector pixel``.
    Both the stated and the effective values are recorded. Without the key the distances
    are used.
``Rotation Direction``, ``Scanning Start Angle``, ``Rotation Step (deg)``, ``Number of Files``
    Angle ``i`` is ``start + s * i * step``. ``s = +1`` for ``CC`` (also ``CCW``; the
    default, and what every published log says), the direction this package's geometry and
    the synthetic scans use. ``s = -1`` for ``CW``.
``Use 360 Rotation``
    ``YES`` needs the angles to cover a full turn (``(files - 1) * step >= 360 - step``).
    A full turn is weighted 0.5 per view, with no Parker weights. A closing view at 360
    degrees, which SkyScan takes (601 files of 0.6 degrees), shares its weight with the first
    (:func:`bonemet_dask.kernels.fdk.full_scan_weights`). Angles that cover a turn under
    ``NO`` are a full scan too (noted). More than a turn is refused.
``Partial Width``, ``Image crop origin X/Y``
    ``ON`` means the projections are a crop of the detector starting at column ``X``. The
    rotation axis projects to the uncropped detector's centre column, so in the crop it
    moves by ``(full - columns) / 2 - X`` (binned pixels). ``full`` is the uncropped width
    at binning 1 (argument ``full_detector_columns`` or the config
    ``bonemet.skyscan.full-detector-columns``, by ``Scanner`` model). Without it, or without
    ``Image crop origin X``, the scan is refused. ``Optical Axis (line)`` is in the saved
    projection's rows, so ``Y`` is recorded and not applied.
``Postalignment``
    NRecon's axis correction in pixels, added to the axis column.
``Reference Intensity``
    The flat-field level of the saved projections, which is their unattenuated intensity.
    It is the default ``air`` of :func:`bonemet_dask.ops.reconstruct.reconstruct`.
``Image Rotation``
    The camera's calibrated in-plane tilt. The acquisition software applies it to the saved
    projections (NRecon has no setting for it), so it is recorded and not applied again.
``Number of connected scans``
    Above 1, the scan is an oversize scan stitched from vertical sub-scans, and it is refused.
    The catalog quarantines it as ``unsupported-scan``. Stacking the sub-scans needs NRecon's
    per-sub-scan shifts and overlaps, which only its reconstruction section records, and
    no real connected scan was at hand to check a stacking against. BoneMet's hindlimbs fit
    one field of view (2,685 reconstructed slices on 2,688 detector rows).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from bonemet_dask.geometry import ConeGeometry
from bonemet_dask.io.skyscan_check import LogIssue, spelling
from bonemet_dask.io.skyscan_log import SkyScanLog, SkyScanLogError

__all__ = ["LogGeometry", "read_geometry", "reference_intensity", "unsupported"]

logger = logging.getLogger(__name__)

GEOMETRY_KEYS: Final = (
    "Object to Source (mm)", "Camera to Source (mm)", "Camera Pixel Size (um)", "Camera binning",
    "Image Pixel Size (um)", "Rotation Step (deg)", "Number of Files", "Number of Rows",
    "Number of Columns", "Optical Axis (line)", "Postalignment", "Scanning Start Angle",
    "Image crop origin X", "Image crop origin Y", "Number of connected scans",
    "Reference Intensity", "Image Rotation", "Use 360 Rotation", "Partial Width",
)  # fmt: skip
"""The ``.log`` keys :func:`read_geometry` reads, checked for physical values before use."""

DIRECTIONS: Final[Mapping[str, int]] = {"CC": 1, "CCW": 1, "CW": -1}
"""``Rotation Direction`` values and the sign of the angle step they give."""

_STEP_ROUNDING: Final = 5e-4
"""Half the last decimal of a ``Rotation Step (deg)`` as SkyScan writes it (``0.600``)."""

_MISMATCH_NOTED: Final = 1e-3
"""Relative difference of calibrated and distance-derived pixel above which it is logged."""


@dataclass(frozen=True)
class LogGeometry:
    """What an acquisition ``.log`` gives a reconstruction.

    Attributes
    ----------
    geometry : ConeGeometry
        With :attr:`~bonemet_dask.geometry.ConeGeometry.calibration` holding :attr:`notes`.
    reference_intensity : float or None
        ``Reference Intensity``: the unattenuated intensity of the saved projections.
    notes : dict
        Every value as stated and as used, and every decision (JSON-able).
    """

    geometry: ConeGeometry
    reference_intensity: float | None
    notes: dict[str, Any]


def _scanner_columns(log: SkyScanLog, override: int | None) -> int | None:
    """Uncropped detector columns at binning 1: the argument, else the config by scanner."""
    if override is not None:
        return int(override)
    from bonemet_dask import config

    table = config.get("skyscan.full-detector-columns") or {}
    scanner = (log.get("Scanner") or "").strip()
    for name, columns in dict(table).items():
        if "".join(str(name).lower().split()) == "".join(scanner.lower().split()):
            return int(columns)
    return None


def _issue(log: SkyScanLog, key: str, problem: str, fix: str) -> LogIssue:
    return LogIssue(spelling(log, key), log.get(key), problem, fix, log.source)


def unsupported(log: SkyScanLog, *, full_detector_columns: int | None = None) -> list[LogIssue]:
    """The acquisition settings of a physically valid ``.log`` that this package refuses.

    These are connected (oversize) scans, an unknown ``Rotation Direction``, ``Use 360
    Rotation=YES`` with angles short of a turn, angles beyond a turn, a cropped detector
    whose position is unknown, and a calibrated pixel that is no smaller than the detector
    pixel (no magnification).

    Parameters
    ----------
    log : SkyScanLog
        An acquisition ``.log`` (values already physical: :func:`check_skyscan_log`).
    full_detector_columns : int, optional
        As in :func:`read_geometry`.

    Returns
    -------
    list of LogIssue
        Empty when the scan can be reconstructed.
    """
    issues: list[LogIssue] = []
    connected = log.get_int("Number of connected scans")
    if connected is not None and connected > 1:
        issues.append(
            _issue(
                log,
                "Number of connected scans",
                f"is an oversize scan stitched from {connected} vertical sub-scans, which "
                "bonemet-dask does not stack (their shifts are only in NRecon's reconstruction)",
                "reconstruct it with NRecon and convert its Recon-CT, or give each sub-scan "
                "its own scan folder and .log",
            )
        )
    direction = log.get("Rotation Direction")
    if direction is not None and direction.strip().upper() not in DIRECTIONS:
        issues.append(
            _issue(
                log,
                "Rotation Direction",
                "is not CC, CCW or CW",
                "set it to the scanner's direction (CC on every SkyScan log seen so far)",
            )
        )
    files, step = log.summary.number_of_files, log.summary.rotation_step_deg
    if files and step:
        step = _turn_step(log, files, step)
        span = (files - 1) * step
        rounding = _STEP_ROUNDING * (files - 1)  # the step is written with 3 decimals
        if log.summary.use_360_rotation and span + rounding < 360 - step - 1e-6:
            issues.append(
                _issue(
                    log,
                    "Use 360 Rotation",
                    f"says a full turn, but Number of Files={files} x Rotation Step={step:g} "
                    f"deg covers {span:g} deg",
                    "correct Number of Files or Rotation Step, or set Use 360 Rotation=NO",
                )
            )
        if span > 360 + step / 2 + 1e-6:
            issues.append(
                _issue(
                    log,
                    "Number of Files",
                    f"x Rotation Step={step:g} deg covers {span:g} deg, more than a full turn",
                    "keep the projections of one turn (and its closing view)",
                )
            )
    if log.get_bool("Partial Width"):
        if log.get("Image crop origin X") is None:
            issues.append(
                _issue(
                    log,
                    "Partial Width",
                    "crops the detector, but the .log lacks Image crop "
                    "origin X, so the rotation axis' column is unknown",
                    "copy Image crop origin X from the scanner's original .log",
                )
            )
        elif _scanner_columns(log, full_detector_columns) is None:
            scanner = log.get("Scanner") or "this scanner"
            issues.append(
                _issue(
                    log,
                    "Partial Width",
                    f"crops the detector, and the uncropped width of {scanner} is unknown, "
                    "so the rotation axis' column is unknown",
                    "set bonemet.skyscan.full-detector-columns: {"
                    f"{scanner}: <columns at binning 1>}} in the Dask config (or pass "
                    "full_detector_columns=)",
                )
            )
    summary = log.summary
    stated = summary.image_pixel_size_um
    camera = summary.camera_pixel_size_um
    if stated and camera:
        pitch = camera * (summary.camera_binning or (1, 1))[0]
        if not stated < pitch:
            issues.append(
                _issue(
                    log,
                    "Image Pixel Size (um)",
                    f"is not smaller than the detector pixel ({pitch:g} um with binning), so "
                    "the scan would have no magnification",
                    "copy Image Pixel Size and Camera Pixel Size from the scanner's original .log",
                )
            )
    return issues


def read_geometry(
    log: SkyScanLog,
    *,
    n_projections: int | None = None,
    n_rows: int | None = None,
    n_cols: int | None = None,
    full_detector_columns: int | None = None,
) -> LogGeometry:
    """Read the cone-beam geometry of a SkyScan acquisition ``.log`` (decisions: module doc).

    Parameters
    ----------
    log : SkyScanLog
        The acquisition ``.log``.
    n_projections, n_rows, n_cols : int, optional
        Override the counts (e.g. from the PNG headers when the log lacks them).
    full_detector_columns : int, optional
        Columns of the uncropped detector at binning 1, needed when ``Partial Width=ON``.
        The default is the ``bonemet.skyscan.full-detector-columns`` config, looked up by
        ``Scanner``.

    Returns
    -------
    LogGeometry

    Raises
    ------
    SkyScanLogError
        A malformed, unphysical or unsupported value (:func:`unsupported`), naming the log,
        the key, its value and the fix.
    ValueError
        Naming each key the log lacks and no argument supplied.
    """
    log.validate(keys=GEOMETRY_KEYS)  # a 0 or a NaN is named as such, not as "lacks"
    summary = log.summary
    values = {
        "Object to Source (mm)": summary.object_to_source_mm,
        "Camera to Source (mm)": summary.camera_to_source_mm,
        "Camera Pixel Size (um)": summary.camera_pixel_size_um,
        "Rotation Step (deg)": summary.rotation_step_deg,
        "Number of Files": n_projections or summary.number_of_files,
        "Number of Rows": n_rows or summary.number_of_rows,
        "Number of Columns": n_cols or summary.number_of_columns,
    }
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise ValueError(
            f"{log._where()}the .log lacks {', '.join(missing)}; pass the counts as arguments "
            "or build a ConeGeometry(...) by hand"
        )
    issues = unsupported(log, full_detector_columns=full_detector_columns)
    if issues:
        raise SkyScanLogError("; ".join(issue.message for issue in issues))
    binning = summary.camera_binning or (1, 1)
    pitch_mm = float(values["Camera Pixel Size (um)"]) * binning[0] / 1000
    sdd = float(values["Camera to Source (mm)"])
    sod_stated = float(values["Object to Source (mm)"])
    from_distances_um = pitch_mm * sod_stated / sdd * 1000
    stated_um = summary.image_pixel_size_um
    notes: dict[str, Any] = {"source": log.source, "scanner": log.get("Scanner")}
    if stated_um:
        sod = sdd * stated_um / (pitch_mm * 1000)
        notes["voxel_size_from"] = "Image Pixel Size (um): the scanner's calibration, as NRecon"
        if abs(stated_um / from_distances_um - 1) > _MISMATCH_NOTED:
            logger.info(
                "%sImage Pixel Size %.4f um (calibrated) differs from the %.4f um that the "
                "distances and camera pixel give (%+.1f%%); the voxel follows the calibration, "
                "as NRecon's does: Object to Source %.3f mm effective (%.3f mm stated)",
                log._where(), stated_um, from_distances_um,
                100 * (stated_um / from_distances_um - 1), sod, sod_stated,
            )  # fmt: skip
    else:
        sod = sod_stated
        notes["voxel_size_from"] = "the distances and camera pixel (no Image Pixel Size)"
    notes["image_pixel_size_um"] = {"stated": stated_um, "from_distances": from_distances_um}
    notes["object_to_source_mm"] = {"stated": sod_stated, "effective": sod}
    notes["camera_to_source_mm"] = sdd
    notes["voxel_size_um"] = pitch_mm * sod / sdd * 1000
    scaled = log.get_float("Scaled Image Pixel Size (um)")
    if scaled is not None:
        notes["scaled_image_pixel_size_um"] = scaled
    count, step = int(values["Number of Files"]), float(values["Rotation Step (deg)"])
    angles_deg, notes["angles"] = _angles(log, count, step)
    cor_offset, notes["axis_column"] = _axis_column(
        log, int(values["Number of Columns"]), binning[0], full_detector_columns
    )
    reference = log.get_float("Reference Intensity")
    notes["reference_intensity"] = reference
    rotation = log.get_float("Image Rotation")
    if rotation is not None:
        notes["image_rotation_deg"] = {
            "value": rotation,
            "decision": "applied by the acquisition software to the saved projections; not "
            "applied again",
        }
    connected = log.get_int("Number of connected scans")
    if connected is not None:
        notes["connected_scans"] = connected
    geometry = ConeGeometry(
        source_to_object=sod,
        source_to_detector=sdd,
        detector_pixel=pitch_mm,
        n_rows=int(values["Number of Rows"]),
        n_cols=int(values["Number of Columns"]),
        angles_deg=angles_deg,
        cor_offset=cor_offset,
        optical_axis_row=summary.optical_axis_line,
        calibration=notes,
    )
    return LogGeometry(geometry, reference, notes)


def _turn_step(log: SkyScanLog, count: int, step: float) -> float:
    """The step of a full turn as the scanner computed it, when the written one rounds it."""
    if log.summary.use_360_rotation and count > 1:
        for exact in (360 / (count - 1), 360 / count):
            if abs(exact - step) <= _STEP_ROUNDING + 1e-9:
                return exact
    return step


def _angles(log: SkyScanLog, count: int, step: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Projection angles from start, step and direction, and their notes.

    A full turn's step is what the scanner divided 360 degrees by: the written step (3
    decimals) is refined to ``360 / (count - 1)`` (a closing view at 360) or ``360 / count``
    when it is that, rounded.
    """
    written = log.get("Rotation Direction")
    direction = (written or "CC").strip().upper()
    sign = DIRECTIONS[direction]
    start = log.get_float("Scanning Start Angle") or 0.0
    notes: dict[str, Any] = {"count": count, "step_written_deg": step}
    step = _turn_step(log, count, step)
    angles = start + sign * step * np.arange(count, dtype=np.float64)
    span = (count - 1) * step
    full = span >= 360 - step - 1e-6
    notes.update(
        step_deg=step,
        start_deg=start,
        direction=direction if written else "CC (not stated; the SkyScan default)",
        span_deg=span,
        full_turn=full,
        closing_view=bool(full and abs(span - 360) < step / 2),
    )
    if full and log.summary.use_360_rotation is False:
        notes["full_turn_note"] = "the angles cover a full turn although Use 360 Rotation=NO"
    return angles, notes


def _axis_column(
    log: SkyScanLog, n_cols: int, binning: int, full_columns: int | None
) -> tuple[float, dict[str, Any]]:
    """Column offset of the rotation axis from the projection's centre, and its notes."""
    postalignment = float(log.summary.postalignment or 0.0)
    notes: dict[str, Any] = {"postalignment_px": postalignment, "crop_shift_px": 0.0}
    crop_x, crop_y = log.get_float("Image crop origin X"), log.get_float("Image crop origin Y")
    if crop_x is not None or crop_y is not None:
        notes["crop_origin_px"] = [crop_x, crop_y]
    if not log.get_bool("Partial Width"):
        return postalignment, notes
    full = _scanner_columns(log, full_columns)
    assert full is not None and crop_x is not None  # refused by unsupported() otherwise
    shift = (full / binning - n_cols) / 2 - crop_x
    notes.update(crop_shift_px=shift, full_detector_columns=full)
    return postalignment + shift, notes


def reference_intensity(log: SkyScanLog | Mapping[str, Any] | None) -> float | None:
    """``Reference Intensity`` of a log (parsed, or the sections a converted group records)."""
    if log is None:
        return None
    if not isinstance(log, SkyScanLog):
        from bonemet_dask.io.skyscan_log import format_skyscan_log, parse_skyscan_log

        log = parse_skyscan_log(format_skyscan_log(log))
    try:
        value = log.get_float("Reference Intensity")
    except SkyScanLogError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None
