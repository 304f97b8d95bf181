"""Conversion from and to an object store (a local moto S3 server)."""

import numpy as np
import xarray as xr
import zarr

from bonemet_dask.io.consolidate import consolidated_paths
from bonemet_dask.io.store import open_zarr_store
from bonemet_dask.io.xr import open_store
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.verify import verify
from bonemet_dask.synth import SynthConfig, generate


def test_s3_source_to_s3_store_round_trip(s3_endpoint, tmp_path):
    import s3fs

    config = SynthConfig(mice=1, weeks=1, size="tiny", seed=2, components=("recon_ct", "roi_ct"))
    local = tmp_path / "src"
    generate(str(local), config)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bonemet")
    fs.put(f"{local}/", "bonemet/src/", recursive=True)

    report = convert("s3://bonemet/src", "s3://bonemet/store.zarr")
    assert report.exit_code == 0 and len(report.written) == 1 + 2
    assert verify("s3://bonemet/src", "s3://bonemet/store.zarr").ok

    reference = tmp_path / "reference.zarr"
    convert(local, str(reference))
    remote = zarr.open_group(open_zarr_store("s3://bonemet/store.zarr"), mode="r")
    near = zarr.open_group(str(reference), mode="r")
    for path in report.written:
        np.testing.assert_array_equal(remote[path]["0"][:], near[path]["0"][:])
    tree = open_store("s3://bonemet/store.zarr")
    image = tree["recon_ct/851/both/week0"].dataset["image"]
    np.testing.assert_array_equal(image.values, near["recon_ct/851/both/week0"]["0"][:])


def test_run_from_and_to_s3_resumes(s3_endpoint, tmp_path):
    import s3fs

    import bonemet_dask as bm

    config = SynthConfig(mice=1, weeks=2, size="tiny", seed=0, components=("recon_ct",))
    generate(str(tmp_path / "src"), config)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("chain")
    fs.put(f"{tmp_path / 'src'}/", "chain/src/", recursive=True)
    source, store = "s3://chain/src", "s3://chain/store.zarr"
    first = bm.run(source, store, start="recon_ct", until="register")  # tiny: no fibula
    assert first.exit_code == 0
    assert len(first.stages["register"].written) == 4  # 2 tibiae x 2 weeks
    assert {"recon_ct/851/both/week1", "regist_ct/851/right/week1/0"} <= consolidated_paths(store)
    root = zarr.open_group(open_zarr_store(store), mode="r")  # read by the consolidated metadata
    moved = root["regist_ct/851/right/week1"]
    assert moved.attrs["bonemet"]["status"] == "complete" and moved["0"][:].any()
    again = bm.run(source, store, start="recon_ct", until="register")
    assert again.exit_code == 0
    for report in again.stages.values():
        assert not report.written and report.outcomes  # all up to date, nothing rewritten
    tree = xr.open_datatree(store, engine="zarr")  # no "consolidated metadata" warning (error)
    assert tree["regist_ct/851/right/week1"].attrs["bonemet"]["status"] == "complete"
