"""The BoneMet folder layout and file naming: tolerant parsers and canonical writers.

The published tree (DESIGN.md section 1) spells the same thing several ways:
``1. Rotation-X-ray`` / ``Rotation-X-Ray``, ``5. ROI-CT`` / ``RoI-CT``, ``851 left tibia`` /
``851 Left Tibia`` / ``851L proximal tibia``, ``week 0`` / ``Week 0``.  Everything that reads or
writes names goes through this module, so the synthetic generator and the source catalog cannot
drift apart.

Canonical keys used everywhere else in the package:

* component: ``rotation_xray``, ``recon_ct``, ``seg_ct``, ``regist_ct``, ``roi_ct``
* side: ``left``, ``right``, ``both`` (whole-hindlimb scans)
* week: an ``int`` in ``0..MAX_WEEK``
* index: the last run of digits in a file stem, an ``int`` (sort numerically, never lexically)

Every parser takes any text and returns None (never raises) for what it does not recognise.  Only
ASCII digits count, and ids and indices of more than :data:`MAX_ID_DIGITS` digits are refused, so a
parsed id is a short run of ``0-9`` that cannot leave the store root when joined into a path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

COMPONENTS: Final = ("rotation_xray", "recon_ct", "seg_ct", "regist_ct", "roi_ct")
"""Canonical component keys, in pipeline order."""

SIDES: Final = ("left", "right", "both")
"""Canonical side keys; ``both`` marks a whole-hindlimb scan (projections, reconstructions)."""

PER_TIBIA_COMPONENTS: Final = frozenset({"seg_ct", "regist_ct", "roi_ct"})
"""Components stored once per tibia (their scan folders carry a side)."""

MAX_WEEK: Final = 156
"""The largest week a week folder may name: three years, longer than a laboratory mouse lives.

``week 2024`` (a year typed as a week) or ``week 99999999999999999999`` is a mistake, not a scan.
"""

MAX_ID_DIGITS: Final = 18
"""Animal ids and slice indices longer than this (leading zeros aside) are not parsed: every
such number fits an int64, and text of thousands of digits cannot stall or crash ``int()``."""

# Published folder spellings; the first of each tuple is what the generator writes by default.
COMPONENT_FOLDERS: Final[dict[str, tuple[str, ...]]] = {
    "rotation_xray": ("1. Rotation-X-ray", "1. Rotation-X-Ray", "Rotation-X-ray"),
    "recon_ct": ("2. Recon-CT", "Recon-CT"),
    "seg_ct": ("3. Seg-CT", "Seg-CT"),
    "regist_ct": ("4. Regist-CT", "Regist-CT"),
    "roi_ct": ("5. ROI-CT", "5. RoI-CT", "ROI-CT"),
}

_COMPONENT_RE: Final = re.compile(
    r"""^\s*(?:[0-9]+\s*(?:[.)_-]\s*)?)?     # optional numbered prefix: "1. ", "2) ", "3_"
        (?P<name>rotation[\s_-]*x[\s_-]*rays?|recon[\s_-]*ct|seg[\s_-]*ct|regist[\s_-]*ct|roi[\s_-]*ct)
        \s*$""",
    re.IGNORECASE | re.VERBOSE,
)
# "week 3", "Week_3", "week-3", "wk 3", "w3": a "-" glued to the word (or spaced on both sides) is
# a separator; "week -1" (a minus sign before the digits) is a negative week, not week 1.
_WEEK_RE: Final = re.compile(
    r"^\s*w(?:ee)?k?(?:\s*_\s*|-\s*|\s*-\s+|\s*)(?P<week>[0-9]+)\s*$", re.IGNORECASE
)
_WEEK_LIKE_RE: Final = re.compile(
    r"^\s*w(?:ee)?k?[\s_-]*?(?P<sign>[-+]?)(?P<week>[0-9]+)\s*$", re.IGNORECASE
)
_SCAN_RE: Final = re.compile(  # matched against the stripped name: no nested \s* to backtrack
    r"""^(?P<mouse>[0-9]+)                       # leading integer id (ASCII digits)
        (?:(?P<suffix>[LRlr])(?![A-Za-z]))?       # optional side letter glued to it ("851L")
        (?P<rest>.*)$""",
    re.VERBOSE | re.DOTALL,
)
_SIDE_WORD_RE: Final = re.compile(r"\b(?P<side>left|right)\b", re.IGNORECASE)
_DIGITS_RE: Final = re.compile(r"[0-9]+")


def parse_component(folder_name: str) -> str | None:
    """Return the canonical component key of a component folder name, or None.

    Parameters
    ----------
    folder_name : str
        One path segment, e.g. ``"1. Rotation-X-ray"``, ``"Rotation-X-Ray"``, ``"5. RoI-CT"``.

    Returns
    -------
    str or None
        One of :data:`COMPONENTS`, or None when the name is not a component folder.
    """
    match = _COMPONENT_RE.match(folder_name)
    if match is None:
        return None
    squashed = re.sub(r"[\s_-]", "", match.group("name").lower())
    if squashed.startswith("rotation"):
        return "rotation_xray"
    return {"reconct": "recon_ct", "segct": "seg_ct", "registct": "regist_ct", "roict": "roi_ct"}[
        squashed
    ]


def _short_int(digits: str) -> int | None:
    """``int(digits)``, or None when it has more than :data:`MAX_ID_DIGITS` significant digits."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= MAX_ID_DIGITS else None


