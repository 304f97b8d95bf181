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
    week=st.integers(0, 60),
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


def test_sanitize_segment():
    assert naming.sanitize_segment("851 left tibia") == "851_left_tibia"
    assert naming.sanitize_segment("5. ROI-CT") == "5._ROI-CT"
    with pytest.raises(ValueError, match=r"name='\.\.'"):
        naming.sanitize_segment("..")
