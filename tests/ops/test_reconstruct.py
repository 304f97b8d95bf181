"""The FDK graph: chunking changes nothing, the graph is sliced and named, the store round trip."""

import dask
import numpy as np
import pytest
import xarray as xr
from dask.core import flatten
from dask.utils import key_split

from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.ops.reconstruct import TASK_NAMES, reconstruct, to_uint8
from bonemet_dask.synth import line_integrals, voxelize
from bonemet_dask.synth.primitives import Phantom, Term, ellipsoid

GEOMETRY = ConeGeometry(84.0, 294.0, 0.35, 64, 96, np.arange(260) * 0.8)
GRID = VolumeGrid((40, 60, 60), 0.12)


@pytest.fixture(scope="module")
def phantom_projections():
    ph = Phantom()
    ph.add(Term(0.05, (ellipsoid((0, 0, 0), (3, 2.5, 3)),)))
    ph.add(Term(0.05, (ellipsoid((1, 0.5, 0.5), (1, 1, 1)),)))
    proj = np.stack([line_integrals(ph, GEOMETRY, a) for a in GEOMETRY.angles_deg])
    data = xr.DataArray(proj.astype(np.float32), dims=("angle", "row", "col"))
    return ph, data.assign_attrs(kind="line_integral")


def run(projections, **kwargs):
    with dask.config.set(scheduler="threads"):
        return reconstruct(projections, GEOMETRY, grid=GRID, **kwargs).compute()


def test_recovers_the_phantom(phantom_projections):
    ph, projections = phantom_projections
    volume = run(projections)
    truth = voxelize(ph, GRID)
    assert volume.dims == ("slice", "y", "x") and volume.dtype == np.float32
    inside = truth > 0.04
    assert abs(volume.values[inside].mean() / truth[inside].mean() - 1) < 0.03
    rmse = np.sqrt(((volume.values - truth)[10:30] ** 2).mean()) / 0.05
    assert rmse < 0.1  # measured 0.051 (edges and the short-scan cone dominate)


def test_chunking_changes_nothing(phantom_projections):
    _, projections = phantom_projections
    whole = run(projections, slab_slices=40, angle_block=260, row_band=64)
    uneven = run(projections, slab_slices=13, angle_block=37, row_band=11)
    np.testing.assert_allclose(uneven.values, whole.values, atol=2e-5 * float(whole.max()))


def test_intensities_are_normalised_with_the_air_level(phantom_projections):
    _, projections = phantom_projections
    counts = (40000 * np.exp(-projections.values)).astype(np.float32)
    from_counts = run(xr.DataArray(counts, dims=projections.dims))
    np.testing.assert_allclose(from_counts.values, run(projections).values, atol=2e-4)


def ancestors(graph: dict, key, seen: set | None = None) -> set:
    """Every key ``key`` depends on, directly or not."""
    seen = set() if seen is None else seen
    for dep in dask.core.get_dependencies(graph, key) if key in graph else ():
        if dep not in seen:
            seen.add(dep)
            ancestors(graph, dep, seen)
    return seen


def test_each_slab_reads_only_its_row_window():
    tall = ConeGeometry(84.0, 294.0, 0.35, 256, 64, np.arange(260) * 0.8)
    projections = xr.DataArray(
        dask.array.zeros((260, 256, 64), chunks=(26, 32, 64), dtype=np.float32),
        dims=("angle", "row", "col"),
        attrs={"kind": "line_integral"},
    )
    grid = VolumeGrid((256, 16, 16), tall.voxel_size)
    volume = reconstruct(projections, tall, grid=grid, slab_slices=32, row_band=32)
    graph = dict(volume.data.__dask_graph__())
    filter_keys = {k for k in graph if key_split(k) == "fdk-filter"}
    assert filter_keys, "the filtering layer is missing"
    n_bands = 256 // 32
    first_slab = volume.data.__dask_keys__()[0][0][0]
    upstream = ancestors(graph, first_slab)
    bands = {k[2] for k in upstream if k in filter_keys}
    assert 0 < len(bands) < n_bands
    # and it reads only the input chunks of those bands: no task merges the whole input
    read = {k[2] for k in upstream if k[0] == projections.data.name}
    assert read == bands


def store_like(projections: xr.DataArray, chunks: tuple[int, ...]) -> xr.DataArray:
    return projections.copy(data=dask.array.from_array(projections.values, chunks=chunks))


