"""bm.ml.samples: every sample equals a direct read, once per epoch; each chunk read once; the
order is a function of (seed, epoch); the buffer bound holds; splits, pairs and labels."""

import importlib
import shutil
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

import bonemet_dask as bm
from bonemet_dask.io.store import (
    ImageLayout,
    create_image_group,
    scan_group_path,
    set_status,
    write_scan_shard,
)
from bonemet_dask.selection import NothingSelectedError

MICE = ("851", "852", "853", "854")
MISSING = ("853", "right", 1)  # a scan the store lacks: pairs across it must not appear
SHAPE = (20, 12, 10)  # 20 slices: shards of 8 (8, 8, 4), inner chunks of 4 slices


def _scan_data(mouse: str, side: str, week: int) -> np.ndarray:
    seed = int(mouse) * 100 + ("left", "right").index(side) * 10 + week
    data = np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)
    if (mouse, side) == ("854", "right"):
        data[:6] = 0  # all-zero chunks: the writer leaves them out of the shard
    return data


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A regist_ct store of 4 mice x 2 sides x 3 weeks (one scan missing) written through the
    store's own writer: several shards per scan, several inner chunks per shard, and source
    indices that are not the array positions (100 + 3 z)."""
    path = tmp_path_factory.mktemp("ml") / "multi.zarr"
    root = zarr.open_group(str(path), mode="w")
    layout = ImageLayout(SHAPE, "uint8", chunks=(4, 8, 8), shards=(8, 16, 16),
                         dims=("z", "y", "x"), scale=(10.0,) * 3, codec="blosc-zstd")  # fmt: skip
    for mouse in MICE:
        for side in ("left", "right"):
            for week in range(3):
                if (mouse, side, week) == MISSING:
                    continue
                group = create_image_group(
                    root, scan_group_path("regist_ct", mouse, side, week), layout,
                    attrs={"component": "regist_ct", "mouse": mouse, "side": side, "week": week},
                )  # fmt: skip
                group["slice_index"][:] = 100 + 3 * np.arange(SHAPE[0])
                data = _scan_data(mouse, side, week)
                for shard in range(layout.n_shards):
                    write_scan_shard(group, shard, {"0": data[layout.shard_slices(shard)]})
                set_status(group, "complete")
    # one scan in another layout (gzip chunks): read through zarr, not the shard reader
    gzip = ImageLayout(SHAPE, "uint8", chunks=(4, 8, 8), shards=(8, 16, 16),
                       dims=("z", "y", "x"), scale=(10.0,) * 3, codec="gzip")  # fmt: skip
    group = create_image_group(root, scan_group_path("roi_ct", "851", "left", 0), gzip,
                               attrs={"mouse": "851", "side": "left", "week": 0})  # fmt: skip
    group["slice_index"][:] = np.arange(SHAPE[0])
    for shard in range(gzip.n_shards):
        write_scan_shard(
            group, shard, {"0": _scan_data("851", "left", 0)[gzip.shard_slices(shard)]}
        )
    set_status(group, "complete")
    return path


@pytest.fixture(scope="module")
def tree(tiny_published):
    return bm.open_store(str(tiny_published / "published.zarr"))


class CountingStore(WrapperStore):
    """A real store that counts every read of an image chunk (key and byte range)."""

    def __init__(self, store):
        super().__init__(store)
        self.reads = Counter()

    async def get(self, key, prototype, byte_range=None):
        if "/0/c/" in key:
            self.reads[(key, repr(byte_range))] += 1
        return await super().get(key, prototype, byte_range)


def _key(s):
    return (s.mouse, s.side, s.week, s.index)


def _table():
    """One row per mouse as bm.ml.split returns it (fold: nullable Int64, <NA> for test)."""
    return pd.DataFrame(
        {
            "mouse": ["851", "852", "853", "854", "999"],
            "split": ["train", "train", "train", "test", "train"],
            "fold": pd.array([0, 1, 0, pd.NA, 1], dtype="Int64"),
            "lesion": [True, False, True, False, True],
            "injected_limb": ["right", "", "left", "", "left"],
        }
    )


@pytest.mark.parametrize("component", ["regist_ct", "roi_ct", "seg_ct", "recon_ct"])
def test_every_slice_once_and_equal_to_the_store(tiny_published, tree, component):
    store = str(tiny_published / "published.zarr")
    got = list(bm.ml.samples(store, component, unit="slice", seed=3, buffer_bytes=2000))
    keys = [_key(s) for s in got]
    expected = [
        (str(n.dataset.mouse.item()), str(n.dataset.side.item()), int(n.dataset.week), int(i))
        for n in tree[component].subtree
        if "image" in n.dataset
        for i in n.dataset.slice.values
    ]
    assert sorted(keys) == sorted(expected) and len(set(keys)) == len(keys)
    dense = bm.stack(tree, component) if component in ("regist_ct", "roi_ct") else None
    for s in got:
        node = tree[f"{component}/{s.mouse}/{s.side}/week{s.week}"].dataset
        reference = node.image.sel(slice=s.index).values
        np.testing.assert_array_equal(s.image, reference)
        if dense is not None:  # the dense stack agrees too (the reference)
            ref = dense.sel(mouse=s.mouse, side=s.side, week=s.week, slice=s.index).values
            np.testing.assert_array_equal(s.image, ref)
        assert s.target is None and s.label is None


def test_volumes_projections_and_patches_equal_direct_reads(tiny_published, tree):
    store = str(tiny_published / "published.zarr")
    volumes = list(bm.ml.samples(store, "seg_ct", unit="volume", shuffle=False))
    assert len(volumes) == 4
    for s in volumes:
        node = tree[f"seg_ct/{s.mouse}/{s.side}/week{s.week}"].dataset
        np.testing.assert_array_equal(s.image, node.image.values)
    projections = list(bm.ml.samples(store, "rotation_xray", unit="projection", batch_size=64))
    images = np.concatenate([b.image for b in projections])
    assert images.shape == (2 * 260, 42, 63) and images.dtype == np.uint16
    for batch in projections[:2]:
        for k in range(3):
            node = tree[f"rotation_xray/{batch.mouse[k]}/both/week{batch.week[k]}"].dataset
            expected = node.image.values[node.index.values == batch.index[k]][0]
            np.testing.assert_array_equal(batch.image[k], expected)
    volumes = {
        (str(n.dataset.mouse.item()), n.dataset.side.item(), int(n.dataset.week)): n.image.values
        for n in tree["regist_ct"].subtree
        if "image" in n.dataset
    }
    for patch, stride in [((4, 3, 4), None), ((3, 5), (2, 2))]:
        got = list(bm.ml.samples(store, "regist_ct", unit="patch", patch=patch, stride=stride))
        size = (1, *patch) if len(patch) == 2 else patch
        step = (1, *stride) if stride else size
        grid = [
            (z, y, x)
            for z in range(0, 24 - size[0] + 1, step[0])
            for y in range(0, 8 - size[1] + 1, step[1])
            for x in range(0, 8 - size[2] + 1, step[2])
        ]
        per_scan = Counter((s.mouse, s.side, s.week) for s in got)
        assert set(per_scan.values()) == {len(grid)}
        assert {s.position for s in got} == set(grid)
        for s in got:
            volume = volumes[(s.mouse, s.side, s.week)]
            z, y, x = s.position
            region = volume[z : z + size[0], y : y + size[1], x : x + size[2]]
            np.testing.assert_array_equal(s.image, region[0] if len(patch) == 2 else region)
            assert s.image.shape == tuple(patch)


def test_order_is_a_function_of_seed_and_epoch(multi):
    def order(**kw):
        return [(*_key(s), s.image[0, 0]) for s in bm.ml.samples(multi, "regist_ct", **kw)]

    first = order(seed=1, epoch=0, mice="851-852")
    assert order(seed=1, epoch=0, mice="851-852", prefetch=0) == first  # threads change nothing
    later = order(seed=1, epoch=1, mice="851-852")
    assert later != first and order(seed=2, epoch=0, mice="851-852") != first
    assert sorted(later) == sorted(first)
    plain = [_key(s) for s in bm.ml.samples(multi, "regist_ct", shuffle=False, mice="851-852")]
    assert plain == sorted(plain, key=lambda k: (int(k[0]), k[1], k[2], k[3]))
    assert [k[:3] for k in first] != sorted(k[:3] for k in first)  # shuffled across scans


@pytest.mark.parametrize(("unit", "slab"), [("slice", None), ("slice", 4), ("pair", None)])
def test_each_chunk_is_read_once_per_epoch(multi, unit, slab):
    store = CountingStore(LocalStore(str(multi), read_only=True))
    stream = bm.ml.samples(store, "regist_ct", unit=unit, slab=slab, prefetch=2, epoch=5)
    n = sum(1 for _ in stream)
    assert n == len(stream) > 0
    index = {k: v for k, v in store.reads.items() if "Suffix" in k[1]}  # shard indices
    data = {k: v for k, v in store.reads.items() if k not in index}
    assert max(data.values()) == 1, "a chunk was read twice"
    scans = 21 if unit == "pair" else 23  # 853 right: weeks 0 and 2 make no pair of gap 1
    assert len({key for key, _ in data}) == scans * 3  # every shard of the scans used
    assert stream.stats.bytes_read == scans * np.prod(SHAPE)  # each week once, pairs too
    if slab is None:  # a slab is a whole shard: one request for the whole object
        assert not index and {r for _, r in data} == {"None"}
    else:  # slabs of 4 slices: their chunks' byte ranges, and each shard's index once (the
        # last shard holds 4 slices: a whole object)
        assert set(index.values()) == {1}
        assert all("Range" in r for k, r in data if not k.endswith("/c/2/0/0"))
    depth = slab or 8
    assert {u.z1 - u.z0 for u in stream.units} == {depth, 20 % depth or depth}


def test_the_shuffle_buffer_is_bounded(multi):
    slice_bytes = SHAPE[1] * SHAPE[2]
    stream = bm.ml.samples(multi, "regist_ct", buffer_bytes=5 * slice_bytes, prefetch=1)
    got = [_key(s) for s in stream]
    assert len(got) == len(set(got)) == 23 * 20
    assert stream.stats.max_buffered_samples == 5
    assert stream.stats.max_buffered_bytes <= 5 * slice_bytes
    # read units shrink to one inner chunk (4 slices) to stay within a quarter of the buffer;
    # the stated bound: the buffer plus the unit in flight and the one being cut, each with
    # its read's workspace (fetched and decoded chunks, padded to 16 x 16 in y and x)
    assert {u.z1 - u.z0 for u in stream.units} == {4}
    assert stream.memory_bound == 5 * slice_bytes + 2 * (4 * slice_bytes + 2 * 4 * 16 * 16)
    big = bm.ml.samples(multi, "regist_ct", buffer_bytes=10**9, mice="851")
    assert len({_key(s) for s in big}) == 6 * 20
    assert big.stats.max_buffered_samples == 6 * 20  # a large buffer holds every unit


def test_split_subsets_select_the_right_mice_with_their_labels(multi):
    table = _table()
    with pytest.warns(UserWarning, match="999"):  # in the table, not in the store
        train = list(bm.ml.samples(multi, "regist_ct", split=table, subset="train", fold=0))
    assert {s.mouse for s in train} == {"852"}
    assert {s.label for s in train} == {False}
    # 999 is in fold 1, not in this subset: no warning (warnings are errors in this suite)
    valid = list(bm.ml.samples(multi, "regist_ct", split=table, subset="validation", fold=0))
    assert {(s.mouse, s.label) for s in valid} == {("851", True), ("853", True)}
    test = bm.ml.samples(multi, "regist_ct", split=table.iloc[:4], subset="test",
                         label="injected_limb", batch_size=16)  # fmt: skip
    batches = list(test)
    assert {m for b in batches for m in b.mouse} == {"854"}
    assert {v for b in batches for v in b.label} == {""}
    everyone = bm.ml.samples(multi, "regist_ct", split=table.iloc[:4], unit="volume")
    assert {s.mouse for s in everyone} == set(MICE)
    with pytest.raises(NothingSelectedError, match="853"):
        bm.ml.samples(multi, "regist_ct", split=table.iloc[:4], subset="test", mice="851")
    with pytest.raises(ValueError, match="folds are"):
        bm.ml.samples(multi, "regist_ct", split=table.iloc[:4], subset="train", fold=7)
    with pytest.raises(ValueError, match="lacks column"):
        bm.ml.samples(multi, "regist_ct", split=table.iloc[:4], label="tumour")


@pytest.mark.parametrize("gap", [1, 2])
def test_pairs_are_one_tibia_weeks_k_and_k_plus_gap(multi, gap):
    got = list(bm.ml.samples(multi, "regist_ct", unit="pair", gap=gap, seed=4, mice="852-853"))
    present = {(m, s, w) for m in MICE[1:3] for s in ("left", "right") for w in range(3)}
    present -= {MISSING}
    pairs = {(m, s, w) for (m, s, w) in present if (m, s, w + gap) in present}
    assert Counter((s.mouse, s.side, s.week) for s in got) == {p: 20 for p in pairs}
    for s in got:
        z = (s.index - 100) // 3
        np.testing.assert_array_equal(s.image, _scan_data(s.mouse, s.side, s.week)[z])
        np.testing.assert_array_equal(s.target, _scan_data(s.mouse, s.side, s.week + gap)[z])
    patches = bm.ml.samples(multi, "regist_ct", unit="pair", pair_unit="patch", patch=(4, 6, 5),
                            shuffle=False, mice="851")  # fmt: skip
    for s in patches:
        z, y, x = s.position
        later = _scan_data(s.mouse, s.side, s.week + 1)[z : z + 4, y : y + 6, x : x + 5]
        np.testing.assert_array_equal(s.target, later)
    # week 1 is the target of (0, 1) and the image of (1, 2): still no two samples share memory
    for pair_unit in ("volume", "slice"):
        got = list(bm.ml.samples(multi, "regist_ct", unit="pair", pair_unit=pair_unit,
                                 mice="851", sides="left"))  # fmt: skip
        arrays = [a for s in got for a in (s.image, s.target)]
        assert len(arrays) == (4 if pair_unit == "volume" else 80)
        assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[:i])


def test_random_patches_are_drawn_per_epoch_inside_the_scan(multi):
    def draw(epoch):
        stream = bm.ml.samples(multi, "regist_ct", unit="patch", patch=(3, 4, 5),
                               patches_per_scan=6, epoch=epoch, shuffle=False,
                               mice="851-852")  # fmt: skip
        return [(s.mouse, s.side, s.week, s.position, s.image) for s in stream]

    first, again, other = draw(0), draw(0), draw(1)
    assert [k[:4] for k in first] == [k[:4] for k in again]
    assert [k[:4] for k in first] != [k[:4] for k in other]
    assert set(Counter(k[:3] for k in first).values()) == {6}
    for mouse, side, week, (z, y, x), image in first:
        assert z + 3 <= SHAPE[0] and y + 4 <= SHAPE[1] and x + 5 <= SHAPE[2]
        region = _scan_data(mouse, side, week)[z : z + 3, y : y + 4, x : x + 5]
        np.testing.assert_array_equal(image, region)


def test_parts_partition_the_epoch_and_batches_stack(multi):
    whole = sorted(_key(s) for s in bm.ml.samples(multi, "regist_ct", epoch=2, mice="852-853"))
    parts = [[_key(s) for s in bm.ml.samples(multi, "regist_ct", epoch=2, part=(i, 3),
                                             mice="852-853")] for i in range(3)]  # fmt: skip
    assert sorted(k for p in parts for k in p) == whole and all(parts)
    stream = bm.ml.samples(multi, "regist_ct", batch_size=64, mice="851")
    batches = list(stream)
    assert len(batches) == len(stream) == 2  # 6 scans x 20 slices = 120 = 64 + 56
    assert batches[0].image.shape == (64, 12, 10) and batches[1].image.shape == (56, 12, 10)
    assert batches[0].week.dtype == np.int64 and batches[0].position.shape == (64, 3)
    assert len(list(bm.ml.samples(multi, "regist_ct", batch_size=64, mice="851",
                                  drop_last=True))) == 1  # fmt: skip


def test_a_cluster_and_a_tree_give_the_same_samples(multi):
    distributed = pytest.importorskip("distributed")
    reference = [(_key(s), s.image) for s in bm.ml.samples(multi, "regist_ct", mice="852")]
    tree = bm.open_store(str(multi), chunks="shard")  # its Dask chunks set the read units
    from_tree = [(_key(s), s.image) for s in bm.ml.samples(tree, "regist_ct", mice="852")]
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                 dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        on_workers = [(_key(s), s.image) for s in bm.ml.samples(
            multi, "regist_ct", mice="852", client=client, prefetch=3)]  # fmt: skip
    for other in (from_tree, on_workers):
        assert [k for k, _ in other] == [k for k, _ in reference]
        for (_, a), (_, b) in zip(other, reference, strict=True):
            np.testing.assert_array_equal(a, b)


def test_shards_are_decoded_like_zarr_reads_them(multi, tmp_path):
    # empty chunks (854 right), a slab across two shards (slab=12: 3 chunks), another layout
    direct = bm.ml.samples(multi, "regist_ct", unit="volume", mice="854", slab=12)
    for s in direct:
        np.testing.assert_array_equal(s.image, _scan_data(s.mouse, s.side, s.week))
    sliced = bm.ml.samples(multi, "regist_ct", mice="854", sides="right", weeks=0, slab=12)
    assert sorted((u.z0, u.z1) for u in sliced.units) == [(0, 12), (12, 20)]
    for s in sliced:
        np.testing.assert_array_equal(s.image, _scan_data("854", "right", 0)[(s.index - 100) // 3])
    (gzip,) = bm.ml.samples(multi, "roi_ct", unit="volume")
    np.testing.assert_array_equal(gzip.image, _scan_data("851", "left", 0))
    # a shard whose index fails its CRC32C is an error naming it, never wrong pixels
    copy = tmp_path / "copy.zarr"
    shutil.copytree(multi / "regist_ct" / "851", copy / "regist_ct" / "851")
    shutil.copy(multi / "zarr.json", copy / "zarr.json")
    shutil.copy(multi / "regist_ct" / "zarr.json", copy / "regist_ct" / "zarr.json")
    shard = copy / "regist_ct/851/left/week0/0/c/0/0/0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"851/left/week0/0/c/0/0/0.*CRC32C"):
        list(bm.ml.samples(copy, "regist_ct", sides="left", weeks=0, slab=4))


def test_incomplete_scans_are_skipped_with_a_warning(multi):
    group = zarr.open_group(str(multi), path="regist_ct/854/left/week2", mode="r+")
    set_status(group, "incomplete")
    try:
        with pytest.warns(UserWarning, match="854/left/week2"):
            got = {_key(s)[:3] for s in bm.ml.samples(multi, "regist_ct", mice="854")}
        assert ("854", "left", 2) not in got and len(got) == 5
    finally:
        set_status(group, "complete")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"component": "ct"}, "'rotation_xray', 'recon_ct'"),
        ({"unit": "voxel"}, "'volume', 'slice', 'patch', 'projection', 'pair'"),
        ({"unit": "projection"}, "needs component='rotation_xray'"),
        ({"unit": "pair", "component": "seg_ct"}, "regist_ct, roi_ct"),
        ({"unit": "patch"}, "needs patch="),
        ({"patch": (2, 2)}, "apply to unit='patch'"),
        ({"subset": "train"}, "pass split="),
        ({"xp": "jax"}, "'numpy', 'cupy'"),
        ({"buffer_bytes": 0}, "buffer_bytes=0 must be"),
        ({"part": (3, 3)}, "0 <= i < n"),
        ({"slab": 6}, "multiple of the inner chunk depth 4"),
        ({"batch_size": 4, "component": "seg_ct", "store": "tiny"}, "one shape"),
        ({"mice": "777"}, "match none"),
    ],
)
def test_mistakes_name_the_argument_and_the_fix(multi, tiny_published, kwargs, match):
    kwargs = {"component": "regist_ct", **kwargs}
    store = kwargs.pop("store", None)
    store = tiny_published / "published.zarr" if store else multi
    with pytest.raises(ValueError, match=match):
        bm.ml.samples(store, kwargs.pop("component"), **kwargs)


def test_the_torch_adapter_names_the_extra_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what an install without torch sees
    monkeypatch.delitem(sys.modules, "bonemet_dask.ml.torch", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'bonemet-dask\[ml\]'"):
        importlib.import_module("bonemet_dask.ml.torch")
    monkeypatch.delitem(sys.modules, "bonemet_dask.ml.torch", raising=False)


@pytest.mark.gpu
def test_cupy_samples_equal_numpy_samples(multi):
    cupy = pytest.importorskip("cupy")
    host = list(bm.ml.samples(multi, "regist_ct", unit="pair", batch_size=32, mice="851"))
    device = list(bm.ml.samples(multi, "regist_ct", unit="pair", batch_size=32, mice="851",
                                xp="cupy"))  # fmt: skip
    assert len(host) == len(device)
    for a, b in zip(host, device, strict=True):
        assert isinstance(b.image, cupy.ndarray) and isinstance(b.target, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(b.image), a.image)
        np.testing.assert_array_equal(cupy.asnumpy(b.target), a.target)
        np.testing.assert_array_equal(b.index, a.index)
