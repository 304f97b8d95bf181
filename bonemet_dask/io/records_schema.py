"""What a MiceMediRec table must hold, and :class:`RecordProblem`: how readers say what is not.

The checks run on the cells as text, before pandas types the columns
(:func:`bonemet_dask.io.records_csv.load_records_csv` calls :func:`check_cells`), so a cell of
the wrong type is found, named and emptied, never coerced:

* the animal id column (:data:`ANIMAL_ID_NAMES`) and the week column (:data:`WEEK_NAMES`) are
  found by name as the metrics join finds them; a missing one is a ``missing-column`` warning;
* a week is a whole number (``2``, ``2.0``, ``week 2``); ages, weights, bone volumes and radiant
  efficiencies are finite numbers >= 0 (weights > 0); dates are ISO or day/month/year: any other
  cell is emptied (``wrong-type``, naming line, column and value);
* a row without an animal id is kept (``missing-id``: it matches no scan); two rows of one
  animal and week are one if identical, else both are left out (``duplicate-row``): the
  metrics join takes one record per scan.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

__all__ = [
    "ANIMAL_ID_NAMES",
    "NA_VALUES",
    "NUMBER_RE",
    "RECORD_PROBLEM_KINDS",
    "WEEK_NAMES",
    "RecordProblem",
    "Severity",
    "animal_id_column",
    "check_cells",
    "find_column",
]

Severity = Literal["error", "warning", "notice"]

ANIMAL_ID_NAMES: Final = ("animalid", "mouseid", "mouse", "animal", "id")
"""Names of the animal id column, lower case without spaces or punctuation, in order of
preference (MiceMediRec's is ``Animal ID``)."""
WEEK_NAMES: Final = ("week", "weeks", "timepoint", "timepointweek")
"""Names of the week column, as :func:`bonemet_dask.ops.metrics.join_records` looks it up."""

RECORD_PROBLEM_KINDS: Final[dict[str, Severity]] = {
    "unreadable": "error",
    "encoding": "notice",
    "delimiter": "notice",
    "decimal-comma": "notice",
    "empty-header": "warning",
    "duplicate-header": "warning",
    "store-key": "warning",
    "missing-column": "warning",
    "ragged-row": "warning",
    "wrong-type": "warning",
    "missing-id": "warning",
    "duplicate-row": "warning",
}
"""Every kind of :class:`RecordProblem` and its severity (:mod:`bonemet_dask.io.records_csv`)."""

# normalised column name -> (kind, lower bound, bound included): the typed MiceMediRec columns
_TYPED: Final[dict[str, tuple[str, float | None, bool]]] = {
    **dict.fromkeys(("ageweeks", "age"), ("number", 0.0, True)),
    **dict.fromkeys(("bodyweightg", "bodyweight", "weightg", "weight"), ("number", 0.0, False)),
    **dict.fromkeys(("bonevolumeroimm3", "bonevolumemm3", "bonevolume"), ("number", 0.0, True)),
    **dict.fromkeys(
        ("averageradiantefficiencypsuwcm2", "averageradiantefficiency", "radiantefficiency"),
        ("number", 0.0, True),
    ),
    **dict.fromkeys(
        ("experimentdate", "inoculationdate", "scandate", "date"), ("date", None, True)
    ),
}
NA_VALUES: Final = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)  # fmt: skip
"""pandas.read_csv's missing-value markers: such a cell is missing, not of a wrong type."""
NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,4})?")
"""A decimal number as a cell writes it (``fullmatch``); ``nan``/``inf`` are not numbers."""
_WEEK_RE: Final = re.compile(r"(?:w(?:ee)?k?s?\.?\s*)?\+?(\d{1,4})(?:\.0*)?", re.I)
_ISO_DATE_RE: Final = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
)
_DMY_DATE_RE: Final = re.compile(
    r"(\d{1,2})[./-](\d{1,2})[./-](\d{4}|\d{2})(?: \d{1,2}:\d{2}(?::\d{2})?)?"
)


