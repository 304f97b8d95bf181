"""The bad-input corpus: damaged copies of a tiny synthetic tree, each converted through the CLI.

Every case is generated here (no committed binaries) and states what a user must see: the
documented exit code, a message naming the file or folder at fault and what to do, no
traceback.  Every case also checks what must never happen, whatever the damage: a group marked
complete that is not, a scan lost that was not at fault, a byte written outside the store, and
``plan`` missing a problem that ``convert`` then quarantines.  README.md's "Faults and bad
inputs" table lists the classes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from bonemet_dask.cli import app
from bonemet_dask.io.store import completed_shards, get_bonemet_attrs
from bonemet_dask.synth import SynthConfig, generate

WIDE = {"COLUMNS": "2000"}  # table cells unwrapped: reasons stay greppable
CONFIG = SynthConfig(mice=1, weeks=2, size="tiny", seed=0, products="voxelised")
SCANS = 2 * (1 + 1 + 2 + 2 + 2)  # weeks x (projections, recon, 2 seg, 2 regist, 2 roi)
IMAGERY = "Imagery_Dataset"
RECON = f"{IMAGERY}/2. Recon-CT/851/week 1"
SEG = f"{IMAGERY}/3. Seg-CT/851 left tibia/week 0"
REGIST = f"{IMAGERY}/4. Regist-CT/851 right tibia/week 1"
PROJ = f"{IMAGERY}/1. Rotation-X-ray/851/week 0"
RECORD = "MiceMediRec Dataset/record.csv"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "src"
    generate(str(root), CONFIG)
    return root


# ----------------------------------------------------------------------------- damage helpers


def pngs(src: Path, folder: str) -> list[Path]:
    return sorted((src / folder).glob("*.png"))


def log_of(src: Path, folder: str) -> Path:
    (log,) = (src / folder).glob("*.log")
    return log


def set_log_value(src: Path, folder: str, key: str, value: str) -> None:
    log = log_of(src, folder)
    text = log.read_text(encoding="latin-1")
    text, n = re.subn(rf"^{re.escape(key)}=.*$", f"{key}={value}", text, flags=re.M)
    assert n, f"{key} not in {log}"
    log.write_text(text, encoding="latin-1")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


def like(path: Path, image: np.ndarray) -> None:
    path.write_bytes(imagecodecs.png_encode(image))


def first_image(src: Path, folder: str) -> np.ndarray:
    return imagecodecs.png_decode(pngs(src, folder)[0].read_bytes())


def record_rows(src: Path) -> list[str]:
    return (src / RECORD).read_text(encoding="utf-8").splitlines()


def palette_png(image: np.ndarray) -> bytes:
    """An 8-bit palette PNG (colour type 3) of a greyscale image: a grey palette."""
    height, width = image.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    plte = bytes(v for g in range(256) for v in (g, g, g))
    raw = b"".join(b"\x00" + row.tobytes() for row in image.astype(np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"PLTE", plte)
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))  # fmt: skip


# ----------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One damaged tree and what ``convert`` (and ``plan``) must say about it.

    ``names``: text the output must contain (the file or folder at fault, relative to the
    tree); ``says``: a regex the output must match (the reason and the fix); ``lost``: scans
    that may be missing from the store (those at fault), every other one must be complete;
    ``told_by``: the command whose output names it (``plan`` for what convert just skips);
    ``plan_sees``: False only where the damage shows when the pixels are decoded (``plan``
    reads the 33-byte headers).
    """

    name: str
    damage: Callable[[Path], None]
    exit: int
    names: str
    says: str
    lost: int = 1
    told_by: str = "convert"
    plan_sees: bool = True


def _truncate(src):
    f = pngs(src, SEG)[3]
    f.write_bytes(f.read_bytes()[:60])


def _bad_crc(src):
    f = pngs(src, SEG)[2]
    data = bytearray(f.read_bytes())
    data[29] ^= 0xFF  # inside IHDR's CRC
    f.write_bytes(bytes(data))


def _corrupt_idat(src):
    f = pngs(src, SEG)[4]
    data = bytearray(f.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start : start + 8] = b"\x00" * 8
    f.write_bytes(bytes(data))


def _bomb(src):
    pngs(src, SEG)[1].write_bytes(png_header_only(60000, 60000))


def _sixteen_bit(src):
    f = pngs(src, SEG)[5]
    like(f, first_image(src, SEG).astype(np.uint16) * 200)


def _duplicate(src):
    f = pngs(src, SEG)[3]
    shutil.copy(f, f.with_name(f.name.replace(f.stem.rstrip("0123456789"), "copy_")))


def _missing(src):
    pngs(src, SEG)[3].unlink()


