"""The embedded LLM: a llama.cpp OpenAI-compatible server (xllamacpp) in a child process doppel owns.

    with EmbeddedServer.from_model("qwen2.5-0.5b") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key)

The child (``python -m doppel.tasks.llm.embedded serve ...``) binds 127.0.0.1 on a free port, reports the
address on its stdout, and dies with its parent: PR_SET_PDEATHSIG plus a watchdog thread polling
``os.getppid()``. The parent stops it on exit, Ctrl-C and errors (terminate, wait, kill).
llama.cpp logs go to ``<cache_root>/logs/llama-server-*.log`` (kept only when start-up fails),
or to the terminal with DOPPEL_LLAMA_VERBOSE=1.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

from doppel.tasks.llm.embedded_models import (
    DEFAULT_MODEL,
    MODELS,
    EmbeddedModel,
    EmbeddedModelError,
    GGUFHeader,
    cache_root,
    ensure_model,
    list_models,
    read_gguf_header,
    verify_gguf,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "EmbeddedModel",
    "EmbeddedModelError",
    "EmbeddedServer",
    "EmbeddedServerError",
    "GGUFHeader",
    "ensure_model",
    "list_models",
    "read_gguf_header",
    "verify_gguf",
]

_READY = "DOPPEL_LLAMA_LISTENING "
_KEY_ENV = "DOPPEL_LLAMA_API_KEY"  # passed by environment, never on the command line (ps shows argv)
_PR_SET_PDEATHSIG = 1
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via HTTP_PROXY


class EmbeddedServerError(RuntimeError):
    """The embedded server failed to start or died."""


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cpusets), else os.cpu_count()."""
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _verbose() -> bool:
    return os.environ.get("DOPPEL_LLAMA_VERBOSE", "") not in ("", "0", "false", "no")


