"""Cone-beam FDK (Feldkamp-Davis-Kress) kernels: filter one block of projections, backproject it.

Pure numpy/numba and Dask-free: each function works on one block.  Conventions (world mm, rotation
axis ``z``, detector row 0 at the top, volume ``(slice, y, x)`` with slice 0 at the top) are those
of :mod:`bonemet_dask.geometry`.

The reconstruction is the discretised FDK formula, as in astra-toolbox ``cuda/3d/fdk.cu`` and RTK:

    f(x) = sum over views beta of  dbeta * w(beta, gamma) * (D / U)**2
           * [h * (D / sqrt(D**2 + u**2 + v**2) * p)](u, v)

with ``D`` the source to axis distance, ``(u, v)`` detector coordinates scaled to the isocentre,
``U`` the voxel's depth along the central ray, ``h`` the ramp (``|omega|``, cycles per mm) and
``w`` the redundancy weight: 0.5 for a full 360-degree scan, Parker's for a short scan (weights of
each redundant ray pair sum to one).  :func:`preweight_and_filter` applies everything but the
distance weight and the sum; :func:`backproject` adds those.  With line integrals of attenuation in
1/mm times mm the result is attenuation in 1/mm.
"""

from __future__ import annotations

import math
import warnings

import numba as nb
import numpy as np

from bonemet_dask._backend import array_namespace
from bonemet_dask.geometry import ConeGeometry, VolumeGrid

WINDOWS = ("ramlak", "shepp-logan", "cosine", "hamming", "hann")
"""Ramp filter windows accepted by :func:`ramp_filter` (NRecon's default is Hamming 0.54)."""


# --------------------------------------------------------------------------------------------
# ramp filter and redundancy weights
# --------------------------------------------------------------------------------------------


def _check_window(window: str) -> None:
    if window not in WINDOWS:
        raise ValueError(f"window={window!r} is not one of {', '.join(map(repr, WINDOWS))}")


def _padded_length(n_cols: int, pad_to: int | None) -> int:
    if n_cols < 1:
        raise ValueError(f"n_cols={n_cols} must be >= 1")
    if pad_to is None:
        return 1 << math.ceil(math.log2(max(2 * n_cols, 2)))
    if pad_to < n_cols:
        raise ValueError(f"pad_to={pad_to} must be >= n_cols={n_cols} (or None for the default)")
    return int(pad_to)


def ramp_filter(n_cols: int, *, window: str = "hamming", pad_to: int | None = None) -> np.ndarray:
    """Frequency response of the windowed discrete ramp for rows of ``n_cols`` detector pixels.

    Parameters
    ----------
    n_cols : int
        Samples per detector row.
    window : {"ramlak", "shepp-logan", "cosine", "hamming", "hann"}, optional
        Apodisation of the ramp, with ``omega`` in ``[0, pi]`` at Nyquist: none, ``sinc(omega/2)``,
        ``cos(omega/2)``, ``0.54 + 0.46 cos(omega)`` (NRecon's default), ``(1 + cos(omega)) / 2``.
    pad_to : int or None, optional
        FFT length; None (default) is the next power of two ``>= 2 * n_cols`` (zero padding
        against wrap-around, as ASTRA does).

    Returns
    -------
    numpy.ndarray
        float64 ``(pad,)``: the response at FFT frequencies ``k / pad`` (cycles per sample), real
        and symmetric; ``[: pad // 2 + 1]`` is what ``numpy.fft.rfft`` needs.

    Notes
    -----
    Built as ASTRA (``src/Filters.cpp``) and RTK do: the band-limited spatial ramp
    ``h[0] = 1/4``, ``h[n] = 0`` for even ``n``, ``h[n] = -1 / (pi n)^2`` for odd ``n`` (unit
    sample spacing), circularly wrapped to the FFT length, then FFT'd.  Unlike sampling
    ``|f|`` directly this has no DC bias (``H[0] > 0``, equal to the missing low-frequency mass).
    Convolving with it and dividing by the sample spacing (mm) approximates the continuous ramp.
    """
    _check_window(window)
    pad = _padded_length(n_cols, pad_to)
    n = np.arange(pad)
    n = np.minimum(n, pad - n)  # circular distance
    h = np.zeros(pad)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = np.real(np.fft.fft(h))
    freq = np.abs(np.fft.fftfreq(pad))  # cycles per sample, 0 .. 0.5
    omega = 2 * np.pi * freq  # 0 .. pi
    if window == "shepp-logan":
        response *= np.sinc(freq)  # sin(omega/2) / (omega/2)
    elif window == "cosine":
        response *= np.cos(omega / 2)
    elif window == "hamming":
        response *= 0.54 + 0.46 * np.cos(omega)
    elif window == "hann":
        response *= 0.5 * (1 + np.cos(omega))
    return response


def _scan_range(angles_deg: np.ndarray) -> tuple[float, float]:
    """Span (first to last, degrees, >= 0) and mean step of a scan's angles."""
    if angles_deg.size < 2:
        raise ValueError(f"need at least 2 projection angles, got {angles_deg.size}")
    span = abs(float(angles_deg[-1] - angles_deg[0]))
    return span, span / (angles_deg.size - 1)


def is_full_scan(angles_deg: np.ndarray, *, scan_range_deg: float | None = None) -> bool:
    """Whether angles cover a full turn (``range >= 360 - step``): no Parker weights needed."""
    angles = np.asarray(angles_deg, np.float64)
    span, step = _scan_range(angles)
    scan_range = span if scan_range_deg is None else float(scan_range_deg)
    return scan_range >= 360.0 - step - 1e-6


