import os
import struct
import uuid
import zlib
from pathlib import Path

import fsspec
import imagecodecs
import numpy as np
import pytest

from bonemet_dask.io.catalog import (
    PROBLEM_KINDS,
    PROBLEM_SEVERITY,
    Catalog,
    Problem,
    expected_file_count,
    scan_source,
)
from bonemet_dask.io.catalog_report import catalog_tables
from bonemet_dask.io.png_header import PNG_SIGNATURE
from bonemet_dask.io.skyscan_log import format_skyscan_log, parse_skyscan_log

SHAPE = (6, 8)  # height, width of the tiny test slices


def png(value=0, shape=SHAPE, dtype=np.uint8) -> bytes:
    return imagecodecs.png_encode(np.full(shape, value, dtype=dtype))


def bomb_png() -> bytes:
    """A valid signature + IHDR claiming 100000 x 100000 16-bit pixels, with a correct CRC."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 16, 0, 0, 0, 0)
    return PNG_SIGNATURE + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def acquisition_log(n_files: int) -> bytes:
    return format_skyscan_log(
        {
            "System": {"Scanner": "Skyscan1276"},
            "Acquisition": {"Number Of Files": f"  {n_files}", "Object to Source (mm)": 84.0},
        }
    )


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_tree(base: Path) -> Path:
    """A small BoneMet-like tree with one of each oddity the catalog must report."""
    root = base / "BoneMet copy"
    data = root / "Imagery_Dataset"
    write(root / "MiceMediRec Dataset" / "record.csv", b"mouse,week\n851,0\n")
    # rotation: canonical spelling, ok, with a preferred log and an extra one
    rot = data / "1. Rotation-X-ray" / "851" / "week 0"
    for i in range(4):
        write(rot / f"851_{i:04d}.png", png(i, dtype=np.uint16))
    write(rot / "851.log", acquisition_log(4))
    write(rot / "aaa.log", acquisition_log(99))
    # rotation: other spelling; the log announces the wrong number of files
    rot2 = data / "Rotation-X-Ray" / "852" / "week 2"
    for i in range(3):
        write(rot2 / f"852_{i:04d}.png", png(i, dtype=np.uint16))
    write(rot2 / "852_.log", acquisition_log(5))
    # recon: unpadded indices 9..100 (numeric, not lexical order), NRecon log with Sections Count
    recon = data / "2. Recon-CT" / "851" / "week 0"
    for i in range(9, 101):
        write(recon / f"851_rec{i}.png", png(i))
    recon_log = {
        "Acquisition": {"Number of Files": 261},
        "Reconstruction": {"Sections Count": 92, "Postalignment": -4.0},
    }
    write(recon / "851_rec.log", format_skyscan_log(recon_log))
    # recon: week 10 and week 2 (week 2 has gaps)
    for i in range(3):
        write(data / "2. Recon-CT" / "851" / "week 10" / f"851_rec{i:08d}.png", png())
    for i in (0, 1, 2, 6, 8):
        write(data / "2. Recon-CT" / "851" / "week 2" / f"851_rec{i:08d}.png", png())
    # recon: swapped order <component>/week <k>/<scan>/ and a second spelling of the component
    for i in range(3):
        write(data / "Recon-CT" / "week 0" / "871" / f"871_rec{i:08d}.png", png())
    # an unparseable folder under a component
    write(data / "2. Recon-CT" / "old scans" / "x_0001.png", png())
    write(data / "2. Recon-CT" / "old scans" / "sub" / "y_0001.png", png())
    # seg: "Left Tibia" and "left tibia" are the same tibia
    for i in range(3):
        write(data / "3. Seg-CT" / "851 Left Tibia" / "week 0" / f"s_{i:08d}.png", png())
    seg1 = data / "3. Seg-CT" / "851 left tibia" / "week 1"
    for i in range(3):
        write(seg1 / f"851_left_tibia_{i:04d}.png", png())
    write(seg1 / "851_left_tibia_001.png", png())  # duplicate index 1
    write(seg1 / "Thumbs.db", b"\x00" * 10)
    write(seg1 / "preview.png", png())  # no index
    seg_r = data / "3. Seg-CT" / "851 right tibia" / "week 0"
    for i in range(5):
        write(seg_r / f"r_{i:04d}.png", png())
    write(seg_r / "r_0005.png", png(shape=(9, 9)))  # mixed size
    write(seg_r / "r_0006.png", png()[:40])  # truncated
    write(seg_r / "r_0007.png", png(dtype=np.uint16))  # mixed format
    write(data / "3. Seg-CT" / "852" / "week 0" / "852_0000.png", png())  # no side
    # regist: a decompression bomb, an unreadable log, an empty week folder
    reg = data / "4. Regist-CT" / "851 left tibia" / "week 0"
    for i in range(3):
        write(reg / f"reg{i:08d}.png", png())
    write(reg / "reg00000003.png", bomb_png())
    write(reg / "851.log", b"\x00\x01\x02 binary junk")
    (data / "4. Regist-CT" / "851 left tibia" / "week 1").mkdir(parents=True)
    # roi: same scan under two spellings of the component, and week 10
    for comp in ("5. ROI-CT", "RoI-CT"):
        for i in range(3):
            write(data / comp / "851L proximal tibia" / "week 2" / f"851L_roi{i:08d}.png", png())
    for i in range(3):
        write(
            data / "5. ROI-CT" / "851L proximal tibia" / "week 10" / f"851L_roi{i:08d}.png", png()
        )
    write(root / "README.txt", b"not part of any component")
    return root


def problems_of(catalog: Catalog, stack_index: int) -> list[str]:
    return sorted(p.kind for p in catalog.stacks[stack_index].problems)


def check_catalog(cat: Catalog) -> None:
    keys = [s.key for s in cat.stacks]
    assert keys == [
        ("rotation_xray", "851", "both", 0),
        ("rotation_xray", "852", "both", 2),
        ("recon_ct", "851", "both", 0),
        ("recon_ct", "851", "both", 2),
        ("recon_ct", "851", "both", 10),
        ("recon_ct", "871", "both", 0),
        ("seg_ct", "851", "left", 0),
        ("seg_ct", "851", "left", 1),
        ("seg_ct", "851", "right", 0),
        ("seg_ct", "852", "both", 0),
        ("regist_ct", "851", "left", 0),
        ("regist_ct", "851", "left", 1),
        ("roi_ct", "851", "left", 2),
        ("roi_ct", "851", "left", 2),
        ("roi_ct", "851", "left", 10),
    ]
    by = {(s.key, cat.relpath(s.folder).split("/")[1]): s for s in cat.stacks}
    rel = cat.relpath
    assert rel(cat.records_path) == "MiceMediRec Dataset/record.csv"
    assert len(cat) == 15
    assert list(cat) == list(cat.stacks)

    # rotation 851: ok, 16-bit, preferred log by stem, extra log recorded
    rot = cat.stacks[0]
    assert rot.ok and rot.problems == ()
    assert rot.shape == (4, *SHAPE) and rot.dtype == "uint16"
    assert os.path.basename(rot.log_path) == "851.log"
    assert [os.path.basename(p) for p in rot.extra_logs] == ["aaa.log"]
    assert rot.log.summary.number_of_files == 4
    assert rot.nbytes == sum(f.nbytes for f in rot.files) > 0
    # rotation 852: count mismatch is a warning, the stack stays ok
    assert problems_of(cat, 1) == ["count-mismatch"]
    assert cat.stacks[1].ok
    assert "announces 5" in cat.stacks[1].problems[0].message
    # recon 851 week 0: numeric order 9 < 10 < 100, recon log checked against Sections Count
    recon = cat.stacks[2]
    assert recon.indices == tuple(range(9, 101))
    names = [os.path.basename(f.path) for f in recon.files]
    assert (
        names.index("851_rec9.png") < names.index("851_rec10.png") < names.index("851_rec100.png")
    )
    assert recon.ok and recon.problems == ()
    assert recon.shape == (92, *SHAPE) and recon.dtype == "uint8"
    assert expected_file_count(recon.log) == 92
    # recon week 2: gaps listed compactly
    (gap,) = cat.stacks[3].problems
    assert gap.kind == "missing-index" and gap.severity == "error"
    assert "missing 3-5, 7 (4 of 0..8)" in gap.message
    assert not cat.stacks[3].ok
    # swapped layout
    swapped = cat.stacks[5]
    assert swapped.ok and swapped.scan_folder_name == "871" and swapped.n_files == 3
    assert rel(swapped.folder) == "Imagery_Dataset/Recon-CT/week 0/871"
    # seg: side spelled two ways
    assert {cat.stacks[6].scan_folder_name, cat.stacks[7].scan_folder_name} == {
        "851 Left Tibia",
        "851 left tibia",
    }
    assert cat.stacks[6].ok
    assert problems_of(cat, 7) == ["duplicate-index", "no-index", "stray-file"]
    dup = next(p for p in cat.stacks[7].problems if p.kind == "duplicate-index")
    assert "851_left_tibia_0001.png" in dup.message and "851_left_tibia_001.png" in dup.message
    stray = next(p for p in cat.stacks[7].problems if p.kind == "stray-file")
    assert stray.severity == "info" and stray.path.endswith("Thumbs.db")
    assert cat.stacks[7].n_files == 4  # both duplicates kept, preview.png (no index) left out
    # seg right: mixed size, truncated, mixed format; each names its file
    right = cat.stacks[8]
    assert problems_of(cat, 8) == ["mixed-format", "mixed-shape", "unreadable-header"]
    bad_files = {p.kind: os.path.basename(p.path) for p in right.problems}
    assert bad_files == {
        "mixed-shape": "r_0005.png",
        "unreadable-header": "r_0006.png",
        "mixed-format": "r_0007.png",
    }
    assert "truncated" in next(p.message for p in right.problems if p.kind == "unreadable-header")
    assert right.shape is None and right.slice_shape == SHAPE and right.dtype is None
    assert problems_of(cat, 9) == ["missing-side"]
    # regist: bomb rejected from its header only; junk log is a warning
    reg = cat.stacks[10]
    # (the crafted bomb is only a header: also reported truncated, as it lacks IEND)
    assert problems_of(cat, 10) == ["pixel-limit", "unreadable-header", "unreadable-log"]
    bomb = next(p for p in reg.problems if p.kind == "pixel-limit")
    assert bomb.path.endswith("reg00000003.png") and "100000x100000" in bomb.message
    assert reg.log is None and reg.log_path.endswith("851.log")
    assert problems_of(cat, 11) == ["empty-stack"] and cat.stacks[11].n_files == 0
    # roi: duplicate scan flagged on both copies, each naming the other
    assert problems_of(cat, 12) == problems_of(cat, 13) == ["duplicate-scan"]
    assert "RoI-CT" in cat.stacks[12].problems[0].message + cat.stacks[13].problems[0].message
    assert cat.stacks[14].ok
    assert {k[1] for k in by} >= {"5. ROI-CT", "RoI-CT"}

    # tree-level: the unparseable folder, reported once, counting the files skipped under it
    (tree,) = cat.problems
    assert tree.kind == "unparseable-path" and tree.severity == "warning"
    assert rel(tree.path) == "Imagery_Dataset/2. Recon-CT/old scans"
    assert "2 file(s)" in tree.message and "week <k>" in tree.message
    assert cat.left_out == (tree,)  # files under a component that no stack holds: left out
    assert len(cat.all_problems()) == 1 + sum(len(s.problems) for s in cat.stacks)
    assert {p.kind for p in cat.all_problems()} <= set(PROBLEM_KINDS)
    for p in cat.all_problems():
        assert p.severity == PROBLEM_SEVERITY[p.kind]

    # tables
    frame = cat.to_dataframe()
    assert len(frame) == 15
    assert list(frame.columns[:4]) == ["component", "mouse", "side", "week"]
    row = frame.iloc[2]
    assert (row.n_files, row.height, row.width, row.first_index, row.last_index) == (
        92,
        6,
        8,
        9,
        100,
    )
    assert int(frame.ok.sum()) == sum(s.ok for s in cat.stacks)
    summary = cat.summary().set_index("component")
    assert summary.loc["recon_ct", "scans"] == 4
    assert summary.loc["recon_ct", "subjects"] == 2  # mice 851 and 871
    assert summary.loc["seg_ct", "subjects"] == 3  # 851 left, 851 right, 852 (no side)
    assert summary.loc["seg_ct", "subject_kind"] == "tibiae"
    assert summary["files"].sum() == frame["n_files"].sum()


def test_catalog_local(tmp_path):
    root = build_tree(tmp_path)
    cat = scan_source(root)
    check_catalog(cat)
    assert cat.root == str(root)


@pytest.fixture
def memory_root(tmp_path):
    local = build_tree(tmp_path)
    fs = fsspec.filesystem("memory")
    base = f"/catalog-test-{uuid.uuid4().hex}"
    for dirpath, _, filenames in os.walk(local):
        rel = os.path.relpath(dirpath, tmp_path).replace(os.sep, "/")
        fs.makedirs(f"{base}/{rel}", exist_ok=True)
        for name in filenames:
            fs.pipe(f"{base}/{rel}/{name}", Path(dirpath, name).read_bytes())
    yield f"memory://{base}/{local.name}"
    fs.rm(base, recursive=True)
    assert not fs.exists(base)


def test_catalog_memory_filesystem(memory_root):
    cat = scan_source(memory_root)
    check_catalog(cat)
    assert cat.root.startswith("memory://")
    assert "memory" in fsspec.core.split_protocol(cat.root)[0]


def test_root_may_be_imagery_dataset_or_a_component(tmp_path):
    root = build_tree(tmp_path)
    data = scan_source(root / "Imagery_Dataset")
    assert len(data) == 15 and data.records_path is None
    recon = scan_source(root / "Imagery_Dataset" / "2. Recon-CT")
    assert [s.key[1:] for s in recon] == [
        ("851", "both", 0),
        ("851", "both", 2),
        ("851", "both", 10),
    ]


def test_select(tmp_path):
    cat = scan_source(build_tree(tmp_path))
    assert len(cat.select(components=["recon_ct"])) == 4
    assert len(cat.select(components="2. Recon-CT", weeks=[10])) == 1
    assert {s.mouse for s in cat.select(mice=[871, "852"])} == {"871", "852"}
    assert {s.side for s in cat.select(sides="right")} == {"right"}
    assert cat.select().stacks == cat.stacks
    with pytest.raises(ValueError, match=r"components=.*'bone'.*recon_ct"):
        cat.select(components=["bone"])
    with pytest.raises(ValueError, match="sides="):
        cat.select(sides=["middle"])
    with pytest.raises(ValueError, match="weeks="):
        cat.select(weeks=[-1])
    assert len(cat.select(mice=["abc"])) == 0  # well formed, matches nothing: callers say so
    with pytest.raises(ValueError, match="mice="):
        cat.select(mice=[True])


def test_a_few_mice_read_only_their_files(tmp_path, monkeypatch):
    """A job-array task of a few mice lists the tree but opens only its mice's files."""
    root = build_tree(tmp_path)
    whole = scan_source(root)
    opened: list[str] = []
    real_open = fsspec.implementations.local.LocalFileSystem._open

    def counting_open(self, path, *args, **kwargs):
        opened.append(str(path))
        return real_open(self, path, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "_open", counting_open)
    some = scan_source(root, mice="852")
    assert {s.mouse for s in some} == {"852"}
    assert [s.key for s in some] == [s.key for s in whole if s.mouse == "852"]
    assert [s.files for s in some] == [s.files for s in whole if s.mouse == "852"]
    assert opened and all("852" in os.path.relpath(p, root) for p in opened)
    assert scan_source(root, mice="999").stacks == ()


