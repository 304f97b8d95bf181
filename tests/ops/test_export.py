"""``export``: a store back to the published BoneMet layout, pixel for pixel and name for name.

Round trip (convert a synthetic tree, export the store: the same relative paths, the same
decoded pixels and bit depth, the same ``.log`` key/values), the published naming of stage
products, resume at file granularity, no truncated PNG after an interruption, and the CLI.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import imagecodecs
import numpy as np
import pytest
import zarr

from bonemet_dask import naming
from bonemet_dask.errors import UsageError
from bonemet_dask.io.skyscan_log import parse_skyscan_log
from bonemet_dask.kernels.png_encode import encode_png_slab, png_matches
from bonemet_dask.kernels.slab import slab_digests
from bonemet_dask.ops import export as export_module
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.export import export
from bonemet_dask.selection import NothingSelectedError

CLI = str(Path(sys.executable).with_name("bonemet-dask"))


def _files(root: Path, suffix: str) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob(f"*{suffix}")}


def _assert_same_tree(source: Path, exported: Path) -> int:
    """Same relative PNG and .log paths; each PNG decodes to the same pixels, dtype (bit depth)
    and shape; each .log parses to the same sections, keys and values.  Returns PNGs compared."""
    assert _files(exported, ".png") == _files(source, ".png")
    assert _files(exported, ".log") == _files(source, ".log")
    for relative in _files(source, ".png"):
        want = imagecodecs.png_decode((source / relative).read_bytes())
        got = imagecodecs.png_decode((exported / relative).read_bytes())
        assert got.dtype == want.dtype and got.shape == want.shape, relative
        np.testing.assert_array_equal(got, want, err_msg=relative)
    for relative in _files(source, ".log"):
        want = parse_skyscan_log((source / relative).read_bytes()).to_dict()
        assert parse_skyscan_log((exported / relative).read_bytes()).to_dict() == want, relative
    return len(_files(source, ".png"))


def test_round_trip_gives_the_source_tree(tiny_published, tmp_path):
    """convert then export: every file of the synthetic tree, same path, same pixels."""
    out = tmp_path / "exported"
    report = export(str(tiny_published / "published.zarr"), out)
    assert report.exit_code == 0 and not report.skipped and not report.failures
    compared = _assert_same_tree(tiny_published / "src" / "Imagery_Dataset",
                                 out / "Imagery_Dataset")  # fmt: skip
    assert report.files_written == compared and report.files_kept == 0
    assert report.logs_written == len(_files(out, ".log")) == 16
    # both bit depths made the trip: 16-bit projections, 8-bit CT
    tree = out / "Imagery_Dataset"
    some = {p.split("/")[0]: tree / p for p in _files(tree, ".png")}
    assert imagecodecs.png_decode(some["1. Rotation-X-ray"].read_bytes()).dtype == np.uint16
    assert imagecodecs.png_decode(some["2. Recon-CT"].read_bytes()).dtype == np.uint8


def test_recorded_names_survive_unusual_spellings(tiny_published, tmp_path):
    """File names outside the published pattern (unpadded, spaces) and a .log of another name
    are recorded by convert and spelled back by export."""
    source = tiny_published / "src" / "Imagery_Dataset" / "2. Recon-CT" / "851" / "week 0"
    tree = tmp_path / "odd" / "Imagery_Dataset" / "Recon-CT" / "851" / "Week 0"
    tree.mkdir(parents=True)
    for path in source.glob("*.png"):
        index = naming.parse_index(path.name)
        shutil.copy(path, tree / f"mouse 851 slice {index}.png")
    shutil.copy(source / "851_rec.log", tree / "scan notes.log")
    convert(str(tmp_path / "odd"), str(tmp_path / "odd.zarr"))
    report = export(str(tmp_path / "odd.zarr"), tmp_path / "back")
    assert report.folders == {"recon_ct/851/both/week0": "Imagery_Dataset/Recon-CT/851/Week 0"}
    _assert_same_tree(tmp_path / "odd", tmp_path / "back")


def test_stage_products_get_the_published_naming(tiny_published, tmp_path):
    """Seg/Regist/RoI-CT written by ``run`` (no source .log) land in the published folders with
    the published file names, so they compare file by file with the published products."""
    import bonemet_dask as bm

    store = tmp_path / "ours.zarr"
    bm.run(str(tiny_published / "src"), str(store), start="recon_ct", metrics_csv=None)
    out = tmp_path / "ours"
    report = bm.export(str(store), out, components="seg_ct,regist_ct,roi_ct")
    assert report.exit_code == 0 and len(report.folders) == 12
    published = tiny_published / "src"
    root = zarr.open_group(str(store), mode="r")
    for group_path, folder in report.folders.items():
        component, mouse, side, _ = group_path.split("/")
        assert (published / folder).is_dir(), folder  # the published folder of that scan
        image = root[group_path]["0"][...]
        names = sorted(p.name for p in (out / folder).glob("*.png"))
        expected = [naming.slice_file_name(component, mouse, side, k) for k in range(len(image))]
        assert names == sorted(expected)
        for k, name in enumerate(expected):
            np.testing.assert_array_equal(
                imagecodecs.png_decode((out / folder / name).read_bytes()), image[k]
            )
        log = parse_skyscan_log((out / folder / "851.log").read_bytes())
        assert log.get("Store Group") == group_path
        assert log.get_int("Sections Count") == len(image)
        assert log.get_float("Image Pixel Size (um)") == pytest.approx(640.0)
    # fixed-grid products: the same files as the published ones, name for name
    for component in ("Imagery_Dataset/4. Regist-CT", "Imagery_Dataset/5. ROI-CT"):
        assert _files(out / component, ".png") == _files(published / component, ".png")


def test_rerun_writes_only_missing_or_wrong_files(tiny_published, tmp_path):
    """Delete one PNG, truncate another, leave a temporary of a third: a rerun rewrites those
    two only, removes the temporary, and leaves every other file's mtime alone."""
    out = tmp_path / "out"
    store = str(tiny_published / "published.zarr")
    first = export(store, out, components="recon_ct")
    pngs = sorted(out.rglob("*.png"))
    old = 1_000_000_000
    for path in pngs:
        os.utime(path, ns=(old, old))
    deleted, truncated = pngs[3], pngs[40]
    deleted.unlink()
    truncated.write_bytes(truncated.read_bytes()[:50])
    os.utime(truncated, ns=(old, old))
    stale = pngs[7].with_name(f".{pngs[7].name}.0123456789ab.part")
    stale.write_bytes(b"partial")
    again = export(store, out, components="recon_ct")
    assert (again.files_written, again.files_kept) == (2, first.files_written - 2)
    assert again.logs_written == 0 and again.exit_code == 0
    assert not stale.exists()
    changed = {p for p in pngs if p.stat().st_mtime_ns != old}
    assert changed == {deleted, truncated}
    _assert_same_tree(tiny_published / "src" / "Imagery_Dataset" / "2. Recon-CT",
                      out / "Imagery_Dataset" / "2. Recon-CT")  # fmt: skip
    # check="exists" trusts present files: the truncated one would stay, so it is not default
    truncated.write_bytes(truncated.read_bytes()[:50])
    assert export(store, out, components="recon_ct", check="exists").files_written == 0


