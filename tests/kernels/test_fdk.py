"""FDK kernels against the analytic projector and voxeliser, scikit-image, and their own invariants.

Every reference here is either exact (``line_integrals`` are analytic ray integrals,
``voxelize`` the true attenuation) or an independent implementation (``skimage.transform.iradon``).
The error bounds were measured on these phantoms and are asserted with margin; the measured value
is written beside each bound.
"""

import itertools

import numpy as np
import pytest

from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.kernels.fdk import (
    WINDOWS,
    _fov_radius,
    backproject,
    fan_angles,
    fbp_parallel_slice,
    parker_weights,
    preweight_and_filter,
    projection_matrices,
    ramp_filter,
    row_window,
)
from bonemet_dask.synth import line_integrals, voxelize
from bonemet_dask.synth.primitives import Phantom, Term, ellipsoid

# 96 x 96 detector of 0.2 mm pixels, magnification 4: 0.05 mm at the isocentre, half fan and
# half cone angle 4.6 deg.  SHORT is the BoneMet scan, 260 x 0.8 deg = 207.2 deg (overscan
# delta 13.6 deg, so the fan is within it), on the same scanner.
FULL = ConeGeometry(30.0, 120.0, 0.2, 96, 96, np.arange(360) * 1.0)
SHORT = ConeGeometry(30.0, 120.0, 0.2, 96, 96, np.arange(260) * 0.8)
GRID = VolumeGrid((64, 64, 64), 0.0675)  # 4.32 mm cube inside the 2.40 mm-radius FOV cylinder


def _phantom() -> Phantom:
    ph = Phantom()
    ph.add(Term(0.05, (ellipsoid((0.0, 0.0, 0.0), (1.7, 1.4, 1.8)),)))
    ph.add(Term(0.03, (ellipsoid((0.5, 0.3, 0.2), (0.4, 0.5, 0.6)),)))
    ph.add(Term(-0.02, (ellipsoid((-0.6, -0.2, -0.5), (0.3, 0.3, 0.4)),)))
    return ph


def _project(phantom: Phantom, geometry: ConeGeometry) -> np.ndarray:
    return np.stack([line_integrals(phantom, geometry, a) for a in geometry.angles_deg])


def _fdk(proj, geometry, grid=GRID, **kw) -> np.ndarray:
    idx = np.arange(geometry.angles_deg.size)
    window = kw.pop("window", "ramlak")
    return backproject(
        preweight_and_filter(proj, geometry, idx, window=window, **kw), geometry, idx, grid
    )


def _inner_mask(grid: VolumeGrid, margin: int = 4) -> np.ndarray:
    """Voxels inside the FOV cylinder and at least ``margin`` voxels from the grid's faces."""
    nz, ny, nx = grid.shape
    k, i, j = np.mgrid[:nz, :ny, :nx]
    r = min(nx, ny) / 2 - margin
    return (
        ((i - (ny - 1) / 2) ** 2 + (j - (nx - 1) / 2) ** 2 < r**2)
        & (k >= margin)
        & (k < nz - margin)
    )


def _rel_rmse(rec, ref, mask) -> float:
    return float(np.sqrt(((rec - ref)[mask] ** 2).mean() / (ref[mask] ** 2).mean()))


@pytest.fixture(scope="module")
def full_scan():
    proj = _project(_phantom(), FULL)
    return proj, _fdk(proj, FULL)


@pytest.fixture(scope="module")
def truth():
    return voxelize(_phantom(), GRID, supersample=3)


# --------------------------------------------------------------------------------------------
# (a) accuracy of a full scan
# --------------------------------------------------------------------------------------------


def test_full_scan_recovers_ground_truth(full_scan, truth):
    _, rec = full_scan
    assert rec.dtype == np.float32 and rec.shape == GRID.shape
    # measured 0.034 (Ram-Lak; partial-volume edges dominate; 0.057 with Hamming)
    assert _rel_rmse(rec, truth, _inner_mask(GRID)) < 0.05
    # mean inside the big ellipsoid, away from its edge and the two inserts
    pts = GRID.index_to_world(np.argwhere(np.ones(GRID.shape, bool))).reshape(*GRID.shape, 3)
    q = (pts / np.array([1.7, 1.4, 1.8])) ** 2
    inner = q.sum(-1) < 0.7**2
    inner &= ((pts - (0.5, 0.3, 0.2)) ** 2).sum(-1) > 0.9**2
    inner &= ((pts - (-0.6, -0.2, -0.5)) ** 2).sum(-1) > 0.7**2
    assert inner.sum() > 2000
    assert abs(rec[inner].mean() / 0.05 - 1) < 0.02  # measured 0.06 %


