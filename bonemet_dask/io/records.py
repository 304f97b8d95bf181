"""MiceMediRec ``record.csv`` in the store: ``/medirec`` as typed 1-D column arrays.

Numeric columns are int64/float64, ISO dates datetime64[ns] (with the text format kept so the
strings come back), other text variable-length UTF-8 with a ``<name>.isna`` mask, so that
:func:`read_records` returns exactly the DataFrame given to :func:`write_records`.

Mouse ids are strings everywhere: the store's groups and ``mouse`` coords (``"851"``, the
folder names), :func:`bonemet_dask.stack`, the metrics tables and the records.
:func:`read_records_csv` reads ``record.csv`` with its animal id column as text (stripped, leading
zeros kept), so ``/medirec``'s ``Animal ID`` compares equal to ``stack(...).mouse`` and a
``reindex`` or ``merge`` on it matches.

:func:`import_records` is what ``convert`` calls: it reads ``record.csv`` whatever Excel made of
it (:mod:`bonemet_dask.io.records_csv`), writes what it could read and returns every problem,
never raising on the file's content, so that a bad ``record.csv`` never blocks the images. The
problems are also kept in ``/medirec``'s attributes, and :func:`read_records` warns about them
whenever the table is read (the metrics join), so a record left out is never silently missing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import zarr

from bonemet_dask.io.records_csv import (
    ANIMAL_ID_NAMES,
    RecordProblem,
    animal_id_column,
    find_column,
    load_records_csv,
    log_problems,
    read_records_csv,
)
from bonemet_dask.naming import sanitize_segment

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import pandas as pd

__all__ = [
    "ANIMAL_ID_NAMES",
    "RECORDS_GROUP",
    "animal_id_column",
    "check_records_file",
    "find_column",
    "import_records",
    "read_records",
    "read_records_csv",
    "store_keys",
    "write_records",
]

logger = logging.getLogger(__name__)

RECORDS_GROUP: Final = "medirec"
"""Path of the records group at the root of a store."""
_RESERVED: Final = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
"""Object names zarr (v3, and v2 readers) gives a meaning to: never an array's name."""
_WINDOWS: Final = frozenset(
    {"con", "prn", "aux", "nul", *(f"{p}{d}" for p in ("com", "lpt") for d in range(10))}
)
"""Names Windows refuses for a file or folder (with any extension): a local store there."""
_MAX_KEY: Final = 100
"""Longest array name: a path segment stays well under the 255 bytes file systems allow."""
_MAX_STORED_PROBLEMS: Final = 200


_DATE_FORMATS: Final = (
    (re.compile(r"^\d{4}-\d{2}-\d{2}$"), "%Y-%m-%d"),
    (re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$"), None),  # separator kept per column
)


def _date_format(values: pd.Series) -> str | None:
    """The strftime format that reproduces every (non-missing) ISO date string, or None."""
    import pandas as pd

    text = values.astype(str)
    for regex, fmt in _DATE_FORMATS:
        if len(text) and text.str.match(regex).all():
            fmt = fmt or f"%Y-%m-%d{text.iloc[0][10]}%H:%M:%S"
            try:
                parsed = pd.to_datetime(text, format=fmt)
            except ValueError:
                return None
            return fmt if (parsed.dt.strftime(fmt) == text).all() else None
    return None


def _encode_column(series: pd.Series) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None]:
    """Stored values, column attributes and missing mask (strings only) of one column."""
    import pandas as pd

    dtype = series.dtype
    meta: dict[str, Any] = {"dtype": str(dtype)}
    missing = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(dtype) and not missing.any():
        return series.to_numpy(dtype=bool), {**meta, "kind": "bool"}, None
    if pd.api.types.is_integer_dtype(dtype) and not missing.any():
        wide = np.uint64 if pd.api.types.is_unsigned_integer_dtype(dtype) else np.int64
        return series.to_numpy(dtype=wide), {**meta, "kind": "int"}, None  # uint64 unwrapped
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, {**meta, "kind": "float"}, None
    if isinstance(dtype, pd.DatetimeTZDtype):
        utc = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return utc.to_numpy(dtype="datetime64[ns]"), {**meta, "kind": "datetime"}, None
    if pd.api.types.is_datetime64_dtype(dtype):
        return series.to_numpy(dtype="datetime64[ns]"), {**meta, "kind": "datetime"}, None
    present = series[~missing]
    all_text = len(present) > 0 and all(isinstance(v, str) for v in present)
    fmt = _date_format(present) if all_text else None
    if fmt is not None:
        dates = pd.to_datetime(series, format=fmt).to_numpy(dtype="datetime64[ns]")
        return dates, {**meta, "kind": "date_text", "format": fmt}, None
    text = np.array([str(v) for v in series.astype(object).where(~missing, "")], dtype=object)
    return text, {**meta, "kind": "string"}, (missing if missing.any() else None)


