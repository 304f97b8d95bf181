"""Reading MiceMediRec's ``record.csv`` as people save it, with every problem as data.

Excel on Windows saves Windows-1252 (cp1252), European locales separate with semicolons and
write decimal commas, hands edit headers: :func:`load_records_csv` reads all of that and says
what it did, and what it left out, as :class:`RecordProblem` s naming the file, line and column.
It never raises on the file's content: a bad ``record.csv`` must never block the images.

* Encoding: UTF-8 (with or without BOM), UTF-16 with BOM, else cp1252, else Latin-1 (a
  ``notice``). A file with NUL or other control bytes is not a table (an ``error``).
* Delimiter: comma, semicolon or tab, whichever splits the first lines into the same number of
  cells (a ``notice`` when not a comma); in a semicolon or tab table, decimal commas of a numeric
  column are read as decimal points (a ``notice`` naming the columns).
* Header: empty names of columns that hold values become ``column <k>``; repeated names get
  ``.1``, ``.2`` (pandas' spelling); both are ``warning`` s.
* Rows: blank lines are skipped; a row with more (non-empty) cells than the header is dropped,
  one with fewer has its missing cells left empty (``warning``).
* Cells: checked as text by :func:`bonemet_dask.io.records_schema.check_cells` (required
  columns, typed cells, one record per scan), then typed as :func:`pandas.read_csv` types them.

Severities: ``error`` (nothing could be read), ``warning`` (the table was read without
something: ``convert`` reports the file and exits 3), ``notice`` (read whole, but how was a
guess: logged only).
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from bonemet_dask.io.records_schema import (
    ANIMAL_ID_NAMES,
    NA_VALUES,
    NUMBER_RE,
    RECORD_PROBLEM_KINDS,
    WEEK_NAMES,
    RecordProblem,
    animal_id_column,
    check_cells,
    find_column,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ANIMAL_ID_NAMES",
    "RECORD_PROBLEM_KINDS",
    "WEEK_NAMES",
    "RecordProblem",
    "RecordsCsv",
    "RecordsCsvError",
    "animal_id_column",
    "find_column",
    "load_records_csv",
    "log_problems",
    "read_records_csv",
]

logger = logging.getLogger(__name__)

_DELIMITERS: Final = (",", ";", "\t")
_DELIMITER_NAMES: Final = {",": "commas", ";": "semicolons (';')", "\t": "tabs"}
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_COMMA_NUMBER_RE: Final = re.compile(r"[+-]?\d+,\d+")
_MAX_LISTED: Final = 20
"""Problems logged one by one; the rest are counted."""


class RecordsCsvError(ValueError):
    """``record.csv`` holds no table at all (empty, binary, not text); the message says why."""


@dataclass(frozen=True)
class RecordsCsv:
    """What :func:`load_records_csv` read.

    Attributes
    ----------
    table : pandas.DataFrame or None
        The records (None when the file holds no table: see the ``error`` problem).
    problems : tuple of RecordProblem
        In file order: how the file was read, then the header, then the rows.
    encoding, delimiter : str
        How the file was read (``""`` when it was not).
    lines : tuple of int
        The file line of each row of ``table``.
    """

    table: pd.DataFrame | None
    problems: tuple[RecordProblem, ...]
    encoding: str = ""
    delimiter: str = ""
    lines: tuple[int, ...] = ()

    @property
    def reportable(self) -> tuple[RecordProblem, ...]:
        """The errors and warnings: what ``convert`` reports (exit code 3)."""
        return tuple(p for p in self.problems if p.severity != "notice")


def read_records_csv(data: bytes | Any, *, path: str = "record.csv") -> pd.DataFrame:
    """A MiceMediRec ``record.csv`` as a DataFrame, the animal id column as text.

    :func:`load_records_csv`, with its problems logged (warnings; notices too, as warnings).

    Parameters
    ----------
    data : bytes or binary file object
        The CSV's content or an open handle (read whole: the published table is 9.4 MB).
    path : str
        The file's name for the messages.

    Returns
    -------
    pandas.DataFrame
        Numbers as :func:`pandas.read_csv` types them, except the animal id column
        (:func:`animal_id_column`), which holds stripped strings (missing ids stay missing):
        mouse ids are strings everywhere in bonemet-dask, as the store's folder names are.

    Raises
    ------
    RecordsCsvError
        When the file holds no table (empty, binary, undecodable); the message names ``path``.
    """
    result = load_records_csv(data, path=path)
    log_problems(result.problems)
    if result.table is None:
        raise RecordsCsvError(
            "; ".join(p.message for p in result.problems if p.severity == "error")
        )
    return result.table


def log_problems(problems: Sequence[RecordProblem]) -> None:
    """Log problems as warnings (errors as errors), the first :data:`_MAX_LISTED` one by one."""
    for problem in problems[:_MAX_LISTED]:
        logger.log(logging.ERROR if problem.severity == "error" else logging.WARNING,
                   "%s", problem.message)  # fmt: skip
    if len(problems) > _MAX_LISTED:
        logger.warning("... and %d more problem(s) in %s", len(problems) - _MAX_LISTED,
                       problems[0].path)  # fmt: skip


def load_records_csv(data: bytes | Any, *, path: str = "record.csv") -> RecordsCsv:
    """Read ``record.csv`` whatever its encoding and delimiter, and list what is wrong with it.

    Parameters
    ----------
    data : bytes or binary file object
        The file's content or an open handle.
    path : str
        The file's name or URL, for the messages.

    Returns
    -------
    RecordsCsv
        The table (or None, with an ``error``) and its problems; see the module docstring.
        Never raises on the content.
    """
    raw = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else data.read()
    if not isinstance(raw, bytes):
        raise TypeError(f"data must be bytes or a binary file, not {type(raw).__name__}")
    problems: list[RecordProblem] = []
    text, encoding = _decode(raw, path, problems)
    if text is None:
        return RecordsCsv(None, tuple(problems), encoding)
    delimiter = _sniff(text)
    if delimiter != ",":
        problems.append(RecordProblem.of(
            "delimiter", path, f"is separated by {_DELIMITER_NAMES[delimiter]}, not commas: "
            "read that way; save it as 'CSV (comma delimited)' to avoid the guess"))  # fmt: skip
    try:
        rows = _rows(text, delimiter)
    except csv.Error as exc:
        problems.append(RecordProblem.of(
            "unreadable", path, f"is not a readable table ({exc}; an unclosed quote?): no records "
            "written; close the quote or export the table again as CSV"))  # fmt: skip
        return RecordsCsv(None, tuple(problems), encoding, delimiter)
    if not rows:
        problems.append(RecordProblem.of(
            "unreadable", path, "holds no header line: no records written; copy record.csv from "
            "the MiceMediRec dataset"))  # fmt: skip
        return RecordsCsv(None, tuple(problems), encoding, delimiter)
    (_, header), body = rows[0], rows[1:]
    header = _clean_header(header, body, path, problems)
    body = _fit_rows(header, body, path, problems)
    columns = [list(c) for c in zip(*(cells for _, cells in body), strict=True)] or [
        [] for _ in header
    ]
    lines = [line for line, _ in body]
    if delimiter != ",":
        _decimal_commas(header, columns, path, problems)
    id_col, keep = check_cells(header, columns, lines, path, problems)
    table = _frame(header, [[c[i] for i in keep] for c in columns], id_col)
    return RecordsCsv(table, tuple(problems), encoding, delimiter, tuple(lines[i] for i in keep))


def _decode(raw: bytes, path: str, problems: list[RecordProblem]) -> tuple[str | None, str]:
    """The text of the file and its encoding; None (and an error) when it is not text."""
    fix = "export the table again as 'CSV UTF-8 (comma delimited)'"
    if not raw.strip():
        problems.append(RecordProblem.of(
            "unreadable", path, "is empty: no records written to /medirec; copy record.csv from "
            "the MiceMediRec dataset"))  # fmt: skip
        return None, ""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, candidates = "utf-16", ("utf-16",)
    else:
        candidates = ("utf-8-sig", "cp1252", "latin-1")
    text = None
    for encoding in candidates:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if text is None:
        problems.append(
            RecordProblem.of(
                "unreadable", path, f"is not valid {encoding}: no records written; {fix}"
            )
        )
        return None, encoding
    controls = _CONTROL_RE.findall(text)
    if controls:
        problems.append(RecordProblem.of(
            "unreadable", path, f"is not a text table: it holds {len(controls)} NUL or control "
            f"byte(s) (a binary file, or UTF-16 without a byte order mark): no records written; "
            f"{fix}"))  # fmt: skip
        return None, encoding
    if encoding in ("cp1252", "latin-1"):
        name = "Windows-1252 (cp1252)" if encoding == "cp1252" else "Latin-1"
        problems.append(RecordProblem.of(
            "encoding", path, f"is not UTF-8: read as {name}, as Excel on Windows saves it; "
            f"check its accented text in /medirec, or {fix} to avoid the guess"))  # fmt: skip
    return text, encoding


def _sniff(text: str) -> str:
    """The delimiter that splits the first lines into the same number (> 1) of cells."""
    sample = [line for line in text.splitlines()[:50] if line.strip()]
    best, best_score = ",", (0, 0)
    for delimiter in _DELIMITERS:
        try:
            rows = list(csv.reader(sample, delimiter=delimiter))
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        score = (sum(len(r) == len(rows[0]) for r in rows), len(rows[0]))
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _rows(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """``(first line, cells)`` of every non-blank row."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, line = [], 1
    for cells in reader:
        if any(c.strip() for c in cells):
            rows.append((line, [c.strip() for c in cells]))
        line = reader.line_num + 1
    return rows