def parse_week(folder_name: str) -> int | None:
    """Return the week of a folder name (``"week 0"``, ``"Week 11"``, ``"week_3"``), or None.

    Parameters
    ----------
    folder_name : str
        One path segment.

    Returns
    -------
    int or None
        The week, in ``0..MAX_WEEK``; None when the name is not a week folder or names a week
        outside that range (``"week -1"``, ``"week 2024"``: see :func:`invalid_week`).
    """
    match = _WEEK_RE.match(folder_name)
    week = _short_int(match.group("week")) if match else None
    return week if week is not None and week <= MAX_WEEK else None


def invalid_week(folder_name: str) -> str | None:
    """Say why a folder named like a week folder names no valid week, or return None.

    Parameters
    ----------
    folder_name : str
        One path segment.

    Returns
    -------
    str or None
        E.g. ``"week -1 is negative"`` for ``"week -1"`` or ``"week 2024 is above 156"``; None when
        the name is a valid week (:func:`parse_week` gives it) or not week-shaped at all.
    """
    if parse_week(folder_name) is not None:
        return None
    match = _WEEK_LIKE_RE.match(folder_name)
    if match is None:
        return None
    digits = match.group("week")
    shown = digits if len(digits) <= 24 else f"{digits[:12]}...({len(digits)} digits)"
    if match.group("sign") == "-" and digits.strip("0"):
        return f"week -{shown} is negative"
    if _WEEK_RE.match(folder_name) is None:
        return f"{folder_name.strip()!r} is not 'week <number>'"
    return f"week {shown} is above {MAX_WEEK}"


@dataclass(frozen=True, slots=True)
class ScanName:
    """What a scan folder name says: mouse id, side and the original spelling.

    Attributes
    ----------
    mouse : str
        The animal id as written (leading integer, e.g. ``"851"``); text, so leading zeros survive.
    side : str
        ``"left"``, ``"right"``, or ``"both"`` when the name carries no side (whole-hindlimb scans).
    original : str
        The folder name exactly as found.
    """

    mouse: str
    side: str
    original: str


def parse_scan_folder(folder_name: str) -> ScanName | None:
    """Parse a scan folder name: ``"851"``, ``"851 left tibia"``, ``"851L proximal tibia"``...

    The side comes from an ``L``/``R`` suffix glued to the id or from the words ``left``/``right``
    anywhere after it (any case).  A name with both must agree with itself.

    Parameters
    ----------
    folder_name : str
        One path segment.

    Returns
    -------
    ScanName or None
        None when the name does not start with an integer id (ASCII digits, at most
        :data:`MAX_ID_DIGITS` of them after leading zeros) or names two different sides.
    """
    match = _SCAN_RE.match(folder_name.strip())
    if match is None or _short_int(match.group("mouse")) is None:
        return None
    suffix, rest = match.group("suffix"), match.group("rest").strip()
    sides = set()
    if suffix:
        sides.add("left" if suffix in "Ll" else "right")
    sides.update(word.lower() for word in _SIDE_WORD_RE.findall(rest))
    if len(sides) > 1:
        return None
    side = sides.pop() if sides else "both"
    return ScanName(mouse=match.group("mouse"), side=side, original=folder_name)


def parse_index(file_name: str) -> int | None:
    """Return the slice or projection index of a file: the last run of digits in its stem.

    ``"851_rec00001234.png"`` gives 1234, ``"851_0007.png"`` gives 7, ``"scan.png"`` gives None,
    and so does a last run of more than :data:`MAX_ID_DIGITS` significant digits (no real index).
    """
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    runs = _DIGITS_RE.findall(stem)
    return _short_int(runs[-1]) if runs else None