def _kill(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate, wait, then kill a child; safe to call twice."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _prune_logs(directory: Path, keep_days: float = 7.0) -> None:
    """Remove llama-server logs (kept after failures or killed parents) older than keep_days."""
    cutoff = time.time() - keep_days * 86400
    for old in directory.glob("llama-server-*.log"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()


class EmbeddedServer:
    """A llama.cpp server on 127.0.0.1 in a child process; a context manager."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_ctx: int = 4096,
        threads: int | None = None,
        cache_ram_mib: int = 1024,
        model_name: str | None = None,
        startup_timeout: float = 120.0,
        log_dir: str | os.PathLike[str] | None = None,
        require_key: bool = False,
        slots: int = 1,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx  # per slot: the server gets n_ctx x slots
        self.slots = max(1, slots)
        self.threads = threads or default_threads()
        self.cache_ram_mib = cache_ram_mib
        self.model_name = model_name or self.model_path.stem
        self.startup_timeout = startup_timeout
        self.log_dir = Path(log_dir) if log_dir else cache_root() / "logs"
        # loopback only; a key is optional (doppel's Dask workers read keys only from their environment)
        self.api_key = secrets.token_urlsafe(24) if require_key else "no-key"
        self._require_key = require_key
        self.address: str | None = None
        self.log_path: Path | None = None
        self.load_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def from_model(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        cache_dir: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        cache_ram_mib: int = 1024,
        startup_timeout: float = 120.0,
        log_dir: str | os.PathLike[str] | None = None,
        slots: int = 1,
    ) -> EmbeddedServer:
        """Verify/assemble a registry model (or a .gguf path) and make a server for it (not started)."""
        path = ensure_model(name_or_path, cache_dir)
        name = name_or_path if name_or_path in MODELS else path.stem
        return cls(
            path,
            n_ctx=n_ctx,
            threads=threads,
            cache_ram_mib=cache_ram_mib,
            model_name=name,
            startup_timeout=startup_timeout,
            log_dir=log_dir,
            slots=slots,
        )

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        if self.address is None:
            raise EmbeddedServerError("embedded server is not running")
        return self.address + "/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedServer:
        """Start the child and wait until it serves /health; raises EmbeddedServerError on failure."""
        if self.running():
            return self
        if not self.model_path.is_file():
            raise EmbeddedServerError(f"model file not found: {self.model_path}")
        cmd = [
            sys.executable,
            "-m",
            "doppel.tasks.llm.embedded",
            "serve",
            "--model",
            str(self.model_path),
            "--alias",
            self.model_name,
            "--n-ctx",
            str(self.n_ctx),
            "--slots",
            str(self.slots),
            "--threads",
            str(self.threads),
            "--cache-ram-mib",
            str(self.cache_ram_mib),
            "--parent-pid",
            str(os.getpid()),
        ]
        env = dict(os.environ)
        if self._require_key:
            env[_KEY_ENV] = self.api_key
        else:
            env.pop(_KEY_ENV, None)
        if not _verbose():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            _prune_logs(self.log_dir)
            self.log_path = self.log_dir / f"llama-server-{os.getpid()}-{time.time_ns()}.log"
            self._log = open(self.log_path, "wb")
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=env,
                start_new_session=True,  # Ctrl-C goes to the parent only; it stops the child itself
            )
            self._finalizer = weakref.finalize(self, _kill, self._proc)  # also runs at interpreter exit
            deadline = started + self.startup_timeout
            self.address = self._read_address(deadline)
            self._wait_healthy(deadline)
        except BaseException:
            self.stop(keep_log=True)
            raise
        self.load_seconds = time.monotonic() - started
        return self

    def stop(self, keep_log: bool = False) -> None:
        """Stop the child (terminate, wait, kill) and close its log (kept if the child had crashed)."""
        keep_log = keep_log or (self._proc is not None and self._proc.poll() not in (None, 0))
        if self._finalizer is not None:
            self._finalizer()  # calls _kill once
            self._finalizer = None
        self.address = None
        if self._log is not None:
            self._log.close()
            self._log = None
            if self.log_path is not None and not keep_log:
                self.log_path.unlink(missing_ok=True)
                self.log_path = None

    # -- start-up helpers

    def _fail(self, what: str) -> EmbeddedServerError:
        tail = ""
        if self.log_path is not None and self.log_path.exists():
            if self._log is not None:
                self._log.flush()
            lines = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()[-25:]
            tail = "\n--- llama-server log tail ({}) ---\n{}".format(self.log_path, "\n".join(lines))
        return EmbeddedServerError(f"embedded LLM server ({self.model_path.name}): {what}{tail}")

    def _read_address(self, deadline: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd, buf = self._proc.stdout.fileno(), b""
        while time.monotonic() < deadline:
            eof = False
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 4096)
                buf, eof = buf + chunk, not chunk
                for line in buf.decode("utf-8", "replace").splitlines():
                    if line.startswith(_READY):
                        return line[len(_READY) :].strip().rstrip("/")
            if eof or self._proc.poll() is not None:  # EOF or exit: the child is going away
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(5)
                raise self._fail(f"child exited with code {self._proc.returncode} before listening")
        raise self._fail(f"not listening after {self.startup_timeout:.0f} s")

    def _wait_healthy(self, deadline: float) -> None:
        assert self._proc is not None
        last = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._fail(f"child exited with code {self._proc.returncode} while loading")
            try:
                with _NO_PROXY.open(f"{self.address}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise self._fail(f"/health did not answer within {self.startup_timeout:.0f} s ({last})")


# ----------------------------------------------------------------------------- child process


def _die_with_parent(parent: int) -> None:
    """Exit when the parent goes away: PDEATHSIG (Linux) and a getppid() watchdog thread."""

    # PDEATHSIG fires when the *thread* that forked us exits, not only the process; so it sends
    # SIGUSR1 and the handler exits only if we really were re-parented.
    def on_signal(signum: int, frame: object) -> None:
        if os.getppid() != parent:
            os._exit(0)

    signal.signal(signal.SIGUSR1, on_signal)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGUSR1), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watchdog, name="doppel-parent-watchdog", daemon=True).start()


def serve(
    model: str, alias: str, n_ctx: int, threads: int, cache_ram_mib: int, parent: int | None, slots: int = 1
) -> None:
    """Child entry point: run the server until SIGTERM or parent death; report the address on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C / SIGTERM: die at once, no traceback
    if parent is not None:
        _die_with_parent(parent)
    report = os.dup(1)
    os.dup2(2, 1)  # anything llama.cpp prints on stdout goes to the log, not the report pipe
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = model
    p.model_alias = {alias}
    p.n_ctx = n_ctx * slots  # llama.cpp splits n_ctx over the slots: each gets n_ctx
    p.n_parallel = slots  # parallel sequences, continuously batched (benchmarks/embedded.py measures them)
    p.cont_batching = True
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.hostnames = ["127.0.0.1"]
    p.port = 0
    p.cache_prompt = True
    p.cache_ram_mib = cache_ram_mib
    p.ui = False
    if os.environ.get(_KEY_ENV):
        p.api_keys = [os.environ[_KEY_ENV]]
    server = xllamacpp.Server(p)
    os.write(report, f"{_READY}{server.listening_address}\n".encode())
    os.close(report)
    while True:
        signal.pause()


def main(argv: list[str] | None = None) -> None:
    """`python -m doppel.tasks.llm.embedded serve --model PATH ...` (what EmbeddedServer runs)."""
    ap = argparse.ArgumentParser(prog="python -m doppel.tasks.llm.embedded")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="run the llama.cpp server in the foreground")
    sp.add_argument("--model", required=True)
    sp.add_argument("--alias", default=None)
    sp.add_argument("--n-ctx", type=int, default=4096, help="context per slot")
    sp.add_argument("--slots", type=int, default=1, help="parallel sequences (llama.cpp n_parallel)")
    sp.add_argument("--threads", type=int, default=default_threads())
    sp.add_argument("--cache-ram-mib", type=int, default=1024)
    sp.add_argument("--parent-pid", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        serve(
            args.model,
            args.alias or Path(args.model).stem,
            args.n_ctx,
            args.threads,
            args.cache_ram_mib,
            args.parent_pid,
            args.slots,
        )
    except BaseException:  # llama.cpp may leave threads behind that block a normal exit: exit hard
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
