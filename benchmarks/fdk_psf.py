"""The blur and noise our FDK (NRecon's settings) puts on the synthetic phantom, in voxels.

Run: ``.venv/bin/python benchmarks/fdk_psf.py [--sizes tiny small medium] [--json]``, or on
slabs of reconstructions already made: ``.venv/bin/python benchmarks/fdk_psf.py --workdir DIR
--size medium --slabs 200:300 560:660`` (``DIR`` an ``accuracy_chain.py --workdir``: its
``from_projections.zarr`` is our FDK, its ``from_recon.zarr`` the generator's Recon-CT).

For each size: one synthetic scan's projections are converted and reconstructed to float
attenuation (Hamming 0.54, the grid and window of its Recon-CT ``.log``: what ``run`` does), and
the phantom is voxelised on the same grid.  The blur is fitted on the reconstruction of the
same scan's noise-free line integrals (the Poisson noise would otherwise dominate the fit at
40 um): a separable Gaussian ``(sigma_z, sigma_xy)`` plus gain and offset, least squares over
the volume's central part, grid search then refined.  The noise is the residual of the real
(noisy) reconstruction against that model, in soft tissue far from edges: its standard
deviation and its lag-1 correlation along each axis, expressed as the sigma of a Gaussian that
filtered white noise would need to have it (``exp(-1 / (4 sigma**2))`` at lag 1).  These are the
constants ``bonemet_dask.synth.config.FDK_BLUR_SIGMA`` and ``FDK_NOISE`` come from: the
generator applies them to its voxelised image products so that they look like a reconstruction.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from scipy import ndimage, optimize

from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.reconstruct import reconstruct
from bonemet_dask.ops.reconstruct_store import reconstruct_store
from bonemet_dask.synth import SynthConfig, generate
from bonemet_dask.synth.anatomy import MU_SOFT, hindlimb_phantom, pose_matrix, random_pose
from bonemet_dask.synth.generate import _rng, plan_mice
from bonemet_dask.synth.render import line_integrals, voxelize

SCAN = "recon_ct/851/both/week0"


def scan_volumes(workdir: Path, size: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our FDK of one synthetic scan, of its noise-free line integrals, and the phantom."""
    config = SynthConfig(mice=1, weeks=1, size=size, seed=0,
                         components=("rotation_xray", "recon_ct"))  # fmt: skip
    generate(str(workdir / "src"), config)
    store = str(workdir / "store.zarr")
    convert(workdir / "src", store, components="rotation_xray")
    reconstruct_store(store, keep_float=True)
    fdk = zarr.open_group(store, mode="r")[SCAN]["attenuation"][:]
    plan = plan_mice(config)[0]
    pose = random_pose(_rng(config, plan.number, 0, 1))
    world = hindlimb_phantom(plan.legs, 0, pose_matrix(pose))
    truth = voxelize(world.pack(), config.recon_grid(), supersample=4)
    geometry = config.geometry()
    packed = world.pack()
    clean = np.stack([
        line_integrals(packed, geometry, float(a), subpixels=config.detector_subpixels)
        for a in geometry.angles_deg
    ])  # fmt: skip
    projections = xr.DataArray(clean.astype(np.float32), dims=("angle", "row", "col"),
                               attrs={"kind": "line_integral"})  # fmt: skip
    noiseless = reconstruct(projections, geometry, grid=config.recon_grid()).values
    assert fdk.shape == truth.shape == noiseless.shape, (fdk.shape, truth.shape)
    return fdk, noiseless, truth