def write_records(
    root: zarr.Group,
    table: pd.DataFrame,
    *,
    source: str | None = None,
    problems: Sequence[RecordProblem] | None = None,
) -> zarr.Group:
    """Write the MiceMediRec table to ``/medirec`` as one 1-D array per column.

    Parameters
    ----------
    root : zarr.Group
        The store's root group; an existing ``medirec`` group is replaced.
    table : pandas.DataFrame
        The records (its index is not stored).
    source : str, optional
        The file the table was read from, kept in the attributes and named in messages.
    problems : sequence of RecordProblem, optional
        What reading it found (:func:`import_records` passes them), kept in the attributes so
        :func:`read_records` can warn. When None, columns whose store key had to differ from
        their sanitised name (:func:`store_keys`) are only logged, as warnings.

    Returns
    -------
    zarr.Group
        The ``medirec`` group: arrays named by the sanitised column names, dims ``("record",)``.

    Notes
    -----
    Integer columns are stored as int64, other numeric and nullable columns as float64 (NaN
    for missing), datetime columns as datetime64[ns] (tz-aware ones in UTC), text columns whose
    every value is an ISO date (``2020-01-31`` or ``2020-01-31 12:00:00``) as datetime64[ns]
    with the format kept, other text as variable-length UTF-8 strings with a boolean
    ``<name>.isna`` array when values are missing. The group's ``bonemet.columns`` keeps the
    original names and pandas dtypes in order, so :func:`read_records` restores the table.
    Array names never collide, also ignoring case, and are never a name zarr or Windows
    reserves (``zarr.json``, ``__x``, ``CON``): see :func:`store_keys`.
    """
    keys = store_keys(table.columns)
    if problems is None:  # a DataFrame of the caller's: say what was renamed, store nothing
        log_problems(key_problems(table.columns, source or "the records table"))
        problems = ()
    group = root.create_group(RECORDS_GROUP, overwrite=True)
    used = {key.lower(): str(column) for column, (key, _) in zip(table.columns, keys, strict=True)}
    columns = []
    for position, (column, (name, _)) in enumerate(zip(table.columns, keys, strict=True)):
        values, meta, mask = _encode_column(table.iloc[:, position])
        meta = {"name": str(column), "array": name, **meta}
        arrays = [(name, values)]
        if mask is not None:
            meta["mask"] = _unique_name(f"{name}.isna", position, used)[0]
            arrays.append((meta["mask"], mask))
        for array_name, data in arrays:
            dtype = str if data.dtype == object else data.dtype
            array = group.create_array(
                array_name, shape=data.shape, dtype=dtype, chunks=(max(len(data), 1),),
                dimension_names=("record",), attributes={"column": str(column)},
            )  # fmt: skip
            if len(data):
                array[:] = data
        columns.append(meta)
    attrs: dict[str, Any] = {"kind": "records", "n_records": len(table), "columns": columns}
    if source is not None:
        attrs["source"] = source
    if problems:
        attrs["problems"] = [p.to_dict() for p in problems[:_MAX_STORED_PROBLEMS]]
        attrs["n_problems"] = len(problems)
    group.attrs.update({"bonemet": attrs})
    logger.info("wrote %d records x %d columns to /%s", len(table), len(columns), RECORDS_GROUP)
    return group


