"""The one LLM gateway: every call to a model goes through `LLMGateway`.

The openai client owns transport (HTTP, timeouts, retries with backoff + jitter that honour Retry-After). The
gateway adds: the response cache, the run's limits, structured output with a fallback for servers without
json_schema, validation with repair re-asks, and a `CallRecord` per call for the audit log. It never raises on a bad
answer: callers get what was valid plus reasons. Rating calls also ask for token logprobs (settings.rating_probs),
so each rating comes with the model's distribution over 1..5; a server that rejects logprobs is asked without them
from then on. Where no logprobs gave one, `rating_samples` > 0 draws that many answers to the same prompt at
`sample_temperature` and takes each rating's distribution from how often the draws gave 1..5.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import openai

from doppel.tasks.llm.cache import ResponseCache, call_key
from doppel.tasks.llm.calls import (
    CallOwner,
    CallRecord,
    EndpointError,
    GatewayError,
    RatingOutcome,
    TextOutcome,
    cache_entry,
    cached_record,
    failed_call,
)
from doppel.tasks.llm.endpoint import api_key_from_env, check_endpoint  # noqa: F401 (check_endpoint: re-exported)
from doppel.tasks.llm.limits import CallLimiter
from doppel.tasks.llm.profile_text import judged_profile, salvaged_profile
from doppel.tasks.llm.repair import ask_until_valid
from doppel.tasks.llm.schemas import (
    digit_distributions,
    parse_ratings,
    rating_distributions,
    ratings_json_schema,
    read_completion,
    schema_item_ids,
    schema_layout,
)
from doppel.tasks.llm.templates import answer_layout, item_numbers, prompt_hash, rating_variables, render
from doppel.tasks.llm.tokens import count_messages, count_text
from doppel.tasks.settings import RATING_SAMPLES_LIMIT, LLMSettings

JSON_MODES: tuple[Literal["schema", "object", "text"], ...] = ("schema", "object", "text")
TOP_LOGPROBS = 10  # alternatives per answer token: enough to hold all five rating digits
# logprobs annotate an answer without changing it, so they stay out of the cache key: an answer
# cached without them still serves (with no distribution) and is never bought twice
LOGPROB_PARAMS = ("logprobs", "top_logprobs")
DRAW_STRIDE = RATING_SAMPLES_LIMIT  # draw indices per retry round
REASK_TEMPERATURE = 0.7  # a new sample's temperature at least (a profile re-ask, a retried item analysis)
DRAW_PROMPT = "rating_draw"  # llm_calls.prompt_name of a draw (the rating prompt, asked again to sample)


class LLMGateway:
    """Cached, limited, validated chat completions for one process and event loop."""

    def __init__(
        self,
        settings: LLMSettings,
        cache: ResponseCache,
        limiter: CallLimiter,
        model_id: str,
        owner: CallOwner | None = None,
    ):
        self.settings = settings
        self.owner = owner  # the run (and invocation) whose calls these are, stamped on what it puts in the cache
        self.cache = cache
        self.limiter = limiter
        self.model_id = model_id
        self.json_mode = "schema" if settings.json_mode == "auto" else settings.json_mode
        self.logprobs = settings.rating_probs  # off for good once the server rejects them
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=api_key_from_env(),
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )

    async def aclose(self) -> None:
        await self._client.close()

    # -- public calls ---------------------------------------------------------------------
    async def text(
        self,
        prompt: str,
        variables: dict[str, Any],
        *,
        priority: float = 0.0,
        overview_chars: int = 160,
        prompts: str = "compact",
        retry: int = 0,
    ) -> TextOutcome:
        """A profile text. One with a problem (empty, looping, cut off: tasks/llm/profile_text.py) is trimmed to
        what it said before it went wrong when that is long enough, else re-asked in the same conversation,
        quoting the problem. `retry` > 0 (a rerun retrying the user): fresh samples follow the cached ones."""
        messages = self._messages(prompt, variables, overview_chars, prompts)
        params = self.settings.profile_params()
        outcome = TextOutcome(text=None, error=None)
        tries = self.settings.repair_attempts + 1  # each attempt a new sample (seed, cache key)
        drawn = [*range(tries), *(range(retry * tries, (retry + 1) * tries) if retry else ())]
        samples = iter(drawn)

        async def complete(name: str, messages: list[dict]) -> tuple[str, CallRecord]:
            sample = next(samples)  # a re-ask samples: at temperature 0 a looping model loops again
            asked = params if sample == 0 else {**params, "temperature": max(params["temperature"], REASK_TEMPERATURE)}
            content, record = await self._complete(name, messages, asked, sample, priority, prompts)
            return (content or "").strip(), record

        def check(content: str, record: CallRecord) -> str | None:
            outcome.text, problem, record.error = judged_profile(content, self.settings.profile_keep_words)
            return problem

        def repair(problem: str) -> tuple[str, str]:
            return "profile_repair", render("profile_repair", prompts=prompts, **variables, error=problem)

        if await ask_until_valid(complete, prompt, messages, check, repair, len(drawn), outcome.calls) is not None:
            trimmed = salvaged_profile(outcome.text)  # bad every time: keep what it said before it went wrong
            outcome.text, outcome.error = (trimmed, None) if trimmed else (None, outcome.calls[-1].error)
        return outcome

    async def ratings(
        self,
        variables: dict[str, Any],
        item_ids: list[str],
        *,
        sample: int = 0,
        priority: float = 0.0,
        overview_chars: int = 160,
        prompts: str = "compact",
    ) -> RatingOutcome:
        """Integer 1..5 ratings for exactly `item_ids`, repairing bad answers by re-asking."""
        layout = answer_layout(prompts)
        variables = {**variables, **rating_variables(item_ids, layout, self.json_mode == "schema")}
        messages = self._messages("rating", variables, overview_chars, prompts)
        outcome = await self._rate(messages, item_ids, sample, priority, prompts, layout)
        without = [i for i in outcome.ratings if i not in outcome.probs]
        if without and self.settings.rating_samples > 0:
            await self._sample_distributions(outcome, messages, item_ids, without, sample, priority, prompts, layout)
        return outcome

    async def _rate(
        self, messages: list[dict], item_ids: list[str], sample: int, priority: float, prompts: str, layout: str
    ) -> RatingOutcome:
        """The answer: one rating per id, repaired by re-asking in the same conversation."""
        outcome = RatingOutcome(ratings={}, failed={})
        pending = list(item_ids)

        async def complete(prompt: str, messages: list[dict]) -> tuple[str, CallRecord]:
            params = self._rating_params(pending, layout=layout, numbers=item_numbers(item_ids, pending))
            return await self._complete(prompt, messages, params, sample, priority, prompts)

        def check(content: str, record: CallRecord) -> str | None:
            nonlocal pending
            parsed = parse_ratings(content, pending, item_numbers(item_ids, pending))
            outcome.ratings.update(parsed.ratings)
            if self.settings.rating_probs:  # off: no logprob distribution, not even one the cache holds
                rated = list(parsed.ratings)
                outcome.probs.update(rating_distributions(content, record.digits, rated, item_numbers(item_ids, rated)))
            pending = parsed.missing(pending)
            return "; ".join(parsed.problems)[:600] if pending else None

        def repair(problem: str) -> tuple[str, str]:  # re-ask for what is still missing
            asked = rating_variables(item_ids, layout, self.json_mode == "schema", asked=pending)
            return "repair", render("repair", prompts=prompts, error=problem, **asked)

        attempts = self.settings.repair_attempts + 1
        reason = await ask_until_valid(complete, "rating", messages, check, repair, attempts, outcome.calls)
        if reason is not None:
            outcome.failed.update({i: reason for i in pending})
        return outcome

    async def _sample_distributions(
        self,
        outcome: RatingOutcome,
        messages: list[dict],
        item_ids: list[str],
        without: list[str],
        sample: int,
        priority: float,
        prompts: str,
        layout: str,
    ) -> None:
        """P(1..5) for the rated ids in `without`: the share of `rating_samples` draws (the same prompt
        and schema, at sample_temperature, a seed each) that gave each rating. Draws are not repaired:
        an invalid one is recorded as such and counts for none of its ids."""
        params = {
            **self._rating_params(item_ids, logprobs=False, layout=layout),
            "temperature": self.settings.sample_temperature,
        }
        draws = await asyncio.gather(
            *(
                self._draw(messages, params, draw_sample(sample, k), priority, prompts)
                for k in range(self.settings.rating_samples)
            )
        )
        counts = {item_id: [0] * 5 for item_id in without}
        for content, record in draws:
            if content is not None:
                parsed = parse_ratings(content, item_ids)
                for item_id, rating in parsed.ratings.items():
                    if item_id in counts:
                        counts[item_id][rating - 1] += 1
                if parsed.problems:
                    record.status, record.error = "invalid", "; ".join(parsed.problems)[:600]
            outcome.calls.append(record)
        for item_id, hits in counts.items():
            if total := sum(hits):
                outcome.probs[item_id] = [h / total for h in hits]
                outcome.draws[item_id] = total

    async def _draw(
        self, messages: list[dict], params: dict[str, Any], sample: int, priority: float, prompts: str
    ) -> tuple[str | None, CallRecord]:
        try:
            content, record = await self._complete("rating", messages, params, sample, priority, prompts)
        except GatewayError as exc:
            return None, exc.args[1]
        record.prompt_name = DRAW_PROMPT
        return content, record

    async def complete_json(
        self,
        prompt: str,
        messages: list[dict],
        schema_name: str,
        schema: dict,
        *,
        max_tokens: int,
        sample: int = 0,
        priority: float = 0.0,
    ) -> tuple[str, CallRecord]:
        """One cached, limited completion constrained by `schema` (json_schema, else json_object, else text), for
        callers with their own answer contract (tasks/ensemble/keywords.py): they validate the content and repair
        by re-asking. A new `sample` (> 0: asked again after a failure) is drawn at REASK_TEMPERATURE at least:
        at temperature 0 a new seed gives the same answer. Raises GatewayError (args: reason, CallRecord)."""
        temperature = self.settings.temperature if sample == 0 else max(self.settings.temperature, REASK_TEMPERATURE)
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if self.json_mode == "schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "strict": True, "schema": schema},
            }
        elif self.json_mode == "object":
            params["response_format"] = {"type": "json_object"}
        return await self._complete(prompt, messages, params, sample, priority)

    # -- mechanics ------------------------------------------------------------------------
    def _messages(self, prompt: str, variables: dict[str, Any], overview_chars: int, prompts: str) -> list[dict]:
        return [
            {"role": "system", "content": render("system", prompts=prompts)},
            {"role": "user", "content": render(prompt, prompts=prompts, overview_chars=overview_chars, **variables)},
        ]

    def _rating_params(
        self, item_ids: list[str], logprobs: bool | None = None, layout: str = "positions", numbers: list | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.settings.temperature,
            "max_tokens": 24 + self.settings.max_tokens_rating_per_item * len(item_ids),
        }
        if self.logprobs if logprobs is None else logprobs:
            params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        if self.json_mode == "schema":
            schema = {"name": "ratings", "strict": True, "schema": ratings_json_schema(item_ids, layout, numbers)}
            params["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif self.json_mode == "object":
            params["response_format"] = {"type": "json_object"}
        return params

    async def _complete(
        self,
        prompt: str,
        messages: list[dict],
        params: dict[str, Any],
        sample: int,
        priority: float,
        prompts: str = "compact",
    ) -> tuple[str, CallRecord]:
        """One completion, from the cache if this exact request was answered before."""
        request = {**params, "seed": self.settings.seed + sample}
        key = call_key(self.model_id, messages, {k: v for k, v in request.items() if k not in LOGPROB_PARAMS}, sample)
        base: dict[str, Any] = dict(
            call_key=key, prompt_name=prompt, prompt_hash=prompt_hash(prompt, prompts), model=self.model_id
        )
        hit = self.cache.get(key)
        if hit is not None:
            return hit["content"], cached_record(hit, base, self.owner)
        retry_params = None  # the request to make instead, after giving the slot back
        async with self.limiter.slot(priority):
            started = time.monotonic()
            try:
                raw = await self._create(messages, request)
            except openai.BadRequestError as exc:
                if "logprobs" in request and "logprob" in str(exc).lower():
                    self.logprobs = False
                    retry_params = {k: v for k, v in params.items() if k not in LOGPROB_PARAMS}
                elif "response_format" in request and self._downgrade_json_mode(exc):
                    retry_params = self._rating_params_like(params)  # the weaker JSON mode
                else:
                    raise failed_call(base, exc, self.settings.max_retries + 1, started) from exc
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                # no later call can succeed: end the run with one clear error, not a failed pair per call
                raise EndpointError(
                    f"{self.settings.base_url or 'the endpoint'} rejected the API key "
                    f"(HTTP {exc.status_code}) on a {prompt} call; set OPENAI_API_KEY"
                ) from exc
            except openai.APITimeoutError as exc:
                # a timeout while other calls succeed: the endpoint queues (e.g. one llama.cpp slot), the
                # model did not fail; ask again under a lower concurrency while it can still come down
                if not self.limiter.congested(started):
                    raise failed_call(base, exc, self.settings.max_retries + 1, started) from exc
                retry_params = params
            except openai.OpenAIError as exc:
                raise failed_call(base, exc, self.settings.max_retries + 1, started) from exc
        if retry_params is not None:
            return await self._complete(prompt, messages, retry_params, sample, priority, prompts)
        answer = read_completion(raw.http_response.content)
        content = answer.content
        asked = "logprobs" in request
        digits = digit_distributions(content, answer.tokens) if asked and answer.tokens is not None else None
        # a server that sends no usage: counted with the embedded model's tokenizer (tasks/llm/tokens.py)
        prompt_tokens = count_messages(messages) if answer.prompt_tokens is None else answer.prompt_tokens
        completion_tokens = count_text(content) if answer.completion_tokens is None else answer.completion_tokens
        self.limiter.succeeded(prompt_tokens + completion_tokens)
        record = CallRecord(
            **base,
            status="ok",
            cached=False,
            attempts=raw.retries_taken + 1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.monotonic() - started,
            response=content,
            cached_prompt_tokens=answer.cached_tokens,
            digits=digits,
        )
        self.cache.put(key, cache_entry(record, self.owner))
        return content, record

    async def _create(self, messages: list[dict], request: dict[str, Any]) -> openai.AsyncAPIResponse[bytes]:
        """POST /chat/completions through the client (its transport, timeouts, retries, errors), the body as
        plain JSON and the answer read as plain JSON (`schemas.read_completion`). The typed `chat.completions.create`
        walks every message and schema through the client's parameter transform and builds typed objects
        back: measured 3.5 vs 1.9 ms of CPU per call on a one-line prompt, more on a rating prompt."""
        # httpx's timeout is per read, so a server trickling bytes never trips it: add a deadline
        # over all of the client's attempts (each attempt may also wait out a Retry-After).
        deadline = (self.settings.timeout_s + 5) * (self.settings.max_retries + 1)
        body = {"model": self.model_id, "messages": messages, **request}
        try:
            return await asyncio.wait_for(
                self._client.post("/chat/completions", body=body, cast_to=openai.AsyncAPIResponse[bytes]),
                timeout=deadline,
            )
        except TimeoutError as exc:
            raise openai.APITimeoutError(request=None) from exc  # type: ignore[arg-type]

    def _downgrade_json_mode(self, exc: openai.BadRequestError) -> bool:
        """Servers without json_schema support: fall back to json_object, then to plain text."""
        if self.settings.json_mode != "auto" or self.json_mode == "text":
            return False
        message = str(exc).lower()
        if not any(word in message for word in ("response_format", "json_schema", "json schema", "schema")):
            return False
        self.json_mode = JSON_MODES[JSON_MODES.index(self.json_mode) + 1]
        return True

    def _rating_params_like(self, params: dict[str, Any]) -> dict[str, Any]:
        schema = params.get("response_format", {}).get("json_schema", {}).get("schema", {})
        ids = schema_item_ids(schema)
        if ids:  # as asked (a draw keeps its temperature and stays without logprobs), in the weaker mode
            layout, numbers = schema_layout(schema)
            return {
                **self._rating_params(ids, self.logprobs and "logprobs" in params, layout, numbers),
                "temperature": params.get("temperature", self.settings.temperature),
            }
        rest = {k: v for k, v in params.items() if k != "response_format"}
        # other schemas (complete_json): downgrade to the mode just chosen, json_object before plain text
        return {**rest, "response_format": {"type": "json_object"}} if self.json_mode == "object" else rest


def draw_sample(sample: int, k: int) -> int:
    """The sample index (cache key and seed offset) of draw k for a rating call asked with `sample`:
    apart from every answer's own index (the retry rounds 0, 1, ...) and from other rounds' draws."""
    return DRAW_STRIDE * (sample + 1) + k
