"""The secret of the Prefect server `doppel serve` starts, and Prefect's own protections for it."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

AUTH_FILE = "doppel-serve-auth"  # in PREFECT_HOME, beside the server's database


def server_auth_string(home: Path) -> str:
    """The basic-auth secret (user:password) of the server `doppel serve` starts: generated at first
    start into PREFECT_HOME/doppel-serve-auth, readable by this user only (0600)."""
    path = home / AUTH_FILE
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"doppel:{secrets.token_urlsafe(32)}\n")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # others could read it before: keep it ours from now on
    return path.read_text().strip()


def auth_path() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser() / AUTH_FILE


def server_security_env(auth: str, host: str, port: int) -> dict[str, str]:
    """Prefect's own server protections: basic auth, CSRF tokens, CORS only from the server's own UI."""
    return {
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": f"http://{host}:{port}",
    }


def started_by_doppel(host: str, port: int, auth: str) -> bool:
    """Whether the process listening on host:port is a `prefect server` of this user holding our secret
    (its environment is readable by this user only): then it is another doppel serve's, and shared."""
    import psutil

    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            with contextlib.suppress(psutil.Error):
                server = psutil.Process(conn.pid)
                return (
                    "prefect" in " ".join(server.cmdline())
                    and server.environ().get("PREFECT_SERVER_API_AUTH_STRING") == auth
                )
    return False
