"""Intensity <-> attenuation kernels: air level, -log normalisation, NRecon-like 8-bit windowing."""

from __future__ import annotations

import numpy as np


def air_level(sample: np.ndarray) -> float:
    """Unattenuated intensity estimated from projections: the mean of the brightest pixels.

    Takes the pixels within 3% of the 99.9th percentile of ``sample`` (air around the specimen
    fills every SkyScan projection's margins) and averages them, so Poisson noise does not bias
    the estimate upwards as a plain maximum would.
    """
    values = np.asarray(sample, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("sample is empty; pass projections with at least one pixel")
    top = np.percentile(values, 99.9)
    if top <= 0:
        raise ValueError(f"sample's brightest pixels are {top}: these are not intensities")
    return float(values[values >= 0.97 * top].mean())


def line_integrals(block: np.ndarray, air: float) -> np.ndarray:
    """``-log(I / air)`` as float32, with intensities below 1 count clipped to 1."""
    if air <= 0:
        raise ValueError(f"air={air} must be positive (the unattenuated intensity)")
    return (np.log(np.float32(air)) - np.log(np.maximum(block, 1).astype(np.float32))).astype(
        np.float32
    )


def to_uint8(block: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of ``[lo, hi]`` to ``0..255``, clipped, rounded (NRecon's CS-to-image)."""
    scaled = (np.asarray(block, dtype=np.float32) - np.float32(lo)) * np.float32(255 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
