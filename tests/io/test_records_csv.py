"""record.csv as people save it: encodings, delimiters, headers, cell types, every problem named.

Every input is built here from the synthetic generator's writer
(:func:`bonemet_dask.synth.records.records_csv`), then damaged the way Excel or a hand edit does.
"""

import logging

import numpy as np
import pandas as pd
import pytest
import zarr

from bonemet_dask.io.records import (
    RECORDS_GROUP,
    check_records_file,
    import_records,
    read_records,
    store_keys,
    write_records,
)
from bonemet_dask.io.records_csv import (
    RECORD_PROBLEM_KINDS,
    RecordsCsvError,
    load_records_csv,
    read_records_csv,
)
from bonemet_dask.synth.records import RECORD_COLUMNS, records_csv

PATH = "MiceMediRec Dataset/record.csv"


def rows() -> list[dict[str, object]]:
    return [
        {
            "Experiment Date": f"2023-03-{6 + 7 * week:02d}",
            "Animal ID": mouse,
            "Week": week,
            "Age (weeks)": 6 + week,
            "Sex": "F",
            "Strain": "BALB/c",
            "Inoculation Date": "2023-03-06",
            "Injected Limb": "right",
            "Body Weight (g)": 20.5 + week,
            "Treatment": "none",
            "Diagnosis": "no lesion",
            "Metastatic Sites": "",
            "Average Radiant Efficiency ([p/s]/[uW/cm2])": 1.5e6,
            "Bone Volume RoI (mm3)": 10.25,
        }
        for mouse in ("851", "0852", "853")
        for week in (0, 1)
    ]


@pytest.fixture
def good() -> bytes:
    return records_csv(rows())


def lines_of(data: bytes) -> list[str]:
    return data.decode("utf-8").splitlines()


def kinds(result) -> list[str]:
    return [p.kind for p in result.problems]


@pytest.fixture
def root():
    return zarr.open_group(zarr.storage.MemoryStore(), mode="w")


def test_a_good_file_has_no_problem_and_keeps_ids_as_text(good):
    result = load_records_csv(good, path=PATH)
    assert result.problems == () and result.encoding == "utf-8-sig" and result.delimiter == ","
    table = result.table
    assert list(table.columns) == list(RECORD_COLUMNS) and len(table) == 6
    assert list(table["Animal ID"].unique()) == ["851", "0852", "853"]  # leading zero kept
    assert table["Week"].dtype == np.int64 and table["Body Weight (g)"].dtype == np.float64
    assert result.lines == tuple(range(2, 8))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_bom_encodings_are_read_without_a_guess(good, encoding):
    text = good.decode("utf-8").replace("none", "déjà vu µ")
    result = load_records_csv(text.encode(encoding), path=PATH)
    assert result.problems == ()
    assert result.table["Treatment"].iloc[0] == "déjà vu µ"


def test_cp1252_is_read_with_a_notice_naming_the_file(good):
    text = good.decode("utf-8").replace("none", "déjà vu – 5 €")
    result = load_records_csv(text.encode("cp1252"), path=PATH)
    assert result.table["Treatment"].iloc[0] == "déjà vu – 5 €"  # cp1252, not Latin-1
    (problem,) = result.problems
    assert (problem.kind, problem.severity) == ("encoding", "notice")
    assert PATH in problem.message and "cp1252" in problem.message
    assert result.reportable == ()  # read whole: convert exits 0


def test_semicolons_and_decimal_commas_are_read_as_excel_meant(good):
    table = load_records_csv(good, path=PATH).table
    text = "\n".join(
        line.replace(",", ";").replace("20.5", "20,5").replace("21.5", "21,5")
        for line in lines_of(good)
    )
    result = load_records_csv(text.encode(), path=PATH)
    assert kinds(result) == ["delimiter", "decimal-comma"] and result.reportable == ()
    assert "semicolons" in result.problems[0].message
    assert "'Body Weight (g)'" in result.problems[1].message
    pd.testing.assert_frame_equal(result.table, table)


def test_tabs(good):
    text = "\n".join(line.replace(",", "\t") for line in lines_of(good))
    result = load_records_csv(text.encode(), path=PATH)
    assert result.delimiter == "\t" and kinds(result) == ["delimiter"]
    assert len(result.table) == 6


