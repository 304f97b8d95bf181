"""Mouse-level splits: every mouse placed once, strata within one mouse of ideal, deterministic."""

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bonemet_dask.ml.split import animal_labels, read_split, split

GROUPS = ("a", "b", "c", "d")


def make_records(spec: list[tuple[str, str, str, list[str]]]) -> pd.DataFrame:
    """A MiceMediRec-like table: per mouse (id, group, injected limb, diagnosis per week)."""
    rows = []
    for mouse, group, limb, diagnoses in spec:
        for week, diagnosis in enumerate(diagnoses):
            rows.append({"Animal ID": mouse, "Week": week, "Group": group,
                         "Injected Limb": limb, "Diagnosis": diagnosis})  # fmt: skip
    return pd.DataFrame(rows, columns=["Animal ID", "Week", "Group", "Injected Limb", "Diagnosis"])


@st.composite
def cohorts(draw):
    n = draw(st.integers(1, 30))
    numbers = draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n, unique=True))
    weights = draw(st.lists(st.integers(1, 10), min_size=len(GROUPS), max_size=len(GROUPS)))
    choice = st.sampled_from([g for g, w in zip(GROUPS, weights, strict=True) for _ in range(w)])
    spec = []
    for k, number in enumerate(numbers):
        mouse = str(number) if k % 5 else f"M{number}"  # numeric and text ids
        limb = draw(st.sampled_from(["left", "right", ""]))
        weeks = draw(st.integers(1, 8))
        diagnoses = draw(st.lists(st.sampled_from(["bone lesion", "no lesion", ""]),
                                  min_size=weeks, max_size=weeks))  # fmt: skip
        spec.append((mouse, draw(choice), limb, diagnoses))
    return spec


def reference_lesion(spec, weeks=(0, 5)):
    """Independent label: a 'bone lesion' row in the weeks window; None with no diagnosis."""
    out = {}
    for mouse, _, _, diagnoses in spec:
        window = [d for w, d in enumerate(diagnoses) if weeks[0] <= w <= weeks[1] and d]
        out[mouse] = None if not window else "bone lesion" in window
    return out


def check_split(table: pd.DataFrame, spec, *, test: float, folds: int, key: str | None):
    mice = [m for m, *_ in spec]
    # every mouse placed, exactly once: no mouse in two splits or two folds
    assert table["mouse"].is_unique and sorted(table["mouse"]) == sorted(mice)
    assert set(table["split"]) <= {"train", "test"}
    is_test = table["split"] == "test"
    assert table["fold"].isna().equals(is_test)
    assert table.loc[~is_test, "fold"].between(0, folds - 1).all()
    n = len(mice)
    assert is_test.sum() == math.floor(Fraction(test) * n + Fraction(1, 2))
    strata = table.groupby(table[key].astype(str), dropna=False) if key else [("", table)]
    for _, rows in strata:
        n_s = len(rows)
        n_test = (rows["split"] == "test").sum()
        assert abs(n_test - Fraction(test) * n_s) < 1, (n_s, n_test)
        train = rows[rows["split"] == "train"]
        per_fold = train["fold"].value_counts().reindex(range(folds), fill_value=0)
        assert (abs(per_fold - len(train) / folds) < 1).all(), per_fold.tolist()
    sizes = table["fold"].value_counts().reindex(range(folds), fill_value=0)
    assert sizes.max() - sizes.min() <= 1 and sizes.min() >= 1