def test_hamming_window_keeps_scale(full_scan, truth):
    proj, _ = full_scan
    rec = _fdk(proj, FULL, window="hamming")
    big = (truth > 0.049) & (truth < 0.051)
    assert abs(rec[big].mean() / truth[big].mean() - 1) < 0.03


# --------------------------------------------------------------------------------------------
# (b) short scan with Parker weights
# --------------------------------------------------------------------------------------------


def test_short_scan_parker_close_to_full(full_scan):
    _, rec_full = full_scan
    proj = _project(_phantom(), SHORT)
    grid = GRID
    rec_parker = _fdk(proj, SHORT, grid=grid, short_scan=True)
    rec_plain = _fdk(proj, SHORT, grid=grid, short_scan=False)
    mask = _inner_mask(grid)
    err_parker = _rel_rmse(rec_parker, rec_full, mask)
    err_plain = _rel_rmse(rec_plain, rec_full, mask)
    # measured: Parker 0.039 (short-scan cone artefacts off the mid-plane), no Parker 0.44
    assert err_parker < 0.06
    assert err_plain > 5 * err_parker
    # on the mid-plane (no cone artefact) the short scan with Parker equals the full scan
    mid = slice(28, 36)
    assert _rel_rmse(rec_parker[mid], rec_full[mid], mask[mid]) < 0.01  # measured 0.0022


# --------------------------------------------------------------------------------------------
# (c) orientation conventions
# --------------------------------------------------------------------------------------------


def _centroid(vol: np.ndarray, grid: VolumeGrid, centre_world, radius_vox: int) -> np.ndarray:
    c = np.round(grid.world_to_index(np.array([centre_world]))[0]).astype(int)
    lo = np.maximum(c - radius_vox, 0)
    hi = c + radius_vox + 1
    box = np.clip(vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 0, None)
    idx = np.argwhere(np.ones(box.shape, bool)) + lo
    return (idx * box.reshape(-1, 1)).sum(0) / box.sum()


def test_balls_reconstruct_where_they_are():
    off = np.array([0.9, -0.55, 0.7])  # x, y, z in mm: every axis' sign is pinned
    ph = Phantom()
    ph.add(Term(0.1, (ellipsoid((0.0, 0.0, 0.0), (0.25, 0.25, 0.25)),)))
    ph.add(Term(0.1, (ellipsoid(off, (0.25, 0.25, 0.25)),)))
    rec = _fdk(_project(ph, FULL), FULL)
    centre = _centroid(rec, GRID, (0.0, 0.0, 0.0), 6)
    assert np.abs(centre - 31.5).max() < 0.25  # measured 0.0005
    expected = GRID.world_to_index(off[None])[0]
    assert np.abs(_centroid(rec, GRID, off, 6) - expected).max() < 0.25  # measured 0.003
    # and the indices really mean what geometry.py says: x grows along columns, z upwards
    assert expected[2] > 31.5 and expected[1] < 31.5 and expected[0] < 31.5


def test_projection_matrices_match_geometry():
    idx = np.array([0, 37, 123, 301])
    ind = np.random.default_rng(1).uniform(0, 63, (20, 3))
    mats = projection_matrices(FULL, idx, GRID)
    for n, a in enumerate(idx):
        hom = np.c_[ind, np.ones(len(ind))] @ mats[n].T
        ref = FULL.project_points(GRID.index_to_world(ind), FULL.angles_deg[a])
        np.testing.assert_allclose(hom[:, 1] / hom[:, 2], ref[:, 0], atol=1e-9)
        np.testing.assert_allclose(hom[:, 0] / hom[:, 2], ref[:, 1], atol=1e-9)


# --------------------------------------------------------------------------------------------
# (d) decomposition: slabs with row windows, projection blocks
# --------------------------------------------------------------------------------------------