def _clean_header(
    header: list[str], body: list[tuple[int, list[str]]], path: str, problems: list[RecordProblem]
) -> list[str]:
    """Unique, non-empty names; a trailing column without name or values dropped."""
    width = max([len(header), *(len(cells) for _, cells in body)])
    filled = [any(k < len(c) and c[k] for _, c in body) for k in range(width)]
    while len(header) > 1 and not header[-1] and not filled[len(header) - 1]:
        header = header[:-1]  # Excel's trailing separator
    names: list[str] = []
    seen: dict[str, int] = {}
    for k, name in enumerate(header, start=1):
        if not name:
            name = f"column {k}"
            if filled[k - 1]:
                problems.append(RecordProblem.of(
                    "empty-header", path, f"header: column {k} has no name but holds values; "
                    f"kept as {name!r}: name it in the header", line=1, column=name))  # fmt: skip
        if name in seen:
            base, n = name, 1
            while f"{base}.{n}" in seen or f"{base}.{n}" in header:
                n += 1
            name = f"{base}.{n}"
            problems.append(RecordProblem.of(
                "duplicate-header", path, f"header: columns {seen[base]} and {k} are both named "
                f"{base!r}; the second is kept as {name!r}: rename one of them", line=1,
                column=base))  # fmt: skip
        seen[name] = k
        names.append(name)
    return names


