"""One entry point to a Dask cluster: embedded, SLURM, PBS, GPU, or an existing scheduler.

Code elsewhere only ever sees a ``distributed.Client``.  The embedded scheduler (``"local"``,
``"gpu"``; ``bonemet-dask demo`` and the CLI's ``--cluster local`` use :func:`connect` too), its
workers, their nannies and every dashboard bind to 127.0.0.1 unless the ``bonemet.cluster``
config (``scheduler-host``, ``dashboard-address``) or ``dashboard_address=`` says otherwise; a
dashboard given as a bare port (``":8787"``, ``":0"``), which distributed would bind to every
interface (0.0.0.0), binds to the scheduler's host (:func:`dashboard_on`).  A SLURM or PBS
scheduler listens where dask-jobqueue puts it (``interface=`` or ``jobqueue.<kind>.interface``)
because workers on other nodes must reach it; its dashboard stays on 127.0.0.1.  Deployment
files live in ``cluster/`` at the repository root (``cluster/README.md``).

Lost workers: a worker process that dies (killed, out of memory) is restarted by its nanny and
the scheduler reruns the tasks it held, so a run finishes with the same outputs.  A task that
kills every worker it runs on is given up after ``distributed.scheduler.allowed-failures`` + 1
deaths: dask's default, 3, which bonemet-dask does not change (set it in the Dask config before
the cluster starts, e.g. ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1``).  The stage
engine then reports that output ``failed``, naming the group and its input scan
(:mod:`bonemet_dask.ops.engine`).
"""

from __future__ import annotations

import functools
import getpass
import logging
import math
import os
import shlex
import shutil
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bonemet_dask import config
from bonemet_dask.errors import UsageError

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

CLUSTER_KINDS = ("local", "slurm", "pbs", "gpu")
"""Named cluster kinds; anything else must be a scheduler address or a scheduler file."""

JOBQUEUE_KINDS = {"slurm": ("SLURMCluster", "sbatch"), "pbs": ("PBSCluster", "qsub")}
"""Batch-queue kinds: the dask-jobqueue cluster class and the command that submits a job."""

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class ClusterError(UsageError):
    """A cluster that cannot start: no submit command, a rejected job, or no worker joined."""


@dataclass(frozen=True)
class JobLayout:
    """How one batch job is cut into Dask worker processes (see :func:`job_layout`)."""

    cores: int
    """Cores the job asks for."""
    memory: int
    """Bytes the job asks for."""
    processes: int
    """Worker processes per job."""
    threads: int
    """Threads per worker process."""
    worker_memory: int
    """Memory limit of each worker process, bytes (at least the memory budget)."""


