"""The one module that imports CuPy: array-namespace dispatch for kernels.

A kernel is written once against ``xp = array_namespace(block)`` (numpy or cupy) and
``ndi = ndimage_namespace(block)`` (``scipy.ndimage`` or ``cupyx.scipy.ndimage``); the same code
then runs on a CPU chunk or a GPU chunk. CuPy is imported only when a CuPy array appears or a GPU
is asked for, so CPU-only installs never touch it.

A GPU counts as available only when a device actually runs a kernel (DESIGN.md section 6): an
importable ``cupy`` on a machine without a driver is not a GPU.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Literal

import numpy as np

Backend = Literal["auto", "numpy", "cupy"]
BACKENDS: tuple[str, ...] = ("auto", "numpy", "cupy")


def _is_cupy_array(array: Any) -> bool:
    # Look at the type's module without importing cupy: a numpy chunk must not pay for it.
    return type(array).__module__.split(".", 1)[0] == "cupy"


def array_namespace(*arrays: Any) -> ModuleType:
    """``numpy`` or ``cupy``, whichever module the arrays belong to.

    Parameters
    ----------
    *arrays
        Chunks (numpy or cupy arrays; scalars and ``None`` are ignored).

    Returns
    -------
    module
        ``cupy`` if any array is a CuPy array, else ``numpy``.

    Raises
    ------
    TypeError
        If numpy and cupy arrays are mixed (a silent host-device copy would hide a bug).
    """
    kinds = {_is_cupy_array(a) for a in arrays if hasattr(a, "shape")}
    if kinds == {True, False}:
        raise TypeError(
            "arrays mix numpy and cupy; move them to one device first "
            "(bonemet_dask._backend.to_device or to_host)"
        )
    if True in kinds:
        import cupy

        return cupy
    return np


def ndimage_namespace(*arrays: Any) -> ModuleType:
    """``scipy.ndimage`` or ``cupyx.scipy.ndimage`` to match :func:`array_namespace`."""
    if array_namespace(*arrays) is np:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


@functools.cache
def gpu_available() -> bool:
    """Whether a CUDA device runs a CuPy kernel here (an import alone is not enough)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        value = cupy.arange(4, dtype=cupy.float32).sum()
        return float(value.get()) == 6.0
    except Exception:  # no cupy, no driver, no device: all mean "no GPU"
        return False


def resolve_backend(backend: str) -> Literal["numpy", "cupy"]:
    """Turn ``auto|numpy|cupy`` into the backend a task should use on this worker.

    Parameters
    ----------
    backend
        ``"auto"`` picks cupy when :func:`gpu_available`, else numpy; ``"cupy"`` demands a GPU.

    Raises
    ------
    ValueError
        For a name outside ``auto|numpy|cupy``.
    RuntimeError
        For ``"cupy"`` when no working GPU is found.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        return "numpy"
    if gpu_available():
        return "cupy"
    if backend == "cupy":
        raise RuntimeError(
            "backend='cupy' but no working CUDA device was found on this worker; "
            "install 'bonemet-dask[gpu]' on a GPU node or use backend='auto'/'numpy'"
        )
    return "numpy"


def namespace_for(backend: str) -> ModuleType:
    """The array module of a resolved backend name (``numpy`` or ``cupy``)."""
    if resolve_backend(backend) == "cupy":
        import cupy

        return cupy
    return np


def to_device(array: Any, backend: str) -> Any:
    """Move a host array to the backend's device (a no-op for numpy)."""
    xp = namespace_for(backend)
    return array if xp is np else xp.asarray(array)


def to_host(array: Any) -> np.ndarray:
    """A numpy copy of a numpy or cupy array (no copy for numpy input)."""
    if _is_cupy_array(array):
        return array.get()
    return np.asarray(array)


def meta_like(array: Any, dtype: Any, ndim: int | None = None) -> Any:
    """An empty array of the same namespace as ``array`` (dask's ``meta=``), with ``dtype``."""
    meta = getattr(array, "_meta", array)
    xp = array_namespace(meta)
    ndim = meta.ndim if ndim is None else ndim
    return xp.empty((0,) * ndim, dtype=dtype)
