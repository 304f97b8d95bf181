"""The source walk: links, special files, Zarr stores and week folders never lose data silently.

Every tree is a copy of a tiny synthetic one (``synth.generate``, Recon-CT only, two weeks); each
test damages its copy and checks what the catalog reports and what it leaves out.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from bonemet_dask.io._tree_listing import list_tree
from bonemet_dask.io.catalog import LEFT_OUT_KINDS, PROBLEM_SEVERITY, Catalog, scan_source
from bonemet_dask.naming import MAX_WEEK
from bonemet_dask.synth import SynthConfig, generate

RECON = Path("Imagery_Dataset", "2. Recon-CT")
WEEK0 = RECON / "851" / "week 0"
WEEK1 = RECON / "851" / "week 1"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("walk") / "src"
    generate(str(root), SynthConfig(mice=1, weeks=2, components=("recon_ct",), seed=1))
    return root


@pytest.fixture
def src(pristine, tmp_path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


def kinds(catalog: Catalog) -> list[tuple[str, str]]:
    """``(kind, path relative to the root)`` of every problem, sorted."""
    return sorted((p.kind, catalog.relpath(p.path)) for p in catalog.all_problems())


def check_severities(catalog: Catalog) -> None:
    for problem in catalog.all_problems():
        assert problem.severity == PROBLEM_SEVERITY[problem.kind], problem
    assert set(catalog.left_out) <= set(catalog.problems)
    assert {p.kind for p in catalog.left_out} <= LEFT_OUT_KINDS


def test_pristine_tree_has_no_problem(src):
    catalog = scan_source(src)
    assert [s.key for s in catalog] == [
        ("recon_ct", "851", "both", 0),
        ("recon_ct", "851", "both", 1),
    ]
    assert catalog.all_problems() == () and catalog.left_out == ()


def test_a_scan_folder_linked_inside_the_tree_is_cataloged(src):
    moved = src / "elsewhere" / "852"
    moved.parent.mkdir()
    (src / RECON / "851").rename(moved)
    (src / RECON / "852").symlink_to(moved, target_is_directory=True)
    (src / RECON / "853").symlink_to(Path("..", "..", "elsewhere", "852"))  # relative target
    catalog = scan_source(src)
    assert [s.key[1:] for s in catalog] == [
        ("852", "both", 0),
        ("852", "both", 1),
        ("853", "both", 0),
        ("853", "both", 1),
    ]
    assert catalog.all_problems() == ()
    first = catalog.stacks[0]
    assert catalog.relpath(first.folder) == str(RECON / "852" / "week 0")  # the link's path
    assert first.ok and first.shape is not None and first.log is not None
    assert [f.nbytes for f in first.files] == [os.path.getsize(f.path) for f in first.files]


def test_a_linked_slice_inside_the_tree_is_read(src):
    folder = src / WEEK0
    victim = sorted(folder.glob("*.png"))[1]
    keep = src / "kept.png"
    victim.rename(keep)
    victim.symlink_to(keep)
    catalog = scan_source(src)
    assert catalog.all_problems() == ()
    stack = catalog.stacks[0]
    assert str(victim) in [f.path for f in stack.files]
    assert stack.ok and stack.nbytes == sum(p.stat().st_size for p in folder.glob("*.png"))


def test_a_scan_folder_linked_outside_is_reported_and_followed_on_request(src, tmp_path):
    outside = tmp_path / "outside" / "week 1"
    outside.parent.mkdir()
    (src / WEEK1).rename(outside)
    (src / WEEK1).symlink_to(outside, target_is_directory=True)
    catalog = scan_source(src)
    assert [s.week for s in catalog] == [0]
    (problem,) = catalog.problems
    assert (problem.kind, problem.severity, problem.path) == (
        "link-outside",
        "warning",
        str(src / WEEK1),
    )
    assert str(outside) in problem.message and "follow_symlinks=True" in problem.message
    assert catalog.left_out == (problem,)
    check_severities(catalog)
    followed = scan_source(src, follow_symlinks=True)
    assert [s.week for s in followed] == [0, 1] and followed.all_problems() == ()
    assert followed.stacks[1].folder == str(src / WEEK1) and followed.stacks[1].ok


def test_broken_links_and_loops_are_reported(src):
    (src / RECON / "852").symlink_to(src / "nowhere", target_is_directory=True)
    (src / WEEK0 / "loop").symlink_to(src / WEEK0, target_is_directory=True)
    (src / RECON / "up").symlink_to(src, target_is_directory=True)
    (src / "a").symlink_to(src / "b")  # a -> b -> a: the OS reports a loop
    (src / "b").symlink_to(src / "a")
    catalog = scan_source(src)
    assert kinds(catalog) == sorted(
        [
            ("broken-link", str(RECON / "852")),
            ("link-loop", "a"),
            ("link-loop", "b"),
            ("link-loop", str(RECON / "up")),
            ("link-loop", str(WEEK0 / "loop")),
        ]
    )
    check_severities(catalog)
    # under a component they leave data out; a and b lie outside every component
    assert sorted(catalog.relpath(p.path) for p in catalog.left_out) == sorted(
        [str(RECON / "852"), str(RECON / "up"), str(WEEK0 / "loop")]
    )
    assert all(s.ok for s in catalog)
    broken = next(p for p in catalog.problems if p.kind == "broken-link")
    assert "does not exist" in broken.message and "remove the link" in broken.message


def test_a_slice_that_is_a_broken_or_outside_link_quarantines_its_stack(src, tmp_path):
    folder = src / WEEK0
    names = sorted(p.name for p in folder.glob("*.png"))
    outside = tmp_path / "outside.png"
    (folder / names[0]).rename(outside)
    (folder / names[0]).symlink_to(outside)
    (folder / "851_rec00099999.png").symlink_to(folder / "gone.png")
    catalog = scan_source(src)
    stack = catalog.stacks[0]
    assert not stack.ok and catalog.stacks[1].ok
    assert sorted((p.kind, Path(p.path).name) for p in stack.problems) == sorted(
        [
            ("count-mismatch", "week 0"),  # the .log announces one file more than the folder has
            ("skipped-slice", "851_rec00099999.png"),
            ("skipped-slice", names[0]),
        ]
    )
    messages = " ".join(p.message for p in stack.problems)
    assert "outside the source tree" in messages and "does not exist" in messages
    assert names[0] not in [Path(f.path).name for f in stack.files]
    assert catalog.problems == ()  # reported once, with the stack
    check_severities(catalog)
    followed = scan_source(src, follow_symlinks=True).stacks[0]
    assert [Path(p.path).name for p in followed.problems] == ["851_rec00099999.png"]
    assert names[0] in [Path(f.path).name for f in followed.files]


def test_special_files_are_reported_and_never_opened(src, monkeypatch):
    folder = src / WEEK0
    os.mkfifo(folder / "851_rec00099999.png")
    os.mkfifo(folder / "851.log.png.log")  # a FIFO as a .log: must not be read either
    (folder / "851_rec00088888.png").mkdir()
    (folder / "851_rec00088888.png" / "inner.png").write_bytes(b"x")
    sock_path = src / RECON / "s.png"
    if len(str(sock_path)) < 100:  # AF_UNIX paths are limited to 108 bytes
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(sock_path))
    opened: list[str] = []
    real_open = LocalFileSystem._open

    def watching_open(self, path, *args, **kwargs):
        opened.append(str(path))
        return real_open(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", watching_open)
    catalog = scan_source(src)
    assert opened  # the headers and the .log of the good slices were read
    assert not any(name in p for p in opened for name in ("99999", "88888", "s.png", ".png.log"))
    stack = catalog.stacks[0]
    assert not stack.ok
    slices = {Path(p.path).name: p for p in stack.problems if p.kind == "skipped-slice"}
    assert set(slices) == {"851_rec00099999.png", "851_rec00088888.png"}
    assert "FIFO (named pipe), not a regular file" in slices["851_rec00099999.png"].message
    assert "directory, not a regular file" in slices["851_rec00088888.png"].message
    assert all("remove it" in p.message for p in slices.values())
    tree = {catalog.relpath(p.path): p for p in catalog.problems}
    assert tree[str(WEEK0 / "851.log.png.log")].kind == "not-regular-file"
    assert "remove it" in tree[str(WEEK0 / "851.log.png.log")].message
    if sock_path.exists():
        assert "socket, not a regular file" in tree[str(RECON / "s.png")].message
    assert set(tree) <= {str(WEEK0 / "851.log.png.log"), str(RECON / "s.png")}
    assert set(catalog.left_out) == set(catalog.problems)  # all under the component
    check_severities(catalog)


def test_plan_with_a_fifo_exits_3_and_never_blocks(src):
    """A FIFO blocks any ``open`` until a writer comes: ``plan`` in a real process, with a
    deadline, must report it and finish."""
    fifo = src / WEEK1 / "851_rec00099999.png"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "bonemet_dask.cli", "plan", str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"COLUMNS": "300"},
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    text = " ".join(re.sub("[│┃]", " ", output).split())  # table cells wrap: join their lines
    assert "851_rec00099999.png" in text and "not a regular file" in text, output
    assert "skipped-slice" in text and "Traceback" not in output


def test_a_folder_that_cannot_be_listed_is_reported(src, monkeypatch):
    locked = src / WEEK1
    real_scandir = os.scandir

    def refusing(path="."):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    catalog = scan_source(src)
    assert [s.week for s in catalog] == [0]
    (problem,) = catalog.problems
    assert (problem.kind, problem.path) == ("unreadable-entry", str(locked))
    assert "Permission denied" in problem.message and "permissions" in problem.message
    assert catalog.left_out == (problem,)
    monkeypatch.setattr(os, "scandir", lambda path=".": refusing(locked))
    with pytest.raises(FileNotFoundError, match="could not be listed"):
        scan_source(src)


def test_a_zarr_store_inside_the_tree_is_one_info_line(src):
    store = src / "out.zarr"
    for group in ("", "recon_ct", "recon_ct/851", "recon_ct/851/both/week0"):
        (store / group).mkdir(parents=True, exist_ok=True)
        (store / group / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (store / "recon_ct/851/both/week0/0/c").mkdir(parents=True)
    (store / "recon_ct/851/both/week0/0/c/0").write_bytes(b"\x00")
    old = src / RECON / "old.zarr"  # a v2 group under a component
    old.mkdir()
    (old / ".zgroup").write_text('{"zarr_format": 2}')
    (old / "week 0").mkdir()
    not_a_store = src / WEEK0 / "zarr.json"  # beside PNGs: a stray file, not a store
    not_a_store.write_text("{}")
    catalog = scan_source(src)
    assert kinds(catalog) == [
        ("stray-file", str(WEEK0 / "zarr.json")),
        ("zarr-store", str(RECON / "old.zarr")),
        ("zarr-store", "out.zarr"),
    ]
    infos = [p for p in catalog.problems if p.kind == "zarr-store"]
    assert all(p.severity == "info" and "not scanned" in p.message for p in infos)
    assert catalog.left_out == () and all(s.ok for s in catalog) and len(catalog) == 2


def test_weeks_out_of_range_are_reported_not_misread(src):
    (src / WEEK0).rename(src / RECON / "851" / "week -1")
    (src / WEEK1).rename(src / RECON / "851" / "week 99999999999999999999")
    catalog = scan_source(src)
    assert len(catalog) == 0
    assert kinds(catalog) == [
        ("bad-week", str(RECON / "851" / "week -1")),
        ("bad-week", str(RECON / "851" / "week 99999999999999999999")),
    ]
    negative, huge = sorted(catalog.problems, key=lambda p: p.path)
    n_files = len(list((src / RECON / "851" / "week -1").iterdir()))
    assert "week -1 is negative" in negative.message and f"{n_files} file(s)" in negative.message
    assert f"is above {MAX_WEEK}" in huge.message and f"0..{MAX_WEEK}" in huge.message
    assert all("rename it" in p.message and p.severity == "warning" for p in catalog.problems)
    assert set(catalog.left_out) == set(catalog.problems)
    # the swapped layout: <component>/week <k>/<mouse>
    swapped = src / RECON / "week 400" / "852"
    swapped.mkdir(parents=True)
    (swapped / "852_rec00000001.png").write_bytes(b"")
    assert ("bad-week", str(RECON / "week 400")) in kinds(scan_source(src))


def test_left_out_follows_the_selection(src, tmp_path):
    (src / RECON / "852").symlink_to(tmp_path, target_is_directory=True)
    (src / RECON / "851" / "week 500").mkdir()
    (src / RECON / "851" / "week 500" / "x_0001.png").write_bytes(b"")
    catalog = scan_source(src)
    assert len(catalog.left_out) == 2
    assert [p.kind for p in catalog.select(mice="852").left_out] == ["link-outside"]
    assert [p.kind for p in catalog.select(mice="851").left_out] == ["bad-week"]
    assert catalog.select(components="seg_ct").left_out == ()
    assert len(catalog.select(weeks=0).left_out) == 2  # neither path names a valid week
    assert catalog.path_key(str(src / WEEK0 / "x.png")) == {
        "component": "recon_ct",
        "mouse": "851",
        "side": "both",
        "week": 0,
    }


class _ListingFs:
    """A non-local filesystem whose ``find`` reports a special entry (as fsspec's ``other``)."""

    def __init__(self, found):
        self.found = found

    def find(self, path, withdirs, detail):
        assert withdirs and detail
        return self.found


def test_other_filesystems_leave_special_entries_out():
    found = {
        "/r/a": {"name": "/r/a", "type": "directory", "size": 0},
        "/r/a/x.png": {"name": "/r/a/x.png", "type": "file", "size": 10},
        "/r/a/p.png": {"name": "/r/a/p.png", "type": "other", "size": 0},
        "/r/a/d.png": {"name": "/r/a/d.png", "type": "directory", "size": 0},
        "/r/a/d.png/in.png": {"name": "/r/a/d.png/in.png", "type": "file", "size": 3},
        "/r/s/zarr.json": {"name": "/r/s/zarr.json", "type": "file", "size": 2},
        "/r/s/g/c": {"name": "/r/s/g/c", "type": "file", "size": 2},
    }
    listing = list_tree(_ListingFs(found), "/r")
    assert listing.files == {"/r/a/x.png": 10}
    assert sorted((s.path, s.kind, s.detail) for s in listing.skipped) == [
        ("/r/a/d.png", "not-regular-file", "directory"),
        ("/r/a/p.png", "not-regular-file", "other"),
    ]
    assert listing.stores == [("/r/s", "zarr.json")]
    assert listing.dirs == {"/r", "/r/a"}
