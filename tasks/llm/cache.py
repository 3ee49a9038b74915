"""Content-addressed response cache: every answer is on disk the moment it arrives.

Key = sha256 of (model, messages, parameters, sample index). The store is diskcache (SQLite),
safe for many processes and threads on one machine; a rerun of a finished run costs no calls.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import diskcache


def call_key(model: str, messages: list[dict], params: dict[str, Any], sample: int) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "params": params, "sample": sample},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Persistent map call_key -> response record (content, usage, latency)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # sqlite_synchronous=1 (NORMAL) with WAL: a committed write survives a process kill
        self._cache = diskcache.Cache(str(self.directory), size_limit=2**40, sqlite_synchronous=1)

    def get(self, key: str) -> dict | None:
        return self._cache.get(key)

    def put(self, key: str, record: dict) -> None:
        self._cache.set(key, record)

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
