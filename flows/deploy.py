"""Deployments: the entry flow `deployments/prefect.yaml` schedules, and the logic of `doppel serve`.

`run_job` is `doppel run` as a flow with flat, typed parameters (each one a field in the Prefect UI
and a `--param key=value` of `prefect deployment run`); it builds the RunSettings and calls the
`doppel-run` flow. `serve_file` serves the deployments of a prefect.yaml from this process, against
PREFECT_API_URL or a `prefect server start` it starts itself (the scheduler needs a full server).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from prefect import flow
from pydantic.fields import FieldInfo

from doppel.flows.options import RUN
from doppel.flows.runtime import PREFECT_QUIET_ENV, die_with_parent, stop_process, wait_healthy
from doppel.flows.serve_auth import auth_path, server_auth_string, server_security_env, started_by_doppel
from doppel.flows.untrusted import refusal_fails_the_run
from doppel.tasks.trust import ALLOWED_ENDPOINTS_ENV, DATA_ROOTS_ENV, check_untrusted_run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO / "deployments" / "prefect.yaml"
# every `doppel run` option but the progress display and --prompts (a folder to read: not a flow-run
# creator's choice), each with the settings' default and help
JOB = RUN.without("prompts", progress=False)


def _run_job(**params: Any) -> dict:
    """Simulate a fold's users with an LLM, gate the output and score it (`doppel run` as a job).

    The parameters are `doppel run`'s options (flows/options.py: types, defaults and descriptions
    from the settings models). The API key is never a parameter: the gateway reads OPENAI_API_KEY or
    DOPPEL_API_KEY from the environment of the worker (or `doppel serve`) process. Whoever can create
    a flow run sets the parameters, so they are checked first (tasks/trust.py): base_url and
    dask_address must be listed in the worker's DOPPEL_ALLOWED_ENDPOINTS, paths must stay inside its
    DOPPEL_DATA_ROOTS.
    """
    from doppel.flows.simulate import simulate

    # a parameter the run did not set can arrive as its Field default (Prefect's validation keeps those)
    params = {k: v.default if isinstance(v, FieldInfo) else v for k, v in params.items()}
    settings = JOB.build(params, flag="")
    check_untrusted_run(settings)  # before any request, cluster or file: the parameters are anyone's
    summary = simulate(settings)
    print(f"run {summary['run_id']}: {summary['status']} in {summary['wall_s']} s -> {summary['db']}")
    return json.loads(json.dumps(summary, default=_plain))


_run_job.__signature__ = inspect.Signature(JOB.flow_parameters(), return_annotation=dict)  # type: ignore[attr-defined]
run_job = flow(name="doppel-job", log_prints=True)(refusal_fails_the_run(_run_job))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars, timestamps


# ----------------------------------------------------------------------------- doppel serve


def load_specs(path: str | Path = DEFAULT_FILE, names: list[str] | None = None) -> list[dict]:
    """The deployment entries of a prefect.yaml (anchors resolved), optionally only these names."""
    specs = (yaml.safe_load(Path(path).read_text()) or {}).get("deployments") or []
    if names:
        unknown = set(names) - {s["name"] for s in specs}
        if unknown:
            raise ValueError(f"no deployment named {sorted(unknown)} in {path}; known: {[s['name'] for s in specs]}")
        specs = [s for s in specs if s["name"] in names]
    return specs


def load_entrypoint(entrypoint: str):
    """`flows/<file>.py:<flow>` -> the flow object, imported from the installed package (`doppel.flows.<file>`:
    the checkout's flows/ is installed under doppel, and the console script does not put the cwd on sys.path)."""
    path, _, attr = entrypoint.partition(":")
    parts = Path(path).with_suffix("").parts
    if len(parts) < 2 or parts[0] != "flows":
        raise ValueError(f"entrypoint {entrypoint!r}: doppel serve loads flows/<file>.py:<flow> entrypoints only")
    return getattr(importlib.import_module(".".join(("doppel", *parts))), attr)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is JSON when it parses (3, true, null, [..]), else a string."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param wants key=value, got {pair!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def runner_deployments(
    specs: list[dict], overrides: dict[str, Any] | None = None, schedules: bool = True, suffix: str = ""
) -> list:
    """RunnerDeployments for `prefect.serve`: the yaml's name (+ suffix), parameters, schedules, tags
    and description; `overrides` go to every deployment whose flow takes that parameter."""
    from prefect.schedules import Schedule

    overrides = overrides or {}
    deployments, used = [], set()
    for spec in specs:
        flow_obj = load_entrypoint(spec["entrypoint"])
        accepted = set(inspect.signature(flow_obj.fn).parameters)
        mine = {k: v for k, v in overrides.items() if k in accepted}
        used |= set(mine)
        limit = spec.get("concurrency_limit")
        deployments.append(
            flow_obj.to_deployment(
                name=spec["name"] + suffix,
                parameters={**(spec.get("parameters") or {}), **mine},
                schedules=[Schedule(**s) for s in spec.get("schedules") or []] if schedules else None,
                description=spec.get("description"),
                tags=spec.get("tags"),
                concurrency_limit=limit.get("limit") if isinstance(limit, dict) else limit,
            )
        )
    if unused := set(overrides) - used:
        raise ValueError(f"no served flow takes the parameter(s) {sorted(unused)}")
    return deployments