def central(
    volume: np.ndarray, fraction: float = 0.7, limit: int = 160, ends: float = 0.08
) -> tuple[slice, ...]:
    """The slices but the ``ends`` at each end, and in-plane the central ``fraction``.

    Slices: the knee and the ankle are the only edges across the slices (the bones run along
    them), so the fit needs them; but the outermost slices of a cone-beam volume lack data (the
    RMSE there is 3x the rest at medium) and would pass for blur.  In-plane: the central
    ``fraction`` (at most ``limit`` voxels), away from the field-of-view edge.
    """
    cut = round(volume.shape[0] * ends)
    out = [slice(cut, volume.shape[0] - cut)]
    for n in volume.shape[1:]:
        m = min(limit, max(8, int(n * fraction)))
        out.append(slice((n - m) // 2, (n - m) // 2 + m))
    return tuple(out)


def gaussian_fit(
    target: np.ndarray, source: np.ndarray, inner: tuple[slice, ...], grid: list, xatol: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """Sigmas (z, xy), mean squared error and (gain, offset) of ``source`` blurred to ``target``.

    ``source[inner]`` after the blur is compared with ``target``; a grid search over ``grid``,
    then Nelder-Mead.
    """
    flat = target.ravel()

    def residual(sigmas):
        blurred = ndimage.gaussian_filter(source, (sigmas[0], sigmas[1], sigmas[1]))[inner]
        design = np.stack([blurred.ravel(), np.ones(blurred.size)], axis=1)
        coef, *_ = np.linalg.lstsq(design, flat, rcond=None)
        return float(np.mean((design @ coef - flat) ** 2)), coef

    start = min(grid, key=lambda s: residual(s)[0])
    best = optimize.minimize(lambda s: residual(np.abs(s))[0], start, method="Nelder-Mead",
                             options={"xatol": xatol, "fatol": 1e-14})  # fmt: skip
    sigmas = np.abs(best.x)
    mse, coef = residual(sigmas)
    return sigmas, mse, coef


def fit_blur(fdk: np.ndarray, truth: np.ndarray) -> dict:
    """Separable Gaussian (z, xy) with gain and offset, fitted to the FDK volume."""
    box = central(truth)
    pad = tuple(slice(max(0, s.start - 8), min(n, s.stop + 8))
                for s, n in zip(box, truth.shape, strict=True))  # fmt: skip
    inner = tuple(slice(s.start - p.start, s.start - p.start + (s.stop - s.start))
                  for s, p in zip(box, pad, strict=True))  # fmt: skip
    grid = [(z, xy) for z in np.arange(0.3, 2.01, 0.2) for xy in np.arange(0.3, 2.01, 0.2)]
    sigmas, mse, (gain, offset) = gaussian_fit(fdk[box].astype(np.float64),
                                               truth[pad].astype(np.float64), inner, grid,
                                               xatol=0.01)  # fmt: skip
    return {"sigma_z": round(float(sigmas[0]), 3), "sigma_xy": round(float(sigmas[1]), 3),
            "gain": round(float(gain), 4), "offset_per_mm": round(float(offset), 5),
            "rmse_per_mm": float(np.sqrt(mse)),
            "rmse_unblurred_per_mm": float(np.sqrt(np.mean((fdk[box] - truth[box]) ** 2))),
            }  # fmt: skip


def fit_noise(fdk: np.ndarray, truth: np.ndarray, blur: dict) -> dict:
    """Noise of the FDK volume in soft tissue far from any edge: std and correlation."""
    sigmas = (blur["sigma_z"], blur["sigma_xy"], blur["sigma_xy"])
    model = blur["gain"] * ndimage.gaussian_filter(truth.astype(np.float64), sigmas)
    residual = fdk - model - blur["offset_per_mm"]
    soft = np.abs(truth - MU_SOFT) < 1e-6
    soft = ndimage.binary_erosion(soft, iterations=4)
    out = {"std_per_mm": float(residual[soft].std()), "voxels": int(soft.sum())}
    for axis, name in enumerate(("z", "y", "x")):
        a = np.take(residual, range(residual.shape[axis] - 1), axis=axis)
        b = np.take(residual, range(1, residual.shape[axis]), axis=axis)
        both = np.take(soft, range(soft.shape[axis] - 1), axis=axis) & np.take(
            soft, range(1, soft.shape[axis]), axis=axis
        )
        rho = float(np.corrcoef(a[both], b[both])[0, 1])
        out[f"lag1_corr_{name}"] = round(rho, 3)
        out[f"sigma_{name}"] = (
            round(float(np.sqrt(-1 / (4 * np.log(rho)))), 3) if 0 < rho < 1 else 0.0
        )
    return out


def fit_slab(volume: np.ndarray, phantom: np.ndarray) -> dict:
    """Separable Gaussian blur (z, xy), gain and offset of one slab against the phantom.

    In-plane the central 300 voxels, and 8 slices off each end of the slab (the blur's reach).
    """
    n = phantom.shape
    inner = (slice(8, n[0] - 8),
             *(slice(max(0, (m - 300) // 2), max(0, (m - 300) // 2) + min(300, m))
               for m in n[1:]))  # fmt: skip
    grid = [(z, xy) for z in (0.4, 0.6, 0.8, 1.0, 1.3, 1.6) for xy in (0.6, 0.8, 1.0)]
    sigmas, mse, (gain, _) = gaussian_fit(volume[inner], phantom, inner, grid, xatol=0.02)
    return {"sigma_z": round(float(sigmas[0]), 3), "sigma_xy": round(float(sigmas[1]), 3),
            "gain": round(float(gain), 4), "rmse_per_mm": float(np.sqrt(mse))}  # fmt: skip


def slab_fits(workdir: Path, size: str, slabs: list[str]) -> list[dict]:
    """Our FDK and the generator's Recon-CT of mouse 851's week 0, fitted slab by slab."""
    from bonemet_dask.synth.config import WINDOW_MAX_PER_MM

    truth = json.loads((workdir / "src" / "synthetic_truth.json").read_text())
    config = SynthConfig(**{k: truth["generator"]["config"][k]
                            for k in ("mice", "weeks", "size", "seed")})  # fmt: skip
    assert config.size == size, (config.size, size)
    world = hindlimb_phantom(plan_mice(config)[0].legs, 0,
                             pose_matrix(truth["mice"]["851"]["weeks"]["0"]["pose"]))  # fmt: skip
    rows = []
    for text in slabs:
        lo, hi = (int(v) for v in text.split(":"))
        phantom = voxelize(world.pack(), config.recon_grid().slab(lo, hi), supersample=2)
        row = {"size": size, "slab": text}
        for name in ("projections", "recon"):
            group = zarr.open_group(str(workdir / f"from_{name}.zarr"), mode="r")
            grey = group["recon_ct/851/both/week0/0"][lo:hi].astype(np.float64)
            row[name] = fit_slab(grey * (WINDOW_MAX_PER_MM / 255), phantom.astype(np.float64))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--size", default="medium")
    parser.add_argument("--slabs", nargs="+", default=["200:300", "560:660"])
    args = parser.parse_args()
    if args.workdir:
        slab_fits(args.workdir, args.size, args.slabs)
        return
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            fdk, noiseless, truth = scan_volumes(Path(tmp), size)
        blur = fit_blur(noiseless, truth)
        rows.append({"size": size, "shape": list(fdk.shape), "blur": blur,
                     "noise": fit_noise(fdk, truth, blur)})  # fmt: skip
        if not args.json:
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
