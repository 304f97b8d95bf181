"""Store paths the CLI cannot write: a regular file, a file as parent, a disk that fills.

Each runs the real CLI in a subprocess: one line naming the store and the fix, the documented
exit code, no traceback; after a full disk nothing is marked complete and a rerun resumes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from bonemet_dask.synth import SynthConfig, generate

EXE = str(Path(sys.executable).parent / "bonemet-dask")
ENV = os.environ | {"COLUMNS": "1000"}  # messages and log lines unwrapped
# The CLI on a disk that fills after BONEMET_TEST_SHARDS image shards: zarr's LocalStore
# raises ENOSPC for every later shard, as a full disk does (nothing is partly written: zarr
# writes each object to a temporary file and renames it).
FULL_DISK_CLI = """
import errno, os, re, sys, threading
from zarr.storage import LocalStore

left = [int(os.environ["BONEMET_TEST_SHARDS"])]
guard = threading.Lock()
original = LocalStore._set

async def _set(self, key, value, exclusive=False):
    if re.search(r"/0/c/\\d+/0/0$", key):  # a shard of an image array
        with guard:
            left[0] -= 1
            full = left[0] < 0
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
    return await original(self, key, value, exclusive=exclusive)

LocalStore._set = _set
from bonemet_dask.cli import app

sys.argv[0] = "bonemet-dask"
app(prog_name="bonemet-dask")
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths") / "src"
    generate(str(root), SynthConfig(mice=1, weeks=1, size="tiny", seed=0, components=("recon_ct",)))
    return root


def _commands(source: Path, store: Path) -> dict[str, list[str]]:
    return {
        "convert": ["convert", str(source), str(store)],
        "run": [
            "run",
            str(source),
            str(store),
            "--from",
            "recon_ct",
            "--until",
            "convert",
            "--cluster",
            "none",
        ],
        "segment": ["segment", str(store)],
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "file",
            "store {store!r} is a regular file, not a Zarr store (a folder); pass another "
            "path (a new folder, e.g. out.zarr) or move the file away",
        ),
        (
            "under a file",
            "store {store!r} cannot be created: {file!r} is a regular file, not a "
            "folder; pass a store path under a folder (e.g. out.zarr) or move the "
            "file away",
        ),
    ],
)
def test_a_store_path_that_cannot_be_a_folder_exits_2_naming_it(tmp_path, source, case, message):
    file = tmp_path / "taken"
    file.write_text("not a store")
    store = file if case == "file" else file / "sub" / "store.zarr"
    running = {
        name: subprocess.Popen(
            [EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
        for name, args in _commands(source, store).items()
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 2, (name, out, err)
        assert message.format(store=str(store), file=str(file)) in err, (name, err)
        assert "Traceback" not in out + err, name
    assert file.read_text() == "not a store"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no lock, nothing made


def test_a_full_disk_exits_1_naming_the_store_and_the_rerun_resumes(tmp_path, source):
    script = tmp_path / "full_disk_cli.py"
    script.write_text(FULL_DISK_CLI)
    store = tmp_path / "store.zarr"
    args = ["convert", str(source), str(store), "--slices-per-shard", "8", "--cluster", "none"]
    full = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ENV | {"BONEMET_TEST_SHARDS": "2"},
    )
    assert full.returncode == 1, full.stderr
    assert (
        f"no space left on device writing {str(store)!r}: free space or choose another "
        "store; rerun resumes"
    ) in full.stderr
    assert "Traceback" not in full.stdout + full.stderr
    scan = zarr.open_group(str(store), mode="r")["recon_ct/851/both/week0"]
    assert scan.attrs["bonemet"]["status"] == "incomplete"  # nothing marked complete
    markers = os.listdir(store / "recon_ct/851/both/week0/slice_hash/c")
    assert 0 < len(markers) <= 2 < scan["slice_hash"].cdata_shape[0]  # the shards before it
    assert not Path(f"{store}.bonemet-lock").exists()  # released on the way out

    rerun = subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=120, check=False, env=ENV
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "converted 1 scans" in rerun.stdout  # resumed: only the missing shards
    scan = zarr.open_group(str(store), mode="r")["recon_ct/851/both/week0"]
    assert scan.attrs["bonemet"]["status"] == "complete"
    verified = subprocess.run(
        [EXE, "verify", str(source), str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ENV,
    )
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr
