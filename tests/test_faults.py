"""Lost workers on a real cluster of worker processes (``bm.connect("local")``).

* A worker process killed (SIGKILL) while a stage's tasks are on it costs nothing: its nanny
  starts a new one, the scheduler reruns what the dead one held, and the store equals the one
  an undisturbed run writes, array for array and attribute for attribute.
* A scan whose processing kills every worker it lands on (a task that ends its process, as an
  out-of-memory kill or a crashing native library does) ends ``failed`` with a reason naming
  the scan and the fix after ``distributed.scheduler.allowed-failures`` + 1 deaths: no hang,
  the other scans of the stage are written, and the poisoned group is not marked complete.

The poison is a worker plugin that wraps one library function (the engine's shard writer, the
registration search) in each worker process and in each one a nanny restarts: the production
tasks run unchanged up to the call.  The tests lower ``allowed-failures`` to 1 (two deaths, not
dask's four) to stay short.
"""

import importlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dask
import pytest
import zarr
from dask.utils import key_split
from distributed import WorkerPlugin

import bonemet_dask as bm
from bonemet_dask.io.store import completed_shards
from bonemet_dask.ops.run import run
from bonemet_dask.synth import SynthConfig, generate

# tiny and voxelised, as tests/conftest.py's tiny_published: every stage up to register writes
CONFIG = SynthConfig(mice=1, weeks=2, size="tiny", seed=0, products="voxelised")
NO_HANG_S = 300  # far above a run's time here; a hang fails the test instead of blocking CI


class WorkerKiller(threading.Thread):
    """SIGKILL the worker process that has a task of ``prefix`` processing, once.

    Watches the in-process scheduler of a ``LocalCluster`` every few milliseconds; records
    what the victim held, so the test can tell the kill really hit the stage.
    """

    def __init__(self, client, prefix: str) -> None:
        super().__init__(daemon=True)
        self.scheduler = client.cluster.scheduler
        self.pids = client.run(os.getpid)  # worker address -> process id
        self.prefix = prefix
        self.victim: tuple[str, list[str]] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            try:
                workers = list(self.scheduler.workers.values())
                busy = [(ws.address, [ts.key for ts in list(ws.processing)]) for ws in workers]
            except RuntimeError:  # a set changed size while the scheduler's loop ran: look again
                continue
            for address, keys in busy:
                hit = [k for k in keys if key_split(k) == self.prefix]
                if hit and address in self.pids:
                    self.victim = (address, hit)
                    os.kill(self.pids[address], signal.SIGKILL)
                    return


def _cluster(settings: dict | None = None):
    """Two worker processes of one thread each, on loopback (a free dashboard port).

    ``settings``: Dask config the scheduler reads as it starts (``allowed-failures``).
    """
    free_port = {"bonemet.cluster.dashboard-address": "127.0.0.1:0"}
    with dask.config.set({**free_port, **(settings or {})}):
        return bm.connect("local", n_workers=2, threads_per_worker=1, memory_limit="2GiB")


POISON = {"distributed.scheduler.allowed-failures": 1}
"""Give a task up after it killed two workers."""