def _wrong_size(src):
    like(pngs(src, SEG)[2], np.pad(first_image(src, SEG), ((0, 1), (0, 0))))


def _text_as_png(src):
    pngs(src, SEG)[2].write_text("this is not an image\n")


def _empty_png(src):
    pngs(src, SEG)[2].write_bytes(b"")


def _no_index(src):
    f = pngs(src, SEG)[0]
    f.rename(f.with_name("slice.png"))


def _palette(src):
    for f in pngs(src, SEG):
        f.write_bytes(palette_png(imagecodecs.png_decode(f.read_bytes())))


def _grey_alpha(src):
    for f in pngs(src, SEG):
        image = imagecodecs.png_decode(f.read_bytes())
        like(f, np.stack([image, np.full_like(image, 255)], axis=-1))


def _rgb(src):
    for f in pngs(src, SEG):
        like(f, np.repeat(imagecodecs.png_decode(f.read_bytes())[..., None], 3, axis=-1))


def _record_cp1252(src):
    rows = record_rows(src)
    rows[1] = rows[1].replace("none", "d\u00e9j\u00e0 vu", 1)
    (src / RECORD).write_bytes("\n".join(rows).encode("cp1252") + b"\n")


def _record_semicolons(src):
    (src / RECORD).write_text("\n".join(r.replace(",", ";") for r in record_rows(src)) + "\n")


def _record_missing_column(src):
    rows = [r.split(",") for r in record_rows(src)]
    keep = [i for i, h in enumerate(rows[0]) if h != "Animal ID"]
    (src / RECORD).write_text("\n".join(",".join(r[i] for i in keep) for r in rows) + "\n")


def _record_wrong_type(src):
    rows = record_rows(src)
    head = rows[0].split(",")
    cells = rows[1].split(",")
    cells[head.index("Body Weight (g)")] = "heavy"
    rows[1] = ",".join(cells)
    (src / RECORD).write_text("\n".join(rows) + "\n")


def _record_header_collision(src):
    rows = record_rows(src)
    rows[0] = rows[0].replace("Sex", "Age (weeks)")  # two columns with one name
    (src / RECORD).write_text("\n".join(rows) + "\n")


def _record_store_key(src):
    rows = record_rows(src)
    rows[0] = rows[0].replace("Strain", "zarr.json")
    (src / RECORD).write_text("\n".join(rows) + "\n")


def _record_empty(src):
    (src / RECORD).write_bytes(b"")


def _record_binary(src):
    (src / RECORD).write_bytes(bytes(range(256)) * 8)


def _log_negative_pixel(src):
    set_log_value(src, PROJ, "Image Pixel Size (um)", "-35.0")


def _log_zero_source(src):
    set_log_value(src, PROJ, "Object to Source (mm)", "0")


def _log_nan(src):
    set_log_value(src, PROJ, "Image Pixel Size (um)", "nan")


def _log_connected(src):
    set_log_value(src, PROJ, "Number of connected scans", "2")


def _log_cropped(src):
    set_log_value(src, PROJ, "Partial Width", "ON")
    set_log_value(src, PROJ, "Image crop origin X", "12")


def _log_empty(src):
    log_of(src, PROJ).write_bytes(b"")


def _log_binary(src):
    log_of(src, PROJ).write_bytes(bytes(range(256)) * 4)


def _log_camera_inside(src):
    set_log_value(src, PROJ, "Camera to Source (mm)", "10")


def _log_huge(src):
    log_of(src, PROJ).write_bytes(b"[System]\n" + b"Junk=" + b"x" * (2 << 20) + b"\n")


def _week_negative(src):
    (src / SEG).rename(src / SEG.replace("week 0", "week -1"))


def _week_huge(src):
    (src / SEG).rename(src / SEG.replace("week 0", "week 99999999999999999999"))


def _unparseable_folder(src):
    (src / SEG).rename(src / SEG.replace("week 0", "weekday"))


def _stray_file(src):
    (src / SEG / "Thumbs.db").write_bytes(b"\x00" * 100)


def _empty_stack(src):
    for f in pngs(src, SEG):
        f.unlink()


def _png_directory(src):
    (src / SEG / "851_seg_0099.png").mkdir()


def _symlink_inside(src):
    scan = src / SEG
    moved = src / "elsewhere" / "week 0"
    moved.parent.mkdir()
    scan.rename(moved)
    scan.symlink_to(moved, target_is_directory=True)


def _symlink_outside(src):
    scan = src / SEG
    outside = src.parent / "outside" / "week 0"
    outside.parent.mkdir()
    scan.rename(outside)
    scan.symlink_to(outside, target_is_directory=True)


def _broken_symlink(src):
    (src / SEG / "851_seg_0099.png").symlink_to(src / "nowhere.png")


