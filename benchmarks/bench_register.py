"""Rigid resampling throughput and rigid registration accuracy/time, ours against scipy and ITK.

Run: ``.venv/bin/python benchmarks/bench_register.py [--size 256 320 320] [--voxel-um 40]
[--repeat 2] [--no-sitk] [--changes-only]``

Resampling: the same uint8 volume (smoothed noise, ``--size``) through the same 5-degree rigid
transform onto a grid of the same shape, trilinear, zero outside; Mvox/s = output voxels / s,
best of ``--repeat`` after a warm-up.  Ours: ``affine_resample`` (output-driven Dask graph,
64-slice output chunks, the threaded scheduler with 2 workers); scipy
``ndimage.affine_transform`` (1 core, its only mode); SimpleITK ``ResampleImageFilter`` with 2
threads.  All three outputs are compared with scipy's.

Registration: synthetic tibiae from :func:`bonemet_dask.synth.reference.posed_tibia` at
``--voxel-um`` with known poses; "time" pairs register a later week (lesion grown) to the
tibia's exactly registered week 0.  Peers on the same pairs: SimpleITK ``Euler3DTransform``
(initialised by ``CenteredTransformInitializer``, MOMENTS), multi-resolution (shrink 4/2/1,
smoothing 2/1/0 voxels), regular-step gradient descent, with Mattes mutual information and with
mean squares.  Errors: rotation (degrees) and displacement at the grid centre (voxels) of the
found map against the true one.  SimpleITK has no roll search, so poses beyond its capture range
fail there; that is the point of the multi-start search.

Changes left out: time registration of an injected tibia (the synthetic tree's mouse 851,
right, seed 0) on reconstruction-like images (FDK's blur and correlated noise), weeks 1-3
against week 0 at 80 and 40 um, plain (``exclude_changes=False``) and with the changed regions
left out (the default).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import dask
import dask.array as da
import numpy as np
import scipy.ndimage as ndi

from bonemet_dask.ops.register import register
from bonemet_dask.ops.resample import affine_resample, resample
from bonemet_dask.synth.reference import posed_tibia, reference_grid, reference_leg
from bonemet_dask.transform import RigidTransform

REVERSE = np.eye(3)[::-1]  # (slice, y, x) <-> ITK's (x, y, z)


def best_of(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up (numba compile, caches)
    best, out = np.inf, None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def resample_workload(size) -> tuple[np.ndarray, RigidTransform, np.ndarray, np.ndarray]:
    """Smoothed-noise uint8 volume of ``size``, a 5-degree rigid transform, its index affine."""
    rng = np.random.default_rng(0)
    volume = ndi.gaussian_filter(rng.random(size, dtype=np.float32), 2.0)
    volume = np.clip((volume - volume.mean()) / volume.std() * 40 + 128, 0, 255).astype(np.uint8)
    centre = np.array(size) / 2
    transform = RigidTransform.from_euler((5.0, 3.0, -2.0), (2.5, -1.5, 3.0), centre=centre)
    matrix, offset = transform.index_affine((1, 1, 1), (1, 1, 1))
    return volume, transform, matrix, offset


def sitk_resampler(volume: np.ndarray, transform: RigidTransform, threads: int = 2):
    """A call that resamples ``volume`` through ``transform`` with SimpleITK (trilinear, 0 out)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    euler = sitk.Euler3DTransform()
    euler.SetCenter(tuple(REVERSE @ transform.centre))
    euler.SetMatrix(tuple((REVERSE @ transform.rotation @ REVERSE).ravel()))
    euler.SetTranslation(tuple(REVERSE @ transform.translation))
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(image)
    f.SetTransform(euler)
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(0)
    f.SetNumberOfThreads(threads)
    return lambda: sitk.GetArrayFromImage(f.Execute(image))