def test_a_cell_of_the_wrong_type_is_emptied_and_named(good):
    lines = lines_of(good)
    cells = lines[3].split(",")
    cells[RECORD_COLUMNS.index("Body Weight (g)")] = "heavy"
    cells[RECORD_COLUMNS.index("Week")] = "two"
    cells[RECORD_COLUMNS.index("Experiment Date")] = "2023-02-30"
    lines[3] = ",".join(cells)
    result = load_records_csv("\n".join(lines).encode(), path=PATH)
    assert kinds(result) == ["wrong-type"] * 3
    by_column = {p.column: p for p in result.problems}
    weight = by_column["Body Weight (g)"]
    assert weight.line == 4 and weight.severity == "warning"
    assert weight.message.startswith(f"{PATH!r} line 4, column 'Body Weight (g)': 'heavy'")
    table = result.table
    assert table["Body Weight (g)"].dtype == np.float64  # never coerced to text
    assert np.isnan(table["Body Weight (g)"].iloc[2]) and np.isnan(table["Week"].iloc[2])
    assert pd.isna(table["Experiment Date"].iloc[2])
    assert table["Body Weight (g)"].iloc[3] == 21.5  # the other rows untouched


def test_weeks_written_as_text_are_valid(good):
    text = good.decode().replace(",0,6,", ",week 0,6,").replace(",1,7,", ",1.0,7,")
    result = load_records_csv(text.encode(), path=PATH)
    assert result.problems == ()


def test_missing_columns_are_named(good):
    frame = pd.read_csv(pd.io.common.BytesIO(good), dtype=str)
    data = frame.drop(columns=["Animal ID", "Week"]).to_csv(index=False).encode()
    result = load_records_csv(data, path=PATH)
    assert kinds(result) == ["missing-column", "missing-column"]
    assert [p.column for p in result.problems] == ["Animal ID", "Week"]
    assert all(PATH in p.message and "Strain" in p.message for p in result.problems)
    assert len(result.table) == 6  # the other columns are kept


def test_duplicate_and_empty_header_cells_are_made_unique(good):
    lines = lines_of(good)
    lines[0] = lines[0].replace("Sex", "Age (weeks)").replace("Strain", "")
    result = load_records_csv("\n".join(lines).encode(), path=PATH)
    assert sorted(kinds(result)) == ["duplicate-header", "empty-header"]
    columns = list(result.table.columns)
    assert columns[3:6] == ["Age (weeks)", "Age (weeks).1", "column 6"]
    duplicate = next(p for p in result.problems if p.kind == "duplicate-header")
    assert "columns 4 and 5" in duplicate.message and "'Age (weeks).1'" in duplicate.message


def test_excel_trailing_separator_is_not_a_column(good):
    data = "\n".join(line + "," for line in lines_of(good)).encode()
    result = load_records_csv(data, path=PATH)
    assert result.problems == () and list(result.table.columns) == list(RECORD_COLUMNS)


def test_ragged_rows(good):
    lines = lines_of(good)
    lines[2] += ",surplus"
    lines[5] = ",".join(lines[5].split(",")[:-2])
    result = load_records_csv("\n".join(lines).encode(), path=PATH)
    assert kinds(result) == ["ragged-row", "ragged-row"]
    assert [p.line for p in result.problems] == [3, 6]
    assert "left out" in result.problems[0].message
    assert "last 2 are left empty" in result.problems[1].message
    assert len(result.table) == 5 and result.lines == (2, 4, 5, 6, 7)


def test_duplicate_records_of_one_scan(good):
    lines = lines_of(good)
    conflicting = lines[4].replace("no lesion", "lesion")
    result = load_records_csv("\n".join([*lines, lines[2], conflicting]).encode(), path=PATH)
    assert kinds(result) == ["duplicate-row", "duplicate-row"]
    repeated, differing = result.problems
    assert "lines 3, 8" in repeated.message and "first is kept" in repeated.message
    assert "lines 5, 9" in differing.message and "all left out" in differing.message
    assert result.lines == (2, 3, 4, 6, 7)
    keys = result.table[["Animal ID", "Week"]].apply(tuple, axis=1)
    assert keys.is_unique  # the metrics join's many-to-one holds


def test_a_row_without_animal_id_is_kept_and_named(good):
    lines = lines_of(good)
    lines[1] = lines[1].replace(",851,", ",,")
    result = load_records_csv("\n".join(lines).encode(), path=PATH)
    assert kinds(result) == ["missing-id"] and result.problems[0].line == 2
    assert result.table["Animal ID"].iloc[0] is None and len(result.table) == 6


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "is empty"),
        (b" \r\n \n", "is empty"),
        (bytes(range(256)) * 8, "not a text table"),
        ("Animal ID,Week\n851,0\n".encode("utf-16-le"), "UTF-16 without a byte order mark"),
        (b'Animal ID,Week\n851,"' + b"x" * 200_000, "unclosed quote"),
    ],
)
def test_no_table_is_an_error_and_read_records_csv_raises(data, says):
    result = load_records_csv(data, path=PATH)
    assert result.table is None and kinds(result)[-1] == "unreadable"
    assert says in result.problems[-1].message and PATH in result.problems[-1].message
    with pytest.raises(RecordsCsvError, match=says):
        read_records_csv(data, path=PATH)


