"""RigidTransform: algebra, parameters, serialisation and its stated direction convention."""

import json

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st

from bonemet_dask.transform import RigidTransform

finite = st.floats(-1e4, 1e4, allow_nan=False)
vectors = st.tuples(finite, finite, finite)
rotvecs = st.tuples(*(st.floats(-3.0, 3.0),) * 3)
transforms = st.builds(RigidTransform.from_rotation_vector, rotvecs, vectors, vectors)


@settings(max_examples=60, deadline=None)
@given(transforms, transforms, st.lists(vectors, min_size=1, max_size=5))
def test_compose_is_function_composition_and_inverse_undoes(a, b, points):
    p = np.array(points)
    np.testing.assert_allclose((a @ b).apply(p), a.apply(b.apply(p)), atol=1e-6)
    np.testing.assert_allclose(a.inverse().apply(a.apply(p)), p, atol=1e-6)
    assert (a.inverse() @ a).is_identity(atol=1e-8)
    assert (a @ b).inverse().allclose(b.inverse() @ a.inverse(), angle_deg=1e-6, distance_um=1e-6)


@settings(max_examples=60, deadline=None)
@given(transforms, vectors)
def test_matrix_parameters_and_json_round_trip(t, centre):
    assert RigidTransform.from_matrix(t.matrix, t.centre).allclose(t)
    assert t.with_centre(centre).allclose(t, angle_deg=1e-6, distance_um=1e-5)
    again = RigidTransform.from_euler(t.angles_deg, t.translation, t.centre)
    assert again.allclose(t, angle_deg=1e-6, distance_um=1e-5)
    assert RigidTransform.from_rotation_vector(t.rotation_vector, t.translation, t.centre).allclose(
        t, angle_deg=1e-6, distance_um=1e-5
    )
    assert RigidTransform.from_dict(json.loads(t.to_json())).allclose(t)


def test_conventions_written_in_the_module_doc():
    # R = R_slice(a) R_y(b) R_x(c): a quarter turn about x takes +y to -slice
    quarter = RigidTransform.from_euler((0, 0, 90))
    np.testing.assert_allclose(quarter.apply([0.0, 1.0, 0.0]), [-1.0, 0.0, 0.0], atol=1e-12)
    # the centre is a fixed point of a pure rotation about it
    t = RigidTransform.from_euler((10, 20, 30), centre=(5, 6, 7))
    np.testing.assert_allclose(t.apply([5.0, 6.0, 7.0]), [5, 6, 7], atol=1e-12)
    assert np.isclose(RigidTransform.from_rotation_vector((0, 0, 0.5)).angle_deg, np.degrees(0.5))


def test_index_affine_resamples_like_the_stated_direction():
    """out[p] = moving[T(p)]: a moving volume shifted by +3 voxels is brought back by t = +3."""
    rng = np.random.default_rng(0)
    fixed = rng.random((12, 13, 14))
    moving = np.zeros_like(fixed)
    moving[3:] = fixed[:-3]  # content moved 3 slices down
    t = RigidTransform(np.eye(3), (6.0, 0, 0))  # 2 um voxels
    matrix, offset = t.index_affine((2, 2, 2), (2, 2, 2))
    back = ndi.affine_transform(moving, matrix, offset, order=1)
    np.testing.assert_allclose(back[:-3], fixed[:-3])


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="proper rotation"):
        RigidTransform(np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="translation"):
        RigidTransform(np.eye(3), (1.0, 2.0))
    with pytest.raises(ValueError, match="last row"):
        RigidTransform.from_matrix(np.ones((4, 4)))
    with pytest.raises(ValueError, match="type='rigid'"):
        RigidTransform.from_dict({"matrix": np.eye(4).tolist()})


def test_transform_survives_a_store_round_trip(tmp_path):
    import zarr

    t = RigidTransform.from_euler((150.0, -2.0, 1.5), (10.0, -20.0, 30.0), centre=(700, 250, 260))
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.attrs["bonemet"] = {"registration": {"transform": t.to_dict()}}
    read = zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["bonemet"]
    back = RigidTransform.from_dict(read["registration"]["transform"])
    assert back.allclose(t, angle_deg=1e-9, distance_um=1e-9)
    np.testing.assert_allclose(back.centre, t.centre)