def bench_resample(size, repeat: int, use_sitk: bool) -> list[tuple[str, float, float]]:
    volume, transform, matrix, offset = resample_workload(size)
    n = volume.size / 1e6
    rows = []
    t_scipy, ref = best_of(lambda: ndi.affine_transform(volume, matrix, offset, order=1), repeat)
    rows.append(("scipy.ndimage.affine_transform, 1 core", n / t_scipy, 0.0))
    source = da.from_array(volume, chunks=(64, *size[1:]))

    def ours():
        graph = affine_resample(source, matrix, offset, output_shape=size, chunks=(64, *size[1:]))
        with dask.config.set(scheduler="threads", num_workers=2):
            return graph.compute()

    t_ours, out = best_of(ours, repeat)
    rows.append(("bonemet_dask affine_resample, 2 threads", n / t_ours, _diff(out, ref)))
    if use_sitk:
        t_sitk, out = best_of(sitk_resampler(volume, transform), repeat)
        rows.append(("SimpleITK Resample, 2 threads", n / t_sitk, _diff(out, ref)))
    return rows


def _diff(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16))[2:-2, 2:-2, 2:-2].mean())


def pose_error(
    found: RigidTransform, truth: RigidTransform, shape, voxel_um
) -> tuple[float, float]:
    centre = np.array(shape) * voxel_um / 2
    angle = (found.inverse() @ truth).angle_deg
    shift = np.linalg.norm(found.apply(centre) - truth.apply(centre)) / voxel_um
    return angle, float(shift)


def sitk_register(moving, fixed, voxel_um: float, metric: str) -> RigidTransform:
    import SimpleITK as sitk

    def image(a):
        img = sitk.GetImageFromArray(np.asarray(a, np.float32))
        img.SetSpacing((voxel_um,) * 3)
        return img

    f_img, m_img = image(fixed), image(moving)
    initial = sitk.CenteredTransformInitializer(
        f_img, m_img, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    else:
        reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=300, gradientMagnitudeTolerance=1e-8
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    found = reg.Execute(f_img, m_img)
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(found).GetBackTransform())
    rotation = np.array(euler.GetMatrix()).reshape(3, 3)
    return RigidTransform(
        REVERSE @ rotation @ REVERSE,
        REVERSE @ np.array(euler.GetTranslation()),
        REVERSE @ np.array(euler.GetCenter()),
    )


def _sitk_in_child(queue, moving, fixed, voxel_um, metric) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    found = sitk_register(moving, fixed, voxel_um, metric)
    queue.put((found.rotation, found.translation, found.centre))


def sitk_register_capped(moving, fixed, voxel_um: float, metric: str, cap_s: float | None):
    """SimpleITK's registration, stopped after ``cap_s`` seconds (None: not timed out).

    Run in a forked child so that it can be stopped: ITK's optimiser cannot be interrupted.
    Returns the transform, or None when the cap was reached.
    """
    if cap_s is None:
        return sitk_register(moving, fixed, voxel_um, metric)
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_sitk_in_child, args=(queue, moving, fixed, voxel_um, metric))
    child.start()
    try:
        matrix, translation, center = queue.get(timeout=cap_s)
    except Exception:  # queue.Empty: the cap was reached
        child.kill()
        child.join()
        return None
    child.join()
    return RigidTransform(np.asarray(matrix), np.asarray(translation), np.asarray(center))


def bench_registration(
    voxel_um: float,
    use_sitk: bool,
    *,
    sitk_metrics: tuple[str, ...] = ("mattes", "meansquares"),
    sitk_cap_s: float | None = None,
    pairs: tuple[str, ...] = ("small roll 20 deg", "large roll 150 deg"),
) -> list[tuple]:
    """``(pair, method, angle error, shift error, seconds)`` of each registration.

    A SimpleITK run stopped at ``sitk_cap_s`` has NaN errors and ``sitk_cap_s`` seconds (a lower
    bound of its time).
    """
    leg = dataclasses.replace(reference_leg("left"), injected=True)
    shape = reference_grid("left", voxel_um).shape
    poses = {"small roll 20 deg": (20.0, 1.5, -1.0), "large roll 150 deg": (150.0, -2.0, 2.0)}
    made = []
    for name in pairs:
        week0, truth0 = posed_tibia("left", voxel_size_um=voxel_um, angles_deg=(-30.0, 1.0, 1.0),
                                    leg=leg, week=0, seed=1)  # fmt: skip
        fixed = resample(week0, truth0, shape=shape).compute()
        moving, truth = posed_tibia("left", voxel_size_um=voxel_um, angles_deg=poses[name],
                                    translation_mm=(0.2, -0.1, 0.1), leg=leg, week=3,
                                    seed=2)  # fmt: skip
        made.append((name, moving, fixed, truth))
    rows = []
    for name, moving, fixed, truth in made:
        started = time.perf_counter()
        ours = register(moving, fixed)
        seconds = time.perf_counter() - started
        rows.append((name, "bonemet_dask.register",
                     *pose_error(ours.transform, truth, shape, voxel_um), seconds))  # fmt: skip
        if use_sitk:
            for metric in sitk_metrics:
                started = time.perf_counter()
                found = sitk_register_capped(moving.values, fixed.values, voxel_um, metric,
                                             sitk_cap_s)  # fmt: skip
                seconds = time.perf_counter() - started
                errors = (np.nan, np.nan) if found is None else pose_error(found, truth, shape,
                                                                            voxel_um)  # fmt: skip
                rows.append((name, f"SimpleITK Euler3D {metric}", *errors, seconds))
    return rows