def test_problem_kinds_are_documented():
    assert set(RECORD_PROBLEM_KINDS.values()) == {"error", "warning", "notice"}


# ------------------------------------------------------------------------ into the store


def test_store_keys_never_collide_nor_hit_reserved_names():
    columns = ["zarr.json", "Week", "week", "Body Weight (g)", "Body Weight g", ".x", "CON",
               ".zattrs", "", "a" * 300]  # fmt: skip
    keys = store_keys(columns)
    names = [k for k, _ in keys]
    assert len({n.lower() for n in names}) == len(names)
    assert names[:6] == ["column_zarr.json", "Week", "week_2", "Body_Weight_g",
                         "Body_Weight_g_2", "column_x"]  # fmt: skip
    assert names[6] == "column_CON" and names[7] == "column_zattrs" and len(names[9]) == 100
    assert [k for k, (_, why) in enumerate(keys) if why is None] == [1, 3]  # plain sanitising


def test_import_writes_what_it_could_and_read_records_warns(good, root, caplog):
    lines = lines_of(good)
    lines[0] = lines[0].replace("Strain", "zarr.json")
    lines[3] = lines[3].replace(",20.5,", ",heavy,")
    with caplog.at_level(logging.WARNING):
        problems = import_records(root, "\n".join(lines).encode(), path=PATH)
    assert [p.kind for p in problems] == ["wrong-type", "store-key"]
    assert "zarr.json" in problems[1].message and f"/{RECORDS_GROUP}/column_zarr.json" in (
        problems[1].message
    )
    assert caplog.text.count(PATH) >= 2  # both logged, naming the file
    group = root[RECORDS_GROUP]
    assert group["column_zarr.json"].attrs["column"] == "zarr.json"
    attrs = group.attrs["bonemet"]
    assert attrs["source"] == PATH and attrs["n_problems"] == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bonemet_dask.io.records"):
        table = read_records(root)
    assert "imported from" in caplog.text and "2 problem(s)" in caplog.text
    assert list(table.columns)[5] == "zarr.json" and np.isnan(table["Body Weight (g)"].iloc[2])


def test_an_unreadable_file_keeps_the_earlier_table_but_marks_it(good, root, caplog):
    import_records(root, good, path=PATH)
    problems = import_records(root, b"\x00\x01", path=PATH)
    assert [p.severity for p in problems] == ["error"]
    assert len(read_records(root)) == 6  # kept...
    assert root[RECORDS_GROUP].attrs["bonemet"]["stale"] is True
    with caplog.at_level(logging.WARNING, logger="bonemet_dask.io.records"):
        read_records(root)
    assert "stale" in caplog.text  # ...never silently


def test_check_records_file_is_the_dry_run_of_import(good, tmp_path, root):
    import fsspec

    bad = good.replace(b"Strain", b"zarr.json")
    (tmp_path / "record.csv").write_bytes(bad)
    checked = check_records_file(fsspec.filesystem("file"), str(tmp_path / "record.csv"))
    imported = import_records(root, bad, path=str(tmp_path / "record.csv"))
    assert checked == imported and [p.kind for p in checked] == ["store-key"]
    missing = check_records_file(fsspec.filesystem("file"), str(tmp_path / "none.csv"))
    assert missing[0].kind == "unreadable" and "could not be read" in missing[0].message


def test_write_records_of_a_dataframe_logs_renames_and_keeps_wide_integers(root, caplog):
    table = pd.DataFrame({"zarr.json": [1, 2], "big": np.array([2**64 - 1, 1], dtype=np.uint64)})
    with caplog.at_level(logging.WARNING):
        group = write_records(root, table)
    assert "zarr.json" in caplog.text and "problems" not in group.attrs["bonemet"]
    assert group["big"].dtype == np.uint64 and group["big"][0] == 2**64 - 1  # not wrapped
    pd.testing.assert_frame_equal(read_records(root), table)


def test_an_unchanged_file_is_not_rewritten(good, root):
    """A rerun leaves /medirec alone (no window where a reader sees it half-written); a changed
    file, or one imported from elsewhere, is written again."""
    import_records(root, good, path=PATH)
    first = root[RECORDS_GROUP].attrs["bonemet"]["source_sha256"]
    marker = root[RECORDS_GROUP].create_array("untouched", shape=(1,), dtype="uint8")
    import_records(root, good, path=PATH)
    assert "untouched" in root[RECORDS_GROUP] and marker.shape == (1,)  # group not recreated
    changed = good.replace(b",20.5,", b",23.0,", 1)
    assert changed != good
    import_records(root, changed, path=PATH)
    assert "untouched" not in root[RECORDS_GROUP]
    assert root[RECORDS_GROUP].attrs["bonemet"]["source_sha256"] != first
    assert read_records(root)["Body Weight (g)"].iloc[0] == 23.0