def test_headers_can_be_skipped_and_pixel_limit_is_configurable(tmp_path):
    root = build_tree(tmp_path)
    fast = scan_source(root, read_headers=False)
    assert all(f.header is None for s in fast for f in s.files)
    assert all(s.shape is None for s in fast)
    header_kinds = {"mixed-shape", "mixed-format", "unreadable-header", "pixel-limit"}
    assert not header_kinds & {p.kind for p in fast.all_problems()}
    strict = scan_source(root, max_pixels=SHAPE[0] * SHAPE[1] - 1)
    assert all(not s.ok for s in strict if s.n_files)
    with pytest.raises(ValueError, match="max_pixels"):
        scan_source(root, max_pixels=0)


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*check the path"):
        scan_source(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="check the path"):
        scan_source(f"memory://no-such-{uuid.uuid4().hex}")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        scan_source(tmp_path / "f.txt")


def test_root_without_components(tmp_path):
    write(tmp_path / "photos" / "img_0001.png", png())
    cat = scan_source(tmp_path)
    assert len(cat) == 0
    (problem,) = cat.problems
    assert problem.kind == "unparseable-path" and "no component folder" in problem.message
    assert len(cat.to_dataframe()) == 0 and len(cat.summary()) == 0


def test_pngs_outside_week_folder_and_loose_files(tmp_path):
    comp = tmp_path / "Seg-CT"
    write(comp / "851 left tibia" / "851_0001.png", png())
    write(comp / "notes.txt", b"x")
    cat = scan_source(tmp_path)
    kinds = sorted((p.kind, p.severity) for p in cat.problems)
    assert kinds == [("stray-file", "info"), ("unparseable-path", "warning")]
    assert "outside a week folder" in next(p.message for p in cat.problems if p.severity != "info")


