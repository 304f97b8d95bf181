"""connect("slurm" | "pbs"): the real dask-jobqueue path against a fake batch system.

tests/fake_scheduler/ holds fake sbatch/squeue/scancel and qsub/qstat/qdel: a submission runs the
job script dask-jobqueue wrote as a local background process group, so the worker that joins is
the one the generated script starts.
"""

import contextlib
import copy
import os
import shutil
import sys
import time
from pathlib import Path

import dask
import pytest

import bonemet_dask as bm
from bonemet_dask.cluster import (
    ClusterError,
    dashboard_hint,
    job_layout,
    lifetime_args,
    walltime_seconds,
    worker_environ,
)
from bonemet_dask.errors import UsageError

FAKE = Path(__file__).parent / "fake_scheduler"
GiB = 2**30


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("cores", "memory", "budget", "threads", "expected"),
    [
        # memory-bound: 32 GiB holds 8 workers of 4 GiB, one per core
        (8, "32GiB", "4GiB", None, (8, 1, 4 * GiB)),
        # memory-bound below the cores: 2 workers of 4 threads, 8 GiB each
        (8, "16GiB", "8GiB", None, (2, 4, 8 * GiB)),
        # core-bound: 4 cores cap 16 fitting workers at 4, each gets 16 GiB
        (4, "64GiB", "4GiB", None, (4, 1, 16 * GiB)),
        # 3 workers fit 12 GiB; 8 // 3 = 2 threads each
        (8, "12GiB", "4GiB", None, (3, 2, 4 * GiB)),
        # threads_per_worker fixes the cut: 8 // 2 = 4 workers, 64/4 GiB each
        (8, "64GiB", "4GiB", 2, (4, 2, 16 * GiB)),
        (1, "2GiB", "1GiB", None, (1, 1, 2 * GiB)),
    ],
)
def test_job_layout_follows_the_memory_rule(cores, memory, budget, threads, expected):
    layout = job_layout(cores, memory, budget, threads)
    assert (layout.processes, layout.threads, layout.worker_memory) == expected
    assert layout.processes * layout.worker_memory <= layout.memory
    assert layout.worker_memory >= dask.utils.parse_bytes(budget)


def test_job_layout_refuses_jobs_that_cannot_hold_the_budget():
    with pytest.raises(ClusterError, match=r"memory='2GiB'.*bonemet.memory-budget"):
        job_layout(4, "2GiB", "4GiB")
    with pytest.raises(ClusterError, match=r"threads_per_worker=1.*memory >= 32"):
        job_layout(8, "8GiB", "4GiB", threads_per_worker=1)
    with pytest.raises(ClusterError, match="cores=0"):
        job_layout(0, "8GiB", "4GiB")
    assert issubclass(ClusterError, UsageError)


@pytest.mark.parametrize(
    ("walltime", "kind", "seconds"),
    [
        ("00:10:00", "slurm", 600),
        ("1-02:00:00", "slurm", 93600),
        ("2-12", "slurm", 216000),
        ("30", "slurm", 1800),
        ("30", "pbs", 30),
        ("45:00", "pbs", 2700),
        ("12:00:00", "pbs", 43200),
    ],
)
def test_walltime_seconds(walltime, kind, seconds):
    assert walltime_seconds(walltime, kind) == seconds


def test_lifetime_ends_before_the_walltime_with_a_stagger():
    assert lifetime_args("00:10:00") == ["--lifetime", "510s", "--lifetime-stagger", "30s"]
    assert lifetime_args("24:00:00") == ["--lifetime", "85500s", "--lifetime-stagger", "300s"]
    for walltime in ("00:01:00", "01:00:00", "7-00:00:00"):
        args = lifetime_args(walltime)
        lifetime, stagger = int(args[1][:-1]), int(args[3][:-1])
        assert stagger > 0 and lifetime + stagger < walltime_seconds(walltime)
    with pytest.raises(ClusterError, match="walltime='soon'"):
        lifetime_args("soon")


def test_jobqueue_arguments_are_refused_for_other_kinds():
    with pytest.raises(UsageError, match=r"cores, memory only apply to cluster='slurm'"):
        bm.connect("tcp://127.0.0.1:1", cores=4, memory="8GiB")


# ---------------------------------------------------------------- against a fake batch system


