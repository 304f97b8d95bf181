"""Is a SkyScan/NRecon ``.log`` physical? Each value the pipeline uses, checked with its fix.

:func:`check_skyscan_log` is what ``scan_source`` runs on the ``.log`` beside every stack (a
problem quarantines that scan only, ``invalid-log``) and what
:meth:`~bonemet_dask.io.skyscan_log.SkyScanLog.validate` raises from, e.g. before
:meth:`~bonemet_dask.geometry.ConeGeometry.from_skyscan_log` builds a geometry: a zero distance or
a NaN pixel size is named as such, with the file, the key, the value and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from bonemet_dask.io.skyscan_log import SkyScanLog, SkyScanLogError, normalise_key

__all__ = ["LogIssue", "check_skyscan_log", "spelling"]

# key -> (kind, rule, what the value is, an example): the values convert, geometry and
# reconstruct use; "positive" is finite and > 0, "finite" any finite number.
_PHYSICAL: Final = (
    ("Image Pixel Size (um)", "float", "positive", "the voxel size in µm", "9.000000"),
    ("Camera Pixel Size (um)", "float", "positive", "the detector pixel pitch in µm", "6.50"),
    ("Object to Source (mm)", "float", "positive", "the source to axis distance in mm", "84.000"),
    ("Camera to Source (mm)", "float", "positive", "the source to detector distance in mm",
     "286.500"),
    ("Rotation Step (deg)", "float", "positive", "the angle between projections", "0.800"),
    ("Number of Files", "int", "positive", "the number of projections", "261"),
    ("Number of Rows", "int", "positive", "the rows of a projection", "2688"),
    ("Number of Columns", "int", "positive", "the columns of a projection", "4032"),
    ("Sections Count", "int", "positive", "the number of reconstructed slices", "2685"),
    ("Camera binning", "binning", "positive", "the detector binning", "1x1"),
    ("Optical Axis (line)", "float", "finite", "the detector row of the central ray", "1326"),
    ("Postalignment", "float", "finite", "the misalignment correction in pixels", "-4.00"),
    ("Minimum for CS to Image Conversion", "float", "finite", "the grey window's low end",
     "0.000000"),
    ("Maximum for CS to Image Conversion", "float", "finite", "the grey window's high end",
     "0.070000"),
    ("Use 360 Rotation", "bool", "any", "whether the scan turned 360 deg", "NO"),
    ("Scanning Start Angle", "float", "finite", "the angle of the first projection", "0.000"),
    ("Image crop origin X", "float", "finite", "the first column of a cropped detector", "0"),
    ("Image crop origin Y", "float", "finite", "the first row of a cropped detector", "0"),
    ("Partial Width", "bool", "any", "whether the detector was cropped", "OFF"),
    ("Number of connected scans", "int", "positive", "the sub-scans of an oversize scan",
     "1"),
    ("Reference Intensity", "float", "positive", "the flat-field level", "58000"),
    ("Image Rotation", "float", "finite", "the camera's in-plane tilt in degrees", "0.0000"),
)  # fmt: skip
_ORIGINAL: Final = "or copy it from the scanner's original .log"


@dataclass(frozen=True)
class LogIssue:
    """One thing wrong with a ``.log``: what :func:`check_skyscan_log` reports.

    Attributes
    ----------
    key : str
        The key as spelled in the file (``""`` for the log as a whole).
    value : str or None
        Its value as written (None for the log as a whole).
    problem : str
        What is wrong (``"must be a finite number > 0"``).
    fix : str
        What to do.
    source : str or None
        The log's path, when known.
    """

    key: str
    value: str | None
    problem: str
    fix: str
    source: str | None = None

    @property
    def reason(self) -> str:
        """The problem and its fix, without the file: ``Key='value' must ...; set it to ...``."""
        what = f"{self.key}={_short(self.value or '')!r} " if self.key else ""
        return f"{what}{self.problem}; {self.fix}"

    @property
    def message(self) -> str:
        """:attr:`reason`, after the log's path when known."""
        return f"{self.source}: {self.reason}" if self.source else self.reason