def import_records(root: zarr.Group, data: bytes | Any, *, path: str) -> tuple[RecordProblem, ...]:
    """Read a ``record.csv`` and write what could be read to ``/medirec``; never raises on it.

    Parameters
    ----------
    root : zarr.Group
        The store's root group.
    data : bytes or binary file object
        The file's content.
    path : str
        Its path or URL, named in every problem and kept in the attributes.

    Returns
    -------
    tuple of RecordProblem
        Everything :func:`~bonemet_dask.io.records_csv.load_records_csv` found, then the
        columns whose store key had to differ (``store-key``), all logged. With an ``error``
        nothing is written; an existing ``/medirec`` is kept but marked with the error, so
        :func:`read_records` warns that it may be stale.
    """
    if not isinstance(data, bytes | bytearray):
        data = data.read()
    digest = hashlib.sha256(data).hexdigest()
    table, problems = _load(data, path)
    log_problems(problems)
    if table is not None and _imported_already(root, path, digest):
        logger.info("/%s already holds %r as it is now: not rewritten", RECORDS_GROUP, path)
    elif table is not None:
        # a rerun rewrites /medirec only when the file changed: readers of a finished store
        # never see it half-written by a run that converts nothing new
        group = write_records(root, table, source=path, problems=problems)
        group.attrs.update({"bonemet": {**group.attrs["bonemet"], "source_sha256": digest}})
    elif RECORDS_GROUP in root:  # keep the earlier table, but never silently
        group = root[RECORDS_GROUP]
        attrs = dict(group.attrs.get("bonemet", {}))
        stale = [p.to_dict() for p in problems if p.severity == "error"]
        attrs["problems"] = [*stale, *attrs.get("problems", [])][:_MAX_STORED_PROBLEMS]
        attrs["n_problems"] = len(stale) + int(attrs.get("n_problems", 0))
        attrs["stale"] = True
        group.attrs.update({"bonemet": attrs})
    return tuple(problems)


def _imported_already(root: zarr.Group, path: str, digest: str) -> bool:
    """Whether ``/medirec`` holds this very file, whole and not marked stale."""
    group = root.get(RECORDS_GROUP)
    if not isinstance(group, zarr.Group):
        return False
    attrs = group.attrs.get("bonemet", {})
    return (attrs.get("source") == path and attrs.get("source_sha256") == digest
            and not attrs.get("stale"))  # fmt: skip


def check_records_file(fs: Any, path: str) -> tuple[RecordProblem, ...]:
    """What :func:`import_records` would report about a ``record.csv``, writing nothing.

    For a dry run (``plan``): the file is read through ``fs`` (fsspec) and its problems,
    ``store-key`` ones included, are logged and returned.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The source's filesystem (``Catalog.fs``).
    path : str
        The file (``Catalog.records_path``).

    Returns
    -------
    tuple of RecordProblem
        Notices too; keep ``severity != "notice"`` for what ``convert`` reports (exit 3).
    """
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        problems: list[RecordProblem] = [RecordProblem.of(
            "unreadable", path, f"could not be read ({type(exc).__name__}: {exc}): no records "
            "would be written; check the file's permissions and the connection")]  # fmt: skip
    else:
        problems = _load(data, path)[1]
    log_problems(problems)
    return tuple(problems)


def _load(data: bytes | Any, path: str) -> tuple[pd.DataFrame | None, list[RecordProblem]]:
    """The table of a ``record.csv`` and its problems, ``store-key`` ones included."""
    result = load_records_csv(data, path=path)
    problems = list(result.problems)
    if result.table is not None:
        problems += key_problems(result.table.columns, path)
    return result.table, problems


def read_records(root: zarr.Group) -> pd.DataFrame:
    """Read ``/medirec`` back into the DataFrame given to :func:`write_records`.

    When the table was imported with problems (records left out, cells emptied, a failed
    later import), a warning names the file, the count and the first problem: a join that
    misses a record is then never silent.

    Raises
    ------
    KeyError
        If the store has no records group.
    """
    import pandas as pd

    try:
        group = root[RECORDS_GROUP]
    except KeyError:
        raise KeyError(
            f"the store has no /{RECORDS_GROUP} group; write it with write_records(root, table)"
        ) from None
    attrs = group.attrs["bonemet"]
    _warn_problems(attrs)
    series = []
    for meta in attrs["columns"]:
        values = np.asarray(group[meta["array"]][:])
        kind = meta["kind"]
        if kind == "string":
            values = values.astype(object)
            if "mask" in meta:
                values[np.asarray(group[meta["mask"]][:], dtype=bool)] = None
        elif kind == "date_text":
            dates = pd.Series(values)
            values = dates.dt.strftime(meta["format"]).astype(object).where(dates.notna(), None)
        one = pd.Series(values, dtype=object if kind == "string" else None)  # None stays None
        if kind == "datetime" and "," in meta["dtype"]:  # tz-aware, stored in UTC
            one = one.dt.tz_localize("UTC")
        series.append(one.astype(meta["dtype"]))
    frame = pd.DataFrame(dict(enumerate(series)), index=pd.RangeIndex(attrs["n_records"]))
    frame.columns = pd.Index([meta["name"] for meta in attrs["columns"]])
    return frame


