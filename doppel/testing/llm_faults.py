"""The faults of the LLM test server (doppel.testing.llm_server): which fault a request gets and how an
answer is spoiled. How a request is read and answered is in ``llm_answers`` (re-exported here).

Every function here is pure: the same inputs give the same answer, fault and spoiled answer, which
is what makes the test server reproducible (see ``choose_fault``).
"""

from __future__ import annotations

import json
import random

from .llm_answers import (  # noqa: F401  (re-exported: tests import the server's logic from here)
    DESCRIBED_IDS_RE,
    GENRES,
    ITEM_IDS_RE,
    NUMBERED_ASKED_RE,
    POSITIONS_ASKED_RE,
    PROFILE_RE,
    WORDS,
    answer_layout,
    count_tokens,
    digit_probs,
    expected_rating,
    expected_ratings,
    message_text,
    profile_answer,
    profile_text,
    request_kind,
    requested_ids,
    requested_numbers,
    sampled_ratings,
    sandbox_answer,
    schema_answer,
    token_logprobs,
)

# ----------------------------------------------------------------------------- faults

# Transport-level faults: apply to every chat request, whatever its kind.
HTTP_FAULTS = ("http_500", "http_429", "drop_connection", "hang", "trickle")
# Content faults: spoil the JSON of a rating answer; text (profile) answers never get them.
CONTENT_FAULTS = (
    "malformed_json",  # truncated or Python-repr JSON
    "prose",  # valid JSON wrapped in chatter
    "missing_ids",  # one requested id dropped
    "extra_ids",  # one unrequested id added
    "duplicate_ids",  # one id twice (the copy has another rating)
    "unknown_ids",  # one requested id replaced by an unrequested one
    "out_of_range",  # one rating 0 or 6
    "non_integer",  # one rating 3.5 or "four"
)
FAULTS = HTTP_FAULTS + CONTENT_FAULTS


def check_rates(rates: dict[str, float]) -> dict[str, float]:
    """Validate ``{fault: rate}``; raise ValueError on an unknown fault or a rate outside [0, 1]."""
    out = {}
    for name, rate in rates.items():
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate {name}={rate} is outside [0, 1]")
        out[name] = rate
    return out


def fault_rng(seed: int, body_hash: str, seen_before: int) -> random.Random:
    """The RNG of one request: same seed, same body, same repetition -> same draws.

    ``seen_before`` is how often this exact body arrived earlier, so a retry draws anew.
    (``random.Random`` seeded with a str hashes it with SHA-512: stable across processes.)
    """
    return random.Random(f"{seed}|{body_hash}|{seen_before}")


def choose_fault(rates: dict[str, float], kind: str, rng: random.Random) -> str | None:
    """Pick at most one fault with a single uniform draw.

    The eligible faults (content faults only for ``kind == "rating"``) split [0, 1) in ``FAULTS``
    order, so each fault fires with exactly its rate while the rates sum to <= 1; above that they
    are scaled down proportionally.
    """
    eligible = [(f, rates.get(f, 0.0)) for f in FAULTS if kind == "rating" or f in HTTP_FAULTS]
    eligible = [(f, r) for f, r in eligible if r > 0]
    total = sum(r for _, r in eligible)
    u = rng.random() * max(total, 1.0)
    for fault, rate in eligible:
        if u < rate:
            return fault
        u -= rate
    return None


def _unused_id(requested: list[str], rng: random.Random) -> str:
    taken = set(requested)
    numeric = [int(i) for i in requested if i.isdigit()]
    while True:
        if numeric and len(numeric) == len(requested):
            candidate = str(max(numeric) + 1 + rng.randrange(1000))
        else:
            candidate = f"unknown-{rng.randrange(10**6)}"
        if candidate not in taken:
            return candidate


