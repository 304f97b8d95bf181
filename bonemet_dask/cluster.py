"""One entry point to a Dask cluster: embedded, SLURM, GPU, or an existing scheduler.

Code elsewhere only ever sees a ``distributed.Client``.  The scheduler and dashboard bind to
127.0.0.1 unless the ``bonemet.cluster`` config says otherwise (DESIGN.md section 8).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from bonemet_dask import config

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

CLUSTER_KINDS = ("local", "slurm", "gpu")
"""Named cluster kinds; anything else must be a scheduler address or a scheduler file."""


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
) -> Client:
    """Start or join a Dask cluster and return a client.

    Parameters
    ----------
    cluster : str
        ``"local"``: an embedded ``LocalCluster`` of processes; ``"slurm"``: dask-jobqueue's
        ``SLURMCluster`` (configured by ``jobqueue.slurm``); ``"gpu"``: dask-cuda's
        ``LocalCUDACluster``, one worker per GPU with the resource ``GPU=1``; a scheduler address
        (``tcp://host:8786``) or the path of a scheduler file joins a running cluster.
    n_workers, threads_per_worker : int, optional
        Local cluster size (default from ``bonemet.cluster``: one worker per core, at most 4).
    memory_limit : str or int, optional
        Per-worker memory limit (default ``bonemet.memory-budget``).
    dashboard_address : str, optional
        Where the dashboard listens (default ``bonemet.cluster.dashboard-address``, on
        127.0.0.1); ``":0"`` or ``"127.0.0.1:0"`` picks a free port.

    Returns
    -------
    distributed.Client
        Close it (or use it as a context manager) to stop an embedded cluster.

    Raises
    ------
    ValueError
        If ``cluster`` is neither a known kind, an address, nor an existing scheduler file.
    ImportError
        If the kind needs an optional package that is missing (the message names the extra).
    """
    from distributed import Client

    memory_limit = memory_limit or config.get("memory-budget")
    dashboard_address = dashboard_address or config.get("cluster.dashboard-address")
    threads = threads_per_worker or config.get("cluster.threads-per-worker") or 1
    if cluster == "local":
        from distributed import LocalCluster

        workers = n_workers or config.get("cluster.n-workers") or min(4, os.cpu_count() or 1)
        local = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            memory_limit=memory_limit,
            host=config.get("cluster.scheduler-host"),
            dashboard_address=dashboard_address,
        )
        client = Client(local)
    elif cluster == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as err:
            raise ImportError(
                "cluster='slurm' needs dask-jobqueue: pip install 'bonemet-dask[cluster]'"
            ) from err
        slurm = SLURMCluster(scheduler_options={"dashboard_address": dashboard_address})
        slurm.scale(jobs=n_workers or config.get("cluster.slurm-jobs"))
        client = Client(slurm)
    elif cluster == "gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as err:
            raise ImportError(
                "cluster='gpu' needs dask-cuda and cupy: pip install 'bonemet-dask[gpu]'"
            ) from err
        gpu = LocalCUDACluster(
            threads_per_worker=threads,
            memory_limit=memory_limit,
            dashboard_address=dashboard_address,
            resources={"GPU": 1},
        )
        client = Client(gpu)
    elif cluster.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        client = Client(cluster)
    elif os.path.isfile(cluster):
        client = Client(scheduler_file=cluster)
    else:
        raise ValueError(
            f"cluster={cluster!r} is not one of {', '.join(CLUSTER_KINDS)}, a scheduler address "
            "(tcp://host:port) or an existing scheduler file"
        )
    logger.info("Dask dashboard: %s", client.dashboard_link)
    return client
