"""Mouse-level train/test splits and k folds from MiceMediRec, and the animal-level labels.

BoneMet's published experiments split the *mice* 8:2 into train and test and cross-validate
within the training mice: one mouse's scans (both tibiae, every week) never fall on two sides of
a split. :func:`split` builds that assignment as one row per mouse, stratified by a per-mouse
label; :func:`animal_labels` gives the labels the paper uses.

How :func:`split` deals the mice (the guarantees its tests check):

1. Mice are sorted by id (numeric ids as numbers), grouped by the value of ``stratify`` (missing
   values form their own stratum), and each stratum is shuffled by a generator seeded with
   ``seed``: the result depends on the records' content, never on their row order.
2. The test set gets ``round(test * n)`` mice (halves up), shared between the strata by largest
   remainder (Hamilton's method; ties drawn by the seed): stratum ``s`` of ``n_s`` mice gives
   ``floor(test * n_s)`` or ``ceil(test * n_s)`` of its first shuffled mice, so every stratum's
   test count is within one mouse of ``test * n_s``, and a stratum of one mouse is placed too.
3. The training mice, stratum after stratum in the shuffled order, are dealt round-robin to folds
   ``0 .. folds-1`` by one counter: each fold holds ``floor`` or ``ceil`` of ``n_train_s / folds``
   mice of every stratum, and ``floor`` or ``ceil`` of ``n_train / folds`` mice in all.

Exact rational arithmetic (:class:`fractions.Fraction` of ``test``) makes the bounds hold without
floating-point slack.
"""

from __future__ import annotations

import logging
import math
import os
import re
from fractions import Fraction
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from bonemet_dask.io.records_schema import NA_VALUES, WEEK_NAMES, animal_id_column, find_column

if TYPE_CHECKING:
    import pandas as pd
    import zarr

__all__ = [
    "CSV_DTYPES",
    "DIAGNOSIS_NAMES",
    "INJECTED_LIMB_NAMES",
    "LABELS",
    "SPLITS",
    "animal_labels",
    "read_split",
    "split",
]

logger = logging.getLogger(__name__)

LABELS: Final = ("lesion", "injected_limb")
"""Columns of :func:`animal_labels` besides ``mouse``."""
SPLITS: Final = ("train", "test")
"""Values of the ``split`` column."""
DIAGNOSIS_NAMES: Final = ("diagnosis", "diagnoses", "bonelesion", "lesion")
"""Names of the diagnosis column (normalised as :func:`~bonemet_dask.io.records_schema.find_column`
does: lower case, no punctuation); MiceMediRec's is ``Diagnosis``."""
INJECTED_LIMB_NAMES: Final = ("injectedlimb", "injectedside", "injection", "limb")
"""Names of the injected limb column, as the metrics join looks it up (``Injected Limb``)."""
CSV_DTYPES: Final = {
    "mouse": str,
    "split": str,
    "fold": "Int64",
    "lesion": "boolean",
    "injected_limb": str,
}
"""``dtype`` of the table's columns for :func:`pandas.read_csv` (see :func:`read_split`)."""
_RESERVED: Final = ("mouse", "split", "fold")

_NEGATIVE_RE: Final = re.compile(
    r"(?:no|non|not|none|negative|neg|normal|healthy|without|absent|free|false|0)(?:\W.*)?|-"
)
_POSITIVE_RE: Final = re.compile(
    r".*(?:lesion|tumou?r|metasta|osteoly|cancer|positive).*|(?:true|yes|y|pos|1|\+)"
)
_NA_TEXT: Final = sorted({value.lower() for value in NA_VALUES})
_NONE_LIMB: Final = frozenset({"", "none", "no", "-", "control", "sham"})
_LEFT_RE: Final = re.compile(r"(?:l|lt|left)\b.*")
_RIGHT_RE: Final = re.compile(r"(?:r|rt|right)\b.*")