def check_skyscan_log(log: SkyScanLog, *, keys: Iterable[str] | None = None) -> list[LogIssue]:
    """The values of a ``.log`` that no scanner writes, each with its fix.

    Checks that the log holds at least one ``Key=Value`` line and no control characters (a
    binary file named ``.log``); that the values the pipeline uses, when present, parse and are
    physical: ``Image Pixel Size (um)``, ``Camera Pixel Size (um)``, ``Object to Source (mm)``,
    ``Camera to Source (mm)`` and ``Rotation Step (deg)`` finite and > 0; ``Number of Files``,
    ``Number of Rows``, ``Number of Columns`` and ``Sections Count`` whole and > 0; ``Camera
    binning`` like ``2x2``; ``Optical Axis (line)``, ``Postalignment`` and the CS to Image
    window finite; ``Use 360 Rotation`` a yes/no word; and that ``Camera to Source`` exceeds
    ``Object to Source`` and the window's maximum its minimum. An absent key is not a problem
    (whoever needs it says so).

    Parameters
    ----------
    log : SkyScanLog
        A parsed log (:func:`parse_skyscan_log`); its ``source`` is named in the messages.
    keys : iterable of str, optional
        Check only these keys (any case and spacing); the whole-log checks are then skipped.

    Returns
    -------
    list of LogIssue
        Empty when the log is fine.
    """
    source = log.source
    wanted = None if keys is None else {_squash(k) for k in keys}
    issues: list[LogIssue] = []
    original = "replace it with the scanner's original .log"
    if wanted is None and len(log) == 0:
        problem = "holds no 'Key=Value' line (empty, or not a SkyScan .log)"
        issues.append(LogIssue("", None, problem, original, source))
    if wanted is None and log.control_chars:
        problem = f"holds {log.control_chars} control byte(s): a binary file, not a SkyScan .log"
        issues.append(LogIssue("", None, problem, original, source))
    numbers: dict[str, float] = {}
    for key, kind, rule, what, example in _PHYSICAL:
        value = log.get(key)
        if value is None or (wanted is not None and _squash(key) not in wanted):
            continue
        spelled = spelling(log, key)
        fix = f"set it to {what} (e.g. {spelled}={example}) {_ORIGINAL}"
        problem = _physical_problem(log, kind, rule, key)
        if problem is not None:
            issues.append(LogIssue(spelled, value, problem, fix, source))
        elif kind == "float":
            numbers[key] = float(log.get_float(key))  # type: ignore[arg-type]
    pairs = (
        ("Object to Source (mm)", "Camera to Source (mm)", "the detector must be farther from "
         "the source than the rotation axis"),
        ("Minimum for CS to Image Conversion", "Maximum for CS to Image Conversion",
         "the grey window's maximum must exceed its minimum"),
    )  # fmt: skip
    for low, high, why in pairs:
        if low in numbers and high in numbers and not numbers[high] > numbers[low]:
            spelled = spelling(log, high)
            problem = f"is not greater than {spelling(log, low)}={log.get(low)!r}: {why}"
            fix = "correct the wrong one, or copy both from the scanner's original .log"
            issues.append(LogIssue(spelled, log.get(high), problem, fix, source))
    return issues


def _physical_problem(log: SkyScanLog, kind: str, rule: str, key: str) -> str | None:
    """What is wrong with one value of :data:`_PHYSICAL`, or None."""
    try:
        typed = log._typed(kind, key)
    except SkyScanLogError:
        expected = {"float": "a number", "int": "a whole number", "binning": "like '2x2'",
                    "bool": "a yes/no word (YES/NO, ON/OFF)"}[kind]  # fmt: skip
        return f"is not {expected}"
    if kind == "binning":
        return "must be >= 1 in both directions" if min(typed) < 1 else None  # type: ignore[arg-type]
    if rule == "any":
        return None
    number = float(typed)  # type: ignore[arg-type]
    if not math.isfinite(number):
        return "must be a finite number"
    if rule == "positive" and not number > 0:
        return "must be > 0"
    return None


def spelling(log: SkyScanLog, key: str) -> str:
    """The key as the file spells it (first section holding it), else as given."""
    norm, squashed = normalise_key(key), _squash(key)
    for entries in log.key_names.values():
        for name, spelled in entries.items():
            if name == norm or _squash(name) == squashed:
                return spelled
    return key


def _squash(name: str) -> str:
    return "".join(name.lower().split())


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
