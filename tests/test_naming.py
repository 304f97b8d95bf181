import pytest
from hypothesis import given
from hypothesis import strategies as st

from bonemet_dask import naming


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("1. Rotation-X-ray", "rotation_xray"),
        ("1. Rotation-X-Ray", "rotation_xray"),
        ("Rotation-X-ray", "rotation_xray"),
        ("2. Recon-CT", "recon_ct"),
        ("3. Seg-CT", "seg_ct"),
        ("4. Regist-CT", "regist_ct"),
        ("5. ROI-CT", "roi_ct"),
        ("5. RoI-CT", "roi_ct"),
        ("roi ct", "roi_ct"),
        ("Imagery_Dataset", None),
        ("851", None),
        ("Recon-CT backup", None),
    ],
)
def test_parse_component(folder, expected):
    assert naming.parse_component(folder) == expected


@pytest.mark.parametrize(
    ("folder", "mouse", "side"),
    [
        ("851", "851", "both"),
        ("851 left tibia", "851", "left"),
        ("851 Left Tibia", "851", "left"),
        ("851 right tibia", "851", "right"),
        ("851L proximal tibia", "851", "left"),
        ("851R proximal tibia", "851", "right"),
        ("  0872 RIGHT TIBIA ", "0872", "right"),
    ],
)
def test_parse_scan_folder(folder, mouse, side):
    parsed = naming.parse_scan_folder(folder)
    assert (parsed.mouse, parsed.side, parsed.original) == (mouse, side, folder)


@pytest.mark.parametrize("folder", ["left tibia", "851 left right tibia", "851L right tibia", ""])
def test_parse_scan_folder_rejects(folder):
    assert naming.parse_scan_folder(folder) is None


def test_index_is_last_digit_run_and_sorts_numerically():
    names = ["851_rec00000100.png", "851_rec00000009.png", "851_rec00000010.png"]
    assert sorted(names, key=naming.parse_index) == names[1:] + names[:1]
    assert naming.parse_index("851L_roi00000012.png") == 12
    assert naming.parse_index("week 3 slice.png") == 3
    assert naming.parse_index("slice.png") is None


@given(
    mouse=st.integers(0, 99999).map(str),
    component=st.sampled_from(naming.COMPONENTS),
    side=st.sampled_from(["left", "right"]),
    variant=st.integers(0, 10),
    week=st.integers(0, naming.MAX_WEEK),
    index=st.integers(0, 10**7),
)
def test_writers_round_trip_through_parsers(mouse, component, side, variant, week, index):
    side = side if component in naming.PER_TIBIA_COMPONENTS else "both"
    folder = naming.component_folder_name(component, variant=variant)
    scan = naming.scan_folder_name(component, mouse, side, variant=variant)
    assert naming.parse_component(folder) == component
    parsed = naming.parse_scan_folder(scan)
    assert (parsed.mouse, parsed.side) == (mouse, side)
    assert naming.parse_week(naming.week_folder_name(week, variant=variant)) == week
    assert naming.parse_index(naming.slice_file_name(component, mouse, side, index)) == index


def test_writer_errors_name_the_argument():
    with pytest.raises(ValueError, match="component='ct'"):
        naming.scan_folder_name("ct", "851", "left")
    with pytest.raises(ValueError, match="side='both'"):
        naming.scan_folder_name("seg_ct", "851", "both")
    with pytest.raises(ValueError, match="week=-1"):
        naming.week_folder_name(-1)
    with pytest.raises(ValueError, match=f"0..{naming.MAX_WEEK}"):
        naming.week_folder_name(naming.MAX_WEEK + 1)


@pytest.mark.parametrize(
    ("folder", "week"),
    [("week 0", 0), ("Week 11", 11), ("week_3", 3), ("week-3", 3), ("week - 3", 3), ("wk 3", 3),
     ("w3", 3), ("week 007", 7), (f"week {naming.MAX_WEEK}", naming.MAX_WEEK)],
)  # fmt: skip
def test_parse_week(folder, week):
    assert naming.parse_week(folder) == week
    assert naming.invalid_week(folder) is None


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("week -1", "week -1 is negative"),
        ("Week_-2", "week -2 is negative"),
        ("week 99999999999999999999", f"week 99999999999999999999 is above {naming.MAX_WEEK}"),
        (f"week {naming.MAX_WEEK + 1}", f"is above {naming.MAX_WEEK}"),
        ("week 2024", "week 2024 is above"),
        ("week +3", "is not 'week <number>'"),
    ],
)
def test_weeks_out_of_range_are_refused_with_a_reason(folder, reason):
    assert naming.parse_week(folder) is None
    assert reason in naming.invalid_week(folder)


@pytest.mark.parametrize("folder", ["weekday", "week 1.5", "851", "", "week"])
def test_not_week_shaped(folder):
    assert naming.parse_week(folder) is None and naming.invalid_week(folder) is None


def test_ids_and_indices_are_short_ascii_digit_runs():
    longest = "9" * naming.MAX_ID_DIGITS
    assert naming.parse_index(f"x_{longest}.png") == int(longest)
    assert naming.parse_index(f"x_0000{longest}.png") == int(longest)  # leading zeros are free
    assert naming.parse_index(f"x_1{longest}.png") is None
    assert naming.parse_index("x_" + "1" * 5000 + ".png") is None  # int() would raise here
    assert naming.parse_index("x_\u0663.png") is None  # Arabic-Indic digits are not an index
    assert naming.parse_scan_folder(f"{longest} left tibia").mouse == longest
    assert naming.parse_scan_folder(f"1{longest} left tibia") is None
    assert naming.parse_scan_folder("\u0663\u0665\u0661 left tibia") is None


def test_sanitize_segment():
    assert naming.sanitize_segment("851 left tibia") == "851_left_tibia"
    assert naming.sanitize_segment("5. ROI-CT") == "5._ROI-CT"
    with pytest.raises(ValueError, match=r"name='\.\.'"):
        naming.sanitize_segment("..")
