"""Shared fixtures: a local S3 (moto) server for object-store round trips; store comparison."""

import json
import os

import numpy as np
import pytest
import zarr

# pytest-xdist's workers start with COLUMNS=80, which rich fixes as the CLI console's width
# when bonemet_dask.cli is imported; the CLI tests pass their own COLUMNS per invocation
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


def assert_same_store(a, b) -> None:
    """Every group's and array's attributes, and every array element, equal in two stores."""
    left, right = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert dict(left.attrs) == dict(right.attrs)
    members_a = dict(left.members(max_depth=None))
    members_b = dict(right.members(max_depth=None))
    assert sorted(members_a) == sorted(members_b)
    for path, node in members_a.items():
        other = members_b[path]
        text_a = json.dumps(dict(node.attrs), sort_keys=True)
        assert text_a == json.dumps(dict(other.attrs), sort_keys=True), path
        if isinstance(node, zarr.Array):
            assert node.shape == other.shape and node.dtype == other.dtype, path
            np.testing.assert_array_equal(node[...], other[...], err_msg=path)


@pytest.fixture(scope="session")
def tiny_published(tmp_path_factory):
    """A tiny synthetic tree (1 mouse, 2 weeks, seed 0) and every component of it converted:
    ``root/src`` and ``root/published.zarr``, the inputs of each stage.  Tests write beside."""
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("tiny")
    # voxelised: at 640 um a reconstruction's blur merges the fibula into the tibia, and these
    # tests need every stage to produce (the reconstruction model is tested at small size)
    config = SynthConfig(mice=1, weeks=2, size="tiny", seed=0, products="voxelised")
    generate(str(root / "src"), config)
    convert(str(root / "src"), str(root / "published.zarr"))
    return root


@pytest.fixture
def same_store():
    """:func:`assert_same_store` (tests import no helper modules: importlib import mode)."""
    return assert_same_store


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (random port); fsspec's s3 config points at it."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import os

    import fsspec.config

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint},
    }
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # moto's default; no real AWS
    try:
        yield endpoint
    finally:
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved
        server.stop()


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests unless a CUDA device actually runs a kernel here."""
    if not any("gpu" in item.keywords for item in items):
        return
    from bonemet_dask._backend import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no working CUDA device (benchmarks/gpu_check.py on a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