def test_log_preference_and_count_from_reconstruction_section(tmp_path):
    folder = tmp_path / "Recon-CT" / "900" / "week 1"
    for i in range(2):
        write(folder / f"900_rec{i:08d}.png", png())
    write(folder / "900_rec.log", format_skyscan_log({"Reconstruction": {"Sections Count": 3}}))
    (stack,) = scan_source(tmp_path)
    assert [p.kind for p in stack.problems] == ["count-mismatch"]
    assert expected_file_count(parse_skyscan_log(acquisition_log(7))) == 7


def test_problem_of_validates_kind():
    problem = Problem.of("empty-stack", "/x/week 0")
    assert problem.severity == "error" and "/x/week 0" in problem.message
    with pytest.raises(ValueError, match="kind="):
        Problem.of("bad-kind", "/x")


def test_catalog_tables_render(tmp_path):
    from rich.console import Console

    cat = scan_source(build_tree(tmp_path))
    summary, problems = catalog_tables(cat, max_problems=5)
    console = Console(record=True, width=200)
    console.print(summary)
    console.print(problems)
    text = console.export_text()
    assert "recon_ct" in text and "Total" in text
    assert "more" in text  # capped
    n_total = len(cat.all_problems())
    assert f"and {n_total - 5} more" in text
    assert problems.row_count == 6
    assert "Imagery_Dataset/2. Recon-CT/851/week 2" in text  # paths relative to the root
    assert "1 path(s) under a component left out" in text


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def palette_png(image: np.ndarray) -> bytes:
    """An 8-bit palette PNG (colour type 3) of a greyscale image, with a grey palette."""
    height, width = image.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    plte = bytes(v for g in range(256) for v in (g, g, g))
    raw = b"".join(b"\x00" + row.tobytes() for row in image.astype(np.uint8))
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", plte)
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))  # fmt: skip