def _fit_rows(
    header: list[str], body: list[tuple[int, list[str]]], path: str, problems: list[RecordProblem]
) -> list[tuple[int, list[str]]]:
    """Rows of exactly ``len(header)`` cells: long ones dropped, short ones padded (reported)."""
    out = []
    n = len(header)
    for line, cells in body:
        if len(cells) > n and any(cells[n:]):
            problems.append(RecordProblem.of(
                "ragged-row", path, f"line {line}: {len(cells)} cells but the header names {n}; "
                "the row is left out: remove the extra cells (or a separator inside a value: "
                "quote it)", line=line))  # fmt: skip
            continue
        if len(cells) < n:
            problems.append(
                RecordProblem.of(
                    "ragged-row",
                    path,
                    f"line {line}: {len(cells)} cells but the header names {n}; "
                    f"the last {n - len(cells)} are left empty: add the missing cells",
                    line=line,
                )
            )
        out.append((line, (cells + [""] * n)[:n]))
    return out


def _decimal_commas(
    header: list[str], columns: list[list[str]], path: str, problems: list[RecordProblem]
) -> None:
    """In a ``;`` or tab table, read ``23,4`` as 23.4 in columns that are otherwise numbers."""
    changed = []
    for name, cells in zip(header, columns, strict=True):
        present = [c for c in cells if c not in NA_VALUES]
        if not any(_COMMA_NUMBER_RE.fullmatch(c) for c in present):
            continue
        if all(_COMMA_NUMBER_RE.fullmatch(c) or NUMBER_RE.fullmatch(c) for c in present):
            cells[:] = [c.replace(",", ".") if _COMMA_NUMBER_RE.fullmatch(c) else c for c in cells]
            changed.append(name)
    if changed:
        problems.append(RecordProblem.of(
            "decimal-comma", path, f"writes decimal commas (as Excel does in European locales) "
            f"in {', '.join(map(repr, changed))}: read as decimal points"))  # fmt: skip


def _frame(header: list[str], columns: list[list[str]], id_col: str | None) -> pd.DataFrame:
    """The cleaned cells typed as :func:`pandas.read_csv` types them; the id column as text."""
    import pandas as pd

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns, strict=True))
    buffer.seek(0)
    dtype = None if id_col is None else {id_col: str}
    # blank lines are one-column rows whose cell is empty; low_memory=False: one dtype a column
    table = pd.read_csv(buffer, dtype=dtype, skip_blank_lines=False, low_memory=False)
    for name in [c for c, t in table.dtypes.items() if t == np.dtype(object) and c != id_col]:
        table[name] = _mixed_column(table[name])
    if id_col is not None:
        ids = table[id_col].str.strip().astype(object)
        table[id_col] = ids.where(ids.notna(), None)  # None, as /medirec gives it back
    return table


def _mixed_column(column: pd.Series) -> pd.Series:
    """A column pandas left as objects, in the form ``/medirec`` gives back.

    Booleans with missing cells become nullable ``boolean``, integers past uint64 their text,
    missing cells None.
    """
    import pandas as pd

    present = [v for v in column if not (v is None or (isinstance(v, float) and math.isnan(v)))]
    if present and all(isinstance(v, bool | np.bool_) for v in present):
        return column.astype("boolean")
    values = [
        None if v is None or (isinstance(v, float) and math.isnan(v))
        else str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for v in column
    ]  # fmt: skip
    return pd.Series(values, index=column.index, dtype=object)