def test_slabs_with_row_windows_equal_whole_volume(full_scan):
    proj, _ = full_scan
    idx = np.arange(FULL.angles_deg.size)
    filtered = preweight_and_filter(proj, FULL, idx, window="hamming")
    whole = backproject(filtered, FULL, idx, GRID)
    bounds = np.cumsum([0, 13, 20, 31])
    parts = []
    for start, stop in itertools.pairwise(bounds):
        slab = GRID.slab(int(start), int(stop))
        r0, r1 = row_window(FULL, slab)
        assert r1 - r0 < FULL.n_rows  # the window is a real restriction
        # filtering only the window's rows gives the same rows (the filter is row-wise)
        windowed = preweight_and_filter(proj[:, r0:r1], FULL, idx, window="hamming", row_offset=r0)
        np.testing.assert_allclose(windowed, filtered[:, r0:r1], rtol=1e-5, atol=1e-6)
        parts.append(backproject(windowed, FULL, idx, slab, row_offset=r0))
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-6)


def test_row_window_too_small_changes_result(full_scan):
    proj, _ = full_scan
    idx = np.arange(0, 360, 10)
    filtered = preweight_and_filter(proj[idx], FULL, idx)
    slab = GRID.slab(20, 40)
    r0, r1 = row_window(FULL, slab)
    full = backproject(filtered, FULL, idx, slab)
    cut = backproject(filtered[:, r0 + 3 : r1 - 3], FULL, idx, slab, row_offset=r0 + 3)
    assert np.abs(cut - full).max() > 1e-3 * np.abs(full).max()