def job_layout(
    cores: int, memory: str | int, budget: str | int, threads_per_worker: int | None = None
) -> JobLayout:
    """Cut one job of ``cores`` and ``memory`` into workers that each hold the memory budget.

    The rule: every task of the pipeline is sized to ``bonemet.memory-budget`` (``budget``), so
    a worker process gets at least that much memory.

    - processes per job = ``floor(memory / budget)``, capped by ``cores`` (and, when
      ``threads_per_worker`` is given, by ``cores // threads_per_worker``);
    - threads per process = ``cores // processes``;
    - memory per process = ``memory // processes`` (at least ``budget``).

    Parameters
    ----------
    cores : int
        Cores per job.
    memory : str or int
        Memory per job (``"32GiB"`` or bytes).
    budget : str or int
        Memory each worker process must have (``bonemet.memory-budget``).
    threads_per_worker : int, optional
        Threads each worker process must have; the job is then cut into
        ``cores // threads_per_worker`` processes, and must hold the budget for each.

    Returns
    -------
    JobLayout

    Raises
    ------
    ClusterError
        If the job cannot hold one worker of ``budget`` bytes (or of ``threads_per_worker``
        threads); the message names the argument to change.
    """
    from dask.utils import format_bytes, parse_bytes

    memory_b, budget_b = int(parse_bytes(memory)), int(parse_bytes(budget))
    if not isinstance(cores, int) or cores < 1:
        raise ClusterError(f"cores={cores!r}: ask for at least one core per job (cores=8)")
    if budget_b < 1:
        raise ClusterError(f"memory budget {budget!r} must be positive (bonemet.memory-budget)")
    if memory_b < budget_b:
        raise ClusterError(
            f"memory={memory!r} per job is less than one worker's memory budget "
            f"({format_bytes(budget_b)}, bonemet.memory-budget); ask for memory >= "
            f"{format_bytes(budget_b)} or lower bonemet.memory-budget"
        )
    fit = memory_b // budget_b
    if threads_per_worker is None:
        processes = min(cores, fit)
    else:
        if threads_per_worker < 1 or threads_per_worker > cores:
            raise ClusterError(
                f"threads_per_worker={threads_per_worker} must be between 1 and cores={cores}"
            )
        processes = cores // threads_per_worker
        if processes > fit:
            raise ClusterError(
                f"threads_per_worker={threads_per_worker} cuts a {cores}-core job into "
                f"{processes} workers, but memory={memory!r} holds only {fit} of "
                f"{format_bytes(budget_b)} (bonemet.memory-budget); ask for memory >= "
                f"{format_bytes(processes * budget_b)} or raise threads_per_worker"
            )
    return JobLayout(
        cores=cores,
        memory=memory_b,
        processes=processes,
        threads=cores // processes,
        worker_memory=memory_b // processes,
    )


def walltime_seconds(walltime: str | int, kind: str = "slurm") -> int:
    """Seconds in a batch walltime: ``"HH:MM:SS"``, ``"D-HH:MM[:SS]"``, ``"MM:SS"`` or a number.

    A bare number is minutes for SLURM (``sbatch -t 30``) and seconds for PBS
    (``-l walltime=1800``).

    Raises
    ------
    ClusterError
        If ``walltime`` is not in one of these forms.
    """
    text = str(walltime).strip()
    try:
        days, _, rest = text.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts):
            raise ValueError(text)
        if days:
            hours, minutes, seconds = [*parts, 0, 0][:3]
            total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
        elif len(parts) == 1:
            total = parts[0] * (60 if kind == "slurm" else 1)
        elif len(parts) == 2:
            total = parts[0] * 60 + parts[1]
        else:
            total = parts[0] * 3600 + parts[1] * 60 + parts[2]
    except ValueError:
        total = 0
    if total <= 0:
        raise ClusterError(
            f"walltime={walltime!r} is not a walltime; write it like '01:00:00' (HH:MM:SS)"
        )
    return total


def lifetime_args(walltime: str | int, kind: str = "slurm") -> list[str]:
    """``dask worker`` arguments that retire a worker before its job's walltime runs out.

    stagger = min(5 % of the walltime, 5 min); grace = min(10 % of the walltime, 10 min);
    lifetime = walltime - grace - stagger.  Each worker retires gracefully (hands its results
    to other workers) between ``lifetime - stagger`` and ``lifetime + stagger``, so at least
    ``grace`` before the batch system kills the job, and workers of jobs started together do
    not all leave at once.  An adaptive cluster (``adapt=``) then submits replacement jobs.

    There is no ``--lifetime-restart``: it would restart the worker inside the same job, which
    the batch system kills at the walltime anyway; the job must end so a fresh one replaces it.
    """
    total = walltime_seconds(walltime, kind)
    stagger = min(0.05 * total, 300.0)
    grace = min(0.10 * total, 600.0)
    lifetime = total - grace - stagger
    return ["--lifetime", f"{int(lifetime)}s", "--lifetime-stagger", f"{int(stagger)}s"]