def animal_labels(
    records: pd.DataFrame | str | os.PathLike[str] | zarr.Group,
    *,
    weeks: tuple[int, int] = (0, 5),
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per mouse of MiceMediRec: the animal-level labels BoneMet's experiments use.

    Parameters
    ----------
    records : pandas.DataFrame, str, os.PathLike or zarr.Group
        The MiceMediRec table (:func:`bonemet_dask.io.records.read_records`), or a store
        (path, fsspec URL or root group) whose ``/medirec`` is read.
    weeks : (int, int), optional
        First and last week (both included) in which a diagnosed lesion makes the mouse
        positive; the paper's label is ``(0, 5)``.
    storage_options : dict, optional
        fsspec options when ``records`` is a URL.

    Returns
    -------
    pandas.DataFrame
        Columns ``mouse`` (str: the animal id as the store's ``mouse`` coords spell it),
        ``lesion`` (bool: a lesion diagnosed in a week of ``weeks``; pandas ``"boolean"`` with
        <NA> for mice with no diagnosis in those weeks) and ``injected_limb`` (``"left"``,
        ``"right"``, or ``""`` for a mouse never injected), sorted by mouse (numeric ids as
        numbers). A label whose source column the records lack is all <NA>, with a warning
        logged that names the columns found.

    Raises
    ------
    ValueError
        No animal id column; a ``Diagnosis`` or ``Injected Limb`` value that is not understood
        (the message lists them); one mouse with two different injected limbs; bad ``weeks``.

    Notes
    -----
    A diagnosis is negative when it starts with ``no``, ``none``, ``normal``, ``healthy``,
    ``negative`` (``"no lesion"``), positive when it mentions a lesion, tumour, metastasis or
    osteolysis (``"bone lesion"``); empty cells are ignored. Injected limbs are read from
    ``left``/``L``/``Left tibia`` and ``right``/``R``..., empty or ``none`` meaning a control.
    """
    labels, unavailable = _labels(_records_table(records, storage_options), _check_weeks(weeks))
    for why in unavailable.values():
        logger.warning("%s", why)
    return labels


def split(
    records: pd.DataFrame | str | os.PathLike[str] | zarr.Group,
    *,
    test: float = 0.2,
    folds: int = 5,
    stratify: str | None = "lesion",
    seed: int = 0,
    weeks: tuple[int, int] = (0, 5),
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Mouse-level train/test assignment and k folds within train, stratified by a label.

    Parameters
    ----------
    records : pandas.DataFrame, str, os.PathLike or zarr.Group
        The MiceMediRec table (:func:`bonemet_dask.io.records.read_records`), or a store
        (path, fsspec URL or root group) whose ``/medirec`` is read.
    test : float, optional
        Fraction of the mice held out for test, in (0, 1): ``round(test * n)`` mice.
    folds : int, optional
        Number of cross-validation folds of the training mice, >= 2.
    stratify : str or None, optional
        The per-mouse label to balance: a column of :func:`animal_labels` (``"lesion"``,
        ``"injected_limb"``), or a records column constant within each mouse (``"Sex"``,
        ``"Treatment"``; matched exactly, else ignoring case and punctuation); None for none.
    seed : int, optional
        Seed of the shuffle; the same records (in any row order) and seed give the same table.
    weeks : (int, int), optional
        The weeks of the ``lesion`` label (:func:`animal_labels`).
    storage_options : dict, optional
        fsspec options when ``records`` is a URL.

    Returns
    -------
    pandas.DataFrame
        One row per mouse, sorted by mouse: ``mouse`` (str), ``split`` (``"train"`` or
        ``"test"``), ``fold`` (nullable ``Int64``: ``0 .. folds-1`` for train mice, <NA> for
        test mice), the :func:`animal_labels` columns, and the ``stratify`` column when it is a
        records column. ``attrs`` holds ``seed``, ``test``, ``folds``, ``stratify`` and
        ``weeks``. Save it with ``to_csv(path, index=False)`` and read it with
        :func:`read_split`.

    Raises
    ------
    ValueError
        An argument out of range, an unknown ``stratify`` (the message lists the choices), a
        ``stratify`` column that varies within a mouse or whose source column is missing, or
        fewer training mice than ``folds``.

    Notes
    -----
    See the module docstring for how the mice are dealt. A stratum too small to reach every
    fold or the test set (one or two mice) is never an error: its mice are placed like the
    others, each fold and the test set getting the floor or ceiling of its fair share, so the
    folds of a rare stratum differ by at most one mouse. Mice come from the records only: a
    scan of a mouse with no record is in no split.
    """
    import pandas as pd

    test, folds, seed, weeks = _check_arguments(test, folds, seed, weeks)
    if stratify is not None and not isinstance(stratify, str):
        raise TypeError(f"stratify={stratify!r} must be a column name (str) or None")
    table = _records_table(records, storage_options)
    labels, unavailable = _labels(table, weeks)
    extra = _stratify_values(table, labels, unavailable, stratify)
    if extra is not None:
        labels[extra.name] = labels["mouse"].map(extra).astype(extra.dtype)
    n = len(labels)
    if n == 0:
        raise ValueError("records hold no animal with an id: nothing to split")
    key = None if stratify is None else (stratify if stratify in LABELS else extra.name)
    strata = _strata(labels, key)
    n_test = math.floor(Fraction(test) * n + Fraction(1, 2))
    if n - n_test < folds:
        raise ValueError(
            f"folds={folds} needs at least {folds} training mice, but of the {n} mice in the "
            f"records {n_test} go to test (test={test}): lower folds or test, or add mice"
        )
    if n_test == 0:
        logger.warning("test=%s of %d mice rounds to no test mouse; raise test", test, n)
    rng = np.random.default_rng(seed)
    shuffled = [[members[i] for i in rng.permutation(len(members))] for members in strata]
    quotas = _apportion([len(m) for m in shuffled], Fraction(test), n_test, rng)
    assigned_split, assigned_fold = {}, {}
    counter = 0
    for members, quota in zip(shuffled, quotas, strict=True):
        for position, mouse in enumerate(members):
            if position < quota:
                assigned_split[mouse] = "test"
            else:
                assigned_split[mouse] = "train"
                assigned_fold[mouse] = counter % folds
                counter += 1
    out = pd.DataFrame(
        {
            "mouse": labels["mouse"],
            "split": labels["mouse"].map(assigned_split).astype(str),
            "fold": pd.array([assigned_fold.get(m) for m in labels["mouse"]], dtype="Int64"),
        }
    )
    out = pd.concat([out, labels.drop(columns="mouse")], axis=1)
    out.attrs = {
        "seed": seed,
        "test": test,
        "folds": folds,
        "stratify": stratify,
        "weeks": list(weeks),
    }
    logger.info(
        "split %d mice: %d test, %d train in %d folds (stratify=%r, seed=%d)",
        n, n_test, n - n_test, folds, stratify, seed,
    )  # fmt: skip
    return out


def read_split(
    path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a :func:`split` table saved with ``to_csv(path, index=False)``, with its dtypes.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file (local path or fsspec URL).
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    pandas.DataFrame
        The table as :func:`split` returned it (without ``attrs``, which CSV cannot hold):
        ``mouse`` and ``injected_limb`` as text (leading zeros and empty strings kept),
        ``fold`` nullable ``Int64``, ``lesion`` bool (``"boolean"`` when a value is missing).
        Other columns are read as :func:`pandas.read_csv` infers them.
    """
    import pandas as pd

    table = pd.read_csv(
        os.fspath(path),
        dtype=CSV_DTYPES,
        keep_default_na=False,
        na_values={"fold": [""], "lesion": [""]},
        storage_options=storage_options,
    )
    if "lesion" in table and not table["lesion"].isna().any():
        table["lesion"] = table["lesion"].astype(bool)
    return table


def _check_arguments(
    test: Any, folds: Any, seed: Any, weeks: Any
) -> tuple[float, int, int, tuple[int, int]]:
    """The arguments of :func:`split`, validated, as plain Python numbers."""
    if isinstance(test, bool) or not isinstance(test, Real) or not 0 < float(test) < 1:
        raise ValueError(f"test={test!r} must be a fraction of the mice in (0, 1), e.g. 0.2")
    if isinstance(folds, bool) or not isinstance(folds, Integral) or folds < 2:
        raise ValueError(f"folds={folds!r} must be an integer >= 2 (e.g. 5)")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0")
    return float(test), int(folds), int(seed), _check_weeks(weeks)


def _check_weeks(weeks: Any) -> tuple[int, int]:
    try:
        first, last = weeks
        ok = all(isinstance(w, Integral) and not isinstance(w, bool) for w in (first, last))
    except (TypeError, ValueError):
        ok = False
    if not ok or first < 0 or last < first:
        raise ValueError(f"weeks={weeks!r} must be (first, last) weeks, 0 <= first <= last")
    return int(first), int(last)


def _records_table(records: Any, storage_options: dict[str, Any] | None) -> pd.DataFrame:
    """``records`` as a DataFrame: itself, or the ``/medirec`` of a store or root group."""
    import pandas as pd
    import zarr

    from bonemet_dask.io.records import RECORDS_GROUP, read_records
    from bonemet_dask.io.scans import open_root

    if isinstance(records, pd.DataFrame):
        return records
    if isinstance(records, str | os.PathLike):
        root = open_root(records, mode="r", storage_options=storage_options, name="records")
    elif isinstance(records, zarr.Group):
        root = records
    else:
        raise TypeError(
            f"records={type(records).__name__} must be the MiceMediRec DataFrame "
            "(bonemet_dask.io.records.read_records), a store path/URL or its root group"
        )
    if RECORDS_GROUP not in root:
        raise ValueError(
            f"records={records!r}: the store has no /{RECORDS_GROUP} table; convert a tree "
            "with its 'MiceMediRec Dataset/record.csv', or pass the records as a DataFrame"
        )
    return read_records(root)


def _mouse_ids(table: pd.DataFrame) -> pd.Series:
    """Each row's animal id as stripped text (``851``, never ``851.0``); <NA> when missing."""
    import pandas as pd

    column = animal_id_column(table.columns)
    if column is None:
        raise ValueError(
            f"records have no animal id column (columns found: {_columns(table)}); rename it "
            "to 'Animal ID' (MiceMediRec's name)"
        )
    values = table[column]
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _columns(table: pd.DataFrame) -> str:
    names = [str(c) for c in table.columns]
    return ", ".join(map(repr, names[:30])) + (", ..." if len(names) > 30 else "")


def _mouse_key(mouse: str) -> tuple[int, int, str]:
    return (0, int(mouse), mouse) if mouse.isdigit() else (1, 0, mouse)


def _labels(table: pd.DataFrame, weeks: tuple[int, int]) -> tuple[pd.DataFrame, dict[str, str]]:
    """:func:`animal_labels`' table, and why each label it could not compute is missing."""
    import pandas as pd

    ids = _mouse_ids(table)
    if ids.isna().any():
        logger.warning("%d record(s) without an animal id left out of the split", ids.isna().sum())
    mice = sorted(set(ids.dropna()), key=_mouse_key)
    labels = pd.DataFrame({"mouse": pd.Series(mice, dtype=str)})
    unavailable: dict[str, str] = {}
    diagnosis = find_column(table.columns, DIAGNOSIS_NAMES)
    week = find_column(table.columns, WEEK_NAMES)
    if diagnosis is None or week is None:
        what = "'Diagnosis'" if diagnosis is None else "'Week'"
        unavailable["lesion"] = (
            f"records have no {what} column (columns found: {_columns(table)}), so the lesion "
            "label is unknown: add or rename the column, or stratify by another one"
        )
        labels["lesion"] = pd.array([pd.NA] * len(mice), dtype="boolean")
    else:
        labels["lesion"] = _lesion(table, ids, diagnosis, week, weeks).reindex(mice).to_numpy()
        if labels["lesion"].isna().any():
            labels["lesion"] = labels["lesion"].astype("boolean")
        else:
            labels["lesion"] = labels["lesion"].astype(bool)
    limb = find_column(table.columns, INJECTED_LIMB_NAMES)
    if limb is None:
        unavailable["injected_limb"] = (
            f"records have no 'Injected Limb' column (columns found: {_columns(table)}), so "
            "injected_limb is unknown: add or rename the column, or stratify by another one"
        )
        labels["injected_limb"] = pd.Series([pd.NA] * len(mice), dtype=str)
    else:
        labels["injected_limb"] = _injected_limb(table, ids, limb).reindex(mice).to_numpy()
        labels["injected_limb"] = labels["injected_limb"].fillna("").astype(str)
    return labels, unavailable


def _lesion(
    table: pd.DataFrame, ids: pd.Series, column: str, week_column: str, weeks: tuple[int, int]
) -> pd.Series:
    """Per mouse: True if a diagnosis in ``weeks`` is a lesion, False if all are not, else NA."""
    import pandas as pd

    from bonemet_dask.ops.metrics import pd_to_int

    text = table[column].astype("string").str.strip().str.lower()
    text = text.mask(text.isin(_NA_TEXT))
    positive = text.str.fullmatch(_POSITIVE_RE.pattern) & ~text.str.fullmatch(_NEGATIVE_RE.pattern)
    negative = text.str.fullmatch(_NEGATIVE_RE.pattern)
    unknown = text.notna() & (text != "") & ~positive.fillna(False) & ~negative.fillna(False)
    if unknown.any():
        values = sorted(set(table.loc[unknown.to_numpy(), column].astype(str)))
        raise ValueError(
            f"records column {column!r} holds values read neither as a lesion nor as none: "
            f"{values[:10]}; map them to 'bone lesion' / 'no lesion' in the table first"
        )
    week = pd_to_int(table[week_column])
    inside = (week >= weeks[0]) & (week <= weeks[1])
    value = pd.Series(pd.NA, index=table.index, dtype="boolean")
    value[negative.fillna(False).to_numpy()] = False
    value[positive.fillna(False).to_numpy()] = True
    known = inside.fillna(False).to_numpy() & value.notna().to_numpy() & ids.notna().to_numpy()
    frame = pd.DataFrame({"mouse": ids[known], "lesion": value[known].astype(bool)})
    return frame.groupby("mouse")["lesion"].any().astype("boolean")


def _injected_limb(table: pd.DataFrame, ids: pd.Series, column: str) -> pd.Series:
    """Per mouse: ``"left"``, ``"right"`` or ``""`` (never injected)."""
    import pandas as pd

    text = table[column].astype("string").str.strip().str.lower()
    text = text.mask(text.isin(_NA_TEXT)).fillna("")
    side = pd.Series("", index=table.index, dtype=object)
    side[text.str.fullmatch(_LEFT_RE.pattern).to_numpy()] = "left"
    side[text.str.fullmatch(_RIGHT_RE.pattern).to_numpy()] = "right"
    unknown = (side == "") & ~text.isin(_NONE_LIMB)
    if unknown.any():
        values = sorted(set(table.loc[unknown.to_numpy(), column].astype(str)))
        raise ValueError(
            f"records column {column!r} holds values read neither as left, right nor none: "
            f"{values[:10]}; write 'left', 'right' or leave the cell empty"
        )
    frame = pd.DataFrame({"mouse": ids, "side": side})[ids.notna().to_numpy()]
    sides = frame[frame["side"] != ""].groupby("mouse")["side"].unique()
    both = sides[sides.map(len) > 1]
    if len(both):
        raise ValueError(
            f"records column {column!r} names two injected limbs for mouse {both.index[0]!r} "
            f"({', '.join(both.iloc[0])}); correct the records (one injected limb per mouse)"
        )
    return sides.map(lambda s: s[0]).reindex(sorted(set(ids.dropna()))).fillna("")


def _stratify_values(
    table: pd.DataFrame, labels: pd.DataFrame, unavailable: dict[str, str], stratify: str | None
) -> pd.Series | None:
    """Per-mouse values of a records column to stratify by (None for a label or no stratify)."""
    if stratify is None:
        return None
    if stratify in unavailable:
        raise ValueError(f"stratify={stratify!r}: {unavailable[stratify]}")
    if stratify in LABELS:
        return None
    if stratify in _RESERVED:
        raise ValueError(f"stratify={stratify!r} is a column split writes; name a label instead")
    column = (
        stratify if stratify in table.columns else find_column(table.columns, [_norm(stratify)])
    )
    if column is None:
        raise ValueError(
            f"stratify={stratify!r} is neither a label ({', '.join(LABELS)}) nor a records "
            f"column (columns found: {_columns(table)}); pass one of them or None"
        )
    ids = _mouse_ids(table)
    rows = table.loc[ids.notna().to_numpy(), column]
    per_mouse = rows.groupby(ids[ids.notna()].to_numpy()).nunique(dropna=True)
    varying = per_mouse[per_mouse > 1]
    if len(varying):
        mouse = str(varying.index[0])
        seen = sorted(map(str, rows[(ids[ids.notna()] == mouse).to_numpy()].dropna().unique()))
        raise ValueError(
            f"stratify={stratify!r}: records column {column!r} varies within a mouse (mouse "
            f"{mouse!r}: {', '.join(seen[:5])}); stratify by a per-mouse value: "
            f"{', '.join(LABELS)} or a column constant per mouse"
        )
    first = rows.groupby(ids[ids.notna()].to_numpy()).first()
    name = column if column not in labels.columns else f"record_{column}"
    return first.rename(name)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _strata(labels: pd.DataFrame, key: str | None) -> list[list[str]]:
    """The mice of each stratum (in mouse order), strata ordered by their value as text."""
    mice = labels["mouse"].tolist()
    if key is None:
        return [mice]
    groups: dict[tuple[bool, str], list[str]] = {}
    for mouse, value in zip(mice, labels[key].tolist(), strict=True):
        missing = value is None or _isna(value)
        groups.setdefault((missing, "" if missing else str(value)), []).append(mouse)
    return [groups[k] for k in sorted(groups)]


def _isna(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def _apportion(
    sizes: list[int], fraction: Fraction, total: int, rng: np.random.Generator
) -> list[int]:
    """``total`` split between strata of ``sizes`` by largest remainder of ``fraction * size``.

    Each stratum gets ``floor`` or ``ceil`` of ``fraction * size`` (exact arithmetic); ties
    between equal remainders are drawn with ``rng``.
    """
    quotas = [fraction * size for size in sizes]
    counts = [math.floor(q) for q in quotas]
    ties = rng.random(len(sizes))
    order = sorted(range(len(sizes)), key=lambda k: (-(quotas[k] - counts[k]), ties[k]))
    for k in order[: total - sum(counts)]:
        counts[k] += 1
    return counts