def _within(timeout: float, function, *args, **kwargs):
    """``function(*args, **kwargs)``, failing the test if it has not returned after ``timeout``."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result(timeout=timeout)


@pytest.fixture
def source(tmp_path):
    generate(str(tmp_path / "src"), CONFIG)
    return tmp_path / "src"


@pytest.mark.slow
def test_a_worker_killed_mid_stage_changes_no_output(source, tmp_path, same_store):
    undisturbed, disturbed = tmp_path / "undisturbed.zarr", tmp_path / "disturbed.zarr"
    first = run(source, str(undisturbed), until="register", metrics_csv=None)
    assert first.exit_code == 0
    with _cluster() as client:
        before = set(client.run(os.getpid).values())
        killer = WorkerKiller(client, "fdk-backproject")
        killer.start()
        try:
            report = _within(NO_HANG_S, run, source, str(disturbed), until="register",
                             client=client, metrics_csv=None)  # fmt: skip
        finally:
            killer.stop.set()
            killer.join()
        assert killer.victim is not None, "no fdk-backproject task was ever seen processing"
        deadline = time.monotonic() + 60
        while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = set(client.run(os.getpid).values())
    assert report.exit_code == 0, {k: r.failed for k, r in report.stages.items()}
    assert after - before, "the killed worker was not replaced by its nanny"
    assert len(report.stages["reconstruct"].written) == 2
    same_store(undisturbed, disturbed)


def _poison(module: str, name: str, kills) -> WorkerPlugin:
    """A plugin that makes ``module.name`` end its worker process when ``kills(*args)`` holds.

    Set up in every worker process, and again in each one a nanny restarts; the function is
    looked up in its module when a task calls it, so the production task runs unchanged.
    """

    class Poison(WorkerPlugin):
        def __init__(self) -> None:
            self.name = f"poison-{module}.{name}"

        def setup(self, worker) -> None:
            target = importlib.import_module(module)
            real = getattr(target, name)

            def poisoned(*args, **kwargs):
                if kills(*args, **kwargs):
                    os._exit(70)  # as the kernel's out-of-memory killer or a segfault would
                return real(*args, **kwargs)

            setattr(target, name, poisoned)

    return Poison()


def test_a_scan_that_kills_its_workers_fails_by_name_without_a_hang(source, tmp_path):
    poisoned = "seg_ct/851/left/week1"
    store = tmp_path / "store.zarr"
    with _cluster(POISON) as client:
        assert client.cluster.scheduler.allowed_failures == 1
        client.register_plugin(_poison("bonemet_dask.ops.engine", "write_scan_shard",
                                       lambda group, *_, **__: group.path == poisoned))  # fmt: skip
        report = _within(NO_HANG_S, run, source, str(store), until="segment", client=client,
                         metrics_csv=None)  # fmt: skip
        assert len(client.scheduler_info()["workers"]) >= 1  # the nannies restarted them
    segment = report.stages["segment"]
    assert report.exit_code == 1
    [(path, reason)] = segment.failed
    assert path == poisoned
    assert "input recon_ct/851/both/week1" in reason
    assert "died 2 times" in reason and "allowed-failures=1" in reason
    assert "memory" in reason and "rerun" in reason
    root = zarr.open_group(str(store), mode="r")
    assert root[poisoned].attrs["bonemet"]["status"] != "complete"
    assert sorted(segment.written) == sorted(
        f"seg_ct/851/{side}/week{week}" for side in ("left", "right") for week in (0, 1)
        if f"seg_ct/851/{side}/week{week}" != poisoned
    )  # fmt: skip
    for path in segment.written:
        group = root[path]
        assert group.attrs["bonemet"]["status"] == "complete"
        assert completed_shards(group) == set(range(group["slice_hash"].cdata_shape[0]))


def test_a_shard_that_kills_its_workers_quarantines_its_scan_in_convert(source, tmp_path):
    """``convert`` on a cluster: the scan whose shard kills every worker it lands on is
    quarantined by name, the other scans are written, and nothing hangs."""
    from bonemet_dask.ops.convert import convert

    poisoned = "recon_ct/851/both/week1"
    with _cluster(POISON) as client:
        kills = lambda task, *_, **__: task.group_path == poisoned  # noqa: E731
        client.register_plugin(_poison("bonemet_dask.ops.convert", "convert_shard", kills))
        report = _within(NO_HANG_S, convert, source, str(tmp_path / "store.zarr"),
                         components="recon_ct", client=client)  # fmt: skip
    assert report.exit_code == 3 and report.written == ["recon_ct/851/both/week0"]
    [(folder, problems)] = report.quarantined.items()
    assert folder.endswith("2. Recon-CT/851/week 1")
    assert "died 2 times converting shard 0" in problems[0][1]


def test_a_search_that_kills_its_workers_fails_its_tibia_by_name(tiny_published, tmp_path):
    """A registration's search runs while the stage builds its output (not in the write
    graph): a search that kills its workers fails that output, naming its input, and the
    later week of the tibia fails for want of its baseline.  Fed the published Seg-CT, as a
    user registering BoneMet's own segmentations does; the tests above feed ``run``'s own."""
    with _cluster(POISON) as client:
        client.register_plugin(
            _poison("bonemet_dask.ops.register", "register_levels", lambda *_, **__: True)
        )
        report = _within(NO_HANG_S, bm.register_store, str(tiny_published / "published.zarr"),
                         str(tmp_path / "registered.zarr"), client=client)  # fmt: skip
    failed = dict(report.failed)
    assert report.exit_code == 1 and not report.written
    assert sorted(failed) == [f"regist_ct/851/{side}/week{week}"
                              for side in ("left", "right") for week in (0, 1)]  # fmt: skip
    for side in ("left", "right"):
        searched = failed[f"regist_ct/851/{side}/week0"]
        assert f"input seg_ct/851/{side}/week0" in searched and "died 2 times" in searched
        assert "no registered baseline" in failed[f"regist_ct/851/{side}/week1"]
