"""bonemet_dask.ml.torch: the IterableDataset gives every sample of an epoch once, splits the
read units between DataLoader workers (no shard read by two) and reshuffles per epoch."""

from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bonemet_dask as bm  # noqa: E402
from bonemet_dask.ml.torch import BoneMetDataset  # noqa: E402


def _store(tiny_published):
    return str(tiny_published / "published.zarr")


def _key(batch, k):
    return (batch["mouse"][k], batch["side"][k], int(batch["week"][k]), int(batch["index"][k]))


def test_a_loader_yields_the_epoch_and_set_epoch_reshuffles(tiny_published):
    store = _store(tiny_published)
    data = BoneMetDataset(store, "regist_ct", seed=1)
    loader = torch.utils.data.DataLoader(data, batch_size=10)
    first = [(_key(b, k), b["image"][k]) for b in loader for k in range(len(b["mouse"]))]
    reference = list(bm.ml.samples(store, "regist_ct", seed=1, epoch=0))
    assert [key for key, _ in first] == [(s.mouse, s.side, s.week, s.index) for s in reference]
    for (_, image), sample in zip(first, reference, strict=True):
        assert image.dtype == torch.uint8
        np.testing.assert_array_equal(image.numpy(), sample.image)
    data.set_epoch(1)
    second = [_key(b, k) for b in loader for k in range(len(b["mouse"]))]
    assert second != [key for key, _ in first] and sorted(second) == sorted(k for k, _ in first)


def test_workers_share_the_read_units_without_overlap(tiny_published):
    def tag(sample):  # runs in the worker: which one cut this sample
        worker = torch.utils.data.get_worker_info().id
        return {"mouse": sample.mouse, "side": sample.side, "week": sample.week,
                "index": sample.index, "worker": worker}  # fmt: skip

    data = BoneMetDataset(_store(tiny_published), "seg_ct", transform=tag, prefetch=0)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    workers = defaultdict(set)
    keys = []
    for sample in loader:
        keys.append((sample["mouse"], sample["side"], sample["week"], sample["index"]))
        workers[(sample["mouse"], sample["side"], sample["week"])].add(sample["worker"])
    expected = [(s.mouse, s.side, s.week, s.index) for s in bm.ml.samples(_store(tiny_published),
                                                                         "seg_ct")]  # fmt: skip
    assert sorted(keys) == sorted(expected) and len(set(keys)) == len(keys)
    # each scan here is one read unit (one shard): exactly one worker read it, and both worked
    assert all(len(w) == 1 for w in workers.values())
    assert set().union(*workers.values()) == {0, 1}


def test_pairs_and_batches_collate(tiny_published):
    data = BoneMetDataset(_store(tiny_published), "roi_ct", unit="pair", batch_size=4)
    batches = list(torch.utils.data.DataLoader(data, batch_size=None))
    assert sum(len(b["index"]) for b in batches) == 2 * 5  # 2 tibiae x 1 pair x 5 slices
    assert batches[0]["image"].shape == batches[0]["target"].shape == (4, 8, 8)
    assert set(np.concatenate([b["week"] for b in batches])) == {0}
    with pytest.raises(ValueError, match="set_epoch"):
        BoneMetDataset(_store(tiny_published), "roi_ct", epoch=3)