def test_interrupted_export_leaves_no_truncated_png(tiny_published, tmp_path, monkeypatch):
    """A failure while renaming into place leaves only whole PNGs; a rerun finishes."""
    out = tmp_path / "out"
    store = str(tiny_published / "published.zarr")
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # the .log, then two PNGs, then the failure
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(export_module.os, "replace", failing_replace)
    broken = export(store, out, components="roi_ct", mice="851", sides="left", weeks=0)
    assert broken.exit_code == 1 and "No space left" in broken.failures[0][1]
    monkeypatch.undo()
    assert not list(out.rglob("*.part"))
    for path in out.rglob("*.png"):  # whatever exists is whole
        imagecodecs.png_decode(path.read_bytes())
    done = export(store, out, components="roi_ct", mice="851", sides="left", weeks=0)
    assert done.exit_code == 0 and done.files_written + done.files_kept == 5


def test_bad_inputs_are_usage_errors(tiny_published, tmp_path):
    store = tiny_published / "published.zarr"
    with pytest.raises(UsageError, match="inside STORE"):
        export(str(store), store / "exported")
    with pytest.raises(UsageError, match="inside STORE"):
        export(str(store), str(store))
    with pytest.raises(NothingSelectedError, match="851"):
        export(str(store), tmp_path / "x", mice="999")
    with pytest.raises(UsageError, match="check='size'"):
        export(str(store), tmp_path / "x", check="size")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        export(str(store), tmp_path / "file", components="roi_ct")