def check_not_in_a_pool(deployments: list) -> None:
    """Refuse to take over a deployment `prefect deploy` bound to a work pool on this server: the
    server keeps its pool and pull steps, so served runs would crash and workers would race for them."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for deployment in deployments:
            name = f"{deployment.flow_name}/{deployment.name}"
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                raise ValueError(
                    f"{name} is deployed to work pool {existing.work_pool_name!r} on this server; "
                    f"serve under other names (--suffix -laptop) or delete it first "
                    f"(prefect deployment delete {name})"
                )


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def local_prefect_server(port: int = 4200, host: str = "127.0.0.1") -> Iterator[str]:
    """PREFECT_API_URL if set; else a server already on host:port; else `prefect server start` there.

    A full server (scheduler, UI), not the ephemeral API: schedules only create runs with the
    scheduler service. Its database is PREFECT_HOME's, so the run history survives restarts. A server
    started here refuses requests without its secret (`server_auth_string`); this process and the
    flow runs it starts get it as PREFECT_API_AUTH_STRING.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.settings import PREFECT_HOME

    home = Path(PREFECT_HOME.value()).expanduser()
    auth = server_auth_string(home)
    url = f"http://{host}:{port}/api"
    if _healthy(url) and not started_by_doppel(host, port, auth):
        raise RuntimeError(
            f"a Prefect server doppel serve did not start answers on {host}:{port}; doppel serve sends it no "
            f"secret: use another --port, or PREFECT_API_URL (and PREFECT_API_AUTH_STRING) to serve on that server"
        )
    os.environ["PREFECT_API_AUTH_STRING"] = auth  # this process and the flow runs it starts
    if _healthy(url):  # another doppel serve's server: shared
        yield url
        return
    log = home / "doppel-serve-server.log"  # a file: no pipe to fill up
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            env={**os.environ, **PREFECT_QUIET_ENV, **server_security_env(auth, host, port)},
            preexec_fn=die_with_parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_healthy(f"{url}/health", process, 120, "prefect server")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log.read_text(errors='replace')[-2000:]}") from None
        yield url
    finally:
        stop_process(process)


def trust_operator_params(overrides: dict[str, Any]) -> None:
    """`doppel serve -p base_url=... -p db=...` are the operator's own choices: the runs it serves may
    use those endpoints and folders (added to DOPPEL_ALLOWED_ENDPOINTS / DOPPEL_DATA_ROOTS here)."""
    endpoints = [str(overrides[k]) for k in ("base_url", "dask_address") if overrides.get(k)]
    if endpoints:
        known = os.environ.get(ALLOWED_ENDPOINTS_ENV, "")
        os.environ[ALLOWED_ENDPOINTS_ENV] = ",".join(e for e in [known, *endpoints] if e)
    folders = [Path(str(overrides[k])).parent for k in ("db", "item_text") if overrides.get(k)]
    folders += [Path(str(overrides[k])) for k in ("cache_dir", "data_dir") if overrides.get(k)]
    if folders:
        known = os.environ.get(DATA_ROOTS_ENV) or os.getcwd()
        os.environ[DATA_ROOTS_ENV] = os.pathsep.join([known, *(str(f.expanduser().resolve()) for f in folders)])


def serve_file(
    path: str | Path = DEFAULT_FILE,
    names: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    schedules: bool = True,
    limit: int | None = None,
    port: int = 4200,
    suffix: str = "",
    announce=print,
) -> None:
    """Serve the deployments of a prefect.yaml from this process until Ctrl-C or SIGTERM.

    Runs execute in subprocesses of this one; the schedules are paused again on shutdown.
    """
    specs = load_specs(path, names)
    for key, value in PREFECT_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    trust_operator_params(overrides or {})
    stopping = threading.Event()

    def interrupt(*_: Any) -> None:
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # until the runner installs its own: stop cleanly, exit 0
    # Prefect's runner, stopped by SIGTERM, leaves its stop coroutine unawaited: Python's warning says nothing to act on
    warnings.filterwarnings("ignore", "coroutine 'Runner.astop' was never awaited", RuntimeWarning)
    try:
        with local_prefect_server(port) as url:
            os.environ["PREFECT_API_URL"] = url  # flow-run subprocesses inherit it
            import prefect.runner.server  # noqa: F401  (its import is slow: done before the deployments show)
            from prefect import serve
            from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

            client = {PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: os.environ.get("PREFECT_API_AUTH_STRING")}
            with temporary_settings(client):
                deployments = runner_deployments(specs, overrides, schedules, suffix)
                check_not_in_a_pool(deployments)
                announce(
                    f"serving {', '.join(f'{d.flow_name}/{d.name}' for d in deployments)} on {url} "
                    f"(UI: {url.removesuffix('/api')})"
                    + (f"; it asks for the secret in {auth_path()}" if "PREFECT_API_AUTH_STRING" in os.environ else "")
                )
                serve(*deployments, limit=limit, print_starting_message=False)
    except BaseException as exc:
        # the interrupt can land inside code that wraps it in an error of its own (pydantic-core turned
        # it into a SchemaError while Prefect imported its webserver): a stop asked for is still clean
        if not (isinstance(exc, KeyboardInterrupt) or stopping.is_set()):
            raise