def test_projection_blocks_add_up(full_scan):
    proj, rec = full_scan
    idx = np.arange(FULL.angles_deg.size)
    filtered = preweight_and_filter(proj, FULL, idx, window="ramlak")
    out = backproject(filtered[:150], FULL, idx[:150], GRID)
    backproject(filtered[150:], FULL, idx[150:], GRID, out=out)
    np.testing.assert_allclose(out, rec, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# (e) parallel-beam slice FBP against scikit-image
# --------------------------------------------------------------------------------------------


def test_fbp_parallel_slice_matches_iradon():
    transform = pytest.importorskip("skimage.transform")
    n = 129
    k, j = np.mgrid[:n, :n] - (n - 1) / 2
    image = np.zeros((n, n))
    for cy, cx, ay, ax, value in [
        (0, 0, 55, 42, 1.0),
        (0, 0, 50, 38, -0.6),
        (-12, 15, 10, 18, 0.3),
        (20, -10, 8, 6, 0.5),
        (5, -20, 6, 12, -0.2),
    ]:
        image[((k - cy) / ay) ** 2 + ((j - cx) / ax) ** 2 < 1] += value
    theta = np.arange(180) * 1.0
    sino = transform.radon(image, theta=theta, circle=True)  # (det, angles)
    ref = transform.iradon(sino, theta=theta, filter_name="ramp", circle=True)
    ours = fbp_parallel_slice(sino.T, -theta, window="ramlak")
    inside = k**2 + j**2 < ((n - 1) / 2 - 2) ** 2
    corr = np.corrcoef(ours[inside], ref[inside])[0, 1]
    assert corr > 0.99  # measured 0.9999
    assert abs(ours[inside].mean() / ref[inside].mean() - 1) < 0.02


def test_fbp_parallel_slice_orientation():
    n = 65
    theta = np.arange(0, 180, 1.0)
    s = np.arange(n) - (n - 1) / 2
    x0, y0, radius = 10.0, -6.0, 3.0  # a disc at column 42, row 26
    t = x0 * np.cos(np.deg2rad(theta))[:, None] + y0 * np.sin(np.deg2rad(theta))[:, None]
    chord = 2 * np.sqrt(np.clip(radius**2 - (s[None, :] - t) ** 2, 0, None))
    rec = fbp_parallel_slice(chord, theta)
    peak = np.unravel_index(np.argmax(rec), rec.shape)
    assert peak == (32 - 6, 32 + 10)
    assert abs(rec[26, 42] - 1) < 0.1


# --------------------------------------------------------------------------------------------
# (f) ramp filter and Parker weights
# --------------------------------------------------------------------------------------------


def test_ramp_filter_windows():
    ramlak = ramp_filter(100, window="ramlak")
    assert ramlak.shape == (256,)  # next power of two >= 200
    assert ramp_filter(100, window="ramlak", pad_to=300).shape == (300,)
    freq = np.abs(np.fft.fftfreq(256))
    assert 0 < ramlak[0] < 0.01  # no DC bias, but not zero either
    np.testing.assert_allclose(ramlak[10:100], freq[10:100], rtol=0.02)  # ~|f| in the body
    nyq = 128
    np.testing.assert_allclose(ramp_filter(100, window="hamming")[nyq], 0.08 * ramlak[nyq])
    assert abs(ramp_filter(100, window="hann")[nyq]) < 1e-12
    assert abs(ramp_filter(100, window="cosine")[nyq]) < 1e-12
    np.testing.assert_allclose(ramp_filter(100, window="shepp-logan")[nyq], 2 / np.pi * ramlak[nyq])
    for w in WINDOWS:
        r = ramp_filter(100, window=w)
        np.testing.assert_allclose(r, r[(-np.arange(256)) % 256])  # symmetric, real
        assert r[0] == pytest.approx(ramlak[0])
    with pytest.raises(ValueError, match="'hamming'"):
        ramp_filter(100, window="hanning")
    with pytest.raises(ValueError, match="pad_to"):
        ramp_filter(100, pad_to=50)


def test_parker_weights_complementary():
    step = 0.1
    angles = np.arange(0, 207.2 + step / 2, step)
    gamma_deg = np.arange(-12.0, 12.0 + 0.025, 0.05)  # 2 gamma on the angle grid
    w = parker_weights(angles, np.deg2rad(gamma_deg))
    assert w.min() >= 0 and w.max() <= 1
    assert w[0].max() < 1e-12 and w[-1].max() < 1e-12
    n_checked = 0
    for jg, g in enumerate(gamma_deg):
        jc = int(np.argmin(np.abs(gamma_deg + g)))
        shift = round((180 - 2 * g) / step)
        for ia in range(angles.size):
            ib = ia + shift
            if 0 <= ib < angles.size:
                assert w[ia, jg] + w[ib, jc] == pytest.approx(1, abs=1e-9)
                n_checked += 1
            elif ia - round((180 + 2 * g) / step) < 0:  # measured once only
                assert w[ia, jg] == pytest.approx(1, abs=1e-9)
    assert n_checked > 10000
    # decreasing angles: the same rays with the fan mirrored
    w_rev = parker_weights(-angles, np.deg2rad(gamma_deg))
    np.testing.assert_allclose(w_rev, w[:, ::-1], atol=1e-12)


def test_parker_weights_full_scan_and_narrow_overscan():
    gamma = fan_angles(FULL)
    assert np.all(parker_weights(FULL.angles_deg, gamma) == 0.5)
    assert np.all(parker_weights(np.arange(0, 200, 1.0), gamma, scan_range_deg=360) == 0.5)
    with pytest.warns(RuntimeWarning, match="overscan"):
        parker_weights(np.arange(181) * 1.0, np.deg2rad([-5.0, 0.0, 5.0]))
    with pytest.raises(ValueError, match="below 180"):
        parker_weights(np.arange(100) * 1.0, gamma)


def test_argument_errors(full_scan):
    proj, _ = full_scan
    with pytest.raises(ValueError, match="angle_indices"):
        preweight_and_filter(proj[:3], FULL, [0, 1])
    with pytest.raises(ValueError, match="window"):
        preweight_and_filter(proj[:2], FULL, [0, 1], window="ram-lak")
    with pytest.raises(ValueError, match="row_offset"):
        backproject(np.zeros((1, 10, 96), np.float32), FULL, [0], GRID, row_offset=90)
    with pytest.raises(ValueError, match="out must be"):
        backproject(np.zeros((1, 10, 96), np.float32), FULL, [0], GRID, out=np.zeros(3))


@pytest.mark.gpu
@pytest.mark.parametrize("interpolation, tol", [("linear", 1e-4), ("texture", 5e-3)])
def test_cupy_backprojection_matches_numba(full_scan, interpolation, tol):
    import cupy

    proj, _ = full_scan
    idx = np.arange(FULL.angles_deg.size)
    filtered = preweight_and_filter(proj, FULL, idx)
    cpu = backproject(filtered[:, 10:], FULL, idx, GRID, row_offset=10)
    gpu = backproject(
        cupy.asarray(filtered[:, 10:]), FULL, idx, GRID, row_offset=10, interpolation=interpolation
    )
    assert isinstance(gpu, cupy.ndarray)
    assert float(abs(gpu.get() - cpu).max()) <= tol * float(abs(cpu).max())
    gpu_filtered = preweight_and_filter(cupy.asarray(proj), FULL, idx)
    np.testing.assert_allclose(gpu_filtered.get(), filtered, atol=1e-5 * abs(filtered).max())


@pytest.mark.parametrize("centre_shift", [0.0, 7.3, -11.6])
def test_parallel_backprojection_matches_numpy_interpolation(centre_shift):
    from bonemet_dask.kernels import fdk

    rng = np.random.default_rng(5)
    n_ang, n_det = 40, 33
    sino = rng.standard_normal((n_ang, n_det))
    theta = np.deg2rad(np.arange(n_ang) * 180 / n_ang)
    centre = (n_det - 1) / 2 + centre_shift
    # independent reference: np.interp along each view, zero outside the detector
    c = (n_det - 1) / 2
    y, x = np.mgrid[:n_det, :n_det] - c
    reference = np.zeros((n_det, n_det))
    for a, t in enumerate(theta):
        s = x * np.cos(t) + y * np.sin(t) + centre
        reference += np.interp(s, np.arange(n_det), sino[a], left=0.0, right=0.0)
        edge = (s > -1) & (s < 0)
        reference[edge] += (s[edge] + 1) * sino[a, 0]
        edge = (s > n_det - 1) & (s < n_det)
        reference[edge] += (n_det - s[edge]) * sino[a, -1]
    got = fdk.fbp_parallel_slice.__globals__["_parallel_bp_kernel"]
    offset = 40
    padded = np.zeros((n_ang, n_det + 2 * offset), np.float32)
    padded[:, offset : offset + n_det] = sino
    out = np.zeros((n_det, n_det), np.float32)
    got(padded, offset, np.cos(theta), np.sin(theta), centre, out)
    np.testing.assert_allclose(out, reference, atol=2e-4 * np.abs(reference).max())


@pytest.mark.parametrize("centre_shift", [7.0, -11.0])
def test_parallel_fbp_off_centre_axis_puts_the_axis_point_in_the_middle(centre_shift):
    n_ang, n_det = 90, 41
    centre = (n_det - 1) / 2 + centre_shift
    sino = np.zeros((n_ang, n_det))
    sino[:, int(centre)] = 1.0  # a point on the rotation axis, seen at `centre` in every view
    angles = np.arange(n_ang) * 180 / n_ang
    image = fbp_parallel_slice(sino, angles, center=centre)
    assert np.unravel_index(np.argmax(image), image.shape) == (20, 20)
    assert np.isfinite(image).all()


def test_uneven_xy_tiles_equal_the_whole_volume(full_scan):
    # the kernel sweeps voxel columns in bricks: any crop, whatever its offset and size
    # relative to the bricks, must reproduce the whole volume's voxels
    proj, _ = full_scan
    idx = np.arange(FULL.angles_deg.size)
    filtered = preweight_and_filter(proj, FULL, idx)
    whole = backproject(filtered, FULL, idx, GRID)
    for lo, hi in (((3, 5, 7), (40, 42, 29)), ((10, 17, 30), (31, 64, 63)), ((0, 0, 0), (5, 1, 1))):
        tile = backproject(filtered, FULL, idx, GRID.crop(lo, hi))
        expected = whole[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.testing.assert_allclose(tile, expected, atol=2e-6 * float(np.abs(whole).max()))


@pytest.mark.parametrize("voxels_per_pixel", [0.05, 1.0, 2.3])
def test_backprojection_matches_a_direct_sum_at_any_voxel_size(voxels_per_pixel):
    # independent reference: every voxel, every projection, bilinear sample (zero outside the
    # window) weighted 1/w^2, straight from the projection matrices. Covers the kernel's three
    # regimes: slices finer than rows (m = 0), one row per slice (runs), several rows per slice.
    rng = np.random.default_rng(11)
    idx = np.arange(0, FULL.angles_deg.size, 9)
    filtered = rng.standard_normal((idx.size, 40, FULL.n_cols)).astype(np.float32)
    row_offset = 28
    grid = VolumeGrid((9, 7, 6), FULL.voxel_size * voxels_per_pixel, centre=(0.3, -0.2, 0.1))
    got = backproject(filtered, FULL, idx, grid, row_offset=row_offset)
    expected = _direct_sum(filtered, FULL, idx, grid, row_offset)
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())


def _direct_sum(filtered, geometry, idx, grid, row_offset):
    """Every voxel, every projection: bilinear sample (zero outside the window) weighted 1/w^2,
    straight from the projection matrices, in float64; voxels outside the FOV cylinder stay 0."""
    mats = projection_matrices(geometry, idx, grid)
    k, i, j = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    homogeneous = np.stack([k, i, j, np.ones_like(k)]).reshape(4, -1).astype(float)
    xs = grid.origin[0] + grid.voxel_size * j.ravel()
    ys = grid.origin[1] + grid.voxel_size * i.ravel()
    inside = xs**2 + ys**2 <= _fov_radius(geometry) ** 2  # the kernel leaves the rest untouched
    expected = np.zeros(homogeneous.shape[1])
    padded = np.pad(filtered.astype(float), ((0, 0), (1, 1), (1, 1)))
    for n in range(idx.size):
        col_w, row_w, w = mats[n] @ homogeneous
        col, row = col_w / w, row_w / w - row_offset
        c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
        fc, fr = col - c0, row - r0
        valid = (c0 >= -1) & (c0 < geometry.n_cols) & (r0 >= -1) & (r0 < filtered.shape[1])
        c0 = np.clip(c0, -1, geometry.n_cols - 1) + 1
        r0 = np.clip(r0, -1, filtered.shape[1] - 1) + 1
        view = padded[n]
        sample = (1 - fr) * ((1 - fc) * view[r0, c0] + fc * view[r0, c0 + 1]) + fr * (
            (1 - fc) * view[r0 + 1, c0] + fc * view[r0 + 1, c0 + 1]
        )
        expected += np.where(valid, sample, 0.0) / w**2
    return np.where(inside, expected, 0.0).reshape(grid.shape)


def test_wide_cone_backprojection_matches_a_direct_sum():
    # BoneMet's cone is wide: a voxel's rows per slice, dr = 1 + e, has |e| up to 0.15, so the
    # kernel takes three paths by |e|: strided runs (< 1/32), blocks of contiguous loads and
    # selects (1/32 to 3/16) and the float32 gather (> 3/16).  This scanner (source 10 mm from the
    # axis, 0.2 mm pixels at magnification 4) reaches |e| = 0.23; the strip of voxels across the
    # FOV, 48 slices deep with a row window cutting the top and bottom, meets all three.
    wide = ConeGeometry(10.0, 40.0, 0.2, 96, 96, np.arange(260) * 0.8)
    rng = np.random.default_rng(5)
    idx = np.arange(0, 260, 5)
    row_offset = 30
    filtered = rng.standard_normal((idx.size, 36, wide.n_cols)).astype(np.float32)
    grid = VolumeGrid((48, 4, 96), wide.voxel_size, centre=(0.0, 0.13, 0.02))
    mats = projection_matrices(wide, idx, grid)
    i, j = np.meshgrid(np.arange(4), np.arange(96), indexing="ij")
    w = mats[:, 2, 1, None, None] * i + mats[:, 2, 2, None, None] * j + mats[:, 2, 3, None, None]
    e = np.abs(mats[:, 1, 0, None, None] / w - 1.0)
    assert (e < 1 / 32).any() and ((e > 1 / 32) & (e < 3 / 16)).mean() > 0.3 and (e > 3 / 16).any()
    got = backproject(filtered, wide, idx, grid, row_offset=row_offset)
    expected = _direct_sum(filtered, wide, idx, grid, row_offset)
    assert np.abs(expected).max() > 0 and (got != 0).mean() > 0.5
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())
