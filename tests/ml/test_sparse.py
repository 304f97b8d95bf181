"""The sparse-view task: evenly spaced views of the same arc, a log that says so, honest scores.

Projections are exact cone-beam ray integrals of an analytic phantom (``bonemet_dask.synth``),
with a SkyScan-style ``.log`` in their attributes as ``convert`` records it, so that
``bm.reconstruct`` reads the (rewritten) log exactly as it reads a converted scan's.  The scanner
has a narrow fan (2.3 degrees half fan), so that even 26 views leave Parker weighting its
overscan; the synthetic BoneMet scanner's 13.5 degree fan does not (benchmarks/sparse_views.py).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.utils import key_split
from hypothesis import given, settings
from hypothesis import strategies as st

import bonemet_dask as bm
from bonemet_dask.geometry import VolumeGrid
from bonemet_dask.ml.sparse import sparse_view_scores, sparse_views, view_counts
from bonemet_dask.ops.reconstruct import geometry_from_attrs
from bonemet_dask.synth import line_integrals, voxelize
from bonemet_dask.synth.primitives import Phantom, Term, ellipsoid

SOD, SDD, PIXEL_MM, ROWS, COLS = 30.0, 120.0, 0.2, 20, 48  # 50 um voxels, 2.3 deg half fan
GRID = VolumeGrid((14, 32, 32), 0.05)
VIEWS = (260, 130, 65, 26)


def _log(total: int, step: float, *, start: float = 0.0, direction: str = "CC",
         full_turn: bool = False, rows: int = ROWS, cols: int = COLS) -> dict:  # fmt: skip
    """A SkyScan acquisition log as ``convert`` records it (strings, spelled as scanners do)."""
    return {
        "System": {"Scanner": "SkyScan1276", "Camera Pixel Size (um)": f"{PIXEL_MM * 1000:.2f}"},
        "Acquisition": {
            "Number Of Files": f"{total:5d}",
            "Number Of Rows": f"{rows:5d}",
            "Number Of Columns": f"{cols:5d}",
            "Camera binning": "1x1",
            "Object to Source (mm)": f"{SOD:.3f}",
            "Camera to Source (mm)": f"{SDD:.3f}",
            "Image Pixel Size (um)": f"{PIXEL_MM * SOD / SDD * 1000:.6f}",
            "Rotation Step (deg)": f"{step:.3f}",
            "Use 360 Rotation": "YES" if full_turn else "NO",
            "Rotation Direction": direction,
            "Scanning Start Angle": f"{start:.3f}",
        },
    }


def _projections(data, log: dict, **attrs) -> xr.DataArray:
    """Projections labelled as ``open_store`` labels a scan: angles from the log's geometry."""
    angles = geometry_from_attrs({"source": {"log": log}}).angles_deg
    return xr.DataArray(
        data,
        dims=("angle", "row", "col"),
        coords={"angle": angles, "index": ("angle", np.arange(angles.size))},
        attrs={**attrs, "bonemet": {"source": {"log": log}, "angles_deg": angles.tolist()}},
    )


@pytest.fixture(scope="module")
def phantom_scan():
    """An ellipsoid with a denser inclusion, 260 x 0.8 degree views, and its reconstructions."""
    phantom = Phantom()
    phantom.add(Term(1.0, (ellipsoid((0.0, 0.0, 0.0), (0.6, 0.45, 0.25)),)))
    phantom.add(Term(1.0, (ellipsoid((0.2, 0.1, 0.0), (0.15, 0.15, 0.12)),)))
    log = _log(260, 0.8)
    geometry = geometry_from_attrs({"source": {"log": log}})
    packed = phantom.pack()  # packed once: 5x faster than per view
    stack = np.stack([line_integrals(packed, geometry, a) for a in geometry.angles_deg])
    data = da.from_array(stack.astype(np.float32), chunks=(8, ROWS, COLS))
    projections = _projections(data, log, kind="line_integral")
    with dask.config.set(scheduler="synchronous"):
        volumes = {n: bm.reconstruct(sparse_views(projections, n), grid=GRID).values for n in VIEWS}
    return projections, voxelize(phantom, GRID), volumes


def test_all_views_are_the_projections_themselves(phantom_scan):
    projections, _, _ = phantom_scan
    assert sparse_views(projections, 260) is projections


