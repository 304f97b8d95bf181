"""Dry-run arithmetic for the whole chain, stage by stage: bytes, objects, tasks, memory, hours.

:func:`plan_chain` sizes ``run`` from raw projections to RoI metrics over the published BoneMet
counts (or any counts) before a byte is read, from three things:

* the scan geometry and image sizes (the published ones, or a synthetic size preset);
* each stage's own sizing rules: the reconstruction's task graph is built for real over empty
  projections of the full size (so its tasks and largest task are the ones ``run`` would
  submit), the other stages' from their store layouts (shards, chunks);
* throughputs measured by ``benchmarks/bench_stages.py`` and ``benchmarks/gpu_check.py``, read
  from a rates file (the packaged ``stage-rates.yaml`` unless another is named), or from the
  JSON results of ``bonemet-dask bench`` (its ``chain`` stage measures the same rates; what the
  results lack is taken from the packaged file, and ``Rates.measured`` says which).

:func:`cluster_time` then answers how long N nodes of C cores and G GPUs take.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import yaml

from bonemet_dask import config
from bonemet_dask.io.store import ImageLayout
from bonemet_dask.ops.plan import PUBLISHED, scan_objects

if TYPE_CHECKING:
    import pandas as pd

    from bonemet_dask.geometry import ConeGeometry

__all__ = [
    "CHAIN_STAGES",
    "CPU_RATE_KEYS",
    "RATES_FILE",
    "ClusterTime",
    "Rates",
    "ScanSizes",
    "StagePlan",
    "cluster_time",
    "load_rates",
    "plan_chain",
    "reconstruction_graph",
    "stage_frame",
    "work_units",
]

RATES_FILE: Final = os.path.join(os.path.dirname(os.path.dirname(__file__)), "stage-rates.yaml")
"""The packaged throughputs (copied from ``benchmarks/bench_stages.py``'s output)."""

CHAIN_STAGES: Final = ("convert", "reconstruct", "segment", "register", "composite")
"""The stages of ``run`` from raw projections (``convert``: the projections only)."""

CPU_RATE_KEYS: Final = (
    "fdk_gups",
    "fdk_pixel_core_s_per_mpix",
    "fdk_voxel_core_s_per_mvox",
    "segment_core_s_per_mvox",
    "register_search_core_s_per_level",
    "register_other_core_s_per_mvox",
    "composite_core_s_per_mvox",
)
"""The keys of a rates file's ``cpu:`` block (``stage-rates.yaml`` says what each one means)."""


@dataclass(frozen=True)
class Rates:
    """Throughputs per core (and per GPU) that turn a stage's work into hours.

    Attributes
    ----------
    path : str
        The rates file they were read from.
    measured : dict
        Where each block was measured (free text per block).
    cpu : dict of str to float
        The ``cpu:`` block of the file (see ``stage-rates.yaml`` for each key's meaning).
    convert_mb_per_core_s, stored_per_png : dict of str to float
        PNG megabytes converted per core-second, and stored bytes per PNG byte, by kind
        (``"ct"``, ``"projections"``).
    gpu_fdk_gups : float or None
        Backprojection updates per GPU-second (None: no GPU figure).
    gpu_device : str or None
        The GPU that figure comes from.
    """

    path: str
    measured: dict[str, Any]
    cpu: dict[str, float]
    convert_mb_per_core_s: dict[str, float]
    stored_per_png: dict[str, float]
    gpu_fdk_gups: float | None = None
    gpu_device: str | None = None


def load_rates(path: str | os.PathLike[str] | None = None) -> Rates:
    """Read a rates file (default :data:`RATES_FILE`), or ``bonemet-dask bench`` results.

    Parameters
    ----------
    path : str or path-like, optional
        A rates YAML file (``stage-rates.yaml``'s keys), or the JSON that ``bonemet-dask bench
        --stages chain[,convert] --out FILE`` wrote: the ``cpu:`` rates come from its ``chain``
        stage, the CT conversion rate from its ``convert`` stage when it ran, and every rate the
        results lack from the packaged file (``measured`` names both sources).

    Raises
    ------
    ValueError
        If a rate is missing or not a positive number (the message names the key and the file),
        or bench results have no ``chain`` stage.
    """
    path = os.fspath(path or RATES_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}  # JSON is YAML
    except FileNotFoundError:
        raise FileNotFoundError(
            f"rates file {path!r} not found; write one with `bonemet-dask bench --stages "
            "chain,convert --out FILE` (or benchmarks/bench_stages.py --out FILE), or leave "
            "--rates out for the packaged one"
        ) from None
    if isinstance(raw, dict) and raw.get("suite") == "bonemet-dask bench":
        raw = _rates_from_bench(raw, path)

    def positive(block: dict, key: str, where: str) -> float:
        value = (block or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{path}: {where}.{key}={value!r} must be a positive number")
        return float(value)

    cpu = {key: positive(raw.get("cpu"), key, "cpu") for key in CPU_RATE_KEYS}
    convert = raw.get("convert") or {}
    kinds = ("ct", "projections")
    gpu = raw.get("gpu") or {}
    return Rates(
        path=path,
        measured=dict(raw.get("measured") or {}),
        cpu=cpu,
        convert_mb_per_core_s={
            k: positive(convert.get("mb_per_core_s"), k, "convert.mb_per_core_s") for k in kinds
        },
        stored_per_png={
            k: positive(convert.get("stored_per_png"), k, "convert.stored_per_png") for k in kinds
        },
        gpu_fdk_gups=positive(gpu, "fdk_gups", "gpu") if gpu.get("fdk_gups") else None,
        gpu_device=gpu.get("device"),
    )


@dataclass(frozen=True)
class ScanSizes:
    """The image sizes one chain works on (one projection scan, one tibia).

    Built by :meth:`published` (BoneMet's sizes) or :meth:`synthetic` (a generator preset).
    """

    geometry: ConeGeometry
    recon: tuple[int, int, int]
    seg: tuple[int, int, int]
    regist: tuple[int, int, int]
    roi: tuple[int, int, int]
    voxel_um: float
    png_bytes: dict[str, float] = field(default_factory=dict)
    """PNG bytes of one scan of each component (stored bytes follow from them)."""

    @classmethod
    def synthetic(cls, size: str = "full") -> ScanSizes:
        """The sizes of a synthetic preset (``"full"`` is the published scanner and grids)."""
        from bonemet_dask.synth.config import SynthConfig

        cfg = SynthConfig(size=size)
        f = cfg.linear_scale
        scale = {
            name: tuple(max(4, round(n * f)) for n in PUBLISHED[name][1]) for name in PUBLISHED
        }
        png = {name: PUBLISHED[name][3] / PUBLISHED[name][0] * f**3 for name in PUBLISHED}
        return cls(
            geometry=cfg.geometry(),
            recon=cfg.recon_grid().shape,
            seg=scale["seg_ct"],
            regist=scale["regist_ct"],
            roi=scale["roi_ct"],
            voxel_um=cfg.voxel_size * 1000,
            png_bytes=png,
        )

    @classmethod
    def published(cls) -> ScanSizes:
        """BoneMet's scanner and image sizes (DESIGN.md section 1)."""
        return cls.synthetic("full")


def work_units(stage: str, sizes: ScanSizes) -> dict[str, float]:
    """The work of one unit of a stage, in the units its rates are per.

    One unit is a projection scan (``convert``, ``reconstruct``, ``segment``: both legs) or a
    tibia-week (``register``, ``composite``).  Keys: ``updates`` (projections x voxels),
    ``mpix`` (projection pixels / 1e6), ``mvox_in`` / ``mvox_out`` (voxels read / written,
    millions), ``levels`` (registration pyramid levels: those not finer than the voxel).
    """
    g = sizes.geometry
    n_proj = int(g.angles_deg.size)
    if stage in ("convert", "reconstruct"):
        return {
            "updates": float(n_proj) * float(np.prod(sizes.recon)),
            "mpix": n_proj * g.n_rows * g.n_cols / 1e6,
            "mvox_out": float(np.prod(sizes.recon)) / 1e6,
        }
    if stage == "segment":
        return {"mvox_in": float(np.prod(sizes.recon)) / 1e6}
    if stage == "register":
        from bonemet_dask.ops.register import LEVELS_UM  # levels finer than a voxel: dropped

        levels = sum(level >= sizes.voxel_um * 0.999 for level in LEVELS_UM)
        return {"levels": float(max(1, levels)), "mvox_out": float(np.prod(sizes.regist)) / 1e6}
    if stage == "composite":
        return {"mvox_in": 2 * float(np.prod(sizes.regist)) / 1e6}
    raise ValueError(f"stage={stage!r} is not one of {', '.join(CHAIN_STAGES)}")


@dataclass(frozen=True)
class StagePlan:
    """Planned work of one stage over the whole dataset.

    Attributes
    ----------
    stage : str
    units : int
        Projection scans or tibia-weeks.
    unit : str
        ``"scan"`` or ``"tibia-week"``.
    bytes_in, bytes_out : float
        Stored bytes read and written.
    objects : int
        Stored objects written (shards and metadata).
    tasks : int
        Dask tasks (reconstruction: its real graph; others: reads, compute and writes of the
        layouts).
    peak_task_bytes : int
        Memory the largest task holds (inputs, working copies and output).
    core_hours : float
        On CPUs only.
    gpu_hours : float
        The part that moves to a GPU (0: none of it).
    host_core_hours : float
        What stays on the CPUs when that part runs on GPUs.
    """

    stage: str
    units: int
    unit: str
    bytes_in: float
    bytes_out: float
    objects: int
    tasks: int
    peak_task_bytes: int
    core_hours: float
    gpu_hours: float = 0.0
    host_core_hours: float = 0.0


def _rates_from_bench(results: dict[str, Any], path: str) -> dict[str, Any]:
    """A rates file's blocks from ``bonemet-dask bench`` results; the packaged file fills gaps."""
    chain = (results.get("stages") or {}).get("chain")
    if not chain or not (chain.get("rates") or {}).get("cpu"):
        raise ValueError(
            f"{path}: these bench results have no chain stage rates; run `bonemet-dask bench "
            "--stages chain,convert --size medium --out FILE` and give that FILE"
        )
    with open(RATES_FILE, encoding="utf-8") as handle:
        packaged = yaml.safe_load(handle)
    measured = chain["rates"]["cpu"]
    taken = sorted(set(CPU_RATE_KEYS) - set(measured))
    where = f"bonemet-dask bench --size {results.get('size')} ({results.get('started', '?')})"
    notes = {
        "cpu": f"{where}, chain stage"
        + (f"; from the packaged file: {', '.join(taken)}" if taken else ""),
        "gpu": (packaged.get("measured") or {}).get("gpu", "packaged file"),
    }
    convert = dict(packaged["convert"])
    png = (results["stages"].get("convert") or {}).get("png_mb_per_core_s")
    if png:
        convert["mb_per_core_s"] = {**convert["mb_per_core_s"], "ct": png}
        notes["convert"] = f"{where}, convert stage (CT); projections and sizes: packaged file"
    else:
        notes["convert"] = (packaged.get("measured") or {}).get("convert", "packaged file")
    return {
        "measured": notes,
        "cpu": {key: measured.get(key, packaged["cpu"].get(key)) for key in CPU_RATE_KEYS},
        "convert": convert,
        "gpu": packaged.get("gpu") or {},
    }


def _layout(shape: tuple[int, int, int], kind: str = "ct", dtype: str = "uint8") -> ImageLayout:
    from bonemet_dask.ops.convert import default_slices_per_shard

    per_shard = default_slices_per_shard(kind, shape, dtype)
    return ImageLayout.default_for(
        kind, shape, dtype, voxel_size_um=1.0, slices_per_shard=per_shard
    )


def _recon_layout(sizes: ScanSizes) -> ImageLayout:
    """The reconstruction stage's layout: 64-slice shards, one or more FDK slabs each."""
    return ImageLayout.default_for("ct", sizes.recon, "uint8", voxel_size_um=1.0)


def _stage_layout(shape: tuple[int, int, int]) -> ImageLayout:
    """The layout segment, register and composite write (:meth:`Stage.output_layout`)."""
    from bonemet_dask.ops.segment_store import Segment

    return Segment().output_layout(shape, 1.0)


def _chunks_in(layout: ImageLayout) -> int:
    return math.prod(math.ceil(n / c) for n, c in zip(layout.shape, layout.chunks, strict=True))


def _shard_bytes(layout: ImageLayout, itemsize: int = 1) -> int:
    return layout.slices_per_shard * layout.shape[1] * layout.shape[2] * itemsize


STAGE_ARRAYS: Final = {
    "convert": (1, 0),
    "reconstruct": (1, 0),
    "segment": (1, 1),
    "register": (1, 0),
    "composite": (2, 1),
}
"""Image and label arrays each stage writes per scan group: the segmentation's mask is a label
of its image; the composite group holds the composite, its ``greyscale`` and the composite
again as a label (``docs/store-layout.md``)."""


def _objects(stage: str, layout: ImageLayout) -> int:
    images, labels = STAGE_ARRAYS[stage]
    return scan_objects(layout.n_shards, images=images, labels=labels)


def reconstruction_graph(sizes: ScanSizes) -> tuple[int, int]:
    """Tasks and largest task (bytes) of one scan's FDK stage graph, built over empty data.

    The graph is :func:`bonemet_dask.ops.reconstruct.reconstruct`'s own, on lazy zeros chunked as
    the store holds projections, plus one window and one write task per shard and the finish.
    """
    import dask.array as da
    import xarray as xr

    from bonemet_dask.geometry import VolumeGrid
    from bonemet_dask.ops.reconstruct import reconstruct, slab_slices_in_shard

    g = sizes.geometry
    shape = (int(g.angles_deg.size), g.n_rows, g.n_cols)
    projections = _layout(shape, "projections", "uint16")
    data = da.zeros(shape, dtype=np.uint16, chunks=projections.chunks)
    lazy = xr.DataArray(data, dims=("angle", "row", "col"))
    out = _recon_layout(sizes)
    grid = VolumeGrid(sizes.recon, g.voxel_size)
    slab = slab_slices_in_shard(out.slices_per_shard, grid, g)
    volume = reconstruct(lazy, g, grid=grid, slab_slices=slab, air=1.0, backend="numpy")
    # + the window of each slab, the join of a shard's slabs where a shard holds several (the
    # engine's rechunk-merge), the write of each shard, the finish, and the store array's own
    # task (dask's "original-" key, which lazy zeros do not have)
    slabs = len(volume.data.chunks[0])
    joins = out.n_shards if slabs > out.n_shards else 0
    tasks = len(volume.data.__dask_graph__()) + slabs + joins + out.n_shards + 1 + 1
    largest = int(volume.attrs["bonemet"]["provenance"]["largest_task_bytes"])
    # the write task holds its shard's uint8 slab beside the float slab it is windowed from
    largest = max(largest, 5 * _shard_bytes(out))
    return tasks, largest


def plan_chain(
    *,
    sizes: ScanSizes | None = None,
    scans: int | None = None,
    rates: Rates | str | os.PathLike[str] | None = None,
) -> list[StagePlan]:
    """Plan ``run`` from raw projections to metrics: one :class:`StagePlan` per stage.

    Parameters
    ----------
    sizes : ScanSizes, optional
        Image sizes (default: the published ones).
    scans : int, optional
        Projection scans, each giving two tibiae (default the published 5,105).
    rates : Rates or path, optional
        Throughputs (default the packaged :data:`RATES_FILE`).
    """
    sizes = sizes or ScanSizes.published()
    scans = int(PUBLISHED["rotation_xray"][0] if scans is None else scans)
    if scans < 1:
        raise ValueError(f"scans={scans} must be >= 1")
    rates = rates if isinstance(rates, Rates) else load_rates(rates)
    tibiae = 2 * scans
    cpu, hour = rates.cpu, 3600.0
    png = sizes.png_bytes
    stored = {
        name: png[name] * rates.stored_per_png["projections" if name == "rotation_xray" else "ct"]
        for name in png
    }
    budget = config.memory_budget_bytes()
    plans: list[StagePlan] = []

    g = sizes.geometry
    proj_shape = (int(g.angles_deg.size), g.n_rows, g.n_cols)
    proj = _layout(proj_shape, "projections", "uint16")
    plans.append(StagePlan(
        "convert", scans, "scan", png["rotation_xray"] * scans, stored["rotation_xray"] * scans,
        scans * _objects("convert", proj), scans * (proj.n_shards + 1), 2 * _shard_bytes(proj, 2),
        scans * png["rotation_xray"] / 1e6 / rates.convert_mb_per_core_s["projections"] / hour,
    ))  # fmt: skip

    work = work_units("reconstruct", sizes)
    tasks, largest = reconstruction_graph(sizes)
    recon = _recon_layout(sizes)
    backprojection = work["updates"] / (cpu["fdk_gups"] * 1e9)
    other = (work["mpix"] * cpu["fdk_pixel_core_s_per_mpix"]
             + work["mvox_out"] * cpu["fdk_voxel_core_s_per_mvox"])  # fmt: skip
    gpu = work["updates"] / (rates.gpu_fdk_gups * 1e9) if rates.gpu_fdk_gups else 0.0
    plans.append(StagePlan(
        "reconstruct", scans, "scan", stored["rotation_xray"] * scans, stored["recon_ct"] * scans,
        scans * _objects("reconstruct", recon), scans * tasks, largest,
        scans * (backprojection + other) / hour, scans * gpu / hour,
        scans * other / hour if gpu else 0.0,
    ))  # fmt: skip

    seg = _stage_layout(sizes.seg)
    box_chunks = _chunks_in(ImageLayout.default_for("ct", sizes.seg, "uint8", voxel_size_um=1.0))
    seg_tasks = _chunks_in(recon) + 2 * (box_chunks + 2 * seg.n_shards + 1)
    plans.append(StagePlan(
        "segment", scans, "scan", stored["recon_ct"] * scans, 2 * stored["seg_ct"] * scans,
        2 * scans * _objects("segment", seg), scans * seg_tasks,
        max(3 * _shard_bytes(seg), 2 * _shard_bytes(recon) // recon.n_shards),
        scans * work_units("segment", sizes)["mvox_in"] * cpu["segment_core_s_per_mvox"] / hour,
    ))  # fmt: skip

    regist = _stage_layout(sizes.regist)
    work = work_units("register", sizes)
    register_s = (work["levels"] * cpu["register_search_core_s_per_level"]
                  + work["mvox_out"] * cpu["register_other_core_s_per_mvox"])  # fmt: skip
    search_bytes = min(budget, int(np.prod(sizes.seg)) * 2)  # the finest level and its copy
    plans.append(StagePlan(
        "register", tibiae, "tibia-week", stored["seg_ct"] * tibiae, stored["regist_ct"] * tibiae,
        tibiae * _objects("register", regist), tibiae * (box_chunks + 2 * regist.n_shards + 8),
        max(search_bytes, 2 * _shard_bytes(regist)), tibiae * register_s / hour,
    ))  # fmt: skip

    roi = _stage_layout(sizes.roi)
    regist_chunks = _chunks_in(ImageLayout.default_for("ct", sizes.regist, "uint8",
                                                       voxel_size_um=1.0))  # fmt: skip
    plans.append(StagePlan(
        "composite", tibiae, "tibia-week", 2 * stored["regist_ct"] * tibiae,
        2 * stored["roi_ct"] * tibiae, tibiae * _objects("composite", roi),
        tibiae * (regist_chunks + 3 * roi.n_shards + 4), 6 * _shard_bytes(roi),
        tibiae * work_units("composite", sizes)["mvox_in"] * cpu["composite_core_s_per_mvox"]
        / hour,
    ))  # fmt: skip
    return plans


@dataclass(frozen=True)
class ClusterTime:
    """Wall time of a chain plan on ``nodes`` x (``cores`` cores, ``gpus`` GPUs).

    Attributes
    ----------
    stage_hours : dict of str to float
        Each stage run on its own over the whole cluster.
    sequential_hours : float
        The stages one after the other.
    overlapped_hours : float
        Mice in flight at different stages at once (``run``'s concurrency): the busier of the
        CPUs and the GPUs bounds it.
    bound : str
        The stage with the longest wall time.
    bytes_per_s : float
        Stored bytes read and written per second at the overlapped wall time.
    workers_per_node : int
        Concurrent tasks per node: cores, or fewer when the node's memory holds fewer of the
        largest tasks.
    """

    stage_hours: dict[str, float]
    sequential_hours: float
    overlapped_hours: float
    bound: str
    bytes_per_s: float
    workers_per_node: int


def cluster_time(
    plans: list[StagePlan],
    *,
    nodes: int,
    cores: int,
    gpus: int = 0,
    node_memory: int | None = None,
) -> ClusterTime:
    """How long ``nodes`` nodes of ``cores`` cores (and ``gpus`` GPUs each) take for ``plans``.

    A stage with a GPU part runs it on the GPUs when ``gpus > 0`` (its host part stays on the
    cores).  With ``node_memory`` (bytes), each node runs at most as many tasks at once as its
    memory holds of the largest task of the chain.
    """
    for name, value, least in (("nodes", nodes, 1), ("cores", cores, 1), ("gpus", gpus, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}={value!r} must be an int >= {least}")
    workers = cores
    if node_memory is not None:
        peak = max(p.peak_task_bytes for p in plans)
        workers = max(1, min(cores, int(node_memory // peak)))
    slots, gpu_slots = nodes * workers, nodes * gpus
    stage_hours: dict[str, float] = {}
    cpu_total = gpu_total = 0.0
    for p in plans:
        if gpus and p.gpu_hours:
            cpu_part, gpu_part = p.host_core_hours / slots, p.gpu_hours / gpu_slots
        else:
            cpu_part, gpu_part = p.core_hours / slots, 0.0
        stage_hours[p.stage] = max(cpu_part, gpu_part)
        cpu_total += cpu_part
        gpu_total += gpu_part
    overlapped = max(cpu_total, gpu_total)
    moved = sum(p.bytes_in + p.bytes_out for p in plans)
    return ClusterTime(
        stage_hours=stage_hours,
        sequential_hours=sum(stage_hours.values()),
        overlapped_hours=overlapped,
        bound=max(stage_hours, key=stage_hours.__getitem__),
        bytes_per_s=moved / max(overlapped * 3600, 1e-9),
        workers_per_node=workers,
    )


def stage_frame(plans: list[StagePlan], time: ClusterTime | None = None) -> pd.DataFrame:
    """The plans as a table with a total row (and each stage's wall hours on a cluster)."""
    import pandas as pd

    rows = [
        {
            "stage": p.stage,
            "units": p.units,
            "unit": p.unit,
            "bytes_in": p.bytes_in,
            "bytes_out": p.bytes_out,
            "objects": p.objects,
            "tasks": p.tasks,
            "peak_task_bytes": p.peak_task_bytes,
            "core_hours": p.core_hours,
            "gpu_hours": p.gpu_hours,
            "host_core_hours": p.host_core_hours,
            **({"wall_hours": time.stage_hours[p.stage]} if time else {}),
        }
        for p in plans
    ]
    frame = pd.DataFrame(rows)
    total = frame.drop(columns=["stage", "unit", "units"]).sum()
    total["peak_task_bytes"] = frame["peak_task_bytes"].max()
    if time:
        total["wall_hours"] = time.overlapped_hours
    frame.loc[len(frame)] = {"stage": "total", "unit": "", "units": np.nan, **total.to_dict()}
    return frame
