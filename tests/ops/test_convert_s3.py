"""Conversion from and to an object store (a local moto S3 server)."""

import numpy as np
import zarr

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