SPEC_TYPES: dict[str, Any] = {
    "n_workers": int, "threads_per_worker": int, "memory_limit": str, "cores": int,
    "memory": str, "walltime": str, "queue": str, "account": str, "jobs": int, "timeout": str,
    "adapt": "range",
}  # fmt: skip
"""The ``KEY=VALUE`` settings a cluster spec may carry (:func:`parse_cluster_spec`)."""


def parse_cluster_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a CLI cluster spec ``KIND[:KEY=VALUE,...]`` into the kind and keywords of connect.

    ``slurm:cores=32,memory=128GiB,walltime=24:00:00,queue=gpu,account=lab,jobs=8`` or
    ``pbs:cores=16,memory=64GiB,adapt=0-20``; addresses (``tcp://host:8786``) and scheduler
    files pass through unchanged.

    Raises
    ------
    ClusterError
        For an unknown key or a value of the wrong type (the message lists the keys).
    """
    kind, _, rest = spec.partition(":")
    if kind not in CLUSTER_KINDS or not rest:
        return (kind if kind in CLUSTER_KINDS and not rest else spec), {}
    options: dict[str, Any] = {}
    for item in rest.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in SPEC_TYPES:
            raise ClusterError(
                f"--cluster {spec!r}: {item!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(SPEC_TYPES)} (e.g. slurm:cores=32,memory=128GiB,jobs=8)"
            )
        kind_of = SPEC_TYPES[key]
        try:
            if kind_of == "range":
                low, _, high = value.partition("-")
                options[key] = (int(low), int(high))
            else:
                options[key] = kind_of(value)
        except ValueError:
            expected = "MIN-MAX" if kind_of == "range" else kind_of.__name__
            raise ClusterError(f"--cluster {spec!r}: {key}={value!r} must be {expected}") from None
    return kind, options


def active_client() -> Client | None:
    """The ``distributed.Client`` the user has made current, or None (never starts one).

    Only looks when ``distributed`` is already imported: a process that never made a client
    does not pay for the import.
    """
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def connect(
    cluster: str = "local",
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    dashboard_address: str | None = None,
    cores: int | None = None,
    memory: str | int | None = None,
    walltime: str | None = None,
    queue: str | None = None,
    account: str | None = None,
    jobs: int | None = None,
    adapt: tuple[int, int] | None = None,
    timeout: str | float | None = None,
    **job_kwargs: Any,
) -> Client:
    """Start or join a Dask cluster and return a client.

    Parameters
    ----------
    cluster : str
        ``"local"``: an embedded ``LocalCluster`` of processes; ``"slurm"`` or ``"pbs"``: batch
        jobs through dask-jobqueue (``SLURMCluster``, ``PBSCluster``), each job cut into workers
        by :func:`job_layout`; ``"gpu"``: dask-cuda's ``LocalCUDACluster``, one worker per GPU
        with the resource ``GPU=1``; a scheduler address (``tcp://host:8786``) or the path of a
        scheduler file joins a running cluster.
    n_workers : int, optional
        Local cluster size (default from ``bonemet.cluster``: one worker per core, at most 4).
        For ``slurm``/``pbs``: worker processes wanted, rounded up to whole jobs.
    threads_per_worker : int, optional
        Threads per worker (local default ``bonemet.cluster.threads-per-worker``).  For
        ``slurm``/``pbs``: fixes the threads of each worker process (see :func:`job_layout`).
    memory_limit : str or int, optional
        Per-worker memory limit (default ``bonemet.memory-budget``).  For ``slurm``/``pbs``: the
        memory each worker process must hold, in place of the budget in :func:`job_layout`.
    dashboard_address : str, optional
        Where the dashboard listens (default ``bonemet.cluster.dashboard-address``, on
        127.0.0.1); ``":0"`` or ``"127.0.0.1:0"`` picks a free port.  A bare port binds to the
        scheduler's host (``bonemet.cluster.scheduler-host``, 127.0.0.1), never to every
        interface; write ``"0.0.0.0:8787"`` for that.
    cores, memory : int, str, optional
        ``slurm``/``pbs``: cores and memory of one job (default ``jobqueue.<kind>.cores`` and
        ``.memory``; one of the two places must say).  Processes per job =
        ``floor(memory / bonemet.memory-budget)`` capped by ``cores``, threads per process =
        ``cores // processes``, memory per process = ``memory / processes``.
    walltime : str, optional
        ``slurm``/``pbs``: walltime of one job (default ``jobqueue.<kind>.walltime``).  Workers
        retire before it with a stagger (:func:`lifetime_args`) unless ``worker_extra_args``
        already has ``--lifetime``.
    queue, account : str, optional
        ``slurm``/``pbs``: partition/queue and account of the jobs (``-p``/``-q``, ``-A``).
    jobs : int, optional
        ``slurm``/``pbs``: jobs to start (default ``bonemet.cluster.jobs``).
    adapt : (int, int), optional
        ``slurm``/``pbs``: scale between ``adapt[0]`` and ``adapt[1]`` jobs with the load, and
        replace jobs whose workers retired at their lifetime.  Excludes ``jobs``/``n_workers``.
    timeout : str or float, optional
        ``slurm``/``pbs``: how long to wait for the first worker (default
        ``bonemet.cluster.worker-timeout``); 0 does not wait.
    **job_kwargs
        ``slurm``/``pbs``: passed to the dask-jobqueue cluster (``job_extra_directives``,
        ``log_directory``, ``interface``, ``local_directory``, ``job_script_prologue``,
        ``security``, ``shared_temp_directory``, ``worker_extra_args``, ...).

    Returns
    -------
    distributed.Client
        Close it (or use it as a context manager) to stop the cluster ``connect`` started; for
        ``slurm``/``pbs`` that cancels the jobs.

    Raises
    ------
    ValueError
        If ``cluster`` is neither a known kind, an address, nor an existing scheduler file, or
        if a ``slurm``/``pbs`` argument is given for another kind.
    ClusterError
        ``slurm``/``pbs``: the submit command is not on PATH, the batch system rejected a job,
        no worker joined within ``timeout``, or the job layout does not fit (a
        :class:`~bonemet_dask.errors.UsageError`).  What was started is closed first.
    ImportError
        If the kind needs an optional package that is missing (the message names the extra).
    """
    from distributed import Client

    if cluster in JOBQUEUE_KINDS:
        client = _connect_jobqueue(
            cluster, cores=cores, memory=memory, walltime=walltime, queue=queue,
            account=account, jobs=jobs, adapt=adapt, timeout=timeout, n_workers=n_workers,
            threads_per_worker=threads_per_worker, memory_limit=memory_limit,
            dashboard_address=dashboard_address, job_kwargs=job_kwargs,
        )  # fmt: skip
        logger.info("%s", dashboard_hint(client))
        return client
    given = {
        "cores": cores, "memory": memory, "walltime": walltime, "queue": queue,
        "account": account, "jobs": jobs, "adapt": adapt, "timeout": timeout, **job_kwargs,
    }  # fmt: skip
    stray = sorted(name for name, value in given.items() if value is not None)
    if stray:
        raise UsageError(
            f"{', '.join(stray)} only apply to cluster='slurm' or 'pbs' (got cluster={cluster!r})"
        )
    memory_limit = memory_limit or config.get("memory-budget")
    # distributed reads an empty host as every interface: 0.0.0.0 must be written out
    host = config.get("cluster.scheduler-host") or "127.0.0.1"
    dashboard_address = dashboard_on(
        dashboard_address or config.get("cluster.dashboard-address"), host
    )
    threads = threads_per_worker or config.get("cluster.threads-per-worker") or 1
    if cluster == "local":
        from distributed import LocalCluster

        workers = n_workers or config.get("cluster.n-workers") or min(4, os.cpu_count() or 1)
        with _worker_environ_set(threads):
            local = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                memory_limit=memory_limit,
                host=host,
                dashboard_address=dashboard_address,
            )
        client = _owning(local)
    elif cluster == "gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as err:
            raise ImportError(
                "cluster='gpu' needs dask-cuda and cupy: pip install 'bonemet-dask[gpu]'"
            ) from err
        with _worker_environ_set(threads):
            gpu = LocalCUDACluster(
                threads_per_worker=threads,
                memory_limit=memory_limit,
                host=host,
                dashboard_address=dashboard_address,
                resources={"GPU": 1},
            )
        client = _owning(gpu)
    elif cluster.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        client = Client(cluster)
    elif os.path.isfile(cluster):
        client = Client(scheduler_file=cluster)
    else:
        raise ValueError(
            f"cluster={cluster!r} is not one of {', '.join(CLUSTER_KINDS)}, a scheduler address "
            "(tcp://host:port) or an existing scheduler file"
        )
    logger.info("%s", dashboard_hint(client))
    return client


def worker_environ() -> dict[str, str]:
    """Environment variables of the worker processes ``connect`` starts.

    ``bonemet.cluster.worker-environ`` (glibc's malloc thresholds: see ``bonemet.yaml``).
    They must be in the environment the worker process starts with (glibc reads them at its
    first allocation), so they go into distributed's ``nanny.pre-spawn-environ``, which a
    nanny sets before it spawns its worker, not into the ``env`` it sets inside the worker.
    """
    values = config.get("cluster.worker-environ") or {}
    return {str(name): str(value) for name, value in dict(values).items()}


def _spawn_environ(threads: int) -> dict[str, str]:
    """The worker spawn environment: ``nanny.pre-spawn-environ``, :func:`worker_environ`, numba.

    ``NUMBA_NUM_THREADS`` is the worker's thread count: a numba kernel with ``prange`` (FDK's
    backprojection) would otherwise start one thread per core in every worker, and two workers
    on two cores then ran each task at half speed (``benchmarks/suite.py --stages chain``:
    reconstruct 0.97x from 1 to 2 workers).
    """
    import dask
    import distributed  # noqa: F401  (loads its config defaults)

    merged = {
        **dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}),
        "NUMBA_NUM_THREADS": int(threads),
        **worker_environ(),
    }
    return {str(name): str(value) for name, value in merged.items()}


def _worker_environ_set(threads: int):
    """A config context in which new nannies spawn their workers with :func:`_spawn_environ`."""
    import dask

    return dask.config.set({"distributed.nanny.pre-spawn-environ": _spawn_environ(threads)})


def _job_environ_prologue(prologue: list[str], threads: int) -> list[str]:
    """Job-script lines that give the nanny of a batch job :func:`_spawn_environ`.

    A batch worker's nanny reads ``distributed.nanny.pre-spawn-environ`` from its own
    environment, so the whole mapping is exported as ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON``
    (a prologue that already sets it is the user's, kept as it is).
    """
    if any("PRE_SPAWN_ENVIRON" in line for line in prologue):
        return prologue
    literal = repr(_spawn_environ(threads))
    return [*prologue, f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON={shlex.quote(literal)}"]


def dashboard_on(address: str | int | None, host: str | None) -> str | None:
    """A dashboard address that names its host: a bare port gets ``host`` (default 127.0.0.1).

    distributed binds a dashboard given as a bare port (``":8787"``, ``":0"``, ``8787``) to
    every interface, 0.0.0.0, whatever the scheduler's host; here it binds to ``host``, the
    scheduler's.  An address with a host (``"0.0.0.0:8787"``) is kept: that is a choice.

    Parameters
    ----------
    address : str, int or None
        ``"127.0.0.1:8787"``, ``":0"``, ``8787``...; None (no dashboard) is kept.
    host : str or None
        The scheduler's host (``bonemet.cluster.scheduler-host``); None is 127.0.0.1.

    Returns
    -------
    str or None
        ``"HOST:PORT"`` (an IPv6 host in brackets), or None.
    """
    if address is None:
        return None
    text = str(address).strip()
    if not (text.startswith(":") or text.isdigit()):
        return text
    host = host or "127.0.0.1"
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{text.lstrip(':')}"


def dashboard_hint(client: Client) -> str:
    """Where to open the dashboard of ``client``'s scheduler, as lines to log or print.

    Asks the scheduler where its dashboard listens.  On 127.0.0.1 the link only opens on the
    scheduler's machine, so the hint adds the ``ssh -L`` tunnel to run on your own computer,
    and under JupyterHub (``JUPYTERHUB_SERVICE_PREFIX`` set) the jupyter-server-proxy path
    ``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status``.
    """
    link = client.dashboard_link or ""

    def where(dask_scheduler: Any) -> tuple[str, int, str] | None:
        server = getattr(dask_scheduler, "http_server", None)
        if server is None or not getattr(server, "port", None):
            return None
        host = socket.getfqdn()
        if host.startswith("localhost"):  # /etc/hosts maps the name to loopback
            host = socket.gethostname()
        return str(getattr(server, "address", "") or ""), int(server.port), host

    try:
        bound = client.run_on_scheduler(where)
    except Exception:  # an old or foreign scheduler: fall back on the client's link
        bound = None
    if bound is None:
        return f"Dask dashboard: {link}" if link else "Dask dashboard: none"
    address, port, host = bound
    if address not in _LOOPBACK:
        return f"Dask dashboard: {link}"
    lines = [
        f"Dask dashboard: http://127.0.0.1:{port}/status (only on {host}, where the scheduler "
        "runs)",
        f"  from your computer: ssh -N -L {port}:127.0.0.1:{port} {getpass.getuser()}@{host}"
        f"  then open http://localhost:{port}/status",
    ]
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        lines.append(f"  in JupyterHub: {prefix.rstrip('/')}/proxy/{port}/status")
    return "\n".join(lines)


# ---------------------------------------------------------------- SLURM and PBS


def _connect_jobqueue(
    kind: str,
    *,
    cores: int | None,
    memory: str | int | None,
    walltime: str | None,
    queue: str | None,
    account: str | None,
    jobs: int | None,
    adapt: tuple[int, int] | None,
    timeout: str | float | None,
    n_workers: int | None,
    threads_per_worker: int | None,
    memory_limit: str | int | None,
    dashboard_address: str | None,
    job_kwargs: dict[str, Any],
) -> Client:
    import dask
    from dask.utils import format_bytes, parse_timedelta

    _, submit = JOBQUEUE_KINDS[kind]
    cluster_cls = _cluster_class(kind)  # ImportError naming the extra
    if shutil.which(submit) is None:
        raise ClusterError(
            f"cluster={kind!r} submits jobs with {submit!r}, which is not on PATH: run on the "
            f"cluster's login node (or load its module, e.g. `module load {kind}`), or use "
            "cluster='local'"
        )
    prefix = f"jobqueue.{kind}."
    cores = cores if cores is not None else dask.config.get(prefix + "cores", None)
    memory = memory if memory is not None else dask.config.get(prefix + "memory", None)
    if cores is None or memory is None:
        raise ClusterError(
            f"cluster={kind!r} needs cores= and memory= of one job, e.g. "
            f"connect({kind!r}, cores=8, memory='32GiB'), or jobqueue.{kind}.cores and .memory "
            f"in the Dask config (cluster/jobqueue-{kind}.yaml)"
        )
    if "processes" in job_kwargs:
        raise ClusterError(
            "processes= follows from memory= and bonemet.memory-budget (job_layout); set "
            "memory_limit= (memory per worker) or threads_per_worker= instead"
        )
    budget = memory_limit if memory_limit is not None else config.get("memory-budget")
    layout = job_layout(cores, memory, budget, threads_per_worker)
    walltime = walltime or dask.config.get(prefix + "walltime", None)
    extra = list(job_kwargs.pop("worker_extra_args", None) or [])
    extra = extra or list(dask.config.get(prefix + "worker-extra-args", None) or [])
    if walltime and "--lifetime" not in extra:
        extra += lifetime_args(walltime, kind)
    first, adapt = _job_counts(jobs, n_workers, adapt, layout)
    wait = parse_timedelta(timeout if timeout is not None else config.get("cluster.worker-timeout"))
    scheduler_options = {
        "dashboard_address": dashboard_on(
            dashboard_address or config.get("cluster.dashboard-address"), "127.0.0.1"
        ),
        **(job_kwargs.pop("scheduler_options", None) or {}),
    }
    prologue = job_kwargs.pop("job_script_prologue", None)
    if prologue is None:
        prologue = dask.config.get(prefix + "job-script-prologue", None) or []
    job_kwargs["job_script_prologue"] = _job_environ_prologue(list(prologue), layout.threads)
    job_cluster = cluster_cls(
        cores=layout.cores,
        memory=layout.memory,
        processes=layout.processes,
        walltime=walltime,
        queue=queue,
        account=account,
        worker_extra_args=extra,
        scheduler_options=scheduler_options,
        **job_kwargs,
    )
    logger.info(
        "%s jobs of %d cores and %s: %d worker(s) of %d thread(s) and %s each",
        kind, layout.cores, format_bytes(layout.memory), layout.processes, layout.threads,
        format_bytes(layout.worker_memory),
    )  # fmt: skip
    logger.debug("job script:\n%s", job_cluster.job_script())
    client = None
    try:
        client = _owning(job_cluster)
        if first:
            job_cluster.scale(jobs=first)
            if wait:
                _wait_for_worker(client, job_cluster, kind, wait)
        if adapt is not None:
            job_cluster.adapt(minimum_jobs=adapt[0], maximum_jobs=adapt[1])
    except BaseException:
        if client is not None:
            client.close()  # closes job_cluster too
        else:
            job_cluster.close()
        raise
    return client


def _job_counts(
    jobs: int | None, n_workers: int | None, adapt: tuple[int, int] | None, layout: JobLayout
) -> tuple[int, tuple[int, int] | None]:
    """Jobs to submit now, and the adaptive range (or None)."""
    if adapt is not None:
        if jobs is not None or n_workers is not None:
            raise ClusterError("adapt=(min, max) excludes jobs= and n_workers=; give one of them")
        low, high = (int(v) for v in adapt)
        if not 0 <= low <= high or high < 1:
            raise ClusterError(f"adapt={adapt!r}: give (min, max) jobs with 0 <= min <= max, max>0")
        return low, (low, high)
    if jobs is not None and n_workers is not None:
        raise ClusterError("give jobs= (batch jobs) or n_workers= (worker processes), not both")
    if n_workers is not None:
        jobs = math.ceil(n_workers / layout.processes)
    jobs = config.get("cluster.jobs", 1) if jobs is None else jobs
    if int(jobs) < 1:
        raise ClusterError(f"jobs={jobs!r}: start at least one job, or use adapt=(0, max)")
    return int(jobs), None


def _wait_for_worker(client: Client, job_cluster: Any, kind: str, wait: float) -> None:
    """Return when a worker joined; raise ClusterError when a job failed or ``wait`` passed."""
    _, submit = JOBQUEUE_KINDS[kind]
    state = {"slurm": "squeue --me", "pbs": "qstat -u $USER"}[kind]
    deadline = time.monotonic() + wait
    while True:
        failed = [
            job.start_error
            for job in list(job_cluster.workers.values())
            if getattr(job, "start_error", None) is not None
        ]
        if failed:
            raise ClusterError(
                f"{submit} rejected the worker job: {_why(failed[0])}\nCheck queue=, account=, "
                "walltime=, cores= and memory= against the queue's limits (the job script is in "
                "connect's debug log)"
            ) from failed[0]
        if client.nthreads():
            return
        if time.monotonic() > deadline:
            jobs = [getattr(job, "job_id", None) for job in job_cluster.workers.values()]
            raise ClusterError(
                f"no Dask worker joined within {wait:g} s (jobs {', '.join(map(str, jobs))}): "
                f"see `{state}` (queued? raise timeout= or bonemet.cluster.worker-timeout) and "
                "the job's output file (log_directory=) for a worker that could not start or "
                "reach the scheduler (interface=)"
            )
        time.sleep(0.2)


def _why(err: BaseException) -> str:
    """The batch system's own words from a failed dask-jobqueue command (its stderr)."""
    text = str(err)
    _, found, stderr = text.partition("stderr:\n")
    why = stderr.strip() if found else text.strip()
    return why or text.strip() or type(err).__name__


@functools.cache
def _cluster_class(kind: str) -> type:
    """dask-jobqueue's cluster class for ``kind`` with jobs that record how they ended.

    A job whose submission failed keeps the error in ``start_error``; a cancelled job is
    ``closed``: ``SpecCluster.close`` asserts that of every job it created (without this,
    closing after a rejected submission raises ``AssertionError: Status.created``).
    """
    try:
        import dask_jobqueue
    except ImportError as err:
        raise ImportError(
            f"cluster={kind!r} needs dask-jobqueue: pip install 'bonemet-dask[cluster]'"
        ) from err
    from distributed.core import Status

    base = getattr(dask_jobqueue, JOBQUEUE_KINDS[kind][0])

    class Job(base.job_cls):
        start_error: Exception | None = None

        async def start(self) -> None:
            """Submit the job; keep a rejection in ``start_error`` instead of raising it.

            Raised, it would surface only as a traceback logged by the event loop; ``connect``
            turns ``start_error`` into a :class:`ClusterError`.
            """
            try:
                await super().start()
            except Exception as err:
                self.start_error = err
                logger.error("%s rejected a worker job: %s", self.submit_command, _why(err))
                self.status = Status.running  # SpecCluster asserts this after start()

        async def close(self) -> None:
            """Cancel the job (if it was submitted) and mark it closed."""
            try:
                await super().close()
            finally:
                self.status = Status.closed
                self._event_finished.set()

    Job.__name__ = Job.__qualname__ = base.job_cls.__name__
    return type(base.__name__, (base,), {"job_cls": Job, "__module__": __name__})


def _owning(cluster: Any) -> Client:
    """A client of ``cluster`` whose ``close()`` (or ``with`` exit) also stops that cluster.

    Its workers, those there now and those that join later, warm up in the background as they
    start (:class:`~bonemet_dask.warm_up.WarmUp`).
    """
    from bonemet_dask.warm_up import WarmUp

    client = _client_class()(cluster)
    client._bonemet_cluster = cluster
    try:
        client.register_plugin(WarmUp())
    except Exception:  # an optimisation: a cluster that refuses it still works
        logger.warning("could not register the worker warm-up plugin", exc_info=True)
    return client


@functools.cache
def _client_class() -> type:
    """A ``distributed.Client`` that also closes the cluster ``connect`` started for it."""
    from distributed import Client

    class ClusterClient(Client):
        _bonemet_cluster: Any = None

        def close(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().close(*args, **kwargs)
            finally:
                owned, self._bonemet_cluster = self._bonemet_cluster, None
                if owned is not None:
                    owned.close()
                    # security=True: dask-jobqueue's temporary certificate files for the workers
                    for name in ("_job_ca_file", "_job_cert", "_job_key"):
                        handle = getattr(owned, name, None)
                        if handle is not None:
                            handle.close()  # a NamedTemporaryFile: also deletes it

    ClusterClient.__name__ = ClusterClient.__qualname__ = "Client"
    return ClusterClient