@settings(max_examples=80, deadline=None)
@given(
    spec=cohorts(),
    test=st.floats(0.05, 0.95),
    folds=st.integers(2, 6),
    stratify=st.sampled_from([None, "lesion", "injected_limb", "Group"]),
    seed=st.integers(0, 2**32),
    order=st.randoms(use_true_random=False),
)
def test_split_properties(spec, test, folds, stratify, seed, order):
    records = make_records(spec)
    n = len(spec)
    if n - math.floor(Fraction(test) * n + Fraction(1, 2)) < folds:
        with pytest.raises(ValueError, match=f"folds={folds} needs at least {folds} training"):
            split(records, test=test, folds=folds, stratify=stratify, seed=seed)
        return
    table = split(records, test=test, folds=folds, stratify=stratify, seed=seed)
    check_split(table, spec, test=test, folds=folds, key=stratify)
    # labels: the paper's animal-level positive, against an independent reading
    expected = reference_lesion(spec)
    got = dict(zip(table["mouse"], table["lesion"].astype(object), strict=True))
    assert {m: (None if pd.isna(v) else bool(v)) for m, v in got.items()} == expected
    limbs = {mouse: limb for mouse, _, limb, _ in spec}
    assert dict(zip(table["mouse"], table["injected_limb"], strict=True)) == limbs
    # deterministic for a seed, whatever the records' row order
    shuffled = records.sample(frac=1.0, random_state=order.randrange(2**32))
    again = split(shuffled, test=test, folds=folds, stratify=stratify, seed=seed)
    pd.testing.assert_frame_equal(again, table)
    assert table.attrs == {"seed": seed, "test": test, "folds": folds, "stratify": stratify,
                           "weeks": [0, 5]}  # fmt: skip


def test_small_strata_are_placed():
    """Strata of one and two mice: placed (test or a fold), never an error."""
    spec = [(str(800 + k), "a", "", ["no lesion"]) for k in range(9)]
    spec += [("900", "b", "", ["no lesion"]), ("901", "c", "", ["no lesion"]),
             ("902", "c", "", ["no lesion"])]  # fmt: skip
    for seed in range(20):
        table = split(make_records(spec), test=0.25, folds=3, stratify="Group", seed=seed)
        check_split(table, spec, test=0.25, folds=3, key="Group")


def test_seeds_differ_and_stratification_balances():
    spec = [(str(100 + k), "a", "left" if k % 3 == 0 else "", ["no lesion", "bone lesion"
             if k % 3 == 0 else "no lesion"]) for k in range(40)]  # fmt: skip
    tables = [split(make_records(spec), test=0.2, folds=5, seed=seed) for seed in range(3)]
    assert len({tuple(t["split"] + t["fold"].astype(str)) for t in tables}) == 3
    for table in tables:  # 14 positives of 40: 3 in test (2.8), the folds 2 or 3 (11/5)
        positive = table[table["lesion"]]
        assert (positive["split"] == "test").sum() == 3
        assert set(positive["fold"].value_counts()) <= {2, 3}


def test_csv_round_trip(tmp_path):
    spec = [("0851", "a", "left", ["no lesion", "bone lesion"]), ("852", "b", "", ["no lesion"]),
            ("853", "a", "right", ["", "Bone lesion"]), ("854", "b", "", ["no lesion"]),
            ("855", "a", "", [""])]  # fmt: skip
    for stratify in ("lesion", "Group"):
        table = split(make_records(spec), test=0.2, folds=2, stratify=stratify, seed=7)
        table.to_csv(tmp_path / "split.csv", index=False)
        back = read_split(tmp_path / "split.csv")
        pd.testing.assert_frame_equal(back, table)  # "0851", "" limbs and <NA> kept
    assert table["lesion"].dtype == "boolean" and table["lesion"].isna().sum() == 1
    assert table["mouse"].tolist() == ["0851", "852", "853", "854", "855"]  # numeric order
    # plain read_csv with dtype gives the key columns back as they were
    plain = pd.read_csv(tmp_path / "split.csv", dtype={"mouse": str, "fold": "Int64"})
    pd.testing.assert_frame_equal(plain[["mouse", "split", "fold"]],
                                  table[["mouse", "split", "fold"]])  # fmt: skip


def test_published_spellings():
    records = pd.DataFrame({
        "Mouse ID": [851, 851, 852, 852, 853, 853, 854],
        "Time point": ["week 0", "week 6", "wk 0", "Week 2", "0", "5", "1"],
        "Injection": ["L", "L", None, "none", "Right tibia", "Right tibia", "n/a"],
        "Diagnoses": ["No lesion", "Bone Lesion", "normal", "no lesion", "none", "Osteolytic",
                      None],
    })  # fmt: skip
    labels = animal_labels(records)
    assert labels["mouse"].tolist() == ["851", "852", "853", "854"]  # never "851.0"
    assert labels["lesion"].astype(object).tolist()[:3] == [False, False, True]  # week 6: out
    assert pd.isna(labels["lesion"].iloc[3])  # no diagnosis at all
    assert labels["injected_limb"].tolist() == ["left", "", "right", ""]
    assert animal_labels(records, weeks=(0, 6))["lesion"].iloc[0]