def _symlink_loop(src):
    (src / SEG / "loop").symlink_to(src / SEG, target_is_directory=True)


CASES = [
    # the PNGs (handled before issue 14: the corpus keeps them handled)
    Case("truncated PNG", _truncate, 3, SEG, r"truncated"),
    Case("bad CRC", _bad_crc, 3, SEG, r"CRC"),
    Case("corrupt pixel data", _corrupt_idat, 3, SEG, r"decod|corrupt|pixel", plan_sees=False),
    Case("decompression bomb", _bomb, 3, SEG, r"pixels|bomb"),
    Case("16-bit slice in an 8-bit stack", _sixteen_bit, 3, SEG, r"bit depth"),
    Case("duplicate index", _duplicate, 3, SEG, r"index 3"),
    Case("missing slice", _missing, 3, SEG, r"missing"),
    Case("slice of another size", _wrong_size, 3, SEG, r"is \d+x\d+"),
    Case("text file named .png", _text_as_png, 3, SEG, r"not a PNG|signature"),
    Case("empty .png", _empty_png, 3, SEG, r"empty|truncated|not a PNG"),
    Case("slice without an index", _no_index, 3, SEG, r"no digits"),
    Case("palette PNGs", _palette, 3, SEG, r"palette"),
    Case("grey+alpha PNGs", _grey_alpha, 3, SEG, r"alpha"),
    Case("RGB PNGs", _rgb, 3, SEG, r"RGB|colour|color"),
    # record.csv: never blocks the images (lost=0)
    Case("record.csv in cp1252", _record_cp1252, 0, "record.csv", r"cp1252", lost=0),
    Case("record.csv with semicolons", _record_semicolons, 0, "record.csv", r";|semicolon", 0),
    Case(
        "record.csv without Animal ID",
        _record_missing_column,
        3,
        "record.csv",
        r"Animal ID",
        lost=0,
    ),
    Case(
        "record.csv cell of the wrong type",
        _record_wrong_type,
        3,
        "record.csv",
        r"Body Weight",
        lost=0,
    ),
    Case(
        "record.csv duplicate header",
        _record_header_collision,
        3,
        "record.csv",
        r"Age \(weeks\)",
        lost=0,
    ),
    Case(
        "record.csv header named like a store key",
        _record_store_key,
        3,
        "record.csv",
        r"zarr\.json",
        lost=0,
    ),
    Case("empty record.csv", _record_empty, 3, "record.csv", r"empty", lost=0),
    Case("binary record.csv", _record_binary, 3, "record.csv", r"not a|table|text", lost=0),
    # .log files: only their scan
    Case(".log negative pixel size", _log_negative_pixel, 3, PROJ, r"Image Pixel Size"),
    Case(".log Object to Source = 0", _log_zero_source, 3, PROJ, r"Object to Source"),
    Case(".log NaN pixel size", _log_nan, 3, PROJ, r"Image Pixel Size"),
    Case("empty .log", _log_empty, 3, PROJ, r"empty|no .*key|missing"),
    Case("connected (oversize) scan", _log_connected, 3, PROJ, r"connected scans.*NRecon"),
    Case(
        "cropped detector of unknown width",
        _log_cropped,
        3,
        PROJ,
        r"Partial Width.*full-detector-columns",
    ),
    Case("binary .log", _log_binary, 3, PROJ, r"\.log"),
    Case(
        ".log camera inside the source distance", _log_camera_inside, 3, PROJ, r"Camera to Source"
    ),
    Case("huge .log", _log_huge, 3, PROJ, r"\.log"),
    # folders
    Case("week -1", _week_negative, 3, "week -1", r"week"),
    Case("week 10^20", _week_huge, 3, "week 99999999999999999999", r"week"),
    Case("folder outside the layout", _unparseable_folder, 3, "weekday", r"layout|rename"),
    Case("stray file", _stray_file, 0, "Thumbs.db", r"ignored", lost=0, told_by="plan"),
    Case("stack without slices", _empty_stack, 3, "week 0", r"no PNG|empty|slices"),
    Case("directory named .png", _png_directory, 3, "851_seg_0099.png", r"not a regular file"),
    Case("scan folder linked inside the tree", _symlink_inside, 0, "", r"", lost=0),
    Case("scan folder linked outside the tree", _symlink_outside, 3, SEG, r"symlink|link"),
    Case("broken symlink", _broken_symlink, 3, "851_seg_0099.png", r"link"),
    Case("symlink loop", _symlink_loop, 3, "loop", r"link"),
]