def full_scan_weights(angles_deg: np.ndarray, n_cols: int) -> np.ndarray:
    """Redundancy weights of a full turn, float64 ``(n_angles, n_cols)``: 0.5 per view.

    Every ray of a full turn is measured twice, so each view weighs half.  A scan whose last
    view closes the turn (SkyScan takes ``360 / step + 1`` views, the last at 360 degrees, the
    first's direction again) gives the first and last view 0.25 each: the periodic trapezoid
    rule, so that the closing direction is not counted twice.
    """
    angles = np.asarray(angles_deg, np.float64)
    weights = np.full((angles.size, n_cols), 0.5)
    span, step = _scan_range(angles)
    if abs(span - 360.0) < step / 2:
        weights[[0, -1]] = 0.25
    return weights


def parker_weights(
    angles_deg: np.ndarray, fan_angles_rad: np.ndarray, *, scan_range_deg: float | None = None
) -> np.ndarray:
    """Redundancy weights ``w(beta, gamma)`` per (projection, detector column), float64.

    Parameters
    ----------
    angles_deg : numpy.ndarray
        Gantry angles of the whole scan in acquisition order, degrees (increasing or decreasing).
    fan_angles_rad : numpy.ndarray
        Fan angle ``gamma`` of each detector column, radians, positive towards increasing column
        index (``atan(u / SDD)``).
    scan_range_deg : float or None, optional
        The scan's angular range; None uses ``|last - first|``.

    Returns
    -------
    numpy.ndarray
        ``(n_angles, n_cols)`` weights.  A full scan (``range >= 360 - step``) needs no Parker
        weighting: every ray is measured twice and the weight is 0.5
        (:func:`full_scan_weights`, which halves it again on a closing view).  A short scan
        gets generalised Parker weights whose ray pairs sum to one.

    Notes
    -----
    With ``beta`` the angle from the scan start (radians, in the direction of rotation) and
    ``delta = (range - pi) / 2`` (RTK's generalised Parker, which spreads the taper over all the
    overscan rather than just the fan), Parker's weights are
    ``sin^2(pi/4 * beta / (delta - g))`` for ``0 <= beta <= 2 delta - 2 g``, 1 up to ``pi - 2 g``,
    ``sin^2(pi/4 * (pi + 2 delta - beta) / (delta + g))`` up to ``pi + 2 delta`` and 0 beyond.
    In this package's geometry the ray ``(beta, gamma)`` is redundant with
    ``(beta + pi - 2 gamma, -gamma)`` for increasing angles, so Parker's ``g`` is ``-gamma``
    (and ``+gamma`` when the angles decrease).  Rays with ``|gamma| > delta`` (fan wider than the
    overscan allows) cannot be weighted exactly; a warning is issued and they get the nearest
    admissible weight.
    """
    angles = np.asarray(angles_deg, np.float64)
    gamma = np.asarray(fan_angles_rad, np.float64)
    if angles.ndim != 1 or gamma.ndim != 1:
        raise ValueError(
            f"angles_deg and fan_angles_rad must be 1-D, got shapes {angles.shape}, {gamma.shape}"
        )
    if is_full_scan(angles, scan_range_deg=scan_range_deg):
        return full_scan_weights(angles, gamma.size)
    span, _ = _scan_range(angles)
    scan_range = np.deg2rad(span if scan_range_deg is None else float(scan_range_deg))
    if scan_range < np.pi:
        raise ValueError(
            f"scan range {np.rad2deg(scan_range):.2f} deg is below 180 deg: no short-scan "
            "weighting can complete the data; use a scan of at least 180 deg plus the fan angle"
        )
    delta = (scan_range - np.pi) / 2
    direction = 1.0 if angles[-1] >= angles[0] else -1.0
    g = -direction * gamma[None, :]
    if np.abs(gamma).max(initial=0.0) > delta + 1e-12:
        warnings.warn(
            f"short scan overscan delta={np.rad2deg(delta):.2f} deg is smaller than the half fan "
            f"angle {np.rad2deg(np.abs(gamma).max()):.2f} deg: Parker weights are inexact for the "
            "outer columns (crop the detector or scan 180 deg plus the full fan)",
            RuntimeWarning,
            stacklevel=2,
        )
    beta = direction * np.deg2rad(angles - angles[0])[:, None]
    tiny = 1e-12
    w = np.zeros((angles.size, gamma.size))
    rise_end = 2 * delta - 2 * g
    fall_start = np.pi - 2 * g
    rise = (beta >= 0) & (beta < rise_end)
    flat = (beta >= np.maximum(rise_end, 0)) & (beta <= fall_start)
    fall = (beta > fall_start) & (beta <= np.pi + 2 * delta)
    rise_val = np.sin(np.pi / 4 * beta / np.maximum(delta - g, tiny)) ** 2
    fall_val = np.sin(np.pi / 4 * (np.pi + 2 * delta - beta) / np.maximum(delta + g, tiny)) ** 2
    w = np.where(rise, rise_val, w)
    w = np.where(flat, 1.0, w)
    w = np.where(fall, fall_val, w)
    return np.clip(w, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# pre-weighting and filtering
# --------------------------------------------------------------------------------------------


def _check_indices(geometry: ConeGeometry, angle_indices, n_block: int) -> np.ndarray:
    idx = np.asarray(angle_indices, dtype=np.int64).reshape(-1)
    if idx.size != n_block:
        raise ValueError(
            f"angle_indices has {idx.size} entries but the block has {n_block} projections; "
            "pass one index into geometry.angles_deg per projection"
        )
    n = geometry.angles_deg.size
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"angle_indices must lie in 0..{n - 1}, got {idx.min()}..{idx.max()}")
    return idx