def test_store_records_and_path(tiny_published, tmp_path):
    """``records`` as the store: /medirec read, labels against the phantom's truth."""
    import zarr

    from bonemet_dask.io.records import read_records, write_records

    store = str(tiny_published / "published.zarr")
    truth = json.loads((tiny_published / "src" / "synthetic_truth.json").read_text())
    labels = animal_labels(store)
    expected = [(m, t["injected_side"] or "", bool(t["injected_side"]))
                for m, t in truth["mice"].items()]  # fmt: skip
    rows = zip(labels["mouse"], labels["injected_limb"], labels["lesion"], strict=True)
    assert list(rows) == expected  # a tumour mouse: lesion from week 1 on
    # a store with more mice: split(path) equals split(table)
    records = read_records(zarr.open_group(store, mode="r"))
    more = pd.concat([records.assign(**{"Animal ID": str(900 + k)}) for k in range(6)])
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    write_records(root, more)
    table = split(str(tmp_path / "s.zarr"), test=0.3, folds=2, seed=1)
    pd.testing.assert_frame_equal(table, split(more, test=0.3, folds=2, seed=1))
    pd.testing.assert_frame_equal(table, split(root, test=0.3, folds=2, seed=1))
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(ValueError, match=r"empty.zarr'?: the store has no /medirec table"):
        split(str(tmp_path / "empty.zarr"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test": 0}, r"test=0 must be a fraction of the mice in \(0, 1\)"),
        ({"test": 1.0}, r"test=1.0 must be"),
        ({"test": True}, r"test=True must be"),
        ({"folds": 1}, r"folds=1 must be an integer >= 2"),
        ({"folds": 2.5}, r"folds=2.5 must be an integer"),
        ({"seed": -1}, r"seed=-1 must be an integer >= 0"),
        ({"weeks": (3, 1)}, r"weeks=\(3, 1\) must be"),
        ({"stratify": "Week"}, r"stratify='Week': records column 'Week' varies within a mouse"),
        ({"stratify": "fold"}, r"stratify='fold' is a column split writes"),
        ({"stratify": "nope"}, r"stratify='nope' is neither a label .*'Diagnosis'"),
        ({"folds": 9}, r"folds=9 needs at least 9 training mice, but of the 8 mice"),
    ],
)
def test_bad_arguments(kwargs, message):
    spec = [(str(k), "a", "", ["no lesion", "no lesion"]) for k in range(8)]
    with pytest.raises(ValueError, match=message):
        split(make_records(spec), **kwargs)


def test_bad_records():
    records = make_records([(str(k), "a", "", ["no lesion"]) for k in range(6)])
    with pytest.raises(ValueError, match=r"no animal id column \(columns found: 'Week'"):
        split(records.drop(columns="Animal ID"))
    with pytest.raises(ValueError, match=r"stratify='lesion': records have no 'Diagnosis'"):
        split(records.drop(columns="Diagnosis"), folds=2)
    table = split(records.drop(columns="Diagnosis"), folds=2, stratify=None)  # labels unknown
    assert table["lesion"].isna().all() and len(table) == 6
    odd = records.assign(Diagnosis=["no lesion"] * 5 + ["maybe"])
    with pytest.raises(ValueError, match=r"'Diagnosis' holds values read neither .*'maybe'"):
        animal_labels(odd)
    two = pd.concat([records, records.head(1).assign(**{"Injected Limb": "left"}),
                     records.head(1).assign(**{"Injected Limb": "right", "Week": 1})])  # fmt: skip
    with pytest.raises(ValueError, match=r"two injected limbs for mouse '0' \(left, right\)"):
        animal_labels(two)
    with pytest.raises(TypeError, match="records=ndarray must be the MiceMediRec DataFrame"):
        split(np.zeros(3))
