"""`--dask-address` vs the LocalCluster: wall of the same run on an external `dask scheduler` + two
`dask worker` processes (first run on fresh workers, then warm) and on doppel's own LocalCluster.

    python benchmarks/remote_cluster.py                       # synthetic, 24 users, 0.1 s per call
    python benchmarks/remote_cluster.py --users 60 --latency 0.5

Everything runs on this machine: one Prefect API server (its URL exported to the workers), the
in-process LLM test server, the scheduler and workers as subprocesses. Each run has its own DuckDB
file and response cache, so every run makes every call. The walls are of `simulate(settings)` in
this process (Prefect flow start, ingest, fan-out, gate, score without baselines), after a one-user
warm-up run that pays this process's imports; the LocalCluster run includes starting its cluster.
"remote_cold" is the first run on fresh workers (they import doppel and Prefect on the first task).

Last line: RESULT remote_cold_s=... remote_warm_s=... local_s=... calls=...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=24, help="synthetic users (all test users of u1 run)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per LLM call")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    work = Path(tempfile.mkdtemp(prefix="doppel-distributed-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))

    from distributed import Client

    from doppel.flows.runtime import free_port, prefect_api
    from doppel.tasks.settings import LLMSettings, RunSettings
    from doppel.testing.llm_server import LLMTestServer
    from support.output import log, result_line
    from tests._deployments import spawn, stop_tree

    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)  # runs last, after the servers stop
        stack.enter_context(prefect_api())
        llm = stack.enter_context(LLMTestServer(latency=args.latency))
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            spawn(
                [
                    sys.executable,
                    "-m",
                    "dask",
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-dashboard",
                ],
                work / "scheduler.log",
                env,
            )
        ]
        try:
            for name in ("w1", "w2"):
                procs.append(
                    spawn(
                        [
                            sys.executable,
                            "-m",
                            "dask",
                            "worker",
                            address,
                            "--nthreads",
                            "1",
                            "--name",
                            name,
                            "--no-dashboard",
                            "--local-directory",
                            str(work / name),
                        ],
                        work / f"{name}.log",
                        env,
                    )
                )
            with Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            from doppel.flows.simulate import simulate

            walls, calls = {}, set()
            runs = (
                ("warm-up", "threads", None),
                ("remote_cold", "dask", address),
                ("remote_warm", "dask", address),
                ("local", "dask", None),
            )
            for label, runner, dask_address in runs:
                db = work / label / "doppel.duckdb"
                db.parent.mkdir()
                settings = RunSettings(
                    dataset="synthetic",
                    synthetic_users=args.users,
                    synthetic_items=60,
                    folds=["u1"],
                    db=str(db),
                    runner=runner,
                    dask_address=dask_address,
                    dask_workers=2,
                    progress=False,
                    baselines=False,
                    users=1 if label == "warm-up" else None,
                    run_id="bench",
                    llm=LLMSettings(
                        base_url=llm.base_url, model="doppel-test-model", concurrency=args.concurrency, timeout_s=30
                    ),
                )
                t0 = time.monotonic()
                summary = simulate(settings)
                walls[label] = time.monotonic() - t0
                if label == "warm-up":  # this process's first flow pays imports and Prefect set-up
                    continue
                calls.add(summary["this_invocation"]["new_calls"])
                log(
                    f"{label}: {walls[label]:.1f} s, {summary['this_invocation']['new_calls']} calls, "
                    f"{summary['this_invocation']['users']} users"
                )
        finally:
            for proc in reversed(procs):
                stop_tree(proc)
    log(
        result_line(
            remote_cold_s=walls["remote_cold"],
            remote_warm_s=walls["remote_warm"],
            local_s=walls["local"],
            calls=max(calls),
            same_calls=len(calls) == 1,
            latency_s=args.latency,
        )
    )


if __name__ == "__main__":
    main()
