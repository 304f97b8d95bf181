r"""SkyScan / NRecon ``.log`` files: a tolerant parser and a byte-exact writer.

A SkyScan 1276 writes one ``.log`` beside every scan and NRecon one beside every reconstruction.
They are Windows INI-like text::

    [System]\r\n
    Scanner=Skyscan1276\r\n
    Camera Pixel Size (um)=    6.50\r\n
    [Acquisition]\r\n
    Number Of Files=  261\r\n
    Object to Source (mm)=84.000\r\n

with CRLF line ends, Latin-1 encoding (a ``µ`` is the single byte ``0xB5``), values padded with
spaces and key case that varies between scanner versions (``Number Of Files`` /
``Number of Files``). :func:`parse_skyscan_log` accepts all of that; :func:`format_skyscan_log`
writes what a scanner writes, so the synthetic generator and the catalog share one definition of
the format. Whether the values are physical (a pixel size > 0, the detector beyond the axis) is
:mod:`bonemet_dask.io.skyscan_check`'s question (``parse_skyscan_log(..., validate=True)``).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "SkyScanLog",
    "SkyScanLogError",
    "SkyScanSummary",
    "format_skyscan_log",
    "normalise_key",
    "nrecon_reference",
    "parse_skyscan_log",
    "read_skyscan_log",
]

logger = logging.getLogger(__name__)

_LINE_BREAK_RE: Final = re.compile(r"\r\n|\r|\n")  # not str.splitlines: Latin-1 0x85 is NEL
_NUMBER_RE: Final = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?=\s|$|%|\()"
)
_COMMA_DECIMAL_RE: Final = re.compile(r"^\s*[+-]?\d+,\d+\s*$")
_BINNING_RE: Final = re.compile(r"\s*(\d{1,6})\s*[xX*]\s*(\d{1,6})\s*")
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # never in a text .log
_TRUE: Final = frozenset({"ON", "YES", "TRUE", "1", "Y"})
_FALSE: Final = frozenset({"OFF", "NO", "FALSE", "0", "N"})

# Decimals SkyScan/NRecon use for float values (keys normalised); other floats get 6, like "%f".
FLOAT_DECIMALS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "object to source (mm)": 3,
        "camera to source (mm)": 3,
        "camera pixel size (um)": 2,
        "image pixel size (um)": 6,
        "scaled image pixel size (um)": 6,
        "rotation step (deg)": 3,
        "image rotation": 4,
        "scanning start angle": 3,
        "cameraxyratio": 4,
        "postalignment": 2,
        "pixel size (um)": 5,
        "reconstruction angular range (deg)": 2,
        "angular step (deg)": 4,
        "cs static rotation (deg)": 2,
        "minimum for cs to image conversion": 6,
        "maximum for cs to image conversion": 6,
    }
)
_DEFAULT_DECIMALS: Final = 6


class SkyScanLogError(ValueError):
    """A ``.log`` value could not be converted, or a log could not be written."""


def normalise_key(name: str) -> str:
    """Normalise a key or section name: lower case, runs of whitespace collapsed to one space.

    ``"Number Of  Files "`` and ``"number of files"`` both give ``"number of files"``.
    """
    return " ".join(name.lower().split())


def _squash(name: str) -> str:
    return "".join(name.lower().split())


@dataclass(frozen=True)
class SkyScanSummary:
    """The values of a SkyScan/NRecon log that geometry and conversion need (None when absent).

    Attributes
    ----------
    object_to_source_mm, camera_to_source_mm : float or None
        Source-to-rotation-axis and source-to-detector distances (mm).
    camera_pixel_size_um, image_pixel_size_um : float or None
        Physical detector pixel and projected (object-plane) pixel size (µm).
    camera_binning : tuple of int or None
        ``(x, y)`` from ``"1x1"``, ``"2x2"``.
    number_of_files, number_of_rows, number_of_columns : int or None
        Projection count and projection size from the acquisition section.
    optical_axis_line : float or None
        Detector row hit by the central ray.
    rotation_step_deg : float or None
        Angle between projections (degrees).
    use_360_rotation : bool or None
        True for a full rotation, False for a short (180 deg + fan) scan.
    filter_type_description : str or None
        NRecon's reconstruction filter, e.g. ``"Hamming (Alpha=0.54)"``.
    cs_to_image_min, cs_to_image_max : float or None
        Attenuation window NRecon mapped to 0..255 ("Minimum/Maximum for CS to Image Conversion").
    postalignment : float or None
        NRecon's misalignment correction (pixels).
    sections_count : int or None
        Number of reconstructed slices ("Sections Count"), reconstruction logs only.
    """

    object_to_source_mm: float | None = None
    camera_to_source_mm: float | None = None
    camera_pixel_size_um: float | None = None
    camera_binning: tuple[int, int] | None = None
    image_pixel_size_um: float | None = None
    number_of_files: int | None = None
    number_of_rows: int | None = None
    number_of_columns: int | None = None
    optical_axis_line: float | None = None
    rotation_step_deg: float | None = None
    use_360_rotation: bool | None = None
    filter_type_description: str | None = None
    cs_to_image_min: float | None = None
    cs_to_image_max: float | None = None
    postalignment: float | None = None
    sections_count: int | None = None


# summary field -> (kind, key); looked up in any section, first found wins
_SUMMARY_KEYS: Final = (
    ("object_to_source_mm", "float", "Object to Source (mm)"),
    ("camera_to_source_mm", "float", "Camera to Source (mm)"),
    ("camera_pixel_size_um", "float", "Camera Pixel Size (um)"),
    ("camera_binning", "binning", "Camera binning"),
    ("image_pixel_size_um", "float", "Image Pixel Size (um)"),
    ("number_of_files", "int", "Number of Files"),
    ("number_of_rows", "int", "Number of Rows"),
    ("number_of_columns", "int", "Number of Columns"),
    ("optical_axis_line", "float", "Optical Axis (line)"),
    ("rotation_step_deg", "float", "Rotation Step (deg)"),
    ("use_360_rotation", "bool", "Use 360 Rotation"),
    ("filter_type_description", "str", "Filter type description"),
    ("cs_to_image_min", "float", "Minimum for CS to Image Conversion"),
    ("cs_to_image_max", "float", "Maximum for CS to Image Conversion"),
    ("postalignment", "float", "Postalignment"),
    ("sections_count", "int", "Sections Count"),
)


@dataclass(frozen=True)
class SkyScanLog:
    """A parsed SkyScan/NRecon log.

    Attributes
    ----------
    sections : Mapping[str, Mapping[str, str]]
        Normalised section name (``"acquisition"``) -> normalised key (``"number of files"``) ->
        value as written, stripped of its padding. File order is kept.
    key_names : Mapping[str, Mapping[str, str]]
        Same shape; the key as first spelled in the file (``"Number Of Files"``).
    section_names : Mapping[str, str]
        Normalised section name -> the name as spelled (``"Acquisition"``). Keys found before any
        section header live in section ``""``.
    source : str or None
        Where the log was read from (a path or URL), named in every message; not compared.
    control_chars : int
        Control characters (``0x00``-``0x1F`` but tab, CR and LF, and ``0x7F``) in the text:
        never in a scanner's log, so a binary file named ``.log`` (see
        :func:`~bonemet_dask.io.skyscan_check.check_skyscan_log`); not compared.
    """

    sections: Mapping[str, Mapping[str, str]]
    key_names: Mapping[str, Mapping[str, str]]
    section_names: Mapping[str, str]
    _squashed: Mapping[str, Mapping[str, str]] = field(init=False, repr=False, compare=False)
    source: str | None = field(default=None, compare=False)
    control_chars: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        squashed: dict[str, dict[str, str]] = {}
        for name, entries in self.sections.items():
            index = squashed.setdefault(name, {})
            for norm in entries:
                index.setdefault(_squash(norm), norm)
        object.__setattr__(self, "_squashed", squashed)

    def __hash__(self) -> int:
        return hash(tuple((s, tuple(d.items())) for s, d in self.sections.items()))

    def __len__(self) -> int:
        """Return the number of key/value entries in all sections."""
        return sum(len(d) for d in self.sections.values())

    def to_dict(self) -> dict[str, dict[str, str]]:
        """Return the log with its original spellings in file order (for ``format_skyscan_log``)."""
        return {
            self.section_names[s]: {self.key_names[s][k]: v for k, v in entries.items()}
            for s, entries in self.sections.items()
        }

    def get(self, key: str, section: str | None = None) -> str | None:
        """Return the stripped value of ``key`` or None when absent.

        Parameters
        ----------
        key : str
            Key name in any case and spacing: ``"number of files"`` finds ``Number Of Files``.
        section : str, optional
            Section to look in (any case); by default all sections, in file order.

        Returns
        -------
        str or None
        """
        if section is None:
            names = list(self.sections)
        else:
            wanted = normalise_key(section)
            names = [wanted] if wanted in self.sections else []
            if not names:
                names = [s for s in self.sections if _squash(s) == _squash(section)]
        norm, squashed = normalise_key(key), _squash(key)
        for name in names:
            entries = self.sections[name]
            if norm in entries:
                return entries[norm]
            hit = self._squashed.get(name, {}).get(squashed)
            if hit is not None:
                return entries[hit]
        return None

    def get_float(
        self, key: str, section: str | None = None, default: float | None = None
    ) -> float | None:
        """Return the value of ``key`` as a float (``"  84.000"``, ``"17.200 mm"``, ``"84,5"``).

        Raises
        ------
        SkyScanLogError
            If the key is present but its value does not start with a number.
        """
        value = self.get(key, section)
        if value is None:
            return default
        return _to_float(value, key)

    def get_int(
        self, key: str, section: str | None = None, default: int | None = None
    ) -> int | None:
        """Return the value of ``key`` as an int (``"  261"``; ``"261.0"`` is accepted).

        Raises
        ------
        SkyScanLogError
            If the key is present but its value is not an integral number.
        """
        value = self.get(key, section)
        if value is None:
            return default
        number = _to_float(value, key)
        if not number.is_integer():
            raise SkyScanLogError(
                f"key={key!r} has value {value!r}, expected a whole number; fix the .log file"
            )
        return int(number)

    def get_bool(
        self, key: str, section: str | None = None, default: bool | None = None
    ) -> bool | None:
        """Return the value of ``key`` as a bool: ON/OFF, YES/NO, TRUE/FALSE, 1/0, ``"ON (2)"``.

        Raises
        ------
        SkyScanLogError
            If the key is present but its value is none of those words.
        """
        value = self.get(key, section)
        if value is None:
            return default
        token = value.replace("(", " ").split()[0].upper() if value.strip() else ""
        if token in _TRUE:
            return True
        if token in _FALSE:
            return False
        raise SkyScanLogError(
            f"key={key!r} has value {value!r}, expected ON/OFF, YES/NO, TRUE/FALSE or 1/0; "
            "fix the .log file"
        )

    @cached_property
    def summary(self) -> SkyScanSummary:
        """The typed values that matter (:class:`SkyScanSummary`).

        A malformed value (one :meth:`validate` reports) gives None, with a logged
        warning naming :attr:`source`, the key and the value, once per log.
        """
        values: dict[str, object] = {}
        for name, kind, key in _SUMMARY_KEYS:
            try:
                values[name] = self._typed(kind, key)
            except SkyScanLogError as exc:
                logger.warning("%signoring a malformed .log value: %s", self._where(), exc)
                values[name] = None
        return SkyScanSummary(**values)  # type: ignore[arg-type]

    def _typed(self, kind: str, key: str) -> object:
        if kind == "float":
            return self.get_float(key)
        if kind == "int":
            return self.get_int(key)
        if kind == "bool":
            return self.get_bool(key)
        if kind == "binning":
            return _to_binning(self.get(key), key)
        return self.get(key)

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    def validate(self, keys: Iterable[str] | None = None) -> None:
        """Raise if :func:`~bonemet_dask.io.skyscan_check.check_skyscan_log` finds a problem.

        Parameters
        ----------
        keys : iterable of str, optional
            Check only these keys (any spelling, e.g. the geometry's); default all.

        Raises
        ------
        SkyScanLogError
            Naming :attr:`source`, every bad key, its value and the fix.
        """
        from bonemet_dask.io.skyscan_check import check_skyscan_log

        issues = check_skyscan_log(self, keys=keys)
        if issues:
            raise SkyScanLogError("; ".join(issue.message for issue in issues))


def _to_float(value: str, key: str) -> float:
    if _COMMA_DECIMAL_RE.match(value):
        return float(value.strip().replace(",", "."))
    match = _NUMBER_RE.match(value)
    if match is None:
        raise SkyScanLogError(
            f"key={key!r} has value {value!r}, expected a number; fix the .log file"
        )
    return float(match.group("num"))


def _to_binning(value: str | None, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    match = _BINNING_RE.fullmatch(value)
    if match is None:
        raise SkyScanLogError(f"key={key!r} has value {value!r}, expected e.g. '1x1' or '2x2'")
    return int(match.group(1)), int(match.group(2))


def _names_a_file(text: str) -> bool:
    """Whether a string passed as a log is its path.

    One line that names an existing file, or one line without ``Key=Value`` (no log's content
    is that): a missing file is then reported as missing, never parsed as an empty log.
    """
    if not text.strip() or "\n" in text or "\r" in text:
        return False
    return "=" not in text or os.path.isfile(text)


def read_skyscan_log(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    validate: bool = False,
) -> SkyScanLog:
    """Read and parse a SkyScan/NRecon ``.log`` file from a local path or an fsspec URL.

    Parameters
    ----------
    path : str or os.PathLike
        ``"scan.log"``, a :class:`pathlib.Path`, or a URL such as ``"s3://bucket/scan.log"``
        or ``"hf://datasets/BoneMet/BoneMet/.../851.log"``.
    storage_options : Mapping, optional
        Passed to fsspec for a remote URL (credentials, endpoint).
    validate : bool, default False
        Also check the physical values (see :func:`parse_skyscan_log`).

    Returns
    -------
    SkyScanLog
        With ``source`` set to ``path``.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    TypeError
        If ``path`` is neither a str nor a path.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"path must be a str or os.PathLike naming the .log, not {type(path).__name__}; "
            "parse content already read with parse_skyscan_log(data)"
        )
    name = os.fspath(path)
    return parse_skyscan_log(_read_log_file(name, storage_options), source=name, validate=validate)