def test_stacks_convert_would_refuse_are_not_ok(tmp_path):
    """Palette, grey+alpha, RGB and RGBA slices, and a file too small for its header: ``convert``'s
    decoder refuses them all, so the catalog quarantines their stacks before anything is read."""
    grey = np.arange(48, dtype=np.uint8).reshape(SHAPE)
    formats = {
        "palette": (palette_png(grey), "palette (indexed colour)", 3),
        "grey_alpha": (imagecodecs.png_encode(np.stack([grey, grey], -1)), "greyscale+alpha", 4),
        "rgb": (imagecodecs.png_encode(np.stack([grey] * 3, -1)), "RGB", 2),
        "rgba": (imagecodecs.png_encode(np.stack([grey] * 4, -1)), "RGBA", 6),
    }
    for mouse, (data, _, _) in enumerate(formats.values(), start=900):
        for i in range(3):
            write(tmp_path / "Recon-CT" / str(mouse) / "week 0" / f"s_{i:04d}.png", data)
    ok = tmp_path / "Recon-CT" / "950" / "week 0"
    for i in range(3):
        write(ok / f"s_{i:04d}.png", png(i))
    # a valid header and IEND, but a 1-byte IDAT cannot inflate to 4000 x 4000 pixels
    bomb = struct.pack(">IIBBBBB", 4000, 4000, 8, 0, 0, 0, 0)
    small = PNG_SIGNATURE + _chunk(b"IHDR", bomb) + _chunk(b"IDAT", b"x") + _chunk(b"IEND", b"")
    write(tmp_path / "Recon-CT" / "951" / "week 0" / "s_0000.png", small)
    write(tmp_path / "Recon-CT" / "951" / "week 0" / "s_0001.png", png())
    catalog = scan_source(tmp_path)
    by_mouse = {s.mouse: s for s in catalog}
    for mouse, (_, what, colour) in enumerate(formats.values(), start=900):
        stack = by_mouse[str(mouse)]
        (problem,) = stack.problems
        assert (problem.kind, problem.severity, problem.path) == (
            "unsupported-format",
            "error",
            stack.folder,
        )
        assert f"3 slice(s) are {what} PNGs (colour type {colour}" in problem.message
        assert "convert them to greyscale" in problem.message and not stack.ok
    assert by_mouse["950"].ok and by_mouse["950"].problems == ()
    tiny = {p.kind: p for p in by_mouse["951"].problems}
    assert set(tiny) == {"too-small", "mixed-shape"}
    assert tiny["too-small"].path.endswith("s_0000.png")
    assert f"is {len(small)} bytes" in tiny["too-small"].message
    assert "4000x4000 8-bit" in tiny["too-small"].message
