"""The same kernel body on numpy and on CuPy chunks (skipped where no CUDA device works).

benchmarks/gpu_check.py runs these comparisons at full size and times them; here they run on
small blocks so a GPU CI runner (or a developer with a GPU) catches a namespace slip.
"""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

pytestmark = pytest.mark.gpu


def _grey(shape, seed):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2)
    return np.clip(70 + field / field.std() * 40 + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)


def _both(fn, *args, **kwargs):
    import cupy

    cpu = fn(*args, **kwargs)
    gpu = fn(*(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
    return cpu, gpu


def _check(cpu, gpu, tol=0.0):
    import cupy

    cpus = cpu if isinstance(cpu, tuple) else (cpu,)
    gpus = gpu if isinstance(gpu, tuple) else (gpu,)
    for c, g in zip(cpus, gpus, strict=True):
        if not hasattr(c, "shape"):
            assert c == g
            continue
        assert isinstance(g, cupy.ndarray), "the GPU path must stay on the device"
        np.testing.assert_allclose(
            g.get().astype(float), np.asarray(c).astype(float), atol=tol, equal_nan=True
        )


def test_composite_and_threshold():
    from bonemet_dask.kernels import composite

    a, b = _grey((20, 30, 40), 1), _grey((20, 30, 40), 2)
    _check(*_both(composite.threshold_composite, a, b, level=75))
    _check(*_both(composite.threshold_mask, a, level=75))


def test_roi_junction_and_metrics_kernels():
    from bonemet_dask.kernels import composite, junction, metrics, roi

    a, b = _grey((12, 40, 36), 3), _grey((12, 40, 36), 4)
    codes = composite.threshold_composite(a, b, level=75)
    outside = roi.outside_tibia(a, kind="greyscale", level=75)
    _check(*_both(junction.bin_bone_mask, a, level=75, factor=2))
    _check(*_both(roi.outside_tibia, a, kind="greyscale", level=75))
    _check(*_both(roi.fibula_mask, outside))
    _check(*_both(metrics.slice_metrics, codes, kind="composite", pixel_mm=(0.01, 0.01)), 1e-9)


def test_affine_block_matches_the_cpu_kernel():
    from bonemet_dask.kernels import resample

    shape = (16, 24, 20)
    grey = _grey(shape, 5).astype(np.float32)
    matrix = Rotation.from_euler("xyz", (5.0, -3.0, 2.0), degrees=True).as_matrix()
    centre = (np.asarray(shape) - 1) / 2
    offset = centre - matrix @ centre + 0.4
    kwargs = {"matrix": matrix, "offset": offset, "box_lo": (0, 0, 0), "in_shape": shape,
              "out_start": (0, 0, 0), "out_shape": shape, "order": 1}  # fmt: skip
    _check(*_both(resample.affine_block, grey, **kwargs), 1e-3)
