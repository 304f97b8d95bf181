"""Machine-learning access to a store: mouse-level splits, streaming samples, sparse views.

>>> import bonemet_dask as bm
>>> table = bm.ml.split(records, test=0.2, folds=5, stratify="lesion", seed=0)  # doctest: +SKIP
>>> batches = bm.ml.samples("bonemet.zarr", "roi_ct", split=table, unit="slice")  # doctest: +SKIP

Nothing here imports a deep-learning framework; :mod:`bonemet_dask.ml.torch` (extra ``ml``) wraps
:func:`samples` as a PyTorch ``IterableDataset``. Modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "split": ("bonemet_dask.ml.split", "split"),
    "animal_labels": ("bonemet_dask.ml.split", "animal_labels"),
    "samples": ("bonemet_dask.ml.samples", "samples"),
    "Sample": ("bonemet_dask.ml.samples", "Sample"),
    "sparse_views": ("bonemet_dask.ml.sparse", "sparse_views"),
    "sparse_view_scores": ("bonemet_dask.ml.sparse", "sparse_view_scores"),
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from bonemet_dask.ml.samples import Sample, samples
    from bonemet_dask.ml.sparse import sparse_view_scores, sparse_views
    from bonemet_dask.ml.split import animal_labels, split


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'bonemet_dask.ml' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