def _read_log_file(path: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    import fsspec

    try:
        with fsspec.open(path, "rb", **dict(storage_options or {})) as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path!r} is not a file: pass the .log's path (read_skyscan_log), or its content "
            "(bytes or text) to parse_skyscan_log"
        ) from None
    except IsADirectoryError:
        raise FileNotFoundError(
            f"{path!r} is a folder: pass the .log file inside it, e.g. {path.rstrip('/')}/851.log"
        ) from None


def parse_skyscan_log(
    data: bytes | str | os.PathLike[str], *, source: str | None = None, validate: bool = False
) -> SkyScanLog:
    """Parse a SkyScan/NRecon ``.log`` file.

    Tolerant by design: bytes are decoded as Latin-1 (every byte is valid), CRLF, LF and CR line
    ends are accepted, blank lines and lines that are neither ``[Section]`` nor ``Key=Value`` are
    skipped, values are stripped of padding, and for a key repeated within a section the first value
    is kept (with a logged warning). A repeated section header continues that section.

    Parameters
    ----------
    data : bytes, str or os.PathLike
        The file content (``str``: already decoded), or the file itself: a path (``Path``, or,
        without ``source``, a one-line string that names an existing file or has no ``=``,
        which no log's content is) or an fsspec URL.  :func:`read_skyscan_log` says it
        explicitly.
    source : str, optional
        The file's path or URL, named in every message about this log.
    validate : bool, default False
        Also check the physical values
        (:func:`~bonemet_dask.io.skyscan_check.check_skyscan_log`) and refuse an empty log.

    Returns
    -------
    SkyScanLog
        Possibly empty (``len(log) == 0``) when nothing looked like ``Key=Value`` (unless
        ``validate``).

    Raises
    ------
    SkyScanLogError
        Only with ``validate``: the log is empty or binary, or a value is malformed or
        unphysical; the message names ``source``, each key, its value and the fix.
    TypeError
        If ``data`` is neither bytes, str nor a path.
    FileNotFoundError
        If ``data`` names a file that does not exist.
    """
    if isinstance(data, os.PathLike) or (
        isinstance(data, str) and source is None and _names_a_file(data)
    ):
        path = os.fspath(data)
        data = _read_log_file(path)
        source = source or path
    if isinstance(data, bytes | bytearray | memoryview):
        text = bytes(data).decode("latin-1")
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"data must be the .log's bytes or text, not {type(data).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    controls = len(_CONTROL_RE.findall(text))
    sections: dict[str, dict[str, str]] = {}
    key_names: dict[str, dict[str, str]] = {}
    section_names: dict[str, str] = {}
    current = ""
    skipped = 0
    for number, raw in enumerate(_LINE_BREAK_RE.split(text), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            current = normalise_key(name)
            section_names.setdefault(current, name)
            sections.setdefault(current, {})
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            skipped += 1
            logger.debug("skipping line %d of a .log: %r", number, raw)
            continue
        norm = normalise_key(key)
        entries = sections.setdefault(current, {})
        section_names.setdefault(current, current)
        if norm in entries:
            logger.log(
                logging.DEBUG if controls else logging.WARNING,  # a binary file: said once
                "duplicate key %r in section [%s] of %s (line %d): keeping the first value %r, "
                "ignoring %r",
                _short(key),
                _short(section_names[current]),
                source or "a .log",
                number,
                _short(entries[norm]),
                _short(value.strip()),
            )
            continue
        entries[norm] = value.strip()
        key_names.setdefault(current, {})[norm] = key
    if skipped:
        logger.debug("skipped %d line(s) that are not [Section] or Key=Value", skipped)
    for name in sections:
        key_names.setdefault(name, {})
    log = SkyScanLog(
        sections=sections,
        key_names=key_names,
        section_names=section_names,
        source=source,
        control_chars=controls,
    )
    if validate:
        log.validate()
    return log


def _short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for a message (a binary file's "values" are long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_skyscan_log(sections: Mapping[str, Mapping[str, object]]) -> bytes:
    """Write a ``.log`` file the way SkyScan/NRecon do: ``[Section]``, ``Key=Value``, CRLF, Latin-1.

    Values are written as follows: ``str`` as given (pad it yourself to imitate a scanner's
    alignment); ``bool`` as ``ON``/``OFF``; integers in decimal, except for keys SkyScan writes
    as floats; real numbers with fixed decimals per key, as SkyScan writes them
    (``Object to Source (mm)=84.000``, ``Image Pixel Size (um)=9.000000``, ``Postalignment=-4.00``;
    see ``FLOAT_DECIMALS``), 6 decimals for any other key. The output is deterministic: same
    input, same bytes.

    Parameters
    ----------
    sections : Mapping[str, Mapping[str, object]]
        Section name -> key -> value, in the order to write. A section named ``""`` is written
        without a header (only allowed first).

    Returns
    -------
    bytes
        The file content, ending with CRLF.

    Raises
    ------
    SkyScanLogError
        If a name or value has a line break, a key contains ``=`` or starts with ``[``, a section
        name contains ``]``, a float is not finite, or text is not encodable in Latin-1.
    """
    lines: list[str] = []
    for position, (section, entries) in enumerate(sections.items()):
        if "\r" in section or "\n" in section or "]" in section or "[" in section:
            raise SkyScanLogError(
                f"section={section!r} may not contain '[', ']' or a line break; rename it"
            )
        if section == "":
            if position:
                raise SkyScanLogError(
                    "section='' (keys before any header) must come first; move it to the front"
                )
        else:
            lines.append(f"[{section}]")
        for key, value in entries.items():
            if (
                not key.strip()
                or "=" in key
                or "\r" in key
                or "\n" in key
                or key.lstrip()[:1] == "["
            ):
                raise SkyScanLogError(
                    f"key={key!r} in section [{section}] must be non-empty, without '=', a line "
                    "break or a leading '['; rename it"
                )
            lines.append(f"{key}={_format_value(key, value, section)}")
    text = "".join(line + "\r\n" for line in lines)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise SkyScanLogError(
            f"character {bad!r} cannot be written in a SkyScan .log (Latin-1 only); "
            "replace it, e.g. 'um' for a micro sign outside Latin-1"
        ) from exc


def _format_value(key: str, value: object, section: str) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "ON" if value else "OFF"
    elif isinstance(value, numbers.Integral) and normalise_key(key) not in FLOAT_DECIMALS:
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise SkyScanLogError(
                f"key={key!r} in section [{section}] has value {value!r}; write a finite number"
            )
        decimals = FLOAT_DECIMALS.get(normalise_key(key), _DEFAULT_DECIMALS)
        text = f"{number:.{decimals}f}"
    else:
        text = str(value)
    if "\r" in text or "\n" in text:
        raise SkyScanLogError(
            f"key={key!r} in section [{section}] has a line break in its value {text!r}; remove it"
        )
    return text


def nrecon_reference(log: SkyScanLog | None, shape: Sequence[int] | None) -> dict[str, Any] | None:
    """What NRecon used for a published reconstruction: its grid shape and its grey window.

    ``reconstruct`` follows it, so our volume has the published volume's voxels and grey 75
    means what it means there.

    Parameters
    ----------
    log : SkyScanLog or None
        The Recon-CT ``.log``.
    shape : sequence of 3 int or None
        The published stack's ``(slices, height, width)``.

    Returns
    -------
    dict or None
        ``{"shape": [n, h, w] or None, "window_per_mm": [lo, hi] or None}`` (JSON-able); None
        when neither is known.
    """
    window = None
    if log is not None:
        lo, hi = log.summary.cs_to_image_min, log.summary.cs_to_image_max
        if lo is not None and hi is not None and hi > lo:
            window = [float(lo), float(hi)]
    if window is None and shape is None:
        return None
    return {"shape": None if shape is None else [int(n) for n in shape], "window_per_mm": window}