def _warn_problems(attrs: dict[str, Any]) -> None:
    """Warn when ``/medirec`` was imported with problems worth a user's look."""
    shown = [p for p in attrs.get("problems", []) if p.get("severity") != "notice"]
    if not shown:
        return
    source = attrs.get("source", "record.csv")
    count = int(attrs.get("n_problems", len(shown)))
    stale = ", then a later import failed (the table may be stale)" if attrs.get("stale") else ""
    logger.warning(
        "/%s was imported from %r with %d problem(s)%s (first: %s); joined records may be "
        "missing or incomplete: fix the file and convert again",
        RECORDS_GROUP, source, count, stale, shown[0]["message"],
    )  # fmt: skip


def store_keys(columns: Iterable[object]) -> list[tuple[str, str | None]]:
    """The array name of each column in ``/medirec`` and, when it is not just sanitised, why.

    Names are sanitised (:func:`~bonemet_dask.naming.sanitize_segment`); a name zarr gives a
    meaning to (``zarr.json``, ``.zattrs``, a leading ``__`` or ``.``) or Windows refuses
    (``CON``, ``aux.txt``) gets a ``column_`` prefix, a long one is cut to 100 characters, and
    one equal to an earlier name, ignoring case (as keys on macOS and Windows do), gets ``_2``.

    Parameters
    ----------
    columns : iterable
        Column labels in order.

    Returns
    -------
    list of (str, str or None)
        ``(array name, reason it differs or None)`` per column.
    """
    used: dict[str, str] = {}
    return [_unique_name(str(c), k, used) for k, c in enumerate(columns)]


def key_problems(columns: Iterable[object], path: str) -> list[RecordProblem]:
    """A ``store-key`` problem for each column whose array name :func:`store_keys` changed."""
    out = []
    for column, (key, why) in zip(columns, store_keys(columns), strict=True):
        if why is not None:
            message = (f"header: column {str(column)!r} {why}; stored as /{RECORDS_GROUP}/{key} "
                       "(its name is kept in the attributes): rename it in the header")  # fmt: skip
            out.append(RecordProblem.of("store-key", path, message, line=1, column=str(column)))
    return out


def _unique_name(name: str, position: int, used: dict[str, str]) -> tuple[str, str | None]:
    """A store key for ``name`` not in ``used``, and why it differs from ``name`` sanitised.

    ``used`` maps the lower-cased keys taken so far to their columns; it is updated.
    """
    why = None
    try:
        base = sanitize_segment(name)
    except ValueError:
        base, why = f"column_{position}", "has no character usable in a store key"
    if base.lower() in _RESERVED or base.startswith((".", "__")):
        why = f"would be the store key {base!r}, which zarr reserves"
        base = "column_" + base.lstrip("._")
    if base.split(".")[0].lower() in _WINDOWS:
        why = f"would be the store key {base!r}, a name Windows refuses"
        base = f"column_{base}"
    if len(base) > _MAX_KEY:
        why = f"is longer than {_MAX_KEY} characters, too long for a store key"
        base = base[:_MAX_KEY]
    base = base.rstrip(".") or f"column_{position}"  # Windows drops a trailing dot
    candidate, k = base, 1
    while candidate.lower() in used:
        k += 1
        candidate = f"{base}_{k}"
    if candidate != base and why is None:
        why = (f"would have the store key {base!r} of column {used[base.lower()]!r} (a store key "
               "spells punctuation '_' and ignores case)")  # fmt: skip
    used[candidate.lower()] = name
    return candidate, why
