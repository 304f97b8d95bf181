"""What a reconstruction does to the phantom: FDK's blur and noise, as a measured model.

The published Recon-CT is NRecon's reconstruction of the Rotation-X-ray scan, and Seg-, Regist-
and RoI-CT derive from it, so they carry a reconstruction's resolution and noise.  The
generator's image products used to be the phantom voxelised (sharp edges plus white grey
noise); thresholding ours against those could not agree (issue 11).  Rather than run an FDK in
the generator (which would make the "published" products our own FDK's, and comparing against
them circular), each product is the voxelised phantom blurred by a separable Gaussian and given
Gaussian-correlated noise, with the sizes ``benchmarks/fdk_psf.py`` measures by fitting our FDK
(NRecon's Hamming 0.54, the ``.log``'s grid) of the synthetic projections against the
voxelised phantom.  In voxels they do not depend on the size preset, because the voxel is the
detector pitch at the rotation axis at every size.  The phantom's analytic description stays
the absolute reference (``synthetic_truth.json``).
"""

from __future__ import annotations

import functools
import math
from typing import Final

import numpy as np
from scipy import ndimage

__all__ = ["FDK_BLUR_SIGMA", "FDK_NOISE_SIGMA", "HALO_SLICES", "noise_std_per_mm", "reconstructed"]

FDK_BLUR_SIGMA: Final = (0.65, 0.79, 0.79)
"""Gaussian sigma (slice, y, x) of FDK's blur, voxels, fitted (``benchmarks/fdk_psf.py``) on
slices that hold edges across them, away from the volume's ends where a cone beam's data are
incomplete: slice 0.62 / 0.66-0.67 (knee and ankle slabs), in-plane 0.80 / 0.77-0.79 at small
/ medium; gain 0.98-1.00.  The shaft alone does not constrain the slice sigma (its edges run
along the slices).  RMSE against our FDK at small: 2.5x lower than the phantom voxelised
unblurred (0.00098 against 0.00245 1/mm)."""
FDK_NOISE_SIGMA: Final = (0.63, 1.0, 1.0)
"""Sigma (slice, y, x), voxels, of the Gaussian that shapes white noise into FDK's: lag-1
correlations of the residual in soft tissue 0.54 / 0.53 (slice), 0.82 / 0.71-0.76 (y, x) at
small / medium."""
NOISE_STD_SMALL_PER_MM: Final = 0.00088
"""FDK noise in soft tissue at the small preset (160 um voxels), 1/mm (2.0 grey levels)."""
NOISE_STD_MEDIUM_PER_MM: Final = 0.00247
"""The same at the medium preset (40 um voxels), 1/mm (5.7 grey levels)."""
SMALL_VOXEL_MM: Final = 0.16
MEDIUM_VOXEL_MM: Final = 0.04
HALO_SLICES: Final = 4
"""Slices a slab needs on each side for the blur and the noise filter to be exact (4 sigma)."""


def noise_std_per_mm(voxel_size_mm: float) -> float:
    """FDK noise at a voxel size: the power law through the small and medium measurements.

    Every preset keeps the counts per detector pixel (``AIR_COUNTS``) and the number of
    projections, so the attenuation noise grows as the voxel shrinks: measured as
    ``voxel ** -0.74`` between 160 and 40 um (``benchmarks/fdk_psf.py``).
    """
    exponent = math.log(NOISE_STD_MEDIUM_PER_MM / NOISE_STD_SMALL_PER_MM) / math.log(
        SMALL_VOXEL_MM / MEDIUM_VOXEL_MM
    )
    return NOISE_STD_SMALL_PER_MM * (SMALL_VOXEL_MM / float(voxel_size_mm)) ** exponent


@functools.cache
def _white_to_unit_scale(sigmas: tuple[float, ...]) -> float:
    """1 / std of unit white noise after ``gaussian_filter(sigmas)`` (a product over axes)."""
    variance = 1.0
    for sigma in sigmas:
        delta = np.zeros(2 * math.ceil(4 * sigma) + 1)
        delta[delta.size // 2] = 1.0
        kernel = ndimage.gaussian_filter1d(delta, sigma, mode="constant")
        variance *= float(np.sum(kernel**2))
    return 1.0 / math.sqrt(variance)


def reconstructed(
    mu: np.ndarray,
    white: np.ndarray | None,
    *,
    noise_std: float,
    valid: slice = slice(None),
) -> np.ndarray:
    """Voxelised attenuation as our FDK reconstructs it: blurred, with correlated noise.

    Parameters
    ----------
    mu : numpy.ndarray
        ``(slice, y, x)`` attenuation, 1/mm, of a slab and :data:`HALO_SLICES` slices on each
        side (fewer where the volume ends).
    white : numpy.ndarray or None
        Unit white noise of the same shape (each slice drawn from its own seed, so that any
        slab split gives the same volume); None adds no noise.
    noise_std : float
        Standard deviation of the noise, 1/mm (:func:`noise_std_per_mm`).
    valid : slice
        The slab's slices within ``mu`` (the halo dropped).

    Returns
    -------
    numpy.ndarray
        float32 attenuation of the slab, 1/mm.
    """
    out = ndimage.gaussian_filter(mu.astype(np.float32), FDK_BLUR_SIGMA, mode="nearest")
    if white is not None:
        shaped = ndimage.gaussian_filter(white.astype(np.float32), FDK_NOISE_SIGMA, mode="nearest")
        out += np.float32(noise_std * _white_to_unit_scale(FDK_NOISE_SIGMA)) * shaped
    return out[valid]
