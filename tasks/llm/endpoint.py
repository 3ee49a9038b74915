"""Is the endpoint usable? Checked once, before any work: it answers, accepts the key, serves the model."""

from __future__ import annotations

import contextlib
import logging
import os

import httpx
import openai

from doppel.tasks.llm.calls import EndpointError
from doppel.tasks.settings import API_KEY_ENV_VARS, LLMSettings
from doppel.tasks.trust import check_plain_http

_NOTED: set[str] = set()  # notes said once per process (the preflight and the flow both check)


def api_key_from_env() -> str:
    for var in API_KEY_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return "no-key"  # local servers ignore it


def check_endpoint(settings: LLMSettings, model_id: str) -> str:
    """Fail fast, before any work: the endpoint answers, accepts the key and serves the model.

    Returns the model id to send, cache under and record: `model_id` when the endpoint lists it (or
    lists nothing), else the one model a server that answers under any name really serves (llama.cpp,
    a one-model server). Answers from two such servers are then never taken for each other's.
    """
    if settings.base_url is None:
        return model_id  # the embedded server: doppel starts it and knows what it serves
    base_url: str = settings.base_url
    try:
        check_plain_http(base_url)  # the key's first request is the one below
    except ValueError as exc:
        raise EndpointError(str(exc)) from None
    client = openai.OpenAI(base_url=settings.base_url, api_key=api_key_from_env(), timeout=15, max_retries=1)
    try:
        served = [m.id for m in client.models.list()]
    except openai.AuthenticationError as exc:
        raise EndpointError(f"{settings.base_url} rejected the API key (HTTP 401); set OPENAI_API_KEY") from exc
    except openai.APIConnectionError as exc:
        raise EndpointError(f"cannot reach --base-url {settings.base_url}: {exc.__cause__ or exc}") from exc
    except openai.APIStatusError:
        return model_id  # no /models on this server: the first call will tell
    finally:
        client.close()
    if not served or model_id in served:
        return model_id
    llama_cpp = False  # llama.cpp answers with its model whatever the name; it shows itself by /props
    with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
        props = httpx.get(
            base_url.rstrip("/").removesuffix("/v1") + "/props",
            headers={"Authorization": f"Bearer {api_key_from_env()}"},
            timeout=15,
        )
        llama_cpp = props.status_code == 200 and "default_generation_settings" in props.json()
    if len(served) > 1 and not llama_cpp:
        default = model_id == LLMSettings.model_fields["model"].default  # the user typed no --model
        raise EndpointError(
            f"model {model_id!r} is not served by {settings.base_url}; it serves {served[:10]}"
            + (f"; pass --model (the default {model_id!r} names the embedded model)" if default else "")
        )
    kind = "a llama.cpp server" if llama_cpp else "one model"
    answering = served[0] if len(served) == 1 else model_id  # several: which one answers is not known
    note = f"--model {model_id!r}: {settings.base_url} ({kind}) answers with {served[0]!r} under any name" + (
        f"; its answers are cached and recorded as {answering!r}'s" if answering != model_id else ""
    )
    if note not in _NOTED:  # once per process, though the preflight and the flow both check
        _NOTED.add(note)
        logging.getLogger("doppel").warning(note)
    return answering


def refuse_another_model(subject: str, stored: str | None, served: str, endpoint: str | None, start_new: str) -> None:
    """A resume keeps the model that answered it: a server that answers under any name (llama.cpp) may
    serve another file under the same --model, and its answers would join the first model's.

    `subject`: what was answered ("run X was answered"); `stored`: its model (None: nothing stored yet);
    `start_new`: how to start afresh instead."""
    if stored is None or stored == served:
        return
    raise ValueError(
        f"{subject} by model {stored!r}; {endpoint or 'the embedded server'} serves {served!r}: "
        f"resume it against a server of that model, or {start_new}"
    )