@pytest.mark.parametrize("kind", ["line_integral", "intensity"])
def test_store_chunked_input_gives_only_named_stage_tasks(phantom_projections, kind):
    """Projections chunked like the store's (8 angles x a row band x full width): no rechunk, no
    getitem, no alias; every task reconstruct adds is one of TASK_NAMES and the output chunks are
    exactly the slabs."""
    _, projections = phantom_projections
    if kind == "intensity":
        counts = (40000 * np.exp(-projections.values)).astype(np.uint16)
        projections = xr.DataArray(counts, dims=projections.dims)
    projections = store_like(projections, (8, 32, GEOMETRY.n_cols))
    volume = reconstruct(projections, GEOMETRY, grid=GRID, slab_slices=13).data
    graph = dict(volume.__dask_graph__())
    own = set(graph) - set(projections.data.__dask_graph__())
    names = {key_split(k) for k in own}
    assert names <= set(TASK_NAMES) - {"fbp-parallel"}, names
    assert {"fdk-filter", "fdk-backproject", "fdk-sum", "fdk-slab"} <= names
    assert not {key_split(k) for k in graph} & {"rechunk-split", "rechunk-merge", "getitem"}
    assert volume.chunks == ((13, 13, 13, 1), (60,), (60,))
    assert {key_split(k) for k in flatten(volume.__dask_keys__())} == {"fdk-slab"}
    # filter blocks cut the input's chunks, never merge pieces of them: 24 angles x 32 rows here
    filters = [k for k in own if key_split(k) == "fdk-filter"]
    assert len(filters) == -(-260 // 24) * 2


def test_parallel_tasks_are_named(phantom_projections):
    from bonemet_dask.geometry import ParallelGeometry

    _, projections = phantom_projections
    geometry = ParallelGeometry(0.1, 64, 96, GEOMETRY.angles_deg)
    projections = store_like(projections, (8, 16, GEOMETRY.n_cols))
    volume = reconstruct(projections, geometry, row_band=8).data
    own = set(volume.__dask_graph__()) - set(projections.data.__dask_graph__())
    assert {key_split(k) for k in own} == {"fbp-parallel"}
    assert volume.chunks == ((8,) * 8, (96,), (96,))


@pytest.mark.parametrize("chunks", [(7, 13, 96), (260, 5, 96), (26, 64, 50), (33, 17, 40)])
def test_uneven_input_chunks_change_nothing(phantom_projections, chunks):
    """Odd input chunkings (rows or columns split, blocks cutting and grouping chunks) give the
    single-chunk result, for intensities too (the air level is sampled from the input)."""
    _, projections = phantom_projections
    counts = xr.DataArray(
        (40000 * np.exp(-projections.values)).astype(np.float32), dims=projections.dims
    )
    whole = run(counts, slab_slices=13)
    chunked = run(store_like(counts, chunks), slab_slices=13)
    np.testing.assert_allclose(chunked.values, whole.values, atol=2e-5 * float(whole.max()))


def test_keys_are_unique_per_input_and_deterministic(phantom_projections):
    _, projections = phantom_projections
    first = reconstruct(projections, GEOMETRY, grid=GRID).data
    again = reconstruct(projections.copy(deep=True), GEOMETRY, grid=GRID).data
    other = reconstruct(projections.copy(data=projections.values * 1.01), GEOMETRY, grid=GRID).data
    coarser = reconstruct(projections, GEOMETRY, grid=GRID, slab_slices=20).data
    keys = [set(v.__dask_graph__()) for v in (first, again, other, coarser)]
    assert keys[0] == keys[1]
    assert not keys[0] & keys[2]
    # another slab size shares only the input and its filtered blocks
    assert {key_split(k) for k in keys[0] & keys[3]} == {"array", "fdk-filter"}


def test_to_uint8_windows_linearly():
    values = np.linspace(-0.01, 0.12, 40 * 9).reshape(40, 3, 3).astype(np.float32)
    volume = xr.DataArray(dask.array.from_array(values), dims=("slice", "y", "x"))
    grey = to_uint8(volume, (0.0, 0.11)).values
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    inside = (values > 0) & (values < 0.11)
    np.testing.assert_allclose(grey[inside], values[inside] / 0.11 * 255, atol=0.5 + 1e-4)
    with pytest.raises(ValueError, match="maximum > minimum"):
        to_uint8(volume, (1.0, 1.0))


@pytest.mark.slow
def test_store_reconstruction_matches_the_synthetic_recon_ct(tmp_path):
    """Projections -> convert -> FDK -> recon_ct agrees with the voxelised phantom the generator
    wrote as Recon-CT: the whole chain shares one set of orientation conventions (a flipped or
    mirrored reconstruction of this asymmetric hindlimb would not correlate)."""
    import zarr
    from typer.testing import CliRunner

    from bonemet_dask.cli import app
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.ops.reconstruct_store import reconstruct_store
    from bonemet_dask.synth import SynthConfig, generate

    config = SynthConfig(
        mice=1, weeks=1, size="small", seed=4, components=("rotation_xray", "recon_ct")
    )
    generate(str(tmp_path / "src"), config)
    store = str(tmp_path / "store.zarr")
    convert(tmp_path / "src", store)
    skipped = CliRunner().invoke(app, ["reconstruct", store])
    # never replaces the source's: nothing it may write, exit 2 naming the fix
    assert skipped.exit_code == 2 and "--out OTHER.zarr or --overwrite" in skipped.output
    report = reconstruct_store(store, str(tmp_path / "recon.zarr"), keep_float=True)
    assert report.written == ["recon_ct/851/both/week0"]
    ours = zarr.open_group(str(tmp_path / "recon.zarr"), mode="r")["recon_ct/851/both/week0"]
    truth = zarr.open_group(store, mode="r")["recon_ct/851/both/week0"]["0"][:].astype(float)
    grey = ours["0"][:].astype(float)
    assert grey.shape == truth.shape
    corr = np.corrcoef(grey.ravel(), truth.ravel())[0, 1]
    mirrored = np.corrcoef(grey[:, :, ::-1].ravel(), truth.ravel())[0, 1]
    assert corr > 0.93 and mirrored < corr - 0.2  # measured 0.965
    assert np.abs(grey - truth).mean() < 3  # grey levels; measured 1.5
    assert ours["attenuation"].dtype == np.float32
    from bonemet_dask.io.store import get_bonemet_attrs

    attrs = get_bonemet_attrs(ours)
    assert attrs["status"] == "complete" and attrs["provenance"]["stage"] == "reconstruct"
    assert attrs["provenance"]["window_per_mm"] == [0.0, 0.11]  # from the NRecon-style .log
    # convert recorded NRecon's grid and window with the projections: the same without recon_ct
    alone = str(tmp_path / "alone.zarr")
    convert(tmp_path / "src", alone, components="rotation_xray")
    projections = get_bonemet_attrs(
        zarr.open_group(alone, mode="r")["rotation_xray/851/both/week0"]
    )
    assert projections["nrecon"] == {"shape": list(truth.shape), "window_per_mm": [0.0, 0.11]}
    reconstruct_store(alone)
    again = zarr.open_group(alone, mode="r")["recon_ct/851/both/week0"]
    np.testing.assert_array_equal(again["0"][:], ours["0"][:])
    # the API too: bm.reconstruct follows the recorded grid, bm.to_uint8 the recorded window
    from bonemet_dask.io.xr import open_store

    node = open_store(alone)["rotation_xray/851/both/week0"]
    volume = reconstruct(node.dataset["image"].assign_attrs(bonemet=dict(node.dataset.attrs)))
    assert volume.shape == truth.shape
    assert to_uint8(volume).attrs["bonemet"]["window"] == [0.0, 0.11]


def test_full_size_graph_fits_the_memory_budget_without_computing():
    """260 x 2688 x 4032 projections -> 2685 x 2428 x 2588 (BoneMet) builds a graph whose largest
    task fits the default 4 GiB per-worker budget; nothing is computed."""
    from bonemet_dask import config
    from bonemet_dask.synth import SynthConfig

    full = SynthConfig(size="full")
    geometry, grid = full.geometry(), full.recon_grid()
    projections = xr.DataArray(
        dask.array.zeros((260, 2688, 4032), chunks=(26, 2688, 4032), dtype=np.uint16),
        dims=("angle", "row", "col"),
        attrs={"kind": "line_integral"},
    )
    volume = reconstruct(projections, geometry, grid=grid)
    largest = volume.attrs["bonemet"]["provenance"]["largest_task_bytes"]
    assert volume.shape == (2685, 2428, 2588)
    assert largest <= config.memory_budget_bytes()
    assert len(volume.data.chunks[0]) > 20  # tiled in z, never one giant chunk
    assert max(volume.data.chunks[0]) * 2428 * 2588 * 4 < config.memory_budget_bytes() / 2


def test_parallel_geometry_reconstructs_slices_in_place():
    """Near-parallel rays (source 10 m away) of an off-centre ball, reconstructed with
    ParallelGeometry: the ball comes back at its world position with its density."""
    from bonemet_dask.geometry import ParallelGeometry

    angles = np.arange(360) * 0.5
    far = ConeGeometry(1e4, 1e4 + 1.0, 0.1, 24, 80, angles)
    centre = np.array([1.5, -1.0, 0.3])
    ph = Phantom()
    ph.add(Term(0.08, (ellipsoid(centre, (1.2, 1.2, 1.2)),)))
    proj = np.stack([line_integrals(ph, far, a) for a in angles]).astype(np.float32)
    projections = xr.DataArray(proj, dims=("angle", "row", "col"), attrs={"kind": "line_integral"})
    geometry = ParallelGeometry(far.voxel_size, 24, 80, angles)
    with dask.config.set(scheduler="threads"):
        volume = reconstruct(projections, geometry, filter="ramlak", row_band=7).compute()
    assert volume.shape == (24, 80, 80)
    grid = VolumeGrid((24, 80, 80), geometry.pixel)
    values = volume.values
    weights = np.clip(values, 0, None) * (values > 0.04)
    index = np.argwhere(weights > 0)
    found = grid.index_to_world(
        (index * weights[tuple(index.T)][:, None]).sum(0)[None] / weights.sum()
    )
    np.testing.assert_allclose(found[0], centre, atol=0.05)
    inside = voxelize(ph, grid) > 0.079
    assert abs(values[inside].mean() / 0.08 - 1) < 0.03


def test_backend_numpy_equals_auto_on_a_cpu_machine(phantom_projections):
    _, projections = phantom_projections
    numpy_run = run(projections, backend="numpy")
    assert numpy_run.attrs["bonemet"]["provenance"]["parameters"]["backend"] == "numpy"
    with pytest.raises(ValueError, match="backend='cuda' is not one of auto, numpy, cupy"):
        reconstruct(projections, GEOMETRY, grid=GRID, backend="cuda")
    from bonemet_dask._backend import gpu_available

    if not gpu_available():
        np.testing.assert_array_equal(run(projections, backend="auto").values, numpy_run.values)
        with pytest.raises(RuntimeError, match="no working CUDA device"):
            run(projections, backend="cupy")


@pytest.mark.gpu
def test_cupy_backend_matches_numpy(phantom_projections):
    _, projections = phantom_projections
    cpu = run(projections, backend="numpy").values
    gpu = run(projections, backend="cupy").values
    assert isinstance(gpu, np.ndarray)  # slabs come back to the host
    rmse = np.sqrt(((gpu - cpu) ** 2).mean() / (cpu**2).mean())
    assert rmse < 2e-3  # texture interpolation: 8-bit weights (gpu_check.py measures it)


def test_slabs_thinner_than_the_shard_write_the_same_volume(tiny_published):
    """Where a shard's slab would not fit a worker the stage backprojects thinner slabs and joins
    them per shard (full size: 32 of 64 slices); the volume written is the same, byte for byte."""
    import zarr

    from bonemet_dask.ops.plan_chain import ScanSizes
    from bonemet_dask.ops.reconstruct import slab_slices_in_shard
    from bonemet_dask.ops.reconstruct_store import reconstruct_store

    store = str(tiny_published / "published.zarr")
    sizes = ScanSizes.synthetic("tiny")
    grid = VolumeGrid(sizes.recon, sizes.geometry.voxel_size)
    shard = min(64, grid.shape[0])
    assert slab_slices_in_shard(shard, grid, sizes.geometry) == shard  # the default: one slab
    whole = str(tiny_published / "one-slab.zarr")
    reconstruct_store(store, whole, weeks=0)
    with dask.config.set({"bonemet.memory-budget": "400kB"}):
        slab = slab_slices_in_shard(shard, grid, sizes.geometry)
        assert 1 < slab < shard and shard % slab == 0
        thin = str(tiny_published / "thin-slabs.zarr")
        reconstruct_store(store, thin, weeks=0)
    path = "recon_ct/851/both/week0/0"
    expected = zarr.open_group(whole, mode="r")[path][:]
    np.testing.assert_array_equal(zarr.open_group(thin, mode="r")[path][:], expected)
    assert expected.std() > 0
