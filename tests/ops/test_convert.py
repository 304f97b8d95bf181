"""convert / verify: round trips, resumability, quarantine, single writer per shard."""

import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import xarray as xr
import zarr

from bonemet_dask import naming
from bonemet_dask.io import xr as bxr
from bonemet_dask.io.catalog import scan_source
from bonemet_dask.io.records import read_records
from bonemet_dask.io.store import get_bonemet_attrs, scan_group_path
from bonemet_dask.ops.convert import (
    ConversionError,
    ShardTask,
    ShardWriterError,
    check_single_writer,
    convert,
    layout_for,
    shard_tasks,
)
from bonemet_dask.ops.verify import verify
from bonemet_dask.synth import SynthConfig, generate

CONFIG = SynthConfig(mice=1, weeks=2, size="tiny", seed=3)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "bonemet"
    generate(str(out), CONFIG)
    return out


@pytest.fixture
def own_source(source, tmp_path) -> Path:
    """A private copy of the source tree, for tests that damage it."""
    copy = tmp_path / "src"
    shutil.copytree(source, copy)
    return copy


def store_digest(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def test_round_trip_equals_source_pngs(source, tmp_path):
    store = tmp_path / "store.zarr"
    report = convert(source, str(store))
    catalog = scan_source(source)
    assert report.exit_code == 0 and not report.quarantined
    assert len(report.written) == len(catalog)
    root = zarr.open_group(str(store), mode="r")
    for stack in catalog:
        group = root[scan_group_path(stack.component, stack.mouse, stack.side, stack.week)]
        expected = np.stack(
            [imagecodecs.png_decode(Path(f.path).read_bytes()) for f in stack.files]
        )
        np.testing.assert_array_equal(group["0"][:], expected)
        np.testing.assert_array_equal(group["slice_index"][:], stack.indices)
        attrs = get_bonemet_attrs(group)
        assert attrs["status"] == "complete"
        assert (attrs["mouse"], attrs["side"], attrs["week"]) == (
            stack.mouse,
            stack.side,
            stack.week,
        )
    assert verify(source, str(store)).ok
    records = read_records(root)
    assert len(records) == CONFIG.mice * CONFIG.weeks


def test_converted_store_is_ome_zarr_and_opens_in_xarray(source, tmp_path):
    from ome_zarr_models.v05 import Image

    store = tmp_path / "store.zarr"
    convert(source, str(store))
    root = zarr.open_group(str(store), mode="r")
    catalog = scan_source(source)
    for stack in catalog:
        group = root[scan_group_path(stack.component, stack.mouse, stack.side, stack.week)]
        Image.from_zarr(group)  # raises on any OME-Zarr 0.5 violation
        assert group["0"].metadata.dimension_names is not None
    raw = xr.open_datatree(store, engine="zarr", consolidated=False)
    assert raw["recon_ct/851/both/week0"].dataset["0"].dims == ("z", "y", "x")
    tree = bxr.open_store(str(store))
    image = tree["rotation_xray/851/both/week1"].dataset["image"]
    assert image.dims == ("angle", "row", "col")
    np.testing.assert_allclose(image["angle"].values, np.arange(260) * 0.8)
    recon = tree["recon_ct/851/both/week0"].dataset["image"]
    assert recon.dims == ("slice", "y", "x")
    labels = (recon["week"].item(), recon["mouse"].item(), recon["side"].item())
    assert labels == (0, "851", "both")
    np.testing.assert_array_equal(
        recon["slice"].values, catalog.select(components="recon_ct", weeks=0).stacks[0].indices
    )
    np.testing.assert_allclose(np.diff(recon["x"].values), CONFIG.voxel_size * 1000)
    dense = bxr.stack(tree, "regist_ct")
    assert dense.dims == ("mouse", "side", "week", "slice", "y", "x")
    assert dense.shape[:3] == (1, 2, 2) and bool(dense["present"].all())
    np.testing.assert_array_equal(
        dense.sel(mouse="851", side="left", week=1).values,
        root[scan_group_path("regist_ct", "851", "left", 1)]["0"][:],
    )


def test_rerun_writes_nothing_and_changes_nothing(source, tmp_path):
    store = tmp_path / "store.zarr"
    convert(source, str(store))
    before = store_digest(store)
    report = convert(source, str(store))
    assert report.shards_written == 0 and report.written == []
    assert len(report.skipped) == len(scan_source(source))
    assert store_digest(store) == before


def test_other_settings_are_refused_unless_overwrite(source, tmp_path):
    store = tmp_path / "store.zarr"
    convert(source, str(store), components="regist_ct", level=1)
    with pytest.raises(ConversionError, match="overwrite=True"):
        convert(source, str(store), components="regist_ct", level=5)
    report = convert(source, str(store), components="regist_ct", level=5, overwrite=True)
    assert len(report.written) == 2 * CONFIG.weeks
    group = zarr.open_group(str(store), mode="r")[scan_group_path("regist_ct", "851", "left", 1)]
    assert get_bonemet_attrs(group)["provenance"]["layout"]["level"] == 5
    assert verify(source, str(store), components="regist_ct").ok


def test_changed_source_files_are_refused_unless_overwrite(own_source, tmp_path):
    store = tmp_path / "store.zarr"
    convert(own_source, str(store), components="recon_ct")
    folder = own_source / "Imagery_Dataset" / "2. Recon-CT" / "851" / "week 1"
    first = sorted(folder.glob("*.png"))[0]
    image = imagecodecs.png_decode(first.read_bytes())
    first.write_bytes(imagecodecs.png_encode(image[::-1].copy(), level=0))  # bigger file
    with pytest.raises(ConversionError, match="overwrite=True"):
        convert(own_source, str(store), components="recon_ct")
    report = convert(own_source, str(store), components="recon_ct", overwrite=True)
    assert report.written == [scan_group_path("recon_ct", "851", "both", 1)]
    assert verify(own_source, str(store), components="recon_ct").ok


def test_corrupt_pixels_quarantine_the_scan_and_name_the_file(own_source, tmp_path):
    folder = own_source / "Imagery_Dataset" / "2. Recon-CT" / "851" / "week 0"
    victim = sorted(folder.glob("*.png"), key=lambda p: naming.parse_index(p.name))[5]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the header scan cannot see it, the decoder must
    victim.write_bytes(bytes(data))
    store = tmp_path / "store.zarr"
    report = convert(own_source, str(store))
    assert report.exit_code == 3
    ((_folder, problems),) = report.quarantined.items()
    assert problems[0][0].endswith(victim.name)
    root = zarr.open_group(str(store), mode="r")
    attrs = get_bonemet_attrs(root[scan_group_path("recon_ct", "851", "both", 0)])
    assert attrs["status"] == "quarantined"
    assert victim.name in str(attrs["problems"])
    # every other scan converted and verifiable; verify flags the quarantined one as missing
    result = verify(own_source, str(store))
    assert result.missing == [scan_group_path("recon_ct", "851", "both", 0)]
    assert not result.mismatches
    with pytest.raises(ConversionError, match=victim.name):
        convert(own_source, str(tmp_path / "other.zarr"), on_error="stop")


def test_catalog_errors_quarantine_before_writing(own_source, tmp_path):
    folder = own_source / "Imagery_Dataset" / "3. Seg-CT" / "851 right tibia" / "week 1"
    victim = sorted(folder.glob("*.png"))[2]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    store = tmp_path / "store.zarr"
    report = convert(own_source, str(store))
    assert report.exit_code == 3
    assert any(victim.name in p for _, probs in report.quarantined.items() for p, _ in probs)
    root = zarr.open_group(str(store), mode="r")
    assert root.get(scan_group_path("seg_ct", "851", "right", 1)) is None


def test_verify_names_slices_changed_in_the_store(source, tmp_path):
    store = tmp_path / "store.zarr"
    convert(source, str(store), components="roi_ct")
    root = zarr.open_group(str(store), mode="r+")
    array = root[scan_group_path("roi_ct", "851", "left", 1)]["0"]
    layout_slices = array.shape[0]
    block = array[:]
    block[1, 0, 0] ^= 1
    array[:] = block  # whole-shard rewrite: simulates silent corruption of one slice
    result = verify(source, str(store), components="roi_ct")
    assert not result.ok
    assert [(m[0], m[3]) for m in result.mismatches] == [
        (scan_group_path("roi_ct", "851", "left", 1), "store pixels differ from recorded")
    ]
    assert layout_slices == CONFIG.roi_slices


def test_each_shard_has_exactly_one_writer(source):
    stack = scan_source(source).select(components="rotation_xray").stacks[0]
    layout = layout_for(stack)
    tasks = shard_tasks(stack, layout, "p")
    covered = sorted((t.start, t.stop) for t in tasks)
    assert covered[0][0] == 0 and covered[-1][1] == stack.n_files
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    with pytest.raises(ShardWriterError, match="two writers"):
        check_single_writer([*tasks, tasks[0]], layout)
    half = tasks[0]
    straddling = ShardTask(half.group_path, 0, 0, half.stop + 1, half.paths, half.shape, half.dtype)
    with pytest.raises(ShardWriterError, match="one whole shard"):
        check_single_writer([straddling], layout)


def test_object_budget_at_published_size():
    """The object budget over the published 67.87 TB (DESIGN.md; docs/store-layout.md, "Stored
    objects"): the projections and the reconstructions, 97% of the bytes, keep at least 64 MB
    of source per object; the three small components cost their per-scan fixed objects
    (metadata, coordinates), and the whole stays near a million objects."""
    from bonemet_dask.ops.plan import plan_published

    plans = {p.component: p for p in plan_published()}
    assert sum(p.png_bytes for p in plans.values()) == pytest.approx(67.87e12, rel=0.01)
    assert plans["rotation_xray"].mb_per_object > 64 and plans["recon_ct"].mb_per_object > 64
    total = sum(p.objects for p in plans.values())
    assert 1e6 < total < 1.2e6  # 1,194,570: 56.8 MB of source per object
    assert plans["recon_ct"].shards == 5105 * 42  # 64 full-size slices per shard
    # every small-component scan costs its fixed 13 objects with one shard
    assert plans["roi_ct"].objects == 10210 * 13


def test_small_stacks_get_deep_shards():
    from bonemet_dask.ops.convert import default_slices_per_shard

    assert default_slices_per_shard("ct", (2685, 2428, 2588), "uint8") == 64
    assert default_slices_per_shard("ct", (1538, 539, 509), "uint8") == 1024
    assert default_slices_per_shard("projections", (260, 2688, 4032), "uint16") == 16


@pytest.mark.slow
def test_sigkill_mid_conversion_then_rerun_equals_uninterrupted(tmp_path):
    src = tmp_path / "src"
    generate(str(src), SynthConfig(mice=1, weeks=1, size="small", seed=5))
    reference = tmp_path / "reference.zarr"
    convert(src, str(reference), slices_per_shard=8)
    store = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "bonemet_dask.cli", "convert", str(src), str(store)]
    command += ["--slices-per-shard", "8"]  # many small shards: the kill lands mid-run
    env = os.environ | {"PYTHONHASHSEED": "0"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill as soon as some, but not all, shards are on disk
        if len(list(store.rglob("0/c/*"))) >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not verify(src, str(store)).ok  # the kill really interrupted it
    rerun = subprocess.run(command, env=env, capture_output=True, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert verify(src, str(store)).ok
    a, b = zarr.open_group(str(reference), mode="r"), zarr.open_group(str(store), mode="r")
    for stack in scan_source(src):
        path = scan_group_path(stack.component, stack.mouse, stack.side, stack.week)
        for name in ("0", "slice_index", "slice_hash"):
            np.testing.assert_array_equal(a[path][name][:], b[path][name][:])
        assert get_bonemet_attrs(a[path]) == get_bonemet_attrs(b[path])


@pytest.mark.parametrize("damage", ["missing", "duplicate", "wrong-size", "16-bit"])
def test_inconsistent_stacks_are_quarantined_with_the_reason(own_source, tmp_path, damage):
    folder = own_source / "Imagery_Dataset" / "4. Regist-CT" / "851 right tibia" / "week 0"
    files = sorted(folder.glob("*.png"), key=lambda p: naming.parse_index(p.name))
    image = imagecodecs.png_decode(files[3].read_bytes())
    if damage == "missing":
        files[3].unlink()
    elif damage == "duplicate":
        (folder / files[3].name.replace("reg0", "reg")).write_bytes(files[3].read_bytes())
    elif damage == "wrong-size":
        files[3].write_bytes(imagecodecs.png_encode(np.pad(image, ((0, 1), (0, 0)))))
    else:
        files[3].write_bytes(imagecodecs.png_encode(image.astype(np.uint16)))
    kind = {
        "missing": "missing",
        "duplicate": "index 3",
        "wrong-size": "is 8x9",
        "16-bit": "bit depth",
    }
    report = convert(own_source, str(tmp_path / "store.zarr"), components="regist_ct")
    assert report.exit_code == 3
    assert list(report.quarantined) == [str(folder)]
    assert any(kind[damage] in reason for _, reason in report.quarantined[str(folder)])
    assert len(report.written) == 2 * CONFIG.weeks - 1


def test_memory_store_round_trip(source):
    from bonemet_dask.io.store import open_zarr_store

    url = "memory://bonemet-test/store.zarr"
    report = convert(source, url, components=("roi_ct", "seg_ct"))
    assert report.exit_code == 0
    assert verify(source, url, components=("roi_ct", "seg_ct")).ok
    root = zarr.open_group(open_zarr_store(url), mode="r")
    assert sorted(root.group_keys()) == ["medirec", "roi_ct", "seg_ct"]


def test_convert_on_a_dask_cluster_equals_local_threads(source, tmp_path):
    from distributed import Client, LocalCluster

    threads = tmp_path / "threads.zarr"
    convert(source, str(threads), components=("seg_ct", "rotation_xray"))
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with cluster, Client(cluster) as client:
        on_cluster = tmp_path / "cluster.zarr"
        report = convert(
            source, str(on_cluster), components=("seg_ct", "rotation_xray"), client=client
        )
        assert report.exit_code == 0
        assert verify(source, str(on_cluster), client=client, components="seg_ct").ok
    a, b = zarr.open_group(str(threads), mode="r"), zarr.open_group(str(on_cluster), mode="r")
    for path in report.written:
        np.testing.assert_array_equal(a[path]["0"][:], b[path]["0"][:])
        np.testing.assert_array_equal(a[path]["slice_hash"][:], b[path]["slice_hash"][:])