@dataclass(frozen=True)
class RecordProblem:
    """Something wrong or guessed in ``record.csv``.

    Attributes
    ----------
    severity : {"error", "warning", "notice"}
        See :data:`RECORD_PROBLEM_KINDS`.
    kind : str
        One of :data:`RECORD_PROBLEM_KINDS`.
    path : str
        The file, as given.
    message : str
        What is wrong, what was done about it and how to fix the file; names ``path``.
    line : int or None
        The line of the file (the header is line 1), when one is concerned.
    column : str or None
        The column's header, when one is concerned.
    """

    severity: Severity
    kind: str
    path: str
    message: str
    line: int | None = None
    column: str | None = None

    @classmethod
    def of(cls, kind: str, path: str, message: str, **where: Any) -> RecordProblem:
        """A problem of ``kind`` with its severity; ``message`` follows ``'<path>' ``."""
        return cls(RECORD_PROBLEM_KINDS[kind], kind, path, f"{path!r} {message}", **where)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the store keeps it in ``/medirec``'s attributes)."""
        return asdict(self)


def find_column(columns: Iterable[object], names: Iterable[str]) -> str | None:
    """The first of ``columns`` whose name, lower-cased without punctuation, is in ``names``.

    Parameters
    ----------
    columns : iterable
        Column labels, e.g. ``DataFrame.columns``.
    names : iterable of str
        Normalised names (``"animalid"`` matches ``Animal ID`` and ``animal_id``), by preference.

    Returns
    -------
    str or None
        The column label as given, or None when none matches.
    """
    normal = {_normal(c): c for c in columns}
    for name in names:
        if name in normal:
            return normal[name]
    return None


def animal_id_column(columns: Iterable[object]) -> str | None:
    """The animal id column among ``columns`` (:data:`ANIMAL_ID_NAMES`), or None."""
    return find_column(columns, ANIMAL_ID_NAMES)