def fan_angles(geometry: ConeGeometry) -> np.ndarray:
    """Fan angle ``gamma`` of each detector column centre, radians (positive to higher columns)."""
    u = (np.arange(geometry.n_cols) - geometry.centre_col) * geometry.detector_pixel
    return np.arctan(u / geometry.source_to_detector)


def preweight_and_filter(
    line_integrals: np.ndarray,
    geometry: ConeGeometry,
    angle_indices: np.ndarray,
    *,
    window: str = "hamming",
    short_scan: bool = True,
    row_offset: int = 0,
) -> np.ndarray:
    """Cosine pre-weight, redundancy weight and ramp-filter a block of projections.

    Parameters
    ----------
    line_integrals : numpy.ndarray or cupy.ndarray
        ``(n_block, rows, cols)`` line integrals (``-log(I / I0)``), row 0 at the top.
    geometry : ConeGeometry
        The scan; ``cols`` must equal ``geometry.n_cols``.
    angle_indices : numpy.ndarray
        Index into ``geometry.angles_deg`` of each projection of the block.
    window : {"ramlak", "shepp-logan", "cosine", "hamming", "hann"}, optional
        Ramp window (see :func:`ramp_filter`).
    short_scan : bool, optional
        Apply Parker weights when the scan spans less than a full turn (default).  Without them a
        short scan is weighted 0.5 as if it were a full one (wrong; for comparisons only).
    row_offset : int, optional
        Detector row of the block's first row, when the block holds a window of rows.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_block, rows, cols)``, C-contiguous: filtered projections scaled so that
        :func:`backproject` summed over all projections gives attenuation in 1/mm.

    Notes
    -----
    Scale: ``delta_beta / tau`` with ``delta_beta`` the angular step (radians) and ``tau`` the
    detector pitch at the isocentre (mm); the redundancy weight (0.5 for 360 degrees) supplies the
    rest, so a full scan of ``P`` views has ``pi / P`` per view, as in ASTRA and RTK.
    """
    _check_window(window)
    xp = array_namespace(line_integrals)
    p = line_integrals if xp is not np else np.asarray(line_integrals)
    if p.ndim != 3 or p.shape[2] != geometry.n_cols:
        raise ValueError(
            f"line_integrals must be (n_block, rows, {geometry.n_cols}), got shape {p.shape}"
        )
    n_block, rows, cols = p.shape
    if row_offset < 0 or row_offset + rows > geometry.n_rows:
        raise ValueError(
            f"rows {row_offset}:{row_offset + rows} exceed the detector's {geometry.n_rows} rows; "
            "check row_offset"
        )
    idx = _check_indices(geometry, angle_indices, n_block)
    D = geometry.source_to_object
    tau = geometry.voxel_size  # detector pitch at the isocentre, mm
    u = (np.arange(cols) - geometry.centre_col) * tau
    v = (np.arange(row_offset, row_offset + rows) - geometry.centre_row) * tau
    cosine = (D / np.sqrt(D**2 + u[None, :] ** 2 + v[:, None] ** 2)).astype(np.float32)

    angles = geometry.angles_deg
    _, step_deg = _scan_range(angles)
    if short_scan:
        redundancy = parker_weights(angles, fan_angles(geometry))[idx]
    else:
        redundancy = np.full((idx.size, cols), 0.5)
    scale = np.deg2rad(step_deg) / tau
    weight = (redundancy * scale).astype(np.float32)  # (n_block, cols)

    pad = _padded_length(cols, None)
    response = ramp_filter(cols, window=window, pad_to=pad)[: pad // 2 + 1]
    if xp is not np:  # one batched FFT on the device
        weighted = p.astype(xp.float32) * xp.asarray(cosine) * xp.asarray(weight)[:, None, :]
        spectrum = xp.fft.rfft(weighted, n=pad, axis=-1)
        spectrum *= xp.asarray(response.astype(np.complex64))
        return xp.ascontiguousarray(xp.fft.irfft(spectrum, n=pad, axis=-1)[..., :cols])
    out = np.empty((n_block, rows, cols), np.float32)
    for b in range(n_block):
        weighted = p[b].astype(np.float32) * cosine * weight[b][None, :]
        spectrum = np.fft.rfft(weighted, n=pad, axis=-1)
        spectrum *= response
        out[b] = np.fft.irfft(spectrum, n=pad, axis=-1)[:, :cols]
    return out


# --------------------------------------------------------------------------------------------
# backprojection
# --------------------------------------------------------------------------------------------


def projection_matrices(
    geometry: ConeGeometry, angle_indices: np.ndarray, grid: VolumeGrid
) -> np.ndarray:
    """Index-space projection matrices, float64 ``(n, 3, 4)``, one per projection.

    Row 0 and 1 map homogeneous voxel indices ``(k, i, j, 1)`` (slice, y, x) to ``col * w`` and
    ``row * w``, row 2 to ``w = U / D`` (depth along the central ray over the source to axis
    distance), so the FDK distance weight is ``1 / w**2``.
    """
    D = geometry.source_to_object
    grid_map = np.zeros((4, 4))
    grid_map[:3, :3] = grid.steps.T
    grid_map[:3, 3] = grid.origin
    grid_map[3, 3] = 1.0
    out = np.empty((len(angle_indices), 3, 4))
    for n, a in enumerate(np.asarray(angle_indices, np.int64)):
        s, o, cs, rs = geometry.view_frame(float(geometry.angles_deg[a]))
        normal = np.cross(cs, rs)
        normal /= np.linalg.norm(normal)
        if (o - s) @ normal < 0:
            normal = -normal
        dist = (o - s) @ normal  # source to detector plane
        den = np.append(normal, -normal @ s)
        col = ((s - o) @ cs) * den + dist * np.append(cs, -cs @ s)
        row = ((s - o) @ rs) * den + dist * np.append(rs, -rs @ s)
        mat = np.stack([col / (cs @ cs), row / (rs @ rs), den]) / D
        out[n] = mat @ grid_map
    return out


def _fov_radius(geometry: ConeGeometry) -> float:
    """Radius (mm) of the cylinder about the axis seen by every projection's detector columns."""
    half = min(geometry.centre_col, geometry.n_cols - 1 - geometry.centre_col) + 0.5
    gamma = np.arctan(max(half, 0.0) * geometry.detector_pixel / geometry.source_to_detector)
    return float(geometry.source_to_object * np.sin(gamma))


@nb.njit(cache=True, fastmath=True, inline="always")
def _rows_strided(acc, pc0, pc1, wc0, wc1, f0, e, k0, k1, m, s):  # pragma: no cover - numba
    """Slices ``[k0, k1)`` whose rows are ``m * k + s + fr`` with ``fr = f0 + k * e`` in ``[0, 1)``.

    The two detector rows of slice ``k`` are ``m * k + s`` and the next: affine in ``k``.  The
    default grid has ``m = 1``: the loop then reads contiguous rows through zero-based views with
    an int32 counter, a form LLVM vectorises (1.7x the indexed form in a micro-benchmark).
    """
    if k1 <= k0:
        return
    n = np.int32(k1 - k0)
    out = acc[k0:k1]
    base = f0 + np.float32(k0) * e
    if m == 1:
        q0 = pc0[k0 + s :]
        q1 = pc1[k0 + s :]
        for t in range(n):
            fr = base + np.float32(t) * e
            a = wc0 * q0[t] + wc1 * q1[t]
            b = wc0 * q0[t + 1] + wc1 * q1[t + 1]
            out[t] += a + fr * (b - a)
    else:
        q0 = pc0[m * k0 + s :]
        q1 = pc1[m * k0 + s :]
        for t in range(n):
            fr = base + np.float32(t) * e
            r = m * t
            a = wc0 * q0[r] + wc1 * q1[r]
            b = wc0 * q0[r + 1] + wc1 * q1[r + 1]
            out[t] += a + fr * (b - a)


@nb.njit(cache=True, fastmath=True, inline="always")
def _rows_checked(acc, pc0, pc1, wc0, wc1, r0, dr, k0, k1):  # pragma: no cover - numba
    """Slices ``[k0, k1)`` at rows ``r0 + k * dr``, rows outside the window counting as zero."""
    n_rows = pc0.shape[0]
    for k in range(k0, k1):
        row = r0 + k * dr
        ir = math.floor(row)
        if ir < -1 or ir >= n_rows:
            continue
        fr = row - ir
        a = wc0 * pc0[ir] + wc1 * pc1[ir] if ir >= 0 else 0.0
        b = wc0 * pc0[ir + 1] + wc1 * pc1[ir + 1] if ir + 1 < n_rows else 0.0
        acc[k] += np.float32(a + fr * (b - a))


@nb.njit(cache=True, fastmath=True, inline="always")
def _rows_gathered(acc, pc0, pc1, wc0, wc1, r0, dr, k0, k1):  # pragma: no cover - numba
    """Slices ``[k0, k1)`` (rows inside the window) by a float32 gather per slice.

    The fallback for short runs (a wide cone, ``|dr - round(dr)|`` large): one float-to-int
    conversion and four indexed loads per update, but no per-run bookkeeping.
    """
    last = np.int32(pc0.shape[0] - 2)
    zero = np.int32(0)
    r0f = np.float32(r0)
    drf = np.float32(dr)
    for k in range(k0, k1):
        row = r0f + np.float32(k) * drf
        ir = np.uintp(min(max(np.int32(row), zero), last))  # clamp float32 rounding
        fr = row - np.float32(ir)
        a = wc0 * pc0[ir] + wc1 * pc1[ir]
        b = wc0 * pc0[ir + np.uintp(1)] + wc1 * pc1[ir + np.uintp(1)]
        acc[k] += a + fr * (b - a)


MIN_RUN = 32
"""Shortest expected run (``1 / |dr - m|`` slices) worth the run-splitting bookkeeping; shorter
runs go to :func:`_rows_selected` (measured on the wide cone: 16 -> 32 is 1.11x)."""

SELECT_BLOCK = 16
"""Slices per block in :func:`_rows_selected`: one vector of 16 float32 lanes (AVX-512)."""

SELECT_SPREAD = 3
"""Most distinct row offsets ``floor(row) - k`` one :func:`_rows_selected` block may span."""

ROWS_PAD = 8
"""Zero rows before and after a voxel column's combined rows in :func:`_rows_selected`."""

BRICK = 16
"""Voxel columns per brick edge in :func:`_backproject_kernel` (accumulators stay in cache)."""


@nb.njit(cache=True, fastmath=True, inline="always")
def _rows_selected(acc, pc0, pc1, wc0, wc1, r0, dr, k0, k1, rows):  # pragma: no cover - numba
    """Slices ``[k0, k1)`` (rows inside the window) by contiguous loads and per-lane selects.

    For a wide cone (BoneMet's +-15% magnification spread) a voxel column's row step ``dr`` is
    ``1 + e`` with ``|e|`` up to 0.15: runs of equal ``floor(row) - k`` last only ``1 / |e|``
    slices, too short for :func:`_rows_strided`, and the float32 gather of
    :func:`_rows_gathered` does not vectorise.  Here the column's two detector columns are first
    combined into one contiguous vector ``rows`` (``wc0 * pc0 + wc1 * pc1``, with
    :data:`ROWS_PAD` zeros either side), then each block of :data:`SELECT_BLOCK` slices, whose
    offsets ``floor(row) - k`` span at most :data:`SELECT_SPREAD` + 1 values, loads the
    block's candidate rows at offsets 0 to 6 as contiguous vectors and picks each lane's pair by
    compare-and-select: a loop LLVM vectorises, where the gather's does not.  On the wide cone
    (``benchmarks/bench_fdk.py --wide``) the whole backprojection runs 1.7x faster than with the
    gather; the arithmetic is :func:`_rows_gathered`'s (same row, fraction and interpolation;
    a row rounded onto the window's last row reads the zero padding where the gather clamps,
    the same value to rounding), so the sums agree to float32 rounding.  A block whose ends span
    more than :data:`SELECT_SPREAD` offsets (``|e|`` near ``SELECT_SPREAD / SELECT_BLOCK``) is
    gathered.
    """
    n_rows = pc0.shape[0]
    lo = max(math.floor(r0 + k0 * dr) - 2, 0)
    hi = min(math.floor(r0 + (k1 - 1) * dr) + 3, n_rows - 1)
    n_comb = hi + 1 - lo
    q0 = pc0[lo : hi + 1]
    q1 = pc1[lo : hi + 1]
    comb = rows[ROWS_PAD : ROWS_PAD + n_comb]
    for r in range(np.int32(n_comb)):
        comb[r] = wc0 * q0[r] + wc1 * q1[r]
    # rounding may put a lane's row at n_rows - 1: its second row is then this zero padding
    # (the window's edge), never a longer earlier column's stale row
    rows[ROWS_PAD + n_comb : 2 * ROWS_PAD + n_comb] = 0.0
    r0f = np.float32(r0)
    drf = np.float32(dr)
    kb = k0
    while kb < k1:
        ke = min(kb + SELECT_BLOCK, k1)
        # offsets floor(row) - k at the block's ends, as the lanes compute them
        da = np.int32(r0f + np.float32(kb) * drf) - kb
        db = np.int32(r0f + np.float32(ke - 1) * drf) - (ke - 1)
        base = min(da, db) - 1  # one below: a lane's rounding may step one past either end
        start = ROWS_PAD + kb + base - lo
        if abs(da - db) > SELECT_SPREAD:
            _rows_gathered(acc, pc0, pc1, wc0, wc1, r0, dr, kb, ke)
            kb = ke
            continue
        q = rows[start:]
        out = acc[kb:ke]
        kbf = np.float32(kb)
        basef = np.float32(kb + base)
        for t in range(np.int32(ke - kb)):  # int32 counter: 32-bit int-to-float lanes
            tf = np.float32(t)
            row = r0f + (kbf + tf) * drf
            ir = np.float32(np.int32(row))  # float: 32-bit lanes
            fr = row - ir
            d = ir - tf - basef  # 0 ... SELECT_SPREAD + 2
            x0 = q[t]
            x1 = q[t + 1]
            x2 = q[t + 2]
            x3 = q[t + 3]
            x4 = q[t + 4]
            x5 = q[t + 5]
            x6 = q[t + 6]
            a = x0
            b = x1
            a = x1 if d == np.float32(1.0) else a
            b = x2 if d == np.float32(1.0) else b
            a = x2 if d == np.float32(2.0) else a
            b = x3 if d == np.float32(2.0) else b
            a = x3 if d == np.float32(3.0) else a
            b = x4 if d == np.float32(3.0) else b
            a = x4 if d == np.float32(4.0) else a
            b = x5 if d == np.float32(4.0) else b
            a = x5 if d == np.float32(5.0) else a
            b = x6 if d == np.float32(5.0) else b
            out[t] += a + fr * (b - a)
        kb = ke


@nb.njit(cache=True, fastmath=True, inline="always")
def _rows_in_runs(acc, pc0, pc1, wc0, wc1, r0, dr, k0, k1, rows):  # pragma: no cover - numba
    """Slices ``[k0, k1)`` (rows inside the window), split into runs of constant ``row - m k``.

    With ``m = round(dr)`` (rows per slice: 1 on the default grid, where ``dr`` is the voxel's
    magnification over the axis's, ``D / U``) and ``e = dr - m``, ``floor(r0 + k dr) - m k =
    floor(r0 + k e)`` is constant until ``r0 + k e`` crosses an integer: about ``1 / |e|``
    slices.  Each run is one affine :func:`_rows_strided` loop; the (rare) slices that rounding
    puts outside the window go through :func:`_rows_checked`.  Where runs would be shorter than
    :data:`MIN_RUN` slices (far from the axis in a wide cone) :func:`_rows_selected` is faster
    (``rows`` is its scratch vector), and :func:`_rows_gathered` where even that cannot follow.
    """
    n_rows = pc0.shape[0]
    m = math.floor(dr + 0.5)
    e = dr - m
    if m < 1 or abs(e) * MIN_RUN > 1.0:  # m = 0: voxels under half a row, no runs to use
        if m == 1 and abs(e) * SELECT_BLOCK <= SELECT_SPREAD:
            _rows_selected(acc, pc0, pc1, wc0, wc1, r0, dr, k0, k1, rows)
        else:
            _rows_gathered(acc, pc0, pc1, wc0, wc1, r0, dr, k0, k1)
        return
    ef = np.float32(e)
    inv_e = 1.0 / e if e != 0.0 else 0.0
    k = k0
    while k < k1:
        s = math.floor(r0 + k * e)
        if e > 0.0:
            x = (s + 1 - r0) * inv_e
            k_end = k1 if x >= k1 else math.ceil(x)
        elif e < 0.0:
            x = (s - r0) * inv_e
            k_end = k1 if x >= k1 else math.floor(x) + 1
        else:
            k_end = k1
        k_end = min(max(k_end, k + 1), k1)
        # slices whose rows m k + s and m k + s + 1 both lie in [0, n_rows)
        if m == 1:
            a0 = min(max(k, -s), k_end)
            a1 = max(min(k_end, n_rows - 1 - s), a0)
        else:  # m >= 2
            a0 = min(max(k, -(s // m)), k_end)
            top = n_rows - 2 - s
            a1 = max(min(k_end, top // m + 1), a0) if top >= 0 else a0
        _rows_checked(acc, pc0, pc1, wc0, wc1, r0, dr, k, a0)
        _rows_strided(acc, pc0, pc1, wc0, wc1, np.float32(r0 - s), ef, a0, a1, m, s)
        _rows_checked(acc, pc0, pc1, wc0, wc1, r0, dr, a1, k_end)
        k = k_end


@nb.njit(cache=True, parallel=True, fastmath=True)
def _backproject_kernel(proj_t, mats, xs, ys, r_fov2, out):  # pragma: no cover - numba
    """Accumulate ``proj_t`` (n, cols, rows window) into ``out`` (slice, y, x), float32.

    The voxel columns are swept in ``BRICK x BRICK`` bricks, projection by projection: a
    brick's accumulators (``BRICK**2 * slices`` floats) and the detector columns its voxels
    see in one projection stay in cache, where a column-by-column sweep would jump between
    every projection's data for each column.
    """
    n_proj, n_cols, n_rows = proj_t.shape
    nz, ny, nx = out.shape
    b = BRICK
    n_by = (ny + b - 1) // b
    n_bx = (nx + b - 1) // b
    for brick in nb.prange(n_by * n_bx):
        i0 = (brick // n_bx) * b
        j0 = (brick % n_bx) * b
        i1 = min(i0 + b, ny)
        j1 = min(j0 + b, nx)
        acc = np.zeros((b, b, nz), np.float32)
        rows = np.zeros(n_rows + 2 * ROWS_PAD + 8, np.float32)  # _rows_selected's scratch
        inside = np.zeros((b, b), np.bool_)
        any_inside = False
        for i in range(i0, i1):
            for j in range(j0, j1):
                if xs[j] * xs[j] + ys[i] * ys[i] <= r_fov2:
                    inside[i - i0, j - j0] = True
                    any_inside = True
        if not any_inside:
            continue
        for p in range(n_proj):
            m = mats[p]
            slope = m[1, 0]  # rows per slice times w (> 0: slices go down, rows go down)
            if slope <= 0.0:
                continue
            for i in range(i0, i1):
                for j in range(j0, j1):
                    if not inside[i - i0, j - j0]:
                        continue
                    w = m[2, 1] * i + m[2, 2] * j + m[2, 3]
                    inv_w = 1.0 / w
                    col = (m[0, 1] * i + m[0, 2] * j + m[0, 3]) * inv_w
                    if col <= -1.0 or col >= n_cols:
                        continue
                    dr = slope * inv_w
                    inv_dr = w / slope
                    ic = math.floor(col)
                    fc = col - ic
                    dist_w = inv_w * inv_w
                    wc0 = np.float32((1.0 - fc) * dist_w)
                    wc1 = np.float32(fc * dist_w)
                    c0 = ic
                    c1 = ic + 1
                    if c0 < 0:
                        c0 = 0
                        wc0 = np.float32(0.0)
                    if c1 > n_cols - 1:
                        c1 = n_cols - 1
                        wc1 = np.float32(0.0)
                    r0 = (m[1, 1] * i + m[1, 2] * j + m[1, 3]) * inv_w
                    pc0 = proj_t[p, c0]
                    pc1 = proj_t[p, c1]
                    a = acc[i - i0, j - j0]
                    # slices whose row lies in (-1, n_rows) touch the window at all
                    k_first = min(max(math.floor((-1.0 - r0) * inv_dr) + 1, 0), nz)
                    k_last = min(max(math.floor((n_rows - r0) * inv_dr) + 1, k_first), nz)
                    # inner range: 0 <= row < n_rows - 1, both bilinear rows in the window
                    k_lo = min(max(math.ceil(-r0 * inv_dr), k_first), k_last)
                    k_hi = min(max(math.ceil((n_rows - 1 - r0) * inv_dr), k_lo), k_last)
                    _rows_checked(a, pc0, pc1, wc0, wc1, r0, dr, k_first, k_lo)
                    _rows_in_runs(a, pc0, pc1, wc0, wc1, r0, dr, k_lo, k_hi, rows)
                    _rows_checked(a, pc0, pc1, wc0, wc1, r0, dr, k_hi, k_last)
        for i in range(i0, i1):
            for j in range(j0, j1):
                if inside[i - i0, j - j0]:
                    a = acc[i - i0, j - j0]
                    for k in range(nz):
                        out[k, i, j] += a[k]


def backproject(
    filtered: np.ndarray,
    geometry: ConeGeometry,
    angle_indices: np.ndarray,
    grid: VolumeGrid,
    *,
    row_offset: int = 0,
    out: np.ndarray | None = None,
    interpolation: str = "texture",
) -> np.ndarray:
    """Voxel-driven cone-beam backprojection of filtered projections into ``(slice, y, x)``.

    Parameters
    ----------
    filtered : numpy.ndarray or cupy.ndarray
        ``(n_block, rows, cols)`` output of :func:`preweight_and_filter`; may hold only detector
        rows ``row_offset : row_offset + rows`` (rows outside contribute zero).
    geometry : ConeGeometry
        The scan.
    angle_indices : numpy.ndarray
        Index into ``geometry.angles_deg`` of each projection of the block.
    grid : VolumeGrid
        The voxels to reconstruct (a whole volume or a z-slab of one).
    row_offset : int, optional
        Detector row of ``filtered``'s first row.
    out : numpy.ndarray or None, optional
        float32 C-contiguous ``grid.shape`` array to accumulate into (partial sums over projection
        blocks add up); None starts from zeros.
    interpolation : {"texture", "linear"}, optional
        GPU only (CuPy input, :mod:`bonemet_dask.kernels.fdk_cuda`): hardware texture filtering
        (default, fastest) or float32 interpolation from global memory.  The CPU always
        interpolates in float32.

    Returns
    -------
    numpy.ndarray
        ``out``: float32 ``(slice, y, x)``, attenuation in 1/mm once every projection is summed.

    Notes
    -----
    For each projection and voxel column ``(y, x)`` the detector column, the distance weight
    ``(D / U)**2`` and the row step are computed once; the slices are swept innermost, the row
    coordinate being linear in ``z``.  Bilinear interpolation treats samples outside the detector
    (or outside the row window) as zero.  Voxels outside the field-of-view cylinder (the radius
    every projection's detector covers) are skipped and stay as they were.
    """
    xp = array_namespace(filtered, out)
    f = filtered if xp is not np else np.asarray(filtered)
    if f.ndim != 3 or f.shape[2] != geometry.n_cols:
        raise ValueError(
            f"filtered must be (n_block, rows, {geometry.n_cols}), got shape {f.shape}"
        )
    if row_offset < 0 or row_offset + f.shape[1] > geometry.n_rows:
        raise ValueError(
            f"rows {row_offset}:{row_offset + f.shape[1]} exceed the detector's "
            f"{geometry.n_rows} rows; check row_offset"
        )
    idx = _check_indices(geometry, angle_indices, f.shape[0])
    if out is None:
        out = xp.zeros(grid.shape, xp.float32)
    elif out.shape != grid.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous float32 array of grid.shape {grid.shape}, got "
            f"{out.dtype} {out.shape}; pass None to allocate one"
        )
    if f.shape[0] == 0 or f.shape[1] == 0:
        return out
    mats = projection_matrices(geometry, idx, grid)
    if np.abs(mats[:, 2, 0]).max() > 1e-9 or np.abs(mats[:, 0, 0]).max() > 1e-9:
        raise ValueError(
            "the grid's slice axis must be parallel to the rotation axis (z); got a tilted grid"
        )
    mats[:, 1, 3] -= row_offset * mats[:, 2, 3]  # rows relative to the window
    mats[:, 1, :3] -= row_offset * mats[:, 2, :3]
    r_fov = _fov_radius(geometry)
    if xp is not np:
        from bonemet_dask.kernels.fdk_cuda import backproject_cuda

        return backproject_cuda(
            f, mats, out, origin_xy=(float(grid.origin[0]), float(grid.origin[1])),
            voxel_size=grid.voxel_size, r_fov2=r_fov * r_fov, interpolation=interpolation,
        )  # fmt: skip
    proj_t = np.ascontiguousarray(f.transpose(0, 2, 1), dtype=np.float32)  # rows contiguous
    origin = grid.origin
    h = grid.voxel_size
    xs = origin[0] + h * np.arange(grid.shape[2])
    ys = origin[1] + h * np.arange(grid.shape[1])
    _backproject_kernel(proj_t, mats, xs, ys, r_fov * r_fov, out)
    return out


def row_window(geometry: ConeGeometry, grid: VolumeGrid) -> tuple[int, int]:
    """Detector rows ``[start, stop)`` that any voxel of ``grid`` can project to, over all angles.

    Conservative: it takes the slab's ``z`` extent and the radial extent of its voxels (within the
    field-of-view cylinder, outside which :func:`backproject` skips voxels) at every depth, widens
    the result by one row on each side for bilinear interpolation and rounding, and clips it to
    the detector.  An empty window is returned as ``(start, start)``.
    """
    nz, ny, nx = grid.shape
    origin, h = grid.origin, grid.voxel_size
    xs = origin[0] + h * np.array([0, nx - 1])
    ys = origin[1] + h * np.array([0, ny - 1])
    r_grid = float(np.sqrt(np.abs(xs).max() ** 2 + np.abs(ys).max() ** 2))
    r = min(r_grid, _fov_radius(geometry))
    D = geometry.source_to_object
    z = np.array([origin[2], origin[2] - h * (nz - 1)])
    depth = np.array([D - r, D + r])
    rows = geometry.centre_row - D * z[:, None] / (depth[None, :] * geometry.voxel_size)
    start = int(np.floor(rows.min())) - 1
    stop = int(np.floor(rows.max())) + 3
    start = min(max(start, 0), geometry.n_rows)
    stop = min(max(stop, start), geometry.n_rows)
    return start, stop


# --------------------------------------------------------------------------------------------
# parallel-beam slice FBP
# --------------------------------------------------------------------------------------------


@nb.njit(cache=True, parallel=True, fastmath=True)
def _parallel_bp_kernel(padded, offset, cos_t, sin_t, center, out):  # pragma: no cover - numba
    """Accumulate ``padded`` (angles, offset zeros + detector + zeros) into ``out`` (y, x).

    The zero margins cover every detector coordinate a pixel of ``out`` can reach, so the
    inner loop needs no bounds test: a float32 multiply-add per pixel and view.
    """
    n_ang = padded.shape[0]
    n = out.shape[0]
    c_img = (n - 1) / 2.0
    for i in nb.prange(n):
        y = i - c_img
        acc = np.zeros(n, np.float32)
        for a in range(n_ang):
            ca = np.float32(cos_t[a])
            row = padded[a]
            s0 = np.float32(y * sin_t[a] + center + offset - c_img * cos_t[a])
            for j in range(n):
                s = s0 + np.float32(j) * ca  # >= 0 inside the margin: truncation is floor
                i0 = np.int32(s)
                fs = s - np.float32(i0)
                v0 = row[i0]
                acc[j] += v0 + fs * (row[i0 + 1] - v0)
        for j in range(n):
            out[i, j] += acc[j]


def fbp_parallel_slice(
    sinogram: np.ndarray,
    angles_deg: np.ndarray,
    *,
    window: str = "ramlak",
    center: float | None = None,
) -> np.ndarray:
    """Parallel-beam filtered backprojection of one sinogram ``(angles, detector)`` to a slice.

    Parameters
    ----------
    sinogram : numpy.ndarray
        ``(n_angles, n_det)`` line integrals, detector pixel = output pixel.
    angles_deg : numpy.ndarray
        Projection angles, degrees, uniformly covering 180 or 360 degrees.
    window : {"ramlak", "shepp-logan", "cosine", "hamming", "hann"}, optional
        Ramp window.
    center : float or None, optional
        Detector position of the rotation axis, pixels; None is ``(n_det - 1) / 2``.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_det, n_det)`` slice ``(y, x)`` in 1/pixel, rotation axis at the centre
        ``((n_det - 1) / 2, (n_det - 1) / 2)``.

    Notes
    -----
    Same conventions as the cone geometry's central slice: at angle ``theta`` the detector
    coordinate of a point is ``s = x cos(theta) + y sin(theta)``, with ``x`` along columns and
    ``y`` along rows.  scikit-image's ``iradon`` uses ``s = x cos(theta) - y sin(theta)``, so
    ``iradon(sinogram.T, theta=-angles_deg)`` matches this function.  Each view is weighted
    ``pi / n_angles`` (right for uniform 180 and 360 degree scans alike).
    """
    _check_window(window)
    sino = np.asarray(sinogram, np.float64)
    angles = np.asarray(angles_deg, np.float64).reshape(-1)
    if sino.ndim != 2 or sino.shape[0] != angles.size:
        raise ValueError(
            f"sinogram must be (n_angles={angles.size}, n_det), got shape {sino.shape}"
        )
    n_ang, n_det = sino.shape
    pad = _padded_length(n_det, None)
    response = ramp_filter(n_det, window=window, pad_to=pad)[: pad // 2 + 1]
    filtered = np.fft.irfft(np.fft.rfft(sino, n=pad, axis=-1) * response, n=pad, axis=-1)
    filtered = np.ascontiguousarray(filtered[:, :n_det] * (np.pi / n_ang), dtype=np.float32)
    centre = (n_det - 1) / 2 if center is None else float(center)
    theta = np.deg2rad(angles)
    out = np.zeros((n_det, n_det), np.float32)
    # detector coordinates reach centre +- (n_det - 1) / 2 * sqrt(2); pad with zeros past them
    reach = (n_det - 1) / 2 * math.sqrt(2.0)
    offset = max(math.ceil(reach - centre), math.ceil(centre + reach - (n_det - 1)), 0) + 2
    padded = np.zeros((n_ang, n_det + 2 * offset), np.float32)
    padded[:, offset : offset + n_det] = filtered
    _parallel_bp_kernel(padded, offset, np.cos(theta), np.sin(theta), centre, out)
    return out
