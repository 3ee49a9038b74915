"""A one-way channel from chunk tasks to the flow, so each finished user is written as it arrives.

`local`: a queue in this process (the thread-pool runner). `dask`: a `distributed.Queue` on the
scheduler (the Dask runner, local or remote workers). Payloads travel pickled.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import distributed

_LOCAL: dict[str, queue.Queue] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class CallsSoFar:
    """Progress, not a result: calls a chunk's endpoint has answered so far (its unfinished jobs' too)."""

    chunk: str
    calls: int
    tokens: int = 0  # prompt + completion tokens of those calls


@dataclass(frozen=True)
class ResultChannel:
    name: str
    kind: Literal["local", "dask"]

    def put(self, item: Any) -> None:
        """Send one item (called on the worker)."""
        payload = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        if self.kind == "local":
            _local_queue(self.name).put(payload)
        else:
            from distributed import Queue

            Queue(self.name).put(payload)


class ChannelReader:
    """The flow's end of a channel."""

    def __init__(self, channel: ResultChannel, dask_client=None):
        self.channel = channel
        self._queue: queue.Queue | distributed.Queue
        if channel.kind == "dask":
            from distributed import Queue

            self._queue = Queue(channel.name, client=dask_client)
        else:
            self._queue = _local_queue(channel.name)

    def drain(self, timeout: float) -> list[Any]:
        """Everything waiting now, or the first item to arrive within `timeout` seconds."""
        if isinstance(self._queue, queue.Queue):  # kind "local"
            local = self._queue
            payloads = []
            try:
                payloads.append(local.get(timeout=timeout))
                while True:
                    payloads.append(local.get_nowait())
            except queue.Empty:
                pass
        else:
            # non-blocking polls: a timed-out get makes the scheduler log an error each time
            payloads = self._queue.get(batch=True)
            if not payloads and timeout > 0:
                time.sleep(timeout)
                payloads = self._queue.get(batch=True)
        return [pickle.loads(p) for p in payloads]

    def close(self) -> None:
        if self.channel.kind == "local":
            with _LOCK:
                _LOCAL.pop(self.channel.name, None)


def _local_queue(name: str) -> queue.Queue:
    with _LOCK:
        return _LOCAL.setdefault(name, queue.Queue())
