"""One writer per store: real processes refused, killed holders taken over, S3 on moto."""

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zarr

from bonemet_dask.errors import StoreError, StoreFullError
from bonemet_dask.io.lock import (
    LOCK_SUFFIX,
    StoreLockedError,
    lock_records,
    store_writer_lock,
)
from bonemet_dask.synth import SynthConfig, generate

EXE = str(Path(sys.executable).parent / "bonemet-dask")
# The CLI with its PNG reads held until RELEASE exists: a convert that holds its store's lock
# for as long as the test needs (READY: the lock is held and the first shard is being read).
SLOW_CLI = """
import os, sys, time
import bonemet_dask.ops.convert as convert

ready, release = os.environ["BONEMET_TEST_READY"], os.environ["BONEMET_TEST_RELEASE"]
original = convert.read_files

def held(fs, paths):
    open(ready, "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return original(fs, paths)

convert.read_files = held
from bonemet_dask.cli import app

sys.argv[0] = "bonemet-dask"
app(prog_name="bonemet-dask")
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock") / "src"
    generate(str(root), SynthConfig(mice=1, weeks=1, size="tiny", seed=0, components=("recon_ct",)))
    return root


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"holder ended first: {process.stderr.read()}")
        assert time.monotonic() < deadline, "the holder never reached its first shard"
        time.sleep(0.02)


def _slow_convert(tmp_path: Path, source: Path, store: Path) -> subprocess.Popen:
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    env = os.environ | {
        "BONEMET_TEST_READY": str(tmp_path / "ready"),
        "BONEMET_TEST_RELEASE": str(tmp_path / "release"),
    }
    process = subprocess.Popen(
        [sys.executable, str(script), "convert", str(source), str(store), "--cluster", "none"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(tmp_path / "ready", process)
    return process


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "1000"}  # log lines unwrapped
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_a_second_cli_writer_is_refused_naming_the_holder(tmp_path, source):
    store = tmp_path / "store.zarr"
    holder = _slow_convert(tmp_path, source, store)
    try:
        [record] = lock_records(store)
        assert record["pid"] == holder.pid and record["operation"] == "convert"
        second = [EXE, "convert", str(source), str(store)]
        third = [
            EXE,
            "run",
            str(source),
            str(store),
            "--from",
            "recon_ct",
            "--until",
            "convert",
            "--cluster",
            "none",
        ]
        refusing = [
            subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for args in (second, third)
        ]
        for refused in refusing:
            _, err = refused.communicate(timeout=120)
            assert refused.returncode == 2, err
            message = " ".join(err.split())
            assert f"store {str(store)!r} is being written by another process" in message
            assert f"'bonemet-dask convert {source} {store} --cluster none'" in message
            assert f"pid {holder.pid} on host {socket.gethostname()}" in message
            assert f"since {record['since']}" in message
            assert "wait for it to end" in message and record["record"] in message
            assert "Traceback" not in err
    finally:
        (tmp_path / "release").touch()
        _, err = holder.communicate(timeout=120)
    assert holder.returncode == 0, err
    assert not Path(f"{store}{LOCK_SUFFIX}").exists()  # released and tidied
    assert (
        zarr.open_group(str(store), mode="r")["recon_ct/851/both/week0"].attrs["bonemet"]["status"]
        == "complete"
    )


def test_a_lock_left_by_a_killed_run_is_taken_over_and_the_rerun_resumes(tmp_path, source):
    store = tmp_path / "store.zarr"
    holder = _slow_convert(tmp_path, source, store)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    [left] = Path(f"{store}{LOCK_SUFFIX}").iterdir()  # the killed run's record stays behind
    assert json.loads(left.read_text())["pid"] == holder.pid
    root = zarr.open_group(str(store), mode="r")
    assert root["recon_ct/851/both/week0"].attrs["bonemet"]["status"] == "incomplete"

    rerun = _cli("convert", str(source), str(store))
    assert rerun.returncode == 0, rerun.stderr
    message = " ".join(rerun.stderr.split())
    assert f"removing the stale writer lock {left}" in message
    assert f"pid {holder.pid} is no longer running" in message
    assert not Path(f"{store}{LOCK_SUFFIX}").exists()
    assert _cli("verify", str(source), str(store)).returncode == 0


def _plant(
    store,
    *,
    host: str,
    pid: int,
    age: float,
    mode: str = "exclusive",
    section: str = "store",
    started: float | None = None,
) -> Path:
    """A record as another holder would have written it, heartbeat ``age`` seconds ago."""
    folder = Path(f"{store}{LOCK_SUFFIX}")
    folder.mkdir(parents=True, exist_ok=True)
    beat = time.time() - age
    record = {
        "lock": 1,
        "section": section,
        "mode": mode,
        "store": str(store),
        "token": "f" * 32,
        "host": host,
        "pid": pid,
        "pidns": _pidns(),
        "process_started": started,
        "user": "ana",
        "operation": "convert",
        "command": "bonemet-dask convert A B",
        "since": "2026-01-05T10:00:00Z",
        "heartbeat": "2026-01-05T10:00:00Z",
        "heartbeat_epoch": beat,
        "refresh_s": 30.0,
        "stale_after_s": 300.0,
    }
    path = folder / f"{section}.{host}.{pid}.ffffffffffff.json"
    path.write_text(json.dumps(record))
    return path


def _pidns():
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@pytest.fixture
def logged(caplog, monkeypatch):
    """``caplog``, also after a CLI test in this process (the CLI stops propagation)."""
    monkeypatch.setattr(logging.getLogger("bonemet_dask"), "propagate", True)
    return caplog


def test_another_hosts_lock_holds_until_its_heartbeat_is_stale(tmp_path, logged):
    store = tmp_path / "a.zarr"
    planted = _plant(store, host="node7.cluster", pid=4242, age=10)
    with pytest.raises(StoreLockedError) as refused, store_writer_lock(store):
        pass
    assert "pid 4242 on host node7.cluster, user ana" in str(refused.value)
    assert "from another host 300 s after its last heartbeat" in str(refused.value)
    assert refused.value.holders[0]["host"] == "node7.cluster" and planted.exists()
    assert isinstance(refused.value, StoreError)  # the CLI: one red line, exit 2

    planted = _plant(store, host="node7.cluster", pid=4242, age=301)
    with (
        logged.at_level(logging.WARNING, logger="bonemet_dask.io.lock"),
        store_writer_lock(store, operation="test") as record,
    ):
        assert not planted.exists() and record["host"] == socket.gethostname()
    assert "no heartbeat from node7.cluster for 301 s" in logged.text
    assert not Path(f"{store}{LOCK_SUFFIX}").exists()


def test_this_hosts_lock_is_stale_once_its_process_is_gone(tmp_path):
    store = tmp_path / "a.zarr"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    _plant(store, host=socket.gethostname(), pid=int(gone.stdout), age=0)
    with store_writer_lock(store):  # a dead pid, even with a fresh heartbeat
        [mine] = lock_records(store)
        assert mine["pid"] == os.getpid()
    # a live pid whose process started at another time: the pid was reused
    _plant(store, host=socket.gethostname(), pid=os.getppid(), age=0, started=1.0)
    with store_writer_lock(store):
        assert len(lock_records(store)) == 1
    alive = _plant(store, host=socket.gethostname(), pid=os.getppid(), age=1000)
    with (
        pytest.raises(StoreLockedError, match=f"pid {os.getppid()} is gone"),
        store_writer_lock(store),
    ):  # alive here: however old its heartbeat
        pass
    alive.unlink()


def test_reentrant_within_a_process_and_across_its_threads(tmp_path):
    store = tmp_path / "a.zarr"
    seen = []

    def nested():
        with store_writer_lock(str(store) + "/", mode="shared") as record:  # another spelling
            seen.append(record["token"])

    with store_writer_lock(store, operation="run") as outer:
        threads = [threading.Thread(target=nested) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with store_writer_lock(tmp_path / "." / "a.zarr"):
            assert len(lock_records(store)) == 1
    assert seen == [outer["token"]] * 4
    assert not Path(f"{store}{LOCK_SUFFIX}").exists()


def test_shared_writers_exclude_exclusive_ones_only(tmp_path):
    store = tmp_path / "a.zarr"
    task = _plant(store, host="node3", pid=11, age=0, mode="shared")
    with store_writer_lock(store, mode="shared"):
        assert {r["mode"] for r in lock_records(store)} == {"shared"}
    with pytest.raises(StoreLockedError, match="pass --no-consolidate"), store_writer_lock(store):
        pass
    task.unlink()
    _plant(store, host="node3", pid=12, age=0, mode="exclusive")
    with (
        pytest.raises(StoreLockedError, match=r"\(exclusive, pid 12 on host node3"),
        store_writer_lock(store, mode="shared"),
    ):
        pass


def test_a_section_waits_for_its_holder(tmp_path):
    store = tmp_path / "a.zarr"
    other = _plant(store, host="node3", pid=13, age=0, section="medirec")
    with store_writer_lock(store):  # another section: no conflict
        started = time.monotonic()
        with (
            pytest.raises(StoreLockedError, match="/medirec of store"),
            store_writer_lock(store, section="medirec", wait=0.3),
        ):
            pass
        assert time.monotonic() - started >= 0.3
        threading.Timer(0.2, other.unlink).start()
        with store_writer_lock(store, section="medirec", wait=30) as record:
            assert record["section"] == "medirec"


def test_heartbeat_refreshes_the_record(tmp_path):
    store = tmp_path / "a.zarr"
    with store_writer_lock(store, refresh=0.05) as record:
        first = record["heartbeat_epoch"]
        deadline = time.monotonic() + 10
        while lock_records(store)[0]["heartbeat_epoch"] == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.02)


def test_a_full_disk_names_the_store_and_releases_the_lock(tmp_path):
    store = tmp_path / "a.zarr"
    with pytest.raises(StoreFullError) as full, store_writer_lock(store):
        raise OSError(errno.ENOSPC, "No space left on device", str(store / "x"))
    assert str(full.value) == (
        f"no space left on device writing {str(store)!r}: free space or "
        "choose another store; rerun resumes"
    )
    assert full.value.errno == errno.ENOSPC and isinstance(full.value.__cause__, OSError)
    assert not Path(f"{store}{LOCK_SUFFIX}").exists()
    with pytest.raises(StoreError, match="is a regular file"):
        (tmp_path / "file").write_text("x")
        with store_writer_lock(tmp_path / "file"):
            pass


S3_HOLDER = """
import sys, time
from bonemet_dask.io.lock import store_writer_lock

