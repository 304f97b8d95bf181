"""MiceMediRec ``record.csv`` in the store: ``/medirec`` as typed 1-D column arrays.

Numeric columns are int64/float64, ISO dates datetime64[ns] (with the text format kept so the
strings come back), other text variable-length UTF-8 with a ``<name>.isna`` mask, so that
:func:`read_records` returns exactly the DataFrame given to :func:`write_records`.

Mouse ids are strings everywhere: the store's groups and ``mouse`` coords (``"851"``, the
folder names), :func:`bonemet_dask.stack`, the metrics tables and the records.
:func:`read_records_csv` reads ``record.csv`` with its animal id column as text (stripped, leading
zeros kept), so ``/medirec``'s ``Animal ID`` compares equal to ``stack(...).mouse`` and a
``reindex`` or ``merge`` on it matches.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import zarr

from bonemet_dask.naming import sanitize_segment

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ANIMAL_ID_NAMES",
    "RECORDS_GROUP",
    "animal_id_column",
    "find_column",
    "read_records",
    "read_records_csv",
    "write_records",
]

logger = logging.getLogger(__name__)

RECORDS_GROUP: Final = "medirec"
"""Path of the records group at the root of a store."""
ANIMAL_ID_NAMES: Final = ("animalid", "mouseid", "mouse", "animal", "id")
"""Names of the animal id column, lower case without spaces or punctuation, in order of
preference (MiceMediRec's is ``Animal ID``)."""


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
    normal = {re.sub(r"[^a-z0-9]", "", str(c).lower()): c for c in columns}
    for name in names:
        if name in normal:
            return normal[name]
    return None


def animal_id_column(columns: Iterable[object]) -> str | None:
    """The animal id column among ``columns`` (:data:`ANIMAL_ID_NAMES`), or None."""
    return find_column(columns, ANIMAL_ID_NAMES)


def read_records_csv(data: bytes | Any) -> pd.DataFrame:
    """A MiceMediRec ``record.csv`` as a DataFrame, the animal id column as text.

    Parameters
    ----------
    data : bytes or binary file object
        The CSV's content or an open handle (read whole: the published table is 9.4 MB).

    Returns
    -------
    pandas.DataFrame
        As :func:`pandas.read_csv` reads it, except the animal id column
        (:func:`animal_id_column`), which holds stripped strings (missing ids stay missing):
        mouse ids are strings everywhere in bonemet-dask, as the store's folder names are.
    """
    import pandas as pd

    raw = data if isinstance(data, bytes | bytearray) else data.read()
    header = pd.read_csv(io.BytesIO(raw), nrows=0).columns
    column = animal_id_column(header)
    table = pd.read_csv(io.BytesIO(raw), dtype={column: str} if column is not None else None)
    if column is not None:
        table[column] = table[column].str.strip().astype(object)
    return table


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
        return series.to_numpy(dtype=np.int64), {**meta, "kind": "int"}, None
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


def write_records(root: zarr.Group, table: pd.DataFrame) -> zarr.Group:
    """Write the MiceMediRec table to ``/medirec`` as one 1-D array per column.

    Parameters
    ----------
    root : zarr.Group
        The store's root group; an existing ``medirec`` group is replaced.
    table : pandas.DataFrame
        The records (its index is not stored).

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
    """
    group = root.create_group(RECORDS_GROUP, overwrite=True)
    used: set[str] = set()
    columns = []
    for position, column in enumerate(table.columns):
        values, meta, mask = _encode_column(table.iloc[:, position])
        name = _unique_name(str(column), position, used)
        meta = {"name": str(column), "array": name, **meta}
        arrays = [(name, values)]
        if mask is not None:
            meta["mask"] = _unique_name(f"{name}.isna", position, used)
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
    group.attrs.update({"bonemet": {"kind": "records", "n_records": len(table),
                                    "columns": columns}})  # fmt: skip
    logger.info("wrote %d records x %d columns to /%s", len(table), len(columns), RECORDS_GROUP)
    return group


def read_records(root: zarr.Group) -> pd.DataFrame:
    """Read ``/medirec`` back into the DataFrame given to :func:`write_records`.

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
    data: dict[str, Any] = {}
    for meta in group.attrs["bonemet"]["columns"]:
        values = np.asarray(group[meta["array"]][:])
        kind = meta["kind"]
        if kind == "string":
            values = values.astype(object)
            if "mask" in meta:
                values[np.asarray(group[meta["mask"]][:], dtype=bool)] = None
        elif kind == "date_text":
            dates = pd.Series(values)
            values = dates.dt.strftime(meta["format"]).astype(object).where(dates.notna(), None)
        series = pd.Series(values)
        if kind == "datetime" and "," in meta["dtype"]:  # tz-aware, stored in UTC
            series = series.dt.tz_localize("UTC")
        data[meta["name"]] = series.astype(meta["dtype"])
    return pd.DataFrame(data, index=pd.RangeIndex(group.attrs["bonemet"]["n_records"]))


def _unique_name(name: str, position: int, used: set[str]) -> str:
    try:
        base = sanitize_segment(name)
    except ValueError:
        base = f"column_{position}"
    if base.startswith("__"):  # reserved by the zarr v3 spec
        base = base.lstrip("_") or f"column_{position}"
    candidate, k = base, 1
    while candidate in used:
        k += 1
        candidate = f"{base}_{k}"
    used.add(candidate)
    return candidate