@pytest.fixture
def fake_queue(tmp_path, monkeypatch):
    """The fake batch commands first on PATH, state in tmp_path/queue; jobs killed after."""
    pytest.importorskip("dask_jobqueue")
    state = tmp_path / "queue"
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SCHEDULER_DIR", str(state))
    monkeypatch.setenv("FAKE_SCHEDULER_PYTHON", sys.executable)
    monkeypatch.delenv("FAKE_SCHEDULER_MODE", raising=False)
    # every job in these tests holds one worker of 1 GiB; the dashboard picks a free port
    with dask.config.set(
        {"bonemet.memory-budget": "1GiB", "bonemet.cluster.dashboard-address": "127.0.0.1:0"}
    ):
        yield state
    for pid_file in state.glob("*.pid"):  # a test that failed half-way: no stray workers
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), 9)


def _running(state: Path) -> list[str]:
    return [p.stem for p in state.glob("*.pid")]


@pytest.mark.parametrize(("kind", "directive"), [("slurm", "#SBATCH"), ("pbs", "#PBS")])
def test_connect_gets_a_worker_from_the_generated_job_script(fake_queue, kind, directive):
    started = time.perf_counter()
    client = bm.connect(kind, cores=1, memory="2GiB", walltime="00:10:00", jobs=1)
    try:
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        elapsed = time.perf_counter() - started
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["nthreads"] == 1 and worker["memory_limit"] == 2 * GiB
        (job,) = _running(fake_queue)
        script = (fake_queue / f"{job}.sh").read_text()
        assert directive in script and "distributed.cli.dask_worker" in script
        assert "--lifetime 510s --lifetime-stagger 30s" in script
        # the worker got the malloc settings through its nanny (bonemet.cluster.worker-environ)
        environ = client.run(lambda: dict(os.environ))
        (seen,) = environ.values()
        for name, value in worker_environ().items():
            assert seen[name] == value, name
        assert seen["NUMBA_NUM_THREADS"] == "1"  # numba's prange: the worker's one thread
        hint = dashboard_hint(client)
        assert "ssh -N -L" in hint and "/status" in hint
    finally:
        client.close()
    assert elapsed < 30
    assert _running(fake_queue) == []  # closing the client cancelled the job (scancel/qdel)


def test_jupyterhub_link_in_the_dashboard_hint(fake_queue, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    with bm.connect("slurm", cores=1, memory="1GiB", walltime="10", jobs=1) as client:
        port = client.scheduler_info()["services"]["dashboard"]
        assert f"/user/ada/proxy/{port}/status" in dashboard_hint(client)


def test_missing_sbatch_fails_fast(monkeypatch, tmp_path):
    pytest.importorskip("dask_jobqueue")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"'sbatch', which is not on PATH.*login node"):
        bm.connect("slurm", cores=1, memory="8GiB", walltime="00:10:00")
    assert time.perf_counter() - started < 10


def test_rejected_submission_fails_clearly_and_closes(fake_queue, monkeypatch):
    monkeypatch.setenv("FAKE_SCHEDULER_MODE", "reject")
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"sbatch rejected the worker job: .*Invalid account"):
        bm.connect("slurm", cores=1, memory="1GiB", walltime="00:10:00", account="nope")
    assert time.perf_counter() - started < 10  # not the worker timeout (120 s)


def test_no_worker_within_the_timeout_fails_and_cancels(fake_queue, monkeypatch):
    monkeypatch.setenv("FAKE_SCHEDULER_MODE", "hold")  # accepted, stays queued
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"no Dask worker joined within 2 s.*squeue"):
        bm.connect("slurm", cores=1, memory="1GiB", walltime="00:10:00", timeout=2)
    assert time.perf_counter() - started < 10
    assert (fake_queue / "1001.done").read_text() == "cancelled"  # scancel was called


def test_missing_cores_and_memory_name_the_fix(fake_queue):
    with pytest.raises(ClusterError, match=r"needs cores= and memory=.*jobqueue-pbs.yaml"):
        bm.connect("pbs")


def test_memory_limit_and_threads_are_mapped_not_dropped(fake_queue):
    with bm.connect(
        "pbs", cores=2, memory="2GiB", memory_limit="1GiB", threads_per_worker=1, jobs=1
    ) as client:
        client.wait_for_workers(2, timeout=30)
        workers = client.scheduler_info()["workers"].values()
        assert sorted(w["nthreads"] for w in workers) == [1, 1]
        assert all(w["memory_limit"] == GiB for w in workers)
    with pytest.raises(ClusterError, match="threads_per_worker=1"):
        bm.connect("slurm", cores=2, memory="2GiB", memory_limit="2GiB", threads_per_worker=1)
    with pytest.raises(ClusterError, match="processes= follows from memory="):
        bm.connect("slurm", cores=2, memory="2GiB", processes=2)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the fake queue runs job scripts in bash")
