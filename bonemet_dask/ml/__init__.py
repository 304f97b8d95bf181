"""Machine-learning access to a store: mouse-level splits, streaming samples, sparse views.

>>> import bonemet_dask as bm
>>> table = bm.ml.split("bonemet.zarr", test=0.2, folds=5, seed=0)  # doctest: +SKIP
>>> stream = bm.ml.samples("bonemet.zarr", "roi_ct", split=table, subset="train")  # doctest: +SKIP

``docs/ml.md`` is the guide. Nothing here imports a deep-learning framework;
:mod:`bonemet_dask.ml.torch` (extra ``ml``) wraps :func:`samples` as a PyTorch
``IterableDataset``.

The functions are imported here, not lazily: two are named as their modules (``split``,
``samples``), and a lazy attribute would be replaced by the module the first time the module
itself is imported. ``bonemet_dask`` imports this package on first use of ``bm.ml``.
"""

from __future__ import annotations

from bonemet_dask.ml.samples import Sample, SampleStream, samples
from bonemet_dask.ml.sparse import sparse_view_scores, sparse_views, view_counts
from bonemet_dask.ml.split import animal_labels, read_split, split

__all__ = [
    "Sample",
    "SampleStream",
    "animal_labels",
    "read_split",
    "samples",
    "sparse_view_scores",
    "sparse_views",
    "split",
    "view_counts",
]
