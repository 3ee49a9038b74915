"""Content-addressed response cache: every answer is on disk the moment it arrives.

Key = sha256 of (model, messages, parameters, sample index). The store is diskcache (SQLite),
safe for many processes and threads on one machine; a rerun of a finished run costs no calls.
On a network filesystem (Dask workers on several machines sharing one cache directory) SQLite's
WAL mode does not work (it needs every process on one host), so there the rollback journal is used.
"""

from __future__ import annotations

import hashlib
import json
import os
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


NETWORK_FS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.sshfs",
    "lustre",
    "gpfs",
    "beegfs",
    "glusterfs",
    "fuse.glusterfs",
    "ceph",
    "fuse.ceph",
    "9p",
)


def on_network_fs(path: str | Path) -> bool:
    """True when `path` lives on a network filesystem (Linux: the longest matching /proc/mounts entry)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    target = os.path.realpath(path)
    best, fstype = "", ""
    for mount, kind in mounts:
        mount = mount.replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, kind
    return fstype in NETWORK_FS


class ResponseCache:
    """Persistent map call_key -> response record (content, usage, latency)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if on_network_fs(self.directory):  # WAL needs shared memory on one host; FULL sync for the journal
            settings = {"sqlite_journal_mode": "delete", "sqlite_synchronous": 2}
        else:  # sqlite_synchronous=1 (NORMAL) with WAL: a committed write survives a process kill
            settings = {"sqlite_synchronous": 1}
        self._cache = diskcache.Cache(str(self.directory), size_limit=2**40, **settings)

    def get(self, key: str) -> dict | None:
        return self._cache.get(key)

    def put(self, key: str, record: dict) -> None:
        self._cache.set(key, record)

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
