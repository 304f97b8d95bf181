"""One selection type and one matching rule: parsing, errors, and every consumer agreeing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bonemet_dask.selection import (
    NothingSelectedError,
    Selection,
    SelectionError,
    format_weeks,
    mouse_key,
)


@pytest.mark.parametrize(
    ("mice", "expected"),
    [("851", ("851",)), (851, ("851",)), (["851", 852], ("851", "852")),
     ("851, 0852", ("851", "852")), (("0851", 851), ("851",)),
     ("851-853", ("851", "852", "853")), ("851-852,0900", ("851", "852", "900")),
     (range(851, 853), ("851", "852")), ("851L", ("851L",))],
)  # fmt: skip
def test_mice_as_string_int_or_list(mice, expected):
    assert Selection.of(mice=mice).mice == expected


@pytest.mark.parametrize(
    ("weeks", "expected"),
    [(0, (0,)), ("0,2-4", (0, 2, 3, 4)), ([3, 1, 1], (1, 3)), (range(3), (0, 1, 2)),
     ("week 2", (2,)), (["0", "5-6"], (0, 5, 6))],
)  # fmt: skip
def test_weeks_as_int_list_or_range_text(weeks, expected):
    assert Selection.of(weeks=weeks).weeks == expected


@pytest.mark.parametrize(
    ("selectors", "message"),
    [
        ({"weeks": "5-2"}, "runs backwards; write 2-5"),
        ({"weeks": -1}, "outside 0..10000"),
        ({"weeks": 99999999999999999999}, "outside 0..10000"),
        ({"weeks": "one"}, "not a week number or range"),
        ({"weeks": ""}, "names no week"),
        ({"sides": "up"}, "'up' is not one of left, right, both"),
        ({"components": "bone"}, "'bone' is not one of rotation_xray"),
        ({"mice": True}, "animal ids"),
        ({"mice": ""}, "names no animal"),
        ({"mice": "860-851"}, "runs backwards; write 851-860"),
        ({"mice": "1-1000000"}, "spans 1,000,000 ids"),
    ],
)
def test_malformed_selectors_name_the_fix(selectors, message):
    with pytest.raises(SelectionError, match=message):
        Selection.of(**selectors)


def test_one_matching_rule():
    chosen = Selection.of(mice="0851", weeks="0-1", sides="left")
    assert chosen.matches(mouse=851, side="left", week=1)
    assert chosen.matches(mouse="851")  # keys not given are not tested
    assert not chosen.matches(mouse="852", side="left", week=0)
    assert not chosen.matches(mouse="851", side="right", week=0)
    assert not chosen.matches(mouse="851", side="left", week=2)
    assert mouse_key("85l") == "85l" and not Selection.of(mice="85l").matches(mouse="851")
    assert Selection.of(components="2. Recon-CT").components == ("recon_ct",)
    assert Selection().everything and not chosen.everything
    narrowed = chosen.narrowed(mice=852)
    assert narrowed.mice == ("852",) and narrowed.weeks == (0, 1)
    assert chosen.describe() == "--mice 851 --weeks 0,1 --sides left"


def test_nothing_selected_lists_what_exists():
    scans = [("851", "both", 0), ("851", "both", 1), ("852", "both", 2)]
    with pytest.raises(NothingSelectedError) as err:
        Selection.of(mice=853).require(0, scans, what="recon_ct scans", where="STORE 's.zarr'")
    message = str(err.value)
    assert "--mice 853 matches none of the 3 recon_ct scans in STORE 's.zarr'" in message
    assert "mice 851, 852 (weeks 0-2; sides both)" in message
    with pytest.raises(NothingSelectedError, match="holds no recon_ct scans"):
        Selection().require(0, [], what="recon_ct scans", where="STORE 's.zarr'")
    Selection.of(mice=851).require(2, scans, what="x", where="y")  # matched: no error


@given(st.sets(st.integers(min_value=0, max_value=60), min_size=1))
def test_week_text_round_trips(weeks):
    assert Selection.of(weeks=format_weeks(weeks)).weeks == tuple(sorted(weeks))