def bench_change_exclusion() -> list[tuple]:
    from bonemet_dask.synth import SynthConfig
    from bonemet_dask.synth.generate import plan_mice

    leg = plan_mice(SynthConfig(mice=1, weeks=4, seed=0))[0].legs["right"]
    rows = []
    for voxel_um, weeks in ((80.0, (1, 2, 3)), (40.0, (2,))):
        levels = tuple(v for v in (160.0, 80.0, 40.0) if v >= voxel_um)
        week0, truth0 = posed_tibia("right", voxel_size_um=voxel_um, angles_deg=(-20.0, 1.0, 2.0),
                                    leg=leg, week=0, seed=1, reconstructed=True)  # fmt: skip
        shape = reference_grid("right", voxel_um).shape
        fixed = resample(week0, truth0, shape=shape).compute()
        for week in weeks:
            moving, truth = posed_tibia("right", voxel_size_um=voxel_um,
                                        angles_deg=(15.0, -2.0, 1.0),
                                        translation_mm=(0.2, 0.1, -0.1), leg=leg, week=week,
                                        seed=2, reconstructed=True)  # fmt: skip
            for exclude in (False, True):
                started = time.perf_counter()
                found = register(moving, fixed, levels_um=levels, exclude_changes=exclude)
                seconds = time.perf_counter() - started
                angle, shift = pose_error(found.transform, truth, shape, voxel_um)
                rows.append((voxel_um, week, exclude, angle, shift, found.changed_fraction,
                             seconds))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(256, 320, 320))
    parser.add_argument("--voxel-um", type=float, default=40.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-sitk", action="store_true")
    parser.add_argument("--changes-only", action="store_true")
    args = parser.parse_args()
    if args.changes_only:
        print("| voxel (um) | week | changed regions | rotation error (deg) | shift error (voxels) "
              "| samples left out | seconds |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for voxel, week, exclude, angle, shift, fraction, seconds in bench_change_exclusion():
            print(f"| {voxel:g} | {week} | {'left out' if exclude else 'kept'} | {angle:.2f} | "
                  f"{shift:.2f} | {fraction:.1%} | {seconds:.1f} |")  # fmt: skip
        return
    use_sitk = not args.no_sitk
    if use_sitk:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    print(f"cores: {os.cpu_count()}; volume {tuple(args.size)} uint8\n")
    rows = bench_resample(tuple(args.size), args.repeat, use_sitk)
    scipy_rate = rows[0][1]
    print("| resampler | Mvox/s | x scipy | mean abs diff vs scipy (grey) |")
    print("|---|---|---|---|")
    for name, rate, diff in rows:
        print(f"| {name} | {rate:.1f} | {rate / scipy_rate:.2f} | {diff:.3f} |")
    if use_sitk:
        ours, sitk_rate = rows[1][1], rows[2][1]
        print(f"\nours / SimpleITK (2 threads each): {ours / sitk_rate:.2f}x")
    print(f"\nregistration, {args.voxel_um:g} um voxels (time registration, lesion grown)\n")
    print("| pair | method | rotation error (deg) | shift error (voxels) | seconds |")
    print("|---|---|---|---|---|")
    for pair, method, angle, shift, seconds in bench_registration(args.voxel_um, use_sitk):
        print(f"| {pair} | {method} | {angle:.3f} | {shift:.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
