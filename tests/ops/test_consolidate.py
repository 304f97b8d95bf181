"""The store-writing commands leave consolidated metadata that is current, and never read it.

``run``, ``convert`` and a stage on its own consolidate the store when they finish (a plain
``xr.open_datatree`` is then silent and lists every group), a rerun that adds groups
consolidates them too, and a group changed after the consolidation (a killed stage) is read
afresh by the engine, which resumes it.
"""

import json
import uuid
import warnings

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync

import bonemet_dask as bm
from bonemet_dask.io.consolidate import consolidated_paths
from bonemet_dask.io.scans import StoreRoots
from bonemet_dask.io.store import open_zarr_store, scan_group_path
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.engine import run_stage
from bonemet_dask.ops.segment_store import Segment, segment_store
from bonemet_dask.selection import Selection

CHAIN = {"start": "recon_ct", "metrics_csv": None,
         "options": {"register": {"roll_starts": "bonemet"}}}  # fmt: skip


def plain_tree(store) -> xr.DataTree:
    """``xr.open_datatree(store, engine="zarr")``, failing on any warning (the consolidated
    metadata one included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_datatree(store, engine="zarr")


def groups_on_disk(store) -> set[str]:
    """Every group path, from the groups' own metadata (the consolidation ignored)."""
    root = zarr.open_group(open_zarr_store(store, mode="r"), mode="r", use_consolidated=False)
    members = root.members(max_depth=None, use_consolidated_for_children=False)
    return {path for path, node in members if isinstance(node, zarr.Group)}


def test_run_consolidates_and_a_rerun_adds_its_groups(tiny_published, tmp_path):
    store = str(tmp_path / "s.zarr")
    first = bm.run(str(tiny_published / "src"), store, until="segment", weeks=0, **CHAIN)
    assert first.exit_code == 0
    tree = plain_tree(store)
    assert {n.path.lstrip("/") for n in tree.subtree} - {""} == groups_on_disk(store)
    assert "seg_ct/851/left/week0" in groups_on_disk(store)
    assert not {p for p in groups_on_disk(store) if "week1" in p}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray's warning: no consolidated metadata read
        listed = xr.open_datatree(store, engine="zarr", consolidated=False)
    xr.testing.assert_identical(tree, listed)

    again = bm.run(str(tiny_published / "src"), store, until="composite", **CHAIN)  # + week 1
    assert again.exit_code == 0 and again.stages["segment"].counts()["up to date"] == 2
    added = {p for p in groups_on_disk(store) if "week1" in p or p.startswith("roi_ct")}
    assert {"seg_ct/851/right/week1", "regist_ct/851/left/week1", "roi_ct/851/left/week1"} <= added
    assert added <= consolidated_paths(store)
    assert {n.path.lstrip("/") for n in plain_tree(store).subtree} - {""} == groups_on_disk(store)


def test_engine_reads_a_group_changed_after_consolidation_afresh(tiny_published, tmp_path):
    """A killed stage, simulated after the consolidation: one shard and its digests lost, the
    status set back to incomplete through a handle that trusted the consolidated metadata.
    The engine sees ``incomplete`` (the consolidation still says ``complete``), resumes the
    group and consolidates it as complete again."""
    store, out = str(tiny_published / "published.zarr"), str(tmp_path / "out.zarr")
    first = segment_store(store, out, mice="851", weeks=0)
    assert len(first.written) == 2
    path = scan_group_path("seg_ct", "851", "left", 0)
    trusting = zarr.open_group(out, mode="r+")  # zarr's default: consolidated metadata
    assert trusting.metadata.consolidated_metadata is not None
    group = trusting[path]
    expected = group["0"][:]
    sync(group.store.delete(f"{path}/slice_hash/c/0/0"))
    sync(group.store.delete(f"{path}/0/c/0/0/0"))
    group.attrs["bonemet"] = {**group.attrs["bonemet"], "status": "incomplete"}
    assert zarr.open_group(out, mode="r").metadata.consolidated_metadata is not None
    assert zarr.open_group(out, mode="r")[path].attrs["bonemet"]["status"] == "complete"  # stale

    roots = StoreRoots.open(store, out)
    statuses = {s.path: s.status for s in roots.scans("seg_ct", Selection())}
    assert statuses[path] == "incomplete" and statuses[path.replace("left", "right")] == "complete"
    resumed = run_stage(Segment(), store, out, selection=Selection.of(mice="851", weeks=0))
    assert {o.path: o.status for o in resumed.outcomes} == {
        path: "resumed",
        path.replace("left", "right"): "up to date",
    }
    fresh = zarr.open_group(out, mode="r")  # consolidated again, now current
    assert fresh[path].attrs["bonemet"]["status"] == "complete"
    np.testing.assert_array_equal(fresh[path]["0"][:], expected)
    # the trusting handle had written its consolidated view into the group's own zarr.json;
    # the engine's writes (which never read it) removed it
    document = json.loads((tmp_path / "out.zarr" / path / "zarr.json").read_text())
    assert document["attributes"]["bonemet"]["status"] == "complete"
    assert "consolidated_metadata" not in document


def test_lazy_stage_consolidates_when_computed(tiny_published, tmp_path):
    store, out = str(tiny_published / "published.zarr"), str(tmp_path / "lazy.zarr")
    lazy = segment_store(store, out, mice="851", weeks=0, compute=False)
    assert consolidated_paths(out) is None  # groups created, nothing consolidated yet
    assert lazy.compute().counts()["written"] == 2
    group = zarr.open_group(out, mode="r")[scan_group_path("seg_ct", "851", "right", 0)]
    assert group.attrs["bonemet"]["status"] == "complete"
    expected = {"seg_ct/851/left/week0/labels/mask/0", "seg_ct/851/right/week0/0"}
    assert expected <= consolidated_paths(out)


def test_convert_to_memory_url_consolidates_quarantined_stacks_too(tiny_published, tmp_path):
    """``convert`` into ``memory://``: the plain xarray call is silent and sees every group,
    the quarantined stack's group included (it is on disk, status ``quarantined``)."""
    import shutil

    damaged = tmp_path / "src"
    shutil.copytree(tiny_published / "src", damaged)
    week = damaged / "Imagery_Dataset" / "2. Recon-CT" / "851" / "week 1"
    victim = sorted(week.glob("*.png"))[3]
    data = bytearray(victim.read_bytes())
    data[45:-20] = bytes(len(data) - 65)  # header and IEND intact: the catalog passes it,
    victim.write_bytes(bytes(data))  # the shard task's decode fails (IDAT CRC)
    url = f"memory://{uuid.uuid4().hex}/s.zarr"
    report = convert(str(damaged), url, components="recon_ct")
    assert report.exit_code == 3
    tree = plain_tree(url)
    assert tree["recon_ct/851/both/week1"].attrs["bonemet"]["status"] == "quarantined"
    assert tree["recon_ct/851/both/week0"].attrs["bonemet"]["status"] == "complete"
    assert {n.path.lstrip("/") for n in tree.subtree} - {""} == groups_on_disk(url)
