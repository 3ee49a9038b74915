"""What a run may reach when its settings come from someone else (a deployment's flow-run parameters).

The operator configures trust outside any flow run, in the environment of the worker (or `doppel serve`):

- DOPPEL_ALLOWED_ENDPOINTS: comma list of LLM base URLs (https://api.openai.com/v1) and Dask schedulers
  (tcp://10.0.0.2:8786) a flow run may name. Nothing else gets the API key or sends the process pickles.
- DOPPEL_DATA_ROOTS: os.pathsep list of folders a flow run's db, cache_dir, data_dir, item_text and
  dataset path must stay inside (default: the worker's working directory).
- DOPPEL_ALLOW_PLAIN_HTTP=1: the API key may go to plain http:// on another host (by default only
  loopback, or a URL listed in DOPPEL_ALLOWED_ENDPOINTS, gets it unencrypted).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from doppel.tasks.settings import API_KEY_ENV_VARS, RunSettings

ALLOWED_ENDPOINTS_ENV = "DOPPEL_ALLOWED_ENDPOINTS"
DATA_ROOTS_ENV = "DOPPEL_DATA_ROOTS"
PLAIN_HTTP_ENV = "DOPPEL_ALLOW_PLAIN_HTTP"


class UntrustedSettingError(ValueError):
    """A flow run's setting reaches something the operator did not allow."""


def normalize_url(url: str) -> str:
    """scheme://host:port/path, lower-case scheme and host, default port made explicit, no trailing /."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.hostname:
        raise UntrustedSettingError(f"{url!r} is not a URL (scheme://host[:port][/path])")
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"


def allowed_endpoints() -> set[str]:
    """The operator's allow-list (DOPPEL_ALLOWED_ENDPOINTS), normalized."""
    entries = [e for e in os.environ.get(ALLOWED_ENDPOINTS_ENV, "").split(",") if e.strip()]
    return {normalize_url(e) for e in entries}


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_allowed_endpoint(url: str, what: str) -> None:
    """Refuse a flow run's `what` (base_url, dask_address) unless the operator listed it."""
    if normalize_url(url) not in allowed_endpoints():
        raise UntrustedSettingError(
            f"{what} {url!r} from the flow run's parameters is not an endpoint this worker allows; "
            f"the operator allows it by adding it to {ALLOWED_ENDPOINTS_ENV} in the environment of "
            f"the worker or `doppel serve` (comma list)"
        )


def check_plain_http(url: str) -> None:
    """Refuse to send an API key unencrypted to another host, unless the operator allowed it."""
    has_key = any(os.environ.get(var) for var in API_KEY_ENV_VARS)
    if not has_key or urlsplit(url).scheme.lower() != "http" or is_loopback(url):
        return
    if os.environ.get(PLAIN_HTTP_ENV) == "1" or normalize_url(url) in allowed_endpoints():
        return
    raise UntrustedSettingError(
        f"{url} is plain http:// on another host: the API key would cross the network unencrypted; "
        f"use https://, or allow it with {PLAIN_HTTP_ENV}=1 (or list it in {ALLOWED_ENDPOINTS_ENV})"
    )


def data_roots() -> list[Path]:
    """The folders a flow run's paths must stay inside (DOPPEL_DATA_ROOTS, else the working directory)."""
    entries = [e for e in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if e.strip()]
    return [Path(e).expanduser().resolve() for e in entries] or [Path.cwd().resolve()]


def check_inside_roots(path: str, what: str) -> None:
    """Refuse a flow run's path that resolves (symlinks and .. followed) outside every data root."""
    resolved = Path(path).expanduser().resolve()
    roots = data_roots()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise UntrustedSettingError(
            f"{what} {path!r} from the flow run's parameters is outside the data root(s) "
            f"{', '.join(map(str, roots))}; the operator sets them with {DATA_ROOTS_ENV} in the environment of "
            f"the worker or `doppel serve`"
        )


def dataset_path(dataset: str) -> str | None:
    """A --dataset that names files (checked like any path); None for a built-in name or alias."""
    from doppel.tasks.data.registry import builtin

    return None if builtin(dataset) else dataset


def check_untrusted_run(settings: RunSettings) -> None:
    """Every setting of a run built from flow-run parameters, checked before anything starts."""
    if settings.llm.base_url:
        check_allowed_endpoint(settings.llm.base_url, "base_url")
        check_plain_http(settings.llm.base_url)
    if settings.dask_address:
        check_allowed_endpoint(settings.dask_address, "dask_address")
    from doppel.tasks.llm.embedded_models import MODELS

    paths = {
        "model": None if settings.llm.base_url or settings.llm.model in MODELS else settings.llm.model,
        "db": settings.db,
        "cache_dir": settings.llm.cache_dir,
        "data_dir": settings.data_dir,
        "item_text": settings.item_text,
        "gguf": settings.llm.gguf,
        "dataset": dataset_path(settings.dataset),
    }
    for what, path in paths.items():
        if path:
            check_inside_roots(path, what)
