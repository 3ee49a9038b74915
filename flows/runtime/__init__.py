"""The engines a run needs, started and stopped by doppel: Prefect API, Dask cluster, LLM endpoint.

Each is a context manager that cleans up on normal exit, errors, Ctrl-C and SIGTERM; child
processes also die with their parent (PR_SET_PDEATHSIG), so a SIGKILLed run leaves no orphans.
"""

from doppel.flows.runtime.cluster import (
    PROFILER_ENV,
    ClusterLease,
    dask_cluster,
    discard_prestarted,
    prestart_cluster,
    start_local_cluster,
    task_runner,
    worker_config,
    worker_start_method,
)
from doppel.flows.runtime.engines import Engines, engines, llm_endpoint
from doppel.flows.runtime.prefect_api import PREFECT_QUIET_ENV, current_api_url, prefect_api
from doppel.flows.runtime.processes import die_with_parent, free_port, stop_process, wait_healthy

__all__ = [
    "PREFECT_QUIET_ENV",
    "PROFILER_ENV",
    "ClusterLease",
    "Engines",
    "current_api_url",
    "dask_cluster",
    "die_with_parent",
    "discard_prestarted",
    "engines",
    "free_port",
    "llm_endpoint",
    "prefect_api",
    "prestart_cluster",
    "start_local_cluster",
    "stop_process",
    "task_runner",
    "wait_healthy",
    "worker_config",
    "worker_start_method",
]
