"""Cone-beam backprojection speed (GUPS) of ``bonemet_dask.kernels.fdk`` and of RTK's CPU FDK.

Run: ``.venv/bin/python benchmarks/bench_fdk.py [--sizes 128 256] [--threads 1 2] [--no-rtk]``
or ``.venv/bin/python benchmarks/bench_fdk.py --accuracy [--sizes 128] [--windows ramlak hann]``

GUPS = projections x voxels / second.  The workload is the DESIGN.md section 7 target: 260
projections (the BoneMet 260 x 0.8 deg short scan) of a 256 x 384 detector backprojected onto
``n^3`` volumes whose voxel spans ``256 / n`` isocentre pixels (the whole volume lies inside the
field-of-view cylinder, so no voxel is skipped).  Each timing is the best of ``--repeat`` runs
after a warm-up (numba JIT, cache).  The full-scan time is extrapolated from the best 2-thread
rate for the 4.39e12 updates of one full-size BoneMet scan (260 x 2588 x 2428 x 2685).

RTK (``pip install itk-rtk``) is timed on the same geometry when it imports:
``ParkerShortScanImageFilter`` then ``FDKConeBeamReconstructionFilter`` (Hamming window 0.54 is
not RTK's default; RTK's ramp with its Hann cut-off left at 0 is used: the filter is not the cost).
Its time includes RTK's own filtering (small at this size); ours is the backprojection alone and,
separately, pre-weighting + filtering.  Geometry mapping (ours -> RTK
``ThreeDCircularProjectionGeometry.AddProjection(sid, sdd, gantry_angle, proj_offset_x,
proj_offset_y)``): ``sid = source_to_object``, ``sdd = source_to_detector``, ``gantry_angle =
angle_deg``, ``proj_offset_x = -cor_offset * detector_pixel`` and ``proj_offset_y`` from
``optical_axis_row`` (both 0 here); RTK's rotation axis is its ``y`` and its projection images are
``(rows, cols)`` with ``v`` along ``+y`` (the verified mapping of projections and volumes is
below).  Both reconstructions perform the same number of voxel updates.

Accuracy (``--accuracy``): an asymmetric analytic phantom (ellipsoids off-centre in x, y and z, one
tilted) is projected exactly (``bonemet_dask.synth.line_integrals``) on the same scanner for the
260 x 0.8 deg short scan and a 450 x 0.8 deg full turn, reconstructed by ours
(``preweight_and_filter`` + ``backproject``, Parker weights on the short scan) and by RTK
(``ParkerShortScanImageFilter`` + ``FDKConeBeamReconstructionFilter``) with the same ramp window,
and both are scored against the voxelised phantom inside the field of view (voxels every
projection sees).  The axis mapping, verified on that phantom (the documented mapping must beat
all 47 other axis permutations / flips of RTK's volume by a wide margin, or the run fails):

* world: RTK ``(X, Y, Z) = (x, z, -y)`` (RTK's rotation axis ``Y`` is our ``z``, up) and RTK
  ``gantry_angle = angle_deg`` (RTK's source ``Ry(phi) (0, 0, SID)`` is ours ``Rz(theta)
  (0, -SOD, 0)``; same sense of rotation, RTK's ``u`` is our column direction);
* projections: RTK's ``v`` is ``+Y`` = up while our row 0 is the top, so RTK gets
  ``proj[:, ::-1, :]`` (origin ``-(n - 1) / 2 * pixel`` on both detector axes);
* volume: RTK's array ``[Z, Y, X]`` maps onto ours ``(slice, y, x)`` as
  ``flip(rtk.transpose(1, 0, 2), axes=(0, 1))`` (:func:`rtk_to_ours`).

Windows: RTK windows the half spectrum of length ``n = N/2 + 1`` (``N`` the padded FFT length,
``2 * cols`` rounded up to a power of two, the same as ours) over bins ``i < ncut =
round(n * cut)`` and zeroes the rest.  ``cut = (N/2) / (N/2 + 1)`` makes ``ncut = N/2``, so RTK's
Hann ``0.5 (1 + cos(pi i / ncut))`` and cosine are ours bin for bin; Hamming and Shepp-Logan then
differ from ours only at the Nyquist bin (RTK zeroes it).  ``--rtk-nominal-cut`` adds rows with
RTK's nominal ``cut = 1`` (``ncut = N/2 + 1``: the window is stretched by ``(N/2 + 1) / (N/2)`` and
is not zero at Nyquist).  Ram-Lak is unwindowed in both.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numba
import numpy as np

from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.kernels.fdk import WINDOWS, backproject, preweight_and_filter
from bonemet_dask.synth import line_integrals, voxelize
from bonemet_dask.synth.primitives import Phantom, Term, ellipsoid, rotation_matrix

FULL_SCAN_UPDATES = 260 * 2588 * 2428 * 2685  # 4.39e12 (reading/reconstruction-and-io-anchors.md)


def make_geometry(wide: bool = False) -> ConeGeometry:
    """The benchmark scanner: 256 x 384 pixels of 35 um, magnification 3.5 (10 um at the axis).

    ``wide``: the same detector binned to BoneMet's whole field of view (2688 rows of 35 um
    sampled by 256 pixels): the volume then spans 27 mm at 84 mm from the source, so a voxel's
    magnification varies by +-15% across it, as in a real scan, instead of +-2%.
    """
    pixel = 0.035 * 2688 / 256 if wide else 0.035
    return ConeGeometry(84.0, 294.0, pixel, 256, 384, np.arange(260) * 0.8)


def best_of(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def time_ours(geo: ConeGeometry, n: int, threads: int, repeat: int) -> float:
    rng = np.random.default_rng(0)
    idx = np.arange(geo.angles_deg.size)
    filtered = rng.standard_normal((idx.size, geo.n_rows, geo.n_cols)).astype(np.float32)
    grid = VolumeGrid((n, n, n), geo.voxel_size * 256 / n)
    numba.set_num_threads(threads)
    backproject(filtered[:2], geo, idx[:2], grid)  # warm-up
    out = np.zeros(grid.shape, np.float32)
    return best_of(lambda: backproject(filtered, geo, idx, grid, out=out), repeat)


def time_filter(geo: ConeGeometry, repeat: int) -> float:
    rng = np.random.default_rng(0)
    idx = np.arange(geo.angles_deg.size)
    proj = rng.random((idx.size, geo.n_rows, geo.n_cols), np.float32)
    return best_of(lambda: preweight_and_filter(proj, geo, idx), repeat)


def time_rtk(geo: ConeGeometry, n: int, threads: int, repeat: int) -> float | None:
    try:
        import itk
        from itk import RTK as rtk
    except ImportError:
        return None
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    image_type = itk.Image[itk.F, 3]
    geometry = rtk.ThreeDCircularProjectionGeometry.New()
    for angle in geo.angles_deg:
        geometry.AddProjection(geo.source_to_object, geo.source_to_detector, float(angle), 0, 0)
    rng = np.random.default_rng(0)
    data = rng.random((geo.angles_deg.size, geo.n_rows, geo.n_cols), np.float32)
    proj = itk.image_from_array(data)
    pix = geo.detector_pixel
    proj.SetSpacing([pix, pix, 1.0])
    proj.SetOrigin([-(geo.n_cols - 1) / 2 * pix, -(geo.n_rows - 1) / 2 * pix, 0.0])
    h = geo.voxel_size * 256 / n
    volume = rtk.ConstantImageSource[image_type].New()
    volume.SetOrigin([-(n - 1) / 2 * h] * 3)
    volume.SetSpacing([h] * 3)
    volume.SetSize([n] * 3)
    volume.SetConstant(0.0)

    def run() -> None:
        parker = rtk.ParkerShortScanImageFilter[image_type].New()
        parker.SetInput(proj)
        parker.SetGeometry(geometry)
        fdk = rtk.FDKConeBeamReconstructionFilter[image_type].New()
        fdk.SetInput(0, volume.GetOutput())
        fdk.SetInput(1, parker.GetOutput())
        fdk.SetGeometry(geometry)
        fdk.Update()

    return best_of(run, repeat)


# --------------------------------------------------------------------------------------------
# accuracy against RTK
# --------------------------------------------------------------------------------------------

ACCURACY_SCANS = {
    "short 260 x 0.8 deg": np.arange(260) * 0.8,
    "full 450 x 0.8 deg": np.arange(450) * 0.8,
}
RTK_WINDOW_SETTERS = {
    "hann": "SetHannCutFrequency",
    "hamming": "SetHammingFrequency",
    "cosine": "SetCosineCutFrequency",
    "shepp-logan": "SetSheppLoganCutFrequency",
}
MAPPING_MARGIN = 1.5  # the documented mapping beats every other by this factor (6.4x at 128^3)


def accuracy_phantom() -> Phantom:
    """Ellipsoids inside a 2.56 mm cube, off-centre along every axis (a flip or mirror shows)."""
    ph = Phantom()
    ph.add(Term(0.05, (ellipsoid((0.0, 0.0, 0.0), (1.0, 0.8, 0.9)),)))
    tilted = rotation_matrix((30.0, 0.0, 20.0))
    ph.add(Term(0.04, (ellipsoid((0.4, 0.25, 0.3), (0.2, 0.3, 0.25), tilted),)))
    ph.add(Term(-0.03, (ellipsoid((-0.35, -0.2, -0.3), (0.15, 0.15, 0.3)),)))
    ph.add(Term(0.06, (ellipsoid((0.0, -0.5, 0.5), (0.1, 0.1, 0.1)),)))
    return ph


def fov_mask(geo: ConeGeometry, grid: VolumeGrid) -> np.ndarray:
    """Voxels that every projection sees, one voxel in from the edge of that region."""
    D, tau, h = geo.source_to_object, geo.voxel_size, grid.voxel_size
    half_cols = min(geo.centre_col, geo.n_cols - 1 - geo.centre_col) * geo.detector_pixel
    r_fov = D * np.sin(np.arctan(half_cols / geo.source_to_detector))
    half_rows = min(geo.centre_row, geo.n_rows - 1 - geo.centre_row) * tau  # at the isocentre
    nz, ny, nx = grid.shape
    o = grid.origin
    x = o[0] + h * np.arange(nx)
    y = o[1] + h * np.arange(ny)
    z = o[2] - h * np.arange(nz)
    r = np.hypot(y[:, None], x[None, :])
    z_max = half_rows * (D - r) / D  # the ray to the top row is lowest at the near side
    return (r < r_fov - h)[None] & (np.abs(z)[:, None, None] < z_max[None] - h)


def rel_rmse(rec: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    d = rec[mask].astype(np.float64) - ref[mask]
    return float(np.sqrt((d**2).mean() / (ref[mask].astype(np.float64) ** 2).mean()))


def rtk_to_ours(volume_zyx: np.ndarray) -> np.ndarray:
    """RTK's volume array ``[Z, Y, X]`` as our ``(slice, y, x)``: ``(X, Y, Z) = (x, z, -y)``."""
    return np.flip(volume_zyx.transpose(1, 0, 2), axis=(0, 1))


