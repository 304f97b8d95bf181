"""PyTorch adapter: :func:`bonemet_dask.ml.samples` as an ``IterableDataset`` (extra ``ml``).

>>> from bonemet_dask.ml.torch import BoneMetDataset  # doctest: +SKIP
>>> data = BoneMetDataset("bonemet.zarr", "regist_ct", split=table, subset="train", fold=0)
>>> loader = torch.utils.data.DataLoader(data, batch_size=32, num_workers=4)  # doctest: +SKIP
>>> for epoch in range(10):  # doctest: +SKIP
...     data.set_epoch(epoch)
...     for batch in loader:
...         batch["image"], batch["label"]

Each DataLoader worker (and each distributed rank, with ``rank``/``world_size``) reads its own
share of the epoch's read units (``samples(part=...)``), so no shard is read by two workers and
together they read each once.  This is the only module of the package that imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "bonemet_dask.ml.torch needs PyTorch: pip install 'bonemet-dask[ml]' "
        "(or install torch for your platform from pytorch.org)"
    ) from err

import bonemet_dask.ml as _ml

# ``samples`` before ``Sample``: the package loads both lazily, and the first import of the
# submodule bonemet_dask.ml.samples sets the package's attribute ``samples`` to that module
# unless the lazy loader is fetching ``samples`` itself (reported with bonemet_dask/ml/__init__)
samples = _ml.samples
Sample = _ml.Sample

__all__ = ["BoneMetDataset", "sample_to_dict"]


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    """The default conversion: a dict that ``torch.utils.data.default_collate`` batches.

    ``image`` (and ``target`` for pairs) become tensors sharing the array's memory, and
    ``position`` a tensor of 3 (or ``(batch, 3)``); ``mouse``, ``side``, ``week``, ``index``
    and ``label`` (when there is one) stay as they are (scalars, strings, or arrays for a
    batch). Keys whose value is None are left out.
    """
    out: dict[str, Any] = {
        "image": torch.as_tensor(sample.image),
        "position": torch.as_tensor(sample.position),
    }
    if sample.target is not None:
        out["target"] = torch.as_tensor(sample.target)
    for name in ("mouse", "side", "week", "index", "label"):
        value = getattr(sample, name)
        if value is not None:
            out[name] = value
    return out


class BoneMetDataset(IterableDataset):  # type: ignore[type-arg]
    """Samples of a bonemet store as a PyTorch ``IterableDataset``.

    Parameters
    ----------
    store : str, os.PathLike, zarr Store or zarr.Group
        The store (see :func:`bonemet_dask.ml.samples`); a path or URL is reopened in each
        DataLoader worker.
    component : str
        Which images.
    transform : callable, optional
        Turns each :class:`~bonemet_dask.ml.Sample` into what the loader yields; default
        :func:`sample_to_dict`.
    rank, world_size : int, optional
        This process's share in distributed training (e.g. ``torch.distributed.get_rank()``);
        combined with the DataLoader worker's.
    **options
        Passed to :func:`~bonemet_dask.ml.samples` (``unit``, ``split``, ``subset``,
        ``fold``, ``batch_size``, ``shuffle``, ``seed``, ``buffer_bytes``, ``prefetch``, ...),
        except ``epoch`` (see :meth:`set_epoch`) and ``part`` (set per worker).

    Notes
    -----
    Each worker holds its own shuffle buffer and read-ahead: memory is ``num_workers`` times
    ``samples(...).memory_bound``. Call :meth:`set_epoch` before each epoch to reshuffle; with
    ``persistent_workers=True`` the workers keep the epoch they started with.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Any,
        component: str,
        *,
        transform: Callable[[Sample], Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        **options: Any,
    ) -> None:
        super().__init__()
        for name, how in (("epoch", "by set_epoch(epoch)"), ("part", "per DataLoader worker")):
            if name in options:
                raise ValueError(f"{name}= is set {how} in BoneMetDataset; leave it out")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.store = store
        self.component = component
        self.transform = sample_to_dict if transform is None else transform
        self.rank = rank
        self.world_size = world_size
        self.options = options
        self.epoch = 0
        # validate the options (and the selection) now, in the main process
        samples(store, component, epoch=0, **options).close()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: the next iteration reads epoch ``epoch``'s order."""
        self.epoch = int(epoch)

    def _part(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[Any]:
        stream = samples(
            self.store, self.component, epoch=self.epoch, part=self._part(), **self.options
        )
        try:
            for sample in stream:
                yield self.transform(sample)
        finally:
            stream.close()