def test_adaptive_cluster_starts_its_minimum(fake_queue):
    with bm.connect("slurm", cores=1, memory="1GiB", walltime="00:10:00", adapt=(1, 2)) as client:
        assert client.submit(sum, [2, 3]).result(timeout=30) == 5
        assert client.cluster._adaptive is not None
    with pytest.raises(ClusterError, match="excludes jobs="):
        bm.connect("slurm", cores=1, memory="1GiB", adapt=(0, 2), jobs=1)


@pytest.mark.slow
def test_workers_retire_before_the_walltime_and_adapt_replaces_them(fake_queue):
    """walltime 12 s: each worker retires after about 10 s; adapt keeps one worker running."""
    with bm.connect("slurm", cores=1, memory="1GiB", walltime="00:12", adapt=(1, 1)) as client:
        first = set(client.scheduler_info()["workers"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = set(client.scheduler_info()["workers"])
            if now and now != first:
                break
            time.sleep(0.5)
        assert now and now != first, "no replacement worker joined"
        assert client.submit(sum, [4, 5]).result(timeout=30) == 9
    assert int((fake_queue / "counter").read_text()) >= 1002  # a second job was submitted


def test_tls_between_scheduler_and_workers(fake_queue, tmp_path):
    pytest.importorskip("cryptography")
    certs = tmp_path / "certs"
    certs.mkdir()
    with bm.connect(
        "slurm", cores=1, memory="1GiB", jobs=1, security=True, shared_temp_directory=str(certs)
    ) as client:
        assert client.scheduler.address.startswith("tls://")
        assert client.submit(sum, [1, 1]).result(timeout=30) == 2
        assert "--tls-key" in (fake_queue / "1001.sh").read_text()
    assert list(certs.iterdir()) == []  # the workers' temporary certificates are gone


def test_deployment_files_load_and_follow_the_rule():
    """cluster/*.yaml as DASK_CONFIG would load them: the documented layout and job scripts."""
    jobqueue = pytest.importorskip("dask_jobqueue")  # its defaults first, then the files
    folder = Path(__file__).parents[1] / "cluster"
    loaded = dask.config.collect(paths=[str(folder)], env={})
    with dask.config.set(dask.config.merge(copy.deepcopy(dask.config.config), loaded)):
        budget = dask.config.get("bonemet.memory-budget")
        assert dask.utils.parse_timedelta(dask.config.get("bonemet.cluster.worker-timeout")) == 600
        spec = dask.config.get("bonemet-gpu-worker")
        assert spec["cls"] == "dask_cuda.CUDAWorker" and spec["opts"]["resources"] == "GPU=1"
        for kind, job_cls in (("slurm", jobqueue.slurm.SLURMJob), ("pbs", jobqueue.pbs.PBSJob)):
            cores = dask.config.get(f"jobqueue.{kind}.cores")
            memory = dask.config.get(f"jobqueue.{kind}.memory")
            walltime = dask.config.get(f"jobqueue.{kind}.walltime")
            layout = job_layout(cores, memory, budget)
            assert (layout.processes, layout.threads, layout.worker_memory) == (8, 1, 4 * GiB)
            assert lifetime_args(walltime, kind)[:2] == ["--lifetime", "13500s"]
            job = job_cls("tcp://scheduler:8786", name="w", processes=layout.processes)
            script = job.job_script()
            assert "--nworkers 8" in script and "--memory-limit 4.00GiB" in script
            assert "--local-directory $TMPDIR" in script and "04:00:00" in script


def _numba_threads():
    import numba

    return numba.get_num_threads()


def _warm_up_seconds(dask_worker):
    plugin = dask_worker.plugins["bonemet-warm-up"]
    plugin.done.wait(60)
    return plugin.seconds


def test_local_cluster_still_starts_and_hints_a_tunnel():
    with dask.config.set({"bonemet.cluster.dashboard-address": "127.0.0.1:0"}):
        client = bm.connect("local", n_workers=1)
    cluster = client.cluster
    with client:
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        assert "ssh -N -L" in dashboard_hint(client)
        (seen,) = client.run(lambda: dict(os.environ)).values()
        assert seen["MALLOC_MMAP_THRESHOLD_"] == "67108864"  # not distributed's defaults alone
        assert seen["MALLOC_TRIM_THRESHOLD_"] == "134217728"
        assert seen["NUMBA_NUM_THREADS"] == "1"  # one thread per worker, so numba's too
        assert client.run(_numba_threads) == dict.fromkeys(client.run(_numba_threads), 1)
        # every worker warmed the conversion path up in the background as it started
        warmed = client.run(_warm_up_seconds)
        assert warmed and all(seconds is not None and seconds > 0 for seconds in warmed.values())
    assert cluster.status.name == "closed"  # leaving the client stops the cluster it started


# ---------------------------------------------------------------- the CLI


def test_cluster_spec_carries_the_job_size():
    from bonemet_dask.cluster import parse_cluster_spec

    kind, options = parse_cluster_spec(
        "slurm:cores=32,memory=128GiB,walltime=24:00:00,queue=gpu,account=lab,jobs=8"
    )
    assert kind == "slurm" and options == {
        "cores": 32, "memory": "128GiB", "walltime": "24:00:00", "queue": "gpu",
        "account": "lab", "jobs": 8,
    }  # fmt: skip
    assert parse_cluster_spec("pbs:adapt=0-20") == ("pbs", {"adapt": (0, 20)})
    assert parse_cluster_spec("local") == ("local", {})
    assert parse_cluster_spec("tcp://10.0.0.1:8786") == ("tcp://10.0.0.1:8786", {})
    with pytest.raises(ClusterError, match="KEY=VALUE with KEY one of"):
        parse_cluster_spec("slurm:cpus=4")
    with pytest.raises(ClusterError, match="jobs='many' must be int"):
        parse_cluster_spec("slurm:jobs=many")


@pytest.mark.slow
def test_cli_run_finishes_on_fake_slurm_workers(fake_queue, tmp_path):
    import subprocess

    import zarr

    from bonemet_dask.synth import SynthConfig, generate

    generate(str(tmp_path / "src"), SynthConfig(mice=1, weeks=2, size="tiny", seed=0))
    env = os.environ | {
        "DASK_BONEMET__MEMORY_BUDGET": "1GiB",
        "DASK_BONEMET__CLUSTER__DASHBOARD_ADDRESS": "127.0.0.1:0",
    }
    store = tmp_path / "store.zarr"
    spec = "slurm:cores=1,memory=2GiB,walltime=00:10:00,jobs=1"
    command = [
        sys.executable,
        "-m",
        "bonemet_dask.cli",
        "run",
        str(tmp_path / "src"),
        str(store),
        "--from",
        "recon_ct",
        "--until",
        "register",
        "--cluster",
        spec,
    ]  # fmt: skip  (tiny: no fibula to composite on)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ssh -N -L" in done.stderr  # the dashboard hint: loopback, so the tunnel
    root = zarr.open_group(str(store), mode="r")
    registered = root["regist_ct/851/left/week1"].attrs["bonemet"]
    assert registered["status"] == "complete" and registered["registration"]["kind"] == "time"
    assert list(fake_queue.glob("*.sh")) and _running(fake_queue) == []


def test_a_stage_runs_on_a_tls_local_cluster(tmp_path):
    """Scheduler and workers speak TLS with certificates made here; a stage runs over it."""
    pytest.importorskip("cryptography")
    import numpy as np
    import zarr
    from distributed import Client, LocalCluster
    from distributed.security import Security

    from bonemet_dask.io.labels import mask_array
    from bonemet_dask.ops.convert import convert
    from bonemet_dask.ops.segment_store import segment_store
    from bonemet_dask.synth import SynthConfig, generate

    config = SynthConfig(mice=1, weeks=1, size="tiny", seed=0, components=("recon_ct",))
    generate(str(tmp_path / "src"), config)
    store = str(tmp_path / "store.zarr")
    convert(tmp_path / "src", store)
    security = Security.temporary()  # a CA and a certificate, in memory, for this test only
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, security=security,
                     dashboard_address=None) as cluster,
        Client(cluster, security=security) as client,
    ):  # fmt: skip
        assert cluster.scheduler_address.startswith("tls://")
        report = segment_store(store, str(tmp_path / "tls.zarr"), client=client)
    assert report.exit_code == 0 and len(report.written) == 2
    local = segment_store(store, str(tmp_path / "here.zarr"))  # no cluster: the same arrays
    over, here = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("tls.zarr", "here.zarr"))
    for path in local.written:
        np.testing.assert_array_equal(mask_array(over[path])[:], mask_array(here[path])[:])