def verify_rtk_mapping(volume_zyx: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> str:
    """Check that :func:`rtk_to_ours` is the one of 48 axis orders / flips that fits the phantom."""
    scores = []
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            candidate = volume_zyx.transpose(perm)
            axes = tuple(a for a in range(3) if flips[a])
            if axes:
                candidate = np.flip(candidate, axis=axes)
            scores.append((rel_rmse(candidate, truth, mask), perm, axes))
    scores.sort(key=lambda t: t[0])
    documented = rel_rmse(rtk_to_ours(volume_zyx), truth, mask)
    best, runner_up = scores[0], scores[1]
    if best[1:] != ((1, 0, 2), (0, 1)) or runner_up[0] < MAPPING_MARGIN * documented:
        raise RuntimeError(
            f"RTK axis mapping check failed: documented transpose (1, 0, 2) + flip (0, 1) scores "
            f"{documented:.4f}; best {best}, runner-up {runner_up}"
        )
    return (
        f"RTK axis mapping verified: transpose (1, 0, 2) then flip axes (0, 1) scores "
        f"{documented:.4f} against the phantom; the best of the other 47 axis orders/flips "
        f"(transpose {runner_up[1]}, flip {runner_up[2]}) scores {runner_up[0]:.4f}"
    )


def rtk_padded_length(n_cols: int, greatest_prime_factor: int) -> int:
    """RTK's FFT length: ``2 * n_cols`` rounded up to the next size with small prime factors."""

    def largest_prime(n: int) -> int:
        f, p = 2, 1
        while n > 1:
            while n % f == 0:
                n //= f
                p = f
            f += 1
        return p

    n = 2 * n_cols
    while largest_prime(n) > greatest_prime_factor:
        n += 1
    return n


def rtk_fdk(
    proj: np.ndarray, geo: ConeGeometry, grid: VolumeGrid, window: str, *, cut: str = "matched"
) -> np.ndarray:
    """RTK's Parker + FDK of our projections: RTK's volume array ``[Z, Y, X]``, float32."""
    import itk
    from itk import RTK as rtk

    image_type = itk.Image[itk.F, 3]
    geometry = rtk.ThreeDCircularProjectionGeometry.New()
    for angle in geo.angles_deg:
        geometry.AddProjection(geo.source_to_object, geo.source_to_detector, float(angle), 0, 0)
    image = itk.image_from_array(np.ascontiguousarray(proj[:, ::-1, :], dtype=np.float32))
    pix = geo.detector_pixel
    image.SetSpacing([pix, pix, 1.0])
    image.SetOrigin([-(geo.n_cols - 1) / 2 * pix, -(geo.n_rows - 1) / 2 * pix, 0.0])
    n, h = grid.shape[0], grid.voxel_size
    if len(set(grid.shape)) != 1 or any(grid.centre):
        raise ValueError(f"rtk_fdk needs a centred cubic grid, got {grid}")
    volume = rtk.ConstantImageSource[image_type].New()
    volume.SetOrigin([-(n - 1) / 2 * h] * 3)
    volume.SetSpacing([h] * 3)
    volume.SetSize([n] * 3)
    volume.SetConstant(0.0)
    parker = rtk.ParkerShortScanImageFilter[image_type].New()
    parker.SetInput(image)
    parker.SetGeometry(geometry)
    fdk = rtk.FDKConeBeamReconstructionFilter[image_type].New()
    fdk.SetInput(0, volume.GetOutput())
    fdk.SetInput(1, parker.GetOutput())
    fdk.SetGeometry(geometry)
    ramp = fdk.GetRampFilter()
    if window != "ramlak":
        half = rtk_padded_length(geo.n_cols, ramp.GetGreatestPrimeFactor()) // 2
        frequency = half / (half + 1) if cut == "matched" else 1.0
        getattr(ramp, RTK_WINDOW_SETTERS[window])(frequency)
    fdk.Update()
    return itk.array_from_image(fdk.GetOutput())


def ours_fdk(proj: np.ndarray, geo: ConeGeometry, grid: VolumeGrid, window: str) -> np.ndarray:
    idx = np.arange(geo.angles_deg.size)
    filtered = preweight_and_filter(proj, geo, idx, window=window)
    return backproject(filtered, geo, idx, grid)


def run_accuracy(n: int, windows: list[str], threads: int, nominal_cut: bool) -> None:
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    numba.set_num_threads(threads)
    base = make_geometry()
    grid = VolumeGrid((n, n, n), base.voxel_size * 256 / n)
    phantom = accuracy_phantom()
    truth = voxelize(phantom, grid, supersample=3)
    mask = fov_mask(base, grid)
    print(
        f"\n## FDK accuracy, ours vs RTK: {n}^3 voxels of {grid.voxel_size * 1000:.0f} um, "
        f"detector {base.n_rows}x{base.n_cols}, {threads} thread(s), "
        f"{int(mask.sum())} voxels in the FOV mask ({mask.mean():.0%})\n",
        flush=True,
    )
    rows = []
    verified = None
    for scan, angles in ACCURACY_SCANS.items():
        geo = ConeGeometry(
            base.source_to_object, base.source_to_detector, base.detector_pixel,
            base.n_rows, base.n_cols, angles,
        )  # fmt: skip
        proj = np.stack([line_integrals(phantom, geo, a) for a in angles]).astype(np.float32)
        for window in windows:
            started = time.perf_counter()
            ours = ours_fdk(proj, geo, grid, window)
            t_ours = time.perf_counter() - started
            cuts = ["matched", "nominal"] if nominal_cut and window != "ramlak" else ["matched"]
            for cut in cuts:
                started = time.perf_counter()
                raw = rtk_fdk(proj, geo, grid, window, cut=cut)
                t_rtk = time.perf_counter() - started
                if verified is None:  # once per run, on the first RTK volume
                    verified = verify_rtk_mapping(raw, truth, mask)
                theirs = rtk_to_ours(raw)
                e_ours = rel_rmse(ours, truth, mask)
                e_rtk = rel_rmse(theirs, truth, mask)
                diff = rel_rmse(ours, theirs, mask)
                peak = float(np.abs(ours - theirs)[mask].max() / np.abs(truth).max())
                ok = diff < 0.01 and e_ours <= e_rtk * 1.001
                if cut == "matched":
                    label, verdict = window, "yes" if ok else "NO"
                else:  # a different window: for the record, not a target
                    label, verdict = f"{window}, RTK cut 1.0 (not ours)", "n/a"
                rows.append(
                    f"| {scan} | {label} | {e_ours:.5f} | {e_rtk:.5f} | {diff:.2e} | {peak:.2e} "
                    f"| {t_ours:.1f} / {t_rtk:.1f} | {verdict} |"
                )
                print(rows[-1], flush=True)
    print(f"\n{verified}\n")
    print(
        "| scan | window | rel. RMSE ours vs phantom | rel. RMSE RTK vs phantom "
        "| rel. RMS diff ours vs RTK | max abs diff / max phantom | s ours / RTK "
        "| < 1 % and ours <= RTK |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-rtk", action="store_true")
    parser.add_argument("--wide", action="store_true", help="wide cone (see make_geometry)")
    parser.add_argument("--accuracy", action="store_true", help="ours vs RTK vs the phantom")
    parser.add_argument("--windows", nargs="+", default=["ramlak", "hann"], choices=WINDOWS)
    parser.add_argument(
        "--rtk-nominal-cut", action="store_true", help="also RTK windows at cut-off 1.0"
    )
    args = parser.parse_args()
    if args.accuracy:
        for n in args.sizes or [128]:
            run_accuracy(n, args.windows, max(args.threads), args.rtk_nominal_cut)
        return
    args.sizes = args.sizes or [128, 256]
    geo = make_geometry(args.wide)
    n_proj = geo.angles_deg.size
    print(f"detector {geo.n_rows}x{geo.n_cols} of {geo.detector_pixel:.4f} mm "
          f"({'wide' if args.wide else 'narrow'} cone), {n_proj} projections, "
          f"numba {numba.__version__}")  # fmt: skip
    seconds = time_filter(geo, args.repeat)
    print(f"preweight_and_filter (1 process): {seconds:.2f} s for {n_proj} projections")
    best_rate = 0.0
    for n in args.sizes:
        updates = n_proj * n**3
        for threads in args.threads:
            seconds = time_ours(geo, n, threads, args.repeat)
            rate = updates / seconds / 1e9
            best_rate = max(best_rate, rate)
            line = f"{n}^3 {threads} thread(s): ours {seconds:7.2f} s = {rate:.3f} GUPS"
            if not args.no_rtk:
                rtk_seconds = time_rtk(geo, n, threads, args.repeat)
                if rtk_seconds is None:
                    line += " | RTK: itk-rtk does not import (pip install itk-rtk)"
                else:
                    rtk_rate = updates / rtk_seconds / 1e9
                    line += (
                        f" | RTK FDK+Parker {rtk_seconds:7.2f} s = {rtk_rate:.3f} GUPS"
                        f" | ours/RTK speed {rtk_seconds / seconds:.2f}x"
                    )
            print(line, flush=True)
    hours = FULL_SCAN_UPDATES / (best_rate * 1e9) / 3600
    print(
        f"full BoneMet scan ({FULL_SCAN_UPDATES:.3g} updates) at {best_rate:.3f} GUPS: "
        f"{hours:.2f} h of backprojection"
    )


if __name__ == "__main__":
    main()