# ------------------------------------------------------------------------------- the checks


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` but ``skip``: (size, mtime_ns), links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames.clear()
            continue
        for name in [*dirnames, *filenames]:
            if here / name == skip:
                continue
            st = (here / name).lstat()
            out[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def check_store(store: Path) -> int:
    """Every group marked complete has every shard's done-marker; returns the complete count."""
    if not (store / "zarr.json").exists():
        return 0
    complete = 0
    root = zarr.open_group(str(store), mode="r", use_consolidated=False)
    for path, group in root.members(max_depth=None):
        if not isinstance(group, zarr.Group) or "0" not in group:
            continue
        if get_bonemet_attrs(group).get("status") != "complete" or "/labels/" in path:
            continue
        image = group["0"]
        n_shards = math.ceil(image.shape[0] / (image.shards or image.chunks)[0])
        assert completed_shards(group) == set(range(n_shards)), f"{path} complete, not written"
        complete += 1
    return complete


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}\n{result.output}"
    )
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, pristine: Path, tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(pristine, src, symlinks=True)
    case.damage(src)
    store, report = tmp_path / "out.zarr", tmp_path / "report.json"
    before = snapshot(tmp_path, store)

    planned = invoke(["plan", str(src)])
    converted = invoke(["convert", str(src), str(store), "--report", str(report)])
    assert converted.exit_code == case.exit, converted.output
    told = converted if case.told_by == "convert" else planned
    if case.names:
        assert case.names in told.output, told.output
    assert re.search(case.says, told.output, re.I), told.output

    # nothing outside the store, the source untouched
    after = snapshot(tmp_path, store)
    assert {k: v for k, v in after.items() if k != "report.json"} == before
    # no group marked done that is not; no scan lost but those at fault
    assert check_store(store) >= SCANS - case.lost
    # plan reports every folder convert quarantined, with the same exit code
    quarantined = json.loads(report.read_text()).get("quarantined", {})
    for folder in quarantined if case.plan_sees else ():
        shown = os.path.relpath(folder, src) if folder.startswith(str(src)) else folder
        assert Path(shown).name in planned.output, (folder, planned.output)
    if quarantined and case.plan_sees:
        assert planned.exit_code == 3, planned.output


def test_a_fifo_named_like_a_png_never_blocks(pristine, tmp_path):
    """A FIFO would block any ``open``: plan and convert (real processes, with a deadline)
    report it and go on."""
    src = tmp_path / "src"
    shutil.copytree(pristine, src, symlinks=True)
    os.mkfifo(src / SEG / "851_seg_0099.png")
    for command in (["plan", str(src)], ["convert", str(src), str(tmp_path / "out.zarr")]):
        done = subprocess.run([sys.executable, "-m", "bonemet_dask.cli", *command],
                              capture_output=True, text=True, timeout=120, env=os.environ | WIDE,
                              check=False)  # fmt: skip
        assert done.returncode == 3, done.stderr
        assert "851_seg_0099.png" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    assert check_store(tmp_path / "out.zarr") == SCANS - 1


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_store_path_that_cannot_be_a_store_is_named(where, pristine, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a store\n")
    store = blocker if where == "a file" else blocker / "out.zarr"
    result = invoke(["convert", str(pristine), str(store)])
    assert result.exit_code == 2, result.output
    assert str(store) in result.output.replace("\n", ""), result.output
    assert blocker.read_text() == "not a store\n"


def test_a_store_inside_the_source_tree_is_not_a_problem(pristine, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(pristine, src, symlinks=True)
    assert invoke(["convert", str(src), str(src / "out.zarr")]).exit_code == 0
    planned = invoke(["plan", str(src)])
    assert planned.exit_code == 0, planned.output
    assert "out.zarr" not in planned.output.replace(str(src / "out.zarr"), "") or (
        "store" in planned.output
    )
    assert invoke(["verify", str(src), str(src / "out.zarr")]).exit_code == 0


def test_a_missing_source_is_named(tmp_path):
    result = invoke(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out.zarr")])
    assert result.exit_code in (1, 2) and "nowhere" in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_follow_symlinks_takes_in_a_scan_linked_from_outside(pristine, tmp_path):
    """Refused by default (the case above); asked for, the linked scan is converted whole and
    ``verify`` (asked the same) finds the store complete."""
    src = tmp_path / "src"
    shutil.copytree(pristine, src, symlinks=True)
    _symlink_outside(src)
    store = str(tmp_path / "out.zarr")
    assert invoke(["plan", str(src), "--follow-symlinks"]).exit_code == 0
    converted = invoke(["convert", str(src), store, "--follow-symlinks"])
    assert converted.exit_code == 0, converted.output
    assert check_store(tmp_path / "out.zarr") == SCANS
    assert invoke(["verify", str(src), store, "--follow-symlinks"]).exit_code == 0
    refused = invoke(["verify", str(src), store])  # without it the link is left out: said so
    assert refused.exit_code == 1 and "outside the source tree" in refused.output
