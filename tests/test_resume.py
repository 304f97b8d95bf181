"""kill -9 at three seeded points, then rerun: the store equals an uninterrupted run.

For every store stage and for ``run``, the CLI runs in a real subprocess that is SIGKILLed once
a seeded number of shards is on disk (counted by their ``slice_hash`` done-markers; 0 means as
soon as the first output group exists, before any shard).  The same command is then run again
to completion, and the output store is compared with an uninterrupted run's, group by group:
every array element and every attribute.  Tiny synthetic scans, two slices per shard, so each
output has many shards and a kill lands inside a group.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bonemet_dask.cli import app

pytestmark = pytest.mark.slow

POINTS = 3


@pytest.fixture
def published(tiny_published):
    """The tiny tree, every component converted: the input of each stage."""
    return tiny_published


def command(stage: str, root, out) -> list[str]:
    """The CLI arguments of one stage (or run) writing ``out``."""
    store, shard = str(root / "published.zarr"), ["--slices-per-shard", "2"]
    args = {
        "reconstruct": ["reconstruct", store, "--out", str(out)],
        "segment": ["segment", store, "--out", str(out)],
        "register": ["register", store, "--out", str(out), "--roll-starts", "bonemet"],
        "composite": ["composite", store, "--out", str(out), "--csv", f"{out}.csv"],
        "run": [
            "run",
            str(root / "src"),
            str(out),
            "--from",
            "recon_ct",
            "--cluster",
            "none",
            "--roll-starts",
            "bonemet",
            "--csv",
            f"{out}.csv",
        ],
    }[stage]
    return [*args, *shard]


def markers(out) -> int:
    """Shards on disk: the done-markers (``slice_hash`` chunks) under ``out``."""
    return sum(1 for _ in out.glob("*/*/*/*/slice_hash/c/*/*"))


def started(out) -> bool:
    """Whether the first output group exists (``convert`` of ``run`` writes projections)."""
    return any(out.glob("*/*/*/*/zarr.json"))


def run_killed(args: list[str], out, point: int) -> int:
    """Run the CLI in a subprocess and SIGKILL it once ``point`` shards are on disk.

    On a loaded machine the last shards can all land between two polls; then the run is
    repeated from scratch with the kill point halved (the seeded point is where it aims).
    Returns the shards on disk after the kill.
    """
    env = os.environ | {"PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "bonemet_dask.cli", *args]
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if started(out) and markers(out) >= point:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate()
        if process.returncode == -signal.SIGKILL:
            return markers(out)
        point //= 2
    raise AssertionError(f"finished before every kill: {err.decode()}")


def run_whole(args: list[str]) -> None:
    """Run the CLI to completion (in this process: the reruns need no fresh interpreter)."""
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output


@pytest.mark.parametrize("stage", ["reconstruct", "segment", "register", "composite", "run"])
def test_kill_and_rerun_equals_an_uninterrupted_run(published, stage, same_store):
    reference = published / f"{stage}-reference.zarr"
    run_whole(command(stage, published, reference))
    total = markers(reference)
    assert total >= 8, f"{stage} wrote {total} shards: too few to kill inside a run"
    points = sorted(random.Random(stage).sample(range(int(0.75 * total)), POINTS))
    for point in points:
        out = published / f"{stage}-killed-{point}.zarr"
        cmd = command(stage, published, out)
        on_disk = run_killed(cmd, out, point)
        assert on_disk < total  # the kill interrupted it
        run_whole(cmd)
        same_store(reference, out)
        if stage in ("composite", "run"):  # the metrics table too
            assert Path(f"{out}.csv").read_text() == Path(f"{reference}.csv").read_text()