@settings(max_examples=40, deadline=None)
@given(
    total=st.integers(2, 400),
    step=st.integers(100, 2000).map(lambda m: m / 1000),
    start=st.sampled_from([0.0, 12.5]),
    direction=st.sampled_from(["CC", "CW"]),
    full_turn=st.booleans(),
    pick=st.integers(0, 10**6),
)
def test_views_are_evenly_spaced_over_the_same_arc(total, step, start, direction, full_turn, pick):
    """Every allowed count: the first view kept, one step k times the scan's, the last view
    within one new step of the arc's end, and the rewritten log's geometry giving exactly the
    angles kept (a full turn's step too, which the log writes rounded to 3 decimals)."""
    if full_turn:
        total = max(total, 4)
        step = round(360 / total, 3)
    else:
        step = min(step, np.floor(360 / total * 1000) / 1000)  # at most a turn (else refused)
    log = _log(total, step, start=start, direction=direction, full_turn=full_turn, rows=2, cols=4)
    projections = _projections(da.zeros((total, 2, 4), chunks=(3, 2, 4)), log)
    before = repr(projections.attrs)
    counts = view_counts(total)
    n = counts[pick % len(counts)]
    sparse = sparse_views(projections, n)
    angles, kept = projections.angle.values, sparse.angle.values
    k = int(sparse.index.values[1])  # the stride: every k-th view from the first
    assert sparse.sizes["angle"] == n and kept[0] == angles[0]
    np.testing.assert_array_equal(sparse.index.values, np.arange(0, total, k))
    np.testing.assert_allclose(np.diff(kept), k * (angles[1] - angles[0]), atol=1e-9)
    assert 0 <= (total - 1) - (n - 1) * k < k  # the last view within one new step of the end
    np.testing.assert_allclose(geometry_from_attrs(sparse.attrs).angles_deg, kept, atol=1e-6)
    np.testing.assert_allclose(sparse.attrs["bonemet"]["angles_deg"], kept)
    assert repr(projections.attrs) == before  # the input's attributes are not touched


def test_a_sparse_scan_keeps_the_attenuation_scale(phantom_scan):
    """Each view is weighted by the sparse scan's own step: the object's mean attenuation from
    26 views is the full scan's (a missing step weight would give a tenth of it)."""
    _, truth, volumes = phantom_scan
    inside = truth > 0
    full = volumes[260][inside].mean()
    assert abs(full / truth[inside].mean() - 1) < 0.05  # measured 2.4% (edges blur)
    for n in VIEWS[1:]:
        assert abs(volumes[n][inside].mean() / full - 1) < 0.02, n  # measured <= 0.2%


def test_scores_fall_as_views_drop(phantom_scan):
    _, truth, volumes = phantom_scan
    for mask in (None, truth > 0):
        scores = [sparse_view_scores(volumes[260], volumes[n], mask=mask) for n in VIEWS]
        assert scores[0]["psnr_db"] == np.inf and scores[0]["ssim"] == 1.0
        psnr = [s["psnr_db"] for s in scores]
        ssim = [s["ssim"] for s in scores]
        assert psnr == sorted(psnr, reverse=True) and len(set(psnr)) == 4, psnr
        assert ssim == sorted(ssim, reverse=True) and len(set(ssim)) == 4, ssim
        assert {s["data_range"] for s in scores} == {
            float(volumes[260].max()) - float(volumes[260].min())
        }


def test_scores_are_scikit_image_metrics():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (12, 16, 20)), indexing="ij")
    reference = np.exp(-(x**2 + y**2 + z**2) * 2) + 0.05 * rng.standard_normal(x.shape)
    volume = reference + 0.1 * rng.standard_normal(x.shape)
    span = float(reference.max() - reference.min())
    scores = sparse_view_scores(xr.DataArray(reference), volume)
    assert scores["data_range"] == span and scores["data_range_from"] == "reference max - min"
    assert scores["psnr_db"] == peak_signal_noise_ratio(reference, volume, data_range=span)
    assert scores["ssim"] == structural_similarity(reference, volume, data_range=span)
    # a mask: PSNR's error over its voxels only; a mask of everything changes nothing
    mask = reference > 0.5
    masked = sparse_view_scores(reference, volume, mask=mask, data_range=2.0)
    mse = ((reference - volume)[mask] ** 2).mean()
    assert masked["psnr_db"] == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-12)
    assert masked["data_range_from"] == "given" and masked["voxels"] == mask.sum()
    everything = sparse_view_scores(reference, volume, mask=np.ones(x.shape, bool))
    assert everything["ssim"] == pytest.approx(scores["ssim"], rel=1e-12)
    assert everything["psnr_db"] == pytest.approx(scores["psnr_db"], rel=1e-12)
    # SSIM inside the mask: the local map is worse where the noise beats the signal
    assert (
        masked["ssim"] > sparse_view_scores(reference, volume, mask=~mask, data_range=2.0)["ssim"]
    )


def test_selection_is_lazy():
    """Selecting views reads no pixel; the graph adds index selection only."""

    def unreadable(block):
        raise AssertionError("a pixel was read")

    data = da.zeros((260, ROWS, COLS), chunks=(8, ROWS, COLS), dtype=np.float32)
    data = data.map_blocks(unreadable, dtype=np.float32)
    projections = _projections(data, _log(260, 0.8), kind="line_integral")
    sparse = sparse_views(projections, 65)
    assert isinstance(sparse.data, da.Array) and sparse.shape == (65, ROWS, COLS)
    added = set(dict(sparse.data.__dask_graph__())) - set(dict(data.__dask_graph__()))
    assert {key_split(k) for k in added} == {"getitem"}
    volume = bm.reconstruct(sparse, grid=GRID)  # builds its graph without reading either
    # the volume says it came from a quarter of the views
    kept = volume.attrs["bonemet"]["provenance"]["sparse_views"]
    assert (kept["n_views"], kept["of_views"], kept["stride"]) == (65, 260, 4)


def test_a_log_that_gives_no_geometry_still_says_what_was_kept():
    """Flat attributes (no ``bonemet`` level) and a log without distances: the count and the
    written step are rewritten all the same, so the log never contradicts the views."""
    log = _log(260, 0.8)
    del log["Acquisition"]["Object to Source (mm)"]
    projections = xr.DataArray(
        da.zeros((260, 2, 4)), dims=("angle", "row", "col"), attrs={"source": {"log": log}}
    )
    acquisition = sparse_views(projections, 26).attrs["source"]["log"]["Acquisition"]
    assert acquisition["Number Of Files"] == "   26"  # padded as the scanner padded it
    assert acquisition["Rotation Step (deg)"] == "8"
    assert log["Acquisition"]["Number Of Files"] == "  260"


def test_a_converted_scan_node_works_as_it_is(tiny_published):
    """What open_store gives (a DataTree node, carrying the .log as converted): 26 views every
    8 degrees whose rewritten log gives the geometry; the store's node is left untouched."""
    node = bm.open_store(str(tiny_published / "published.zarr"))["rotation_xray/851/both/week0"]
    sparse = sparse_views(node, 26)
    np.testing.assert_allclose(sparse.angle.values, np.arange(26) * 8.0)
    assert geometry_from_attrs(sparse.attrs).angles_deg.size == 26
    record = sparse.attrs["bonemet"]["sparse_views"]
    assert record["stride"] == 10 and record["of_views"] == 260
    assert node.dataset.attrs["source"]["log"]["Acquisition"]["Number Of Files"] == "260"
    assert sparse.attrs["bonemet"]["nrecon"] == node.dataset.attrs["nrecon"]  # the same grid


def test_bad_arguments_are_named(phantom_scan):
    projections, _, volumes = phantom_scan
    for bad in (1, 261, 0):
        with pytest.raises(ValueError, match=f"n_views={bad} must be between 2 and 260"):
            sparse_views(projections, bad)
    with pytest.raises(ValueError, match=r"n_views=100 cannot be spaced evenly.*87 or 130"):
        sparse_views(projections, 100)
    for bad in (2.5, True, "26"):
        with pytest.raises(TypeError, match=r"n_views=.* must be a whole number"):
            sparse_views(projections, bad)
    with pytest.raises(ValueError, match="spacing='random' is not one of 'uniform'"):
        sparse_views(projections, 26, spacing="random")
    with pytest.raises(ValueError, match="no 'angle' axis"):
        sparse_views(projections.rename(angle="slice"), 26)
    full = volumes[260]
    with pytest.raises(ValueError, match=r"reference.shape=.* and volume.shape=.* differ"):
        sparse_view_scores(full, full[1:])
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        sparse_view_scores(full, full, mask=full)
    with pytest.raises(ValueError, match="mask selects no voxel"):
        sparse_view_scores(full, full, mask=np.zeros(full.shape, bool))
    with pytest.raises(ValueError, match=r"data_range=0\.0 must be a positive"):
        sparse_view_scores(np.zeros(full.shape), full)