def _normal(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def check_cells(
    header: list[str], columns: list[list[str]], lines: list[int], path: str,
    problems: list[RecordProblem],
) -> tuple[str | None, list[int]]:  # fmt: skip
    """Check a table's cells (as text, one list per column), emptying those of a wrong type.

    Parameters
    ----------
    header : list of str
        Unique column names.
    columns : list of list of str
        The cells, column by column; wrong ones are replaced by ``""`` in place.
    lines : list of int
        The file line of each row.
    path : str
        The file, for the messages.
    problems : list of RecordProblem
        Appended to, in the order found.

    Returns
    -------
    (str or None, list of int)
        The animal id column (None when missing) and the rows to keep.
    """
    id_col, week = _check_required(header, path, problems)
    _check_types(header, columns, lines, path, problems, id_col, week)
    return id_col, _deduplicate(header, columns, lines, id_col, week, path, problems)


def _check_required(
    header: list[str], path: str, problems: list[RecordProblem]
) -> tuple[str | None, str | None]:
    """The animal id and week columns; a warning for each that is missing."""
    found = []
    for names, label in ((ANIMAL_ID_NAMES, "Animal ID"), (WEEK_NAMES, "Week")):
        column = find_column(header, names)
        if column is None:
            problems.append(RecordProblem.of(
                "missing-column", path, f"has no {label!r} column (its header: "
                f"{', '.join(map(repr, header[:20]))}{', ...' if len(header) > 20 else ''}): "
                f"the records cannot be matched to the scans by {label.lower()}; add the column "
                f"or rename it to {label!r}", column=label))  # fmt: skip
        found.append(column)
    return found[0], found[1]


def _check_types(
    header: list[str],
    columns: list[list[str]],
    lines: list[int],
    path: str,
    problems: list[RecordProblem],
    id_col: str | None,
    week: str | None,
) -> None:
    """Empty every cell of a typed column that is not of its type, with a warning each."""
    for name, cells in zip(header, columns, strict=True):
        if name == id_col:
            for i, cell in enumerate(cells):
                if cell in NA_VALUES:
                    problems.append(RecordProblem.of(
                        "missing-id", path, f"line {lines[i]}: no {name} (cell {cell!r}); the "
                        "row matches no scan: fill it in", line=lines[i], column=name))  # fmt: skip
            continue
        if name == week:
            kind, low, inclusive = "week", 0.0, True
        elif _normal(name) in _TYPED:
            kind, low, inclusive = _TYPED[_normal(name)]
        else:
            continue
        for i, cell in enumerate(cells):
            if cell in NA_VALUES:
                continue
            expected = _type_problem(cell, kind, low, inclusive)
            if expected is not None:
                cells[i] = ""
                problems.append(RecordProblem.of(
                    "wrong-type", path, f"line {lines[i]}, column {name!r}: {_short(cell)!r} is "
                    f"not {expected}; the cell is left empty: correct it in the file",
                    line=lines[i], column=name))  # fmt: skip


def _type_problem(cell: str, kind: str, low: float | None, inclusive: bool) -> str | None:
    """What ``cell`` should be, or None when it is a valid value of ``kind``."""
    if kind == "week":
        return None if _WEEK_RE.fullmatch(cell) else "a whole number of weeks (e.g. 2)"
    if kind == "date":
        return None if _is_date(cell) else "a date (e.g. 2023-03-09 or 09/03/2023)"
    what = f"a number {'>=' if inclusive else '>'} {low:g}"
    if not NUMBER_RE.fullmatch(cell):
        return what
    value = float(cell)
    if not math.isfinite(value) or (
        low is not None and (value < low or (value == low and not inclusive))
    ):
        return what
    return None


def _is_date(cell: str) -> bool:
    iso, dmy = _ISO_DATE_RE.fullmatch(cell), _DMY_DATE_RE.fullmatch(cell)
    try:
        if iso:
            dt.date(int(iso[1]), int(iso[2]), int(iso[3]))
            return True
        if dmy:  # day/month or month/day: one of them must fit
            a, b = int(dmy[1]), int(dmy[2])
            return 1 <= a <= 31 and 1 <= b <= 31 and min(a, b) <= 12
    except ValueError:
        return False
    return False


def _deduplicate(
    header: list[str],
    columns: list[list[str]],
    lines: list[int],
    id_col: str | None,
    week: str | None,
    path: str,
    problems: list[RecordProblem],
) -> list[int]:
    """Rows to keep: one record per (animal, week); repeats dropped, conflicts dropped whole."""
    if id_col is None or week is None:
        return list(range(len(lines)))
    ids, weeks = columns[header.index(id_col)], columns[header.index(week)]
    groups: dict[tuple[str, int | None], list[int]] = {}
    for i, (animal, cell) in enumerate(zip(ids, weeks, strict=True)):
        match = _WEEK_RE.fullmatch(cell)
        key = ("" if animal in NA_VALUES else animal, int(match[1]) if match else None)
        groups.setdefault(key, []).append(i)
    drop: set[int] = set()
    for (animal, number), rows in groups.items():
        if len(rows) < 2:
            continue
        where = ", ".join(str(lines[i]) for i in rows[:10]) + (", ..." if len(rows) > 10 else "")
        what = f"{id_col} {animal!r}" if animal else f"no {id_col}"
        when = f"week {number}" if number is not None else "no valid week"
        rows_cells = {tuple(c[i] for c in columns) for i in rows}
        if len(rows_cells) == 1:
            drop.update(rows[1:])
            problems.append(
                RecordProblem.of(
                    "duplicate-row",
                    path,
                    f"lines {where}: the same record of {what}, {when}, "
                    f"repeated; the first is kept: delete the copies",
                    line=lines[rows[1]],
                )
            )
        else:
            drop.update(rows)
            problems.append(RecordProblem.of(
                "duplicate-row", path, f"lines {where}: {len(rows)} different records of {what}, "
                f"{when}; all left out (a scan joins one record): keep the right one",
                line=lines[rows[0]]))  # fmt: skip
    return [i for i in range(len(lines)) if i not in drop]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
