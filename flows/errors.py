"""Turn known failures into one clear line and a non-zero exit (no traceback)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def friendly_errors(fail: Callable[[str, int], None]) -> Iterator[None]:
    import openai

    from doppel.flows.score import GateFailed
    from doppel.tasks.llm.gateway import EndpointError
    from doppel.tasks.records import DataError
    from doppel.tasks.store.db import DatabaseLockedError

    try:
        yield
    except KeyboardInterrupt:
        fail("interrupted: finished users are saved; rerun with the same --run-id to continue", 130)
    except GateFailed as exc:
        fail(str(exc), 3)
    except (DataError, EndpointError, DatabaseLockedError, FileNotFoundError, NotADirectoryError) as exc:
        fail(str(exc), 2)
    except openai.AuthenticationError as exc:
        fail(f"the endpoint rejected the API key (HTTP 401): {exc.message}", 2)
    except ValueError as exc:
        fail(str(exc), 2)
    except Exception as exc:  # an embedded model problem names itself
        if type(exc).__name__ in ("EmbeddedModelError",):
            fail(str(exc), 2)
        raise
