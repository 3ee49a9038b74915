"""Flow runs created from a deployment take anyone's parameters: the trust checks of tasks/trust.py for them.

A flow the operator calls (the CLI, Python) runs with the operator's settings and is not checked here;
`doppel-job` (flows/deploy.py) checks its parameters always, being a deployment entry point only.
"""

from __future__ import annotations

from doppel.tasks.settings import RunSettings
from doppel.tasks.trust import check_allowed_endpoint, check_inside_roots, check_untrusted_run


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