def ratings_answer(
    ratings: list[dict], layout: str, fault: str | None, rng: random.Random, numbers: list[str] | None = None
) -> str:
    """The answer text in `layout`, spoiled by the content `fault` if any. By position or number, a fault
    that names ids becomes its kin there: a missing, extra or repeated entry, or an entry that is not
    a rating."""
    if layout == "item_ids":
        return spoil_ratings(fault, ratings, rng) if fault else json.dumps({"ratings": ratings})
    if layout == "numbered":
        keys = numbers or [str(n) for n in range(1, len(ratings) + 1)]
        return numbered_answer(dict(zip(keys, (r["rating"] for r in ratings), strict=True)), fault, rng)
    values: list = [r["rating"] for r in ratings]
    i = rng.randrange(len(values)) if values and fault else None
    if fault is None:
        pass
    elif fault == "malformed_json":
        return json.dumps({"ratings": values})[: max(1, len(json.dumps({"ratings": values})) * 3 // 5)]
    elif fault == "prose":
        return f"Sure! Here are the ratings: {json.dumps({'ratings': values})} Hope this helps!"
    elif fault in ("extra_ids", "duplicate_ids"):
        values.insert(rng.randrange(len(values) + 1), rng.randint(1, 5))
    elif i is None:
        pass
    elif fault == "missing_ids":
        del values[i]
    elif fault in ("out_of_range", "unknown_ids"):
        values[i] = rng.choice([0, 6])
    elif fault == "non_integer":
        values[i] = rng.choice([3.5, "four"])
    else:
        raise ValueError(f"not a content fault: {fault!r}")
    return json.dumps({"ratings": values})


def numbered_answer(by_number: dict[str, object], fault: str | None, rng: random.Random) -> str:
    """{"ratings": {"1": r, ...}}, spoiled by `fault` if any: a number dropped, one not asked added (an
    extra, a "duplicate" JSON cannot hold, or one in place of an asked number), or a value that is not a
    rating."""
    answer = dict(by_number)
    key = rng.choice(list(answer)) if answer and fault else None
    unasked = str(max((int(k) for k in answer), default=0) + 1 + rng.randrange(5))
    if fault in ("malformed_json", "prose"):
        text = json.dumps({"ratings": answer})
        return text[: max(1, len(text) * 3 // 5)] if fault == "malformed_json" else f"Here you go: {text} Enjoy!"
    if fault in ("extra_ids", "duplicate_ids"):
        answer[unasked] = rng.randint(1, 5)
    elif key is None:
        pass
    elif fault == "missing_ids":
        del answer[key]
    elif fault == "unknown_ids":
        answer[unasked] = answer.pop(key)
    elif fault in ("out_of_range", "non_integer"):
        answer[key] = rng.choice([0, 6] if fault == "out_of_range" else [3.5, "four"])
    elif fault is not None:
        raise ValueError(f"not a content fault: {fault!r}")
    return json.dumps({"ratings": answer})


def spoil_ratings(fault: str, ratings: list[dict], rng: random.Random) -> str:
    """Return the answer text of a rating request spoiled by the content ``fault``.

    ``ratings`` is the correct ``[{"item_id": ..., "rating": ...}, ...]`` list (not modified).
    """
    items = [dict(r) for r in ratings]
    ids = [r["item_id"] for r in items]
    i = rng.randrange(len(items)) if items else None
    if fault == "malformed_json":
        good = json.dumps({"ratings": items})
        if rng.random() < 0.5:
            return good[: max(1, len(good) * 3 // 5)]  # cut off mid-way: never valid JSON
        return repr({"ratings": items})  # single quotes: Python, not JSON
    if fault == "prose":
        return f"Sure! Here are the ratings: {json.dumps({'ratings': items})} Hope this helps!"
    if fault == "extra_ids":
        extra = {"item_id": _unused_id(ids, rng), "rating": rng.randint(1, 5)}
        items.insert(rng.randrange(len(items) + 1), extra)
    elif i is None:
        pass  # nothing requested: nothing to drop, duplicate, replace or spoil
    elif fault == "missing_ids":
        del items[i]
    elif fault == "duplicate_ids":
        copy = dict(items[i], rating=items[i]["rating"] % 5 + 1)
        items.insert(i + 1, copy)
    elif fault == "unknown_ids":
        items[i]["item_id"] = _unused_id(ids, rng)
    elif fault == "out_of_range":
        items[i]["rating"] = rng.choice([0, 6])
    elif fault == "non_integer":
        items[i]["rating"] = rng.choice([3.5, "four"])
    else:
        raise ValueError(f"not a content fault: {fault!r}")
    return json.dumps({"ratings": items})