def sanitize_segment(name: str) -> str:
    """Make a safe store path segment from an id: letters, digits, ``_``, ``-`` and ``.`` only.

    ``"851 left tibia"`` becomes ``"851_left_tibia"``; the original name is kept in attributes.

    Raises
    ------
    ValueError
        If nothing printable is left, or the result is ``.`` / ``..``.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("_")
    if not cleaned or cleaned in {".", ".."}:
        raise ValueError(
            f"name={name!r} has no characters usable in a store path; rename the folder "
            "so that it starts with the animal id"
        )
    return cleaned


# --------------------------------------------------------------------------------------------
# Writers: the canonical published spelling (and variants, for tests of the parsers above).
# --------------------------------------------------------------------------------------------


def scan_folder_name(component: str, mouse: str, side: str, *, variant: int = 0) -> str:
    """The scan folder name the published tree uses for one scan.

    Parameters
    ----------
    component : str
        A key of :data:`COMPONENTS`.
    mouse : str
        Animal id, e.g. ``"851"``.
    side : str
        ``"left"``, ``"right"`` or ``"both"``; per-tibia components need left/right.
    variant : int, optional
        0 is the canonical spelling; other values pick one of the spellings seen in the wild
        (``Left Tibia``, ``L``/``R`` suffixes, ``RoI`` case), so readers are exercised.

    Returns
    -------
    str
        The folder name, e.g. ``"851 left tibia"`` or ``"851L proximal tibia"``.
    """
    _check_choice("component", component, COMPONENTS)
    _check_choice("side", side, SIDES)
    if component not in PER_TIBIA_COMPONENTS:
        return mouse
    if side == "both":
        raise ValueError(
            f"side='both' is not valid for component={component!r}: it is stored per tibia, "
            "pass side='left' or side='right'"
        )
    letter = "L" if side == "left" else "R"
    if component == "roi_ct":
        return (f"{mouse}{letter} proximal tibia", f"{mouse} {side} proximal tibia")[variant % 2]
    return (
        f"{mouse} {side} tibia",
        f"{mouse} {side.capitalize()} Tibia",
        f"{mouse}{letter} tibia",
    )[variant % 3]


def week_folder_name(week: int, *, variant: int = 0) -> str:
    """``"week 0"`` (canonical) or, for variants, ``"Week 0"``."""
    if not 0 <= week <= MAX_WEEK:
        raise ValueError(f"week={week} must be in 0..{MAX_WEEK}; weeks count from 0")
    return (f"week {week}", f"Week {week}")[variant % 2]


def component_folder_name(component: str, *, variant: int = 0) -> str:
    """The component folder name: canonical (variant 0) or one of the published variants."""
    _check_choice("component", component, COMPONENTS)
    spellings = COMPONENT_FOLDERS[component]
    return spellings[variant % len(spellings)]


def slice_file_name(component: str, mouse: str, side: str, index: int) -> str:
    """File name of one image in a stack, in the style of the tool that wrote it.

    SkyScan projections ``851_0007.png``; NRecon slices ``851_rec00001234.png``; DataViewer-style
    crops ``851_left_tibia_00001234.png``; registered ``851_left_tibia_reg00001234.png``; RoI
    ``851L_roi00000012.png``.  Only the last run of digits matters to readers.
    """
    _check_choice("component", component, COMPONENTS)
    if index < 0:
        raise ValueError(f"index={index} must be >= 0")
    if component == "rotation_xray":
        return f"{mouse}_{index:04d}.png"
    if component == "recon_ct":
        return f"{mouse}_rec{index:08d}.png"
    if component == "seg_ct":
        return f"{mouse}_{side}_tibia_{index:08d}.png"
    if component == "regist_ct":
        return f"{mouse}_{side}_tibia_reg{index:08d}.png"
    return f"{mouse}{'L' if side == 'left' else 'R'}_roi{index:08d}.png"


def file_name_template(names: Sequence[str]) -> str | None:
    """A format template that spells every file name of a stack from its index, or None.

    The digits are the last run of digits in the stem (:func:`parse_index`); the template is
    ``prefix{index:0Nd}suffix`` where ``N`` is the digit count of the first name (zero padding
    to ``N`` digits, longer numbers as they are), else ``prefix{index:d}suffix``; braces of the
    prefix and suffix are escaped.  ``["851_rec00000008.png", "851_rec00000009.png"]`` gives
    ``"851_rec{index:08d}.png"``; names with different prefixes or mixed padding give None (keep
    the names themselves).

    Parameters
    ----------
    names : sequence of str
        File names (no folder), in any order.

    Returns
    -------
    str or None
        Use it as ``template.format(index=i)``.
    """
    if not names:
        return None
    first = names[0]
    stem_end = first.rfind(".") if "." in first else len(first)
    runs = list(_DIGITS_RE.finditer(first[:stem_end]))
    if not runs:
        return None
    start, end = runs[-1].span()

    def escape(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    prefix, suffix = escape(first[:start]), escape(first[end:])
    for spec in (f"0{end - start}d", "d"):
        template = f"{prefix}{{index:{spec}}}{suffix}"
        indices = [parse_index(name) for name in names]
        if all(
            i is not None and template.format(index=i) == name
            for i, name in zip(indices, names, strict=True)
        ):
            return template
    return None


def _check_choice(argument: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{argument}={value!r} is not one of {', '.join(map(repr, allowed))}")
