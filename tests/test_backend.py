"""The array-namespace dispatch that every kernel is written against (CPU side)."""

import subprocess
import sys

import numpy as np
import pytest

from bonemet_dask import _backend


def test_numpy_arrays_give_numpy_and_scipy():
    import scipy.ndimage

    a = np.zeros(3)
    assert _backend.array_namespace(a, None, 2.0) is np
    assert _backend.ndimage_namespace(a) is scipy.ndimage
    assert _backend.to_host(a) is a
    meta = _backend.meta_like(np.zeros((2, 2, 2)), np.uint8)
    assert meta.shape == (0, 0, 0) and meta.dtype == np.uint8


def test_backend_names_are_validated():
    with pytest.raises(ValueError, match="backend='gpu' is not one of auto, numpy, cupy"):
        _backend.resolve_backend("gpu")
    assert _backend.resolve_backend("numpy") == "numpy"


def test_auto_and_cupy_follow_the_device():
    if _backend.gpu_available():
        assert _backend.resolve_backend("auto") == "cupy"
    else:
        assert _backend.resolve_backend("auto") == "numpy"
        with pytest.raises(RuntimeError, match="no working CUDA device"):
            _backend.resolve_backend("cupy")


def test_numpy_paths_never_import_cupy():
    code = (
        "import sys, numpy as np\n"
        "from bonemet_dask import _backend\n"
        "from bonemet_dask.kernels import fdk\n"
        "from bonemet_dask.ops import reconstruct\n"
        "_backend.array_namespace(np.zeros(2)); _backend.resolve_backend('numpy')\n"
        "assert 'cupy' not in sys.modules, 'cupy imported on a numpy path'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
def test_mixed_namespaces_are_refused():
    import cupy

    with pytest.raises(TypeError, match="mix numpy and cupy"):
        _backend.array_namespace(np.zeros(2), cupy.zeros(2))