def test_incomplete_groups_are_skipped_and_reported(tiny_published, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(tiny_published / "published.zarr", store)
    group = zarr.open_group(str(store), path="recon_ct/851/both/week1", mode="r+")
    group.attrs["bonemet"] = dict(group.attrs["bonemet"]) | {"status": "incomplete"}
    report = export(str(store), tmp_path / "out", components="recon_ct")
    assert list(report.folders) == ["recon_ct/851/both/week0"]
    assert report.skipped[0][0] == "recon_ct/851/both/week1" and report.exit_code == 3


def test_export_to_an_fsspec_url(tiny_published):
    out = "memory://bonemet-export-test"
    report = export(str(tiny_published / "published.zarr"), out, components="roi_ct", weeks=1)
    fs = fsspec.filesystem("memory")
    folder = "/bonemet-export-test/" + report.folders["roi_ct/851/left/week1"]
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
    assert names[0] == "851.log" and len(names) == 6
    fs.rm("/bonemet-export-test", recursive=True)


def test_cli_exports_resumes_and_refuses(tiny_published, tmp_path):
    store = str(tiny_published / "published.zarr")
    out = str(tmp_path / "cli")
    command = [CLI, "export", store, out, "--components", "roi_ct", "--weeks", "0"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "10 PNG files written" in " ".join(done.stdout.split())
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "10 already complete" in " ".join(again.stdout.split())
    inside = subprocess.run([CLI, "export", store, f"{store}/tree"], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert inside.returncode == 2 and "inside STORE" in inside.stderr
    assert "Traceback" not in inside.stderr
    nothing = subprocess.run([CLI, "export", store, out, "--mice", "999"], capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert nothing.returncode == 2 and "holds mice 851" in " ".join(nothing.stderr.split())


@pytest.mark.parametrize(
    ("names", "template"),
    [
        (["851_rec00000008.png", "851_rec00000009.png"], "851_rec{index:08d}.png"),
        (["a_1.png", "a_10.png"], "a_{index:01d}.png"),
        (["a_01.png", "a_100.png"], "a_{index:02d}.png"),
        (["x{1}_7.png"], "x{{1}}_{index:01d}.png"),
        (["a_001.png", "a_10.png"], None),  # mixed padding: keep the names
        (["a_1.png", "b_2.png"], None),
        (["scan.png"], None),
    ],
)
def test_file_name_template(names, template):
    assert naming.file_name_template(names) == template
    if template is not None:
        assert [template.format(index=naming.parse_index(n)) for n in names] == names


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_kernels_round_trip_and_reject_damage(dtype):
    rng = np.random.default_rng(0)
    slab = rng.integers(0, np.iinfo(dtype).max, size=(3, 5, 7), endpoint=True).astype(dtype)
    blobs = encode_png_slab(slab, level=9)
    assert all(
        np.array_equal(imagecodecs.png_decode(b), s) for b, s in zip(blobs, slab, strict=True)
    )
    digests = slab_digests(slab)
    damaged = [blobs[0], blobs[1][:-20], None]
    found = png_matches(damaged, digests, shape=(5, 7), dtype=dtype)
    assert found.tolist() == [True, False, False]
    assert not png_matches([blobs[1]], digests[:1], shape=(5, 7), dtype=dtype)[0]
    with pytest.raises(ValueError, match="no greyscale PNG form"):
        encode_png_slab(slab.astype(np.float32))
