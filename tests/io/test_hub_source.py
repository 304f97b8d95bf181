"""Reading the published dataset where it lives: ``hf://datasets/BoneMet/BoneMet``, selectively.

No network here, so a stand-in filesystem is registered under the ``hf`` protocol: it serves a
synthetic BoneMet tree laid out as on the hub (``Imagery_Dataset/1. Rotation-X-ray/...``,
``MiceMediRec Dataset/record.csv``) through fsspec's own ``DirFileSystem`` and records every
request, the way ``huggingface_hub.HfFileSystem`` would make one per listed folder and per read
file. Choosing one mouse and one week must list only the folders on the way to that mouse and
read only that mouse's week.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from pathlib import Path
from typing import ClassVar

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry, known_implementations
from typer.testing import CliRunner

import bonemet_dask as bm
from bonemet_dask.cli import app
from bonemet_dask.naming import parse_component, parse_scan_folder, parse_week
from bonemet_dask.synth import SynthConfig, generate

REPO = "datasets/BoneMet/BoneMet"
URL = f"hf://{REPO}"
CONFIG = SynthConfig(mice=2, weeks=2, size="tiny", seed=3, products="voxelised")


class FakeHub(DirFileSystem):
    """The hub's repository tree served from a local folder; every request recorded."""

    protocol = "hf"
    cachable = False
    served: ClassVar[str] = ""
    requests: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, **storage_options):
        super().__init__(path=self.served, fs=LocalFileSystem())

    def _note(self, kind: str, path) -> None:
        for one in [path] if isinstance(path, str) else list(path):
            self.requests.append((kind, self._strip_protocol(one).rstrip("/")))

    def ls(self, path, detail=True, **kwargs):
        self._note("list", path)
        return super().ls(path, detail=detail, **kwargs)

    def find(self, path, *args, **kwargs):
        self._note("list-recursive", path)
        return super().find(path, *args, **kwargs)

    def info(self, path, **kwargs):
        self._note("info", path)
        return super().info(path, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._note("read", path)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def cat(self, path, *args, **kwargs):
        self._note("read", path)
        return super().cat(path, *args, **kwargs)

    def cat_ranges(self, paths, *args, **kwargs):
        self._note("read", paths)
        return super().cat_ranges(paths, *args, **kwargs)

    def _open(self, path, *args, **kwargs):
        self._note("read", path)
        return super()._open(path, *args, **kwargs)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    served = tmp_path_factory.mktemp("hub")
    generate(str(served / REPO), CONFIG)
    return served


@pytest.fixture
def fake_hub(hub, monkeypatch):
    monkeypatch.setattr(FakeHub, "served", str(hub))
    monkeypatch.setattr(FakeHub, "requests", [])
    monkeypatch.setitem(_registry, "hf", FakeHub)
    assert isinstance(fsspec.filesystem("hf"), FakeHub)
    return FakeHub


def _scan_keys(path: str) -> tuple[str | None, str | None, int | None]:
    """(component, mouse, week) a path lies under, as far as its folders say."""
    component = mouse = week = None
    for segment in path.split("/"):
        if parse_component(segment):
            component = parse_component(segment)
        elif component and parse_week(segment) is not None:
            week = parse_week(segment)
        elif component and (scan := parse_scan_folder(segment)) is not None:
            mouse = str(int(scan.mouse))
    return component, mouse, week


def _outside(requests, kinds, mouse: str, week: int) -> list[tuple[str, str]]:
    """Requests of ``kinds`` that reach into another mouse's or another week's folders."""
    bad = []
    for kind, path in requests:
        if kind not in kinds:
            continue
        _, found_mouse, found_week = _scan_keys(path)
        if (found_mouse not in (None, mouse)) or (found_week not in (None, week)):
            bad.append((kind, path))
    return bad


def test_one_mouse_one_week_lists_and_reads_only_its_folders(fake_hub):
    catalog = bm.scan_source(URL, mice=852, weeks=1)
    stacks = {(s.component, s.mouse, s.side, s.week) for s in catalog.stacks}
    assert {(m, w) for _, m, _, w in stacks} == {("852", 1)}
    assert len(stacks) == 8 and all(s.ok for s in catalog.stacks)  # 1 + 1 + 2 + 2 + 2 scans
    requests = fake_hub.requests
    counts = Counter(kind for kind, _ in requests)
    assert counts["list-recursive"] == 0  # never the whole tree
    assert _outside(requests, {"list", "info", "read"}, "852", 1) == []
    listed = {path for kind, path in requests if kind == "list"}
    # the way down: the repository, Imagery_Dataset, 5 components, the records folder; then per
    # component the mouse's scan folders (1 or 2 sides) and their week 1 folder
    above = {p for p in listed if _scan_keys(p)[1] is None}
    assert len(above) == 1 + 1 + 5 + 1
    scans = [p for p in listed if _scan_keys(p)[1] == "852" and _scan_keys(p)[2] is None]
    weeks = [p for p in listed if _scan_keys(p)[2] == 1]
    assert len(scans) == len(weeks) == 8
    reads = {path for kind, path in requests if kind == "read"}
    assert reads and all(_scan_keys(p)[1:] == ("852", 1) for p in reads)
    # the whole tree, for comparison: one recursive listing and every mouse's files read
    fake_hub.requests.clear()
    everything = bm.scan_source(URL)
    assert len(everything.stacks) == CONFIG.mice * CONFIG.weeks * 8
    whole = Counter(kind for kind, _ in fake_hub.requests)
    assert whole["list-recursive"] == 1
    read_all = {p for k, p in fake_hub.requests if k == "read"}
    assert reads < read_all
    assert {_scan_keys(p)[1:] for p in read_all} == {
        (mouse, week) for mouse in CONFIG.mouse_ids for week in range(CONFIG.weeks)
    }
    print(f"selective: {dict(counts)}, {len(reads)} files read; whole: {dict(whole)}, "
          f"{len(read_all)} files read")  # fmt: skip


def test_convert_a_cohort_straight_from_the_hub(fake_hub, tmp_path):
    store = tmp_path / "cohort.zarr"
    result = CliRunner().invoke(
        app, ["convert", URL, str(store), "--mice", "852", "--weeks", "1"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _outside(fake_hub.requests, {"list", "info", "read"}, "852", 1) == []
    tree = bm.open_store(store)
    groups = {
        node.path.strip("/")
        for node in tree.subtree
        if "image" in node.data_vars or "0" in node.data_vars
    }
    assert groups and all("/852/" in g and g.endswith("week1") for g in groups)
    assert "rotation_xray/852/both/week1" in groups and "recon_ct/852/both/week1" in groups
    # the projections' NRecon reference (grid, window) came from the Recon-CT listed with them
    assert tree["rotation_xray/852/both/week1"].attrs.get("nrecon")
    # and plan says what is there without reading more than that mouse's week
    fake_hub.requests.clear()
    planned = CliRunner().invoke(app, ["plan", URL, "--mice", "852", "--weeks", "1", "--json"],
                                 env={"COLUMNS": "200"})  # fmt: skip
    assert planned.exit_code == 0, planned.output
    assert _outside(fake_hub.requests, {"list", "info", "read"}, "852", 1) == []
    stacks = json.loads(planned.output)["stacks"]
    assert len(stacks) == 8 and {(s["mouse"], s["week"]) for s in stacks} == {("852", 1)}


def test_the_stand_in_spells_paths_as_the_hub_does(monkeypatch):
    """The real ``hf`` filesystem strips a URL to the same path the stand-in serves, and lists
    folder by folder with the ``ls(path, detail=True)`` the pruned listing calls."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    real, path = fsspec.core.url_to_fs(f"{URL}/Imagery_Dataset/")
    assert isinstance(real, huggingface_hub.HfFileSystem)
    assert path == FakeHub._strip_protocol(f"{URL}/Imagery_Dataset/") == f"{REPO}/Imagery_Dataset"
    assert "detail" in inspect.signature(type(real).ls).parameters
    # without the package, the error says what to install
    monkeypatch.delitem(_registry, "hf", raising=False)
    monkeypatch.setitem(
        known_implementations, "hf",
        {"class": "no_such_module.HfFileSystem", "err": "Install huggingface_hub"},
    )  # fmt: skip
    with pytest.raises(ImportError, match=r"hf://.*bonemet-dask\[hub\]"):
        bm.scan_source(URL)