with store_writer_lock(sys.argv[1], operation="s3-holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_s3_lock_on_moto(s3_endpoint, tmp_path):
    import s3fs

    from bonemet_dask.io.store import open_zarr_store

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("locks")
    store = "s3://locks/store.zarr"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint},
    }
    env = os.environ | {"FSSPEC_S3": json.dumps(options)}
    holder = subprocess.Popen(
        [sys.executable, "-c", S3_HOLDER, store],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        [name] = fs.ls("locks/store.zarr.bonemet-lock", refresh=True)  # beside, not inside
        assert not fs.exists("locks/store.zarr")
        with pytest.raises(StoreLockedError) as refused, store_writer_lock(store):
            pass
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(refused.value)
        assert f"delete s3://{name}" in str(refused.value)
        zstore = open_zarr_store(store)  # the same lock, reached through a zarr store object
        with pytest.raises(StoreLockedError), store_writer_lock(zstore, section="store"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    with store_writer_lock(store, operation="test"):  # the killed holder's record is stale
        [mine] = lock_records(store)
        assert mine["pid"] == os.getpid() and mine["record"].startswith("s3://locks/store.zarr.")
    assert not fs.exists("locks/store.zarr.bonemet-lock/" + mine["record"].rsplit("/", 1)[1])


def test_a_folder_that_cannot_hold_the_lock_writes_unlocked_with_a_warning(
    tmp_path, monkeypatch, logged
):
    from bonemet_dask.io import _lock_place

    def refuse(self, name, data):
        raise PermissionError(13, "Permission denied", self.folder)

    monkeypatch.setattr(_lock_place._LocalPlace, "write", refuse)
    with logged.at_level(logging.WARNING), store_writer_lock(tmp_path / "a.zarr") as record:
        assert record is None
    assert "without its writer lock" in logged.text and "Permission denied" in logged.text


def test_sigterm_releases_the_lock_and_the_rerun_resumes_at_once(tmp_path, source):
    """A batch system's time limit sends SIGTERM: the run stops, its record goes with it (no
    300 s wait for another node), and the rerun finishes the store."""
    store = tmp_path / "store.zarr"
    holder = _slow_convert(tmp_path, source, store)
    assert len(lock_records(store)) == 1
    holder.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    (tmp_path / "release").touch()  # the shard in flight finishes; the queued ones are dropped
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert not Path(f"{store}{LOCK_SUFFIX}").exists() or not lock_records(store)
    root = zarr.open_group(str(store), mode="r")
    assert root["recon_ct/851/both/week0"].attrs["bonemet"]["status"] == "incomplete"
    assert _cli("convert", str(source), str(store)).returncode == 0
    assert _cli("verify", str(source), str(store)).returncode == 0
