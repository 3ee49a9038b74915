"""Flow runs created from a deployment take anyone's parameters: the trust checks of tasks/trust.py for them.

A flow the operator calls (the CLI, Python) runs with the operator's settings and is not checked here;
`doppel-job` (flows/deploy.py) checks its parameters always, being a deployment entry point only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar, cast

from doppel.tasks.settings import RunSettings
from doppel.tasks.trust import UntrustedSettingError, check_allowed_endpoint, check_inside_roots, check_untrusted_run


def refuse_untrusted(
    run: RunSettings | None = None, endpoints: dict[str, str | None] | None = None, **paths: str | None
) -> None:
    """In a flow run of a deployment: the run settings' endpoints and paths, these endpoints and these
    paths must be ones the operator allowed (DOPPEL_ALLOWED_ENDPOINTS, DOPPEL_DATA_ROOTS); else one clear
    error."""
    from prefect.runtime import deployment

    if deployment.id is None:
        return
    if run is not None:
        check_untrusted_run(run)
    for what, url in (endpoints or {}).items():
        if url:
            check_allowed_endpoint(url, what)
    for what, path in paths.items():
        if path:
            check_inside_roots(path, what)


P = ParamSpec("P")
R = TypeVar("R")


def refusal_fails_the_run(fn: Callable[P, R]) -> Callable[P, R]:
    """Under @flow: a deployment's flow run refused by these checks ends Failed with the reason as its
    state message and one error line in the worker's log, instead of Prefect's traceback of a crash.
    Anywhere else (the operator's own call, `.fn` outside a run) the error is raised as before."""

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UntrustedSettingError as exc:
            from prefect import get_run_logger
            from prefect.context import FlowRunContext
            from prefect.runtime import deployment
            from prefect.states import Failed

            if deployment.id is None or FlowRunContext.get() is None:
                raise
            get_run_logger().error("refused: %s", exc)
            return cast(R, Failed(message=f"refused: {exc}"))  # a returned state is the run's final state

    # Prefect builds the flow's parameter model from this signature: its annotations resolved in the flow's
    # module (as strings they would be looked up here, where its settings class is not defined)
    checked.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return checked
