"""How the LLM test server reads a request and what the correct answer is: the request's kind and item
ids, the profile it carries, ratings that are a hash of item and profile, profiles, schema-shaped
sandbox answers, token counts and logprobs. Every function is pure (same request, same answer).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re

ITEM_IDS_RE = re.compile(r"^[ \t]*item_ids:[ \t]*(\[.*\])[ \t]*$", re.MULTILINE)
PROFILE_RE = re.compile(r"<profile>(.*?)</profile>", re.DOTALL)
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def message_text(message: dict) -> str:
    """The text of a chat message (a string, or a list of content parts)."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _user_texts(body: dict) -> list[str]:
    return [message_text(m) for m in body.get("messages", []) if m.get("role") == "user"]


def _line_ids(text: str) -> list[str] | None:
    match = ITEM_IDS_RE.search(text)
    return [str(i) for i in json.loads(match.group(1))] if match else None


def _json_schema(body: dict) -> dict | None:
    fmt = body.get("response_format") or {}
    return fmt.get("json_schema") if fmt.get("type") == "json_schema" else None


DESCRIBED_IDS_RE = re.compile(r"^ratings of item_ids (\[.*\]) in this order$")
POSITIONS_ASKED_RE = re.compile(r'"ratings":\s*\[\d+ integers')  # what doppel's positional prompts ask
NUMBERED_ASKED_RE = re.compile(r'"ratings":\s*\{\s*"\d+":')  # ... and its numbered ones
ASKED_NUMBER_RE = re.compile(r'"(\d+)":\s*<')  # a numbered repair's '"4": <stars 1-5>'


def _schema_ratings(body: dict) -> dict | None:
    try:
        return (_json_schema(body) or {})["schema"]["properties"]["ratings"]
    except (KeyError, TypeError):
        return None


def _schema_ids(body: dict) -> list[str] | None:
    """The ids of a rating schema: its prefixItems' const item_ids, or the ids its description names
    (the positional layout: an array of integers, one per numbered item)."""
    ratings = _schema_ratings(body) or {}
    if "prefixItems" in ratings:
        return [str(item["properties"]["item_id"]["const"]) for item in ratings["prefixItems"]]
    match = DESCRIBED_IDS_RE.match(ratings.get("description") or "")
    return [str(i) for i in json.loads(match.group(1))] if match else None


def answer_layout(body: dict) -> str:
    """``"item_ids"`` ({item_id, rating} objects), ``"positions"`` (an array of integers) or ``"numbered"``
    ({"1": r, ...}): from the schema, else from the answer format the last user message asks for."""
    ratings = _schema_ratings(body)
    if ratings is not None:
        if ratings.get("type") == "object":
            return "numbered"
        return "item_ids" if "prefixItems" in ratings else "positions"
    texts = _user_texts(body)
    if texts and NUMBERED_ASKED_RE.search(texts[-1]):
        return "numbered"
    return "positions" if texts and POSITIONS_ASKED_RE.search(texts[-1]) else "item_ids"


def requested_numbers(body: dict, count: int) -> list[str]:
    """The movie numbers a numbered answer is keyed by: the schema's keys, else those a repair names,
    else 1..count."""
    ratings = _schema_ratings(body) or {}
    if ratings.get("type") == "object":
        return [str(k) for k in ratings.get("properties") or {}]
    texts = _user_texts(body)
    named = ASKED_NUMBER_RE.findall(texts[-1]) if texts else []
    return named if len(named) == count else [str(n) for n in range(1, count + 1)]


def request_kind(body: dict) -> str:
    """``"rating"`` if the schema is named ``ratings`` or a user message has an ``item_ids:`` line;
    ``"sandbox"`` for the agent sandbox's schemas (named ``sandbox_*``); else ``"text"``."""
    name = (_json_schema(body) or {}).get("name") or ""
    if name == "ratings":
        return "rating"
    if name.startswith("sandbox_"):
        return "sandbox"
    return "rating" if any(_line_ids(t) is not None for t in _user_texts(body)) else "text"


def requested_ids(body: dict) -> list[str]:
    """Ids from the schema's ``prefixItems``, else from the last user message with an ``item_ids:`` line."""
    ids = _schema_ids(body)
    if ids is not None:
        return ids
    for text in reversed(_user_texts(body)):
        if (ids := _line_ids(text)) is not None:
            return ids
    return []


def profile_text(body: dict) -> str:
    """The stripped text of the first ``<profile>`` block (the rating prompt's, if any), or ""."""
    texts = _user_texts(body)
    rating_prompts = [t for t in reversed(texts) if _line_ids(t) is not None]
    for text in rating_prompts + [message_text(m) for m in body.get("messages", [])]:
        if match := PROFILE_RE.search(text):
            return match.group(1).strip()
    return ""


def expected_rating(item_id: str, profile_text: str) -> int:
    """The rating the server gives ``item_id`` for a user with this profile (1..5)."""
    return 1 + int(hashlib.sha256(f"{item_id}|{profile_text}".encode()).hexdigest(), 16) % 5


def expected_ratings(item_ids: list[str], profile_text: str) -> list[dict]:
    """The correct ``ratings`` list for these ids, in order."""
    return [{"item_id": str(i), "rating": expected_rating(str(i), profile_text)} for i in item_ids]


def sampled_ratings(ratings: list[dict], rng: random.Random) -> list[dict]:
    """A draw at temperature > 0: each rating moves one step down or up with probability 0.2 each
    (kept in 1..5), so draws of the same request spread around the deterministic answer."""
    out = []
    for r in ratings:
        step = rng.choices((-1, 0, 1), weights=(0.2, 0.6, 0.2))[0]
        out.append({**r, "rating": min(5, max(1, r["rating"] + step))})
    return out


def profile_answer(body: dict) -> str:
    """A deterministic ~60-word profile from the genres named in the user messages; no digits."""
    text = "\n".join(_user_texts(body))
    word = r"(?<![A-Za-z]){}(?![A-Za-z])"
    counts = {g: len(re.findall(word.format(re.escape(g)), text, re.IGNORECASE)) for g in GENRES}
    ranked = [g.lower() for g, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0]

    def join(words: list[str]) -> str:
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    liked = join(ranked[:3]) if ranked else "all kinds of"
    disliked = join(ranked[3:][-2:]) + " films" if len(ranked) > 3 else "anything slow or predictable"
    return (
        f"Profile: This viewer is most drawn to {liked} films and seeks them out again and again. "
        "They value engaging stories, memorable characters and a satisfying ending, and they reward "
        f"familiar favourites with generous ratings. They are less keen on {disliked}, which they "
        "watch only now and then and judge more strictly. Overall a thoughtful, fairly consistent "
        "rater with moderate expectations."
    )


WORDS = (
    "comedy",
    "drama",
    "action",
    "thriller",
    "romance",
    "great",
    "story",
    "music",
    "fun",
    "loved",
    "slow",
    "classic",
    "night",
    "friends",
    "watch",
    "again",
    "ending",
    "cast",
    "scary",
    "sweet",
)


def schema_answer(schema: dict, seed_text: str) -> object:
    """A deterministic instance of a JSON schema (the subset doppel's sandbox uses): enum and const,
    strings within min/maxLength, integers within minimum/maximum, arrays (prefixItems or items,
    within min/maxItems, at least one element when allowed) and objects with every property.
    Choices are drawn from sha256(seed_text + the path), so the same request gets the same answer."""

    def draw(path: str, n: int) -> int:
        return int(hashlib.sha256(f"{seed_text}|{path}".encode()).hexdigest(), 16) % max(1, n)

    def build(node: dict, path: str) -> object:
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return node["enum"][draw(path, len(node["enum"]))]
        kind = node.get("type")
        if kind == "object":
            return {key: build(sub, f"{path}.{key}") for key, sub in (node.get("properties") or {}).items()}
        if kind == "array":
            prefix = node.get("prefixItems") or []
            if prefix:
                return [build(sub, f"{path}[{k}]") for k, sub in enumerate(prefix)]
            low, high = node.get("minItems", 0), node.get("maxItems", node.get("minItems", 0) + 2)
            n = min(high, max(low, 1) + draw(path + "#n", 2))
            return [build(node.get("items") or {"type": "string"}, f"{path}[{k}]") for k in range(n)]
        if kind == "integer":
            low, high = node.get("minimum", 0), node.get("maximum", node.get("minimum", 0) + 9)
            return low + draw(path, high - low + 1)
        if kind == "boolean":
            return bool(draw(path, 2))
        if kind == "number":
            return float(node.get("minimum", 0) + draw(path, 100) / 10)
        low, high = node.get("minLength", 0), node.get("maxLength", 60)
        words = [WORDS[draw(f"{path}#{k}", len(WORDS))] for k in range(8)]
        text = words[0]
        for word in words[1:]:
            if len(text) + 1 + len(word) > min(high, 60):
                break
            text = f"{text} {word}"
        text = text[:high]
        return text if len(text) >= low else (text + " x" * low)[: max(low, len(text))]

    return build(schema, "$")


def sandbox_answer(body: dict) -> str:
    """The answer to a sandbox request: an instance of its JSON schema, seeded by the request's messages."""
    schema = (_json_schema(body) or {}).get("schema") or {}
    seed = json.dumps(body.get("messages", []), sort_keys=True)
    return json.dumps(schema_answer(schema, seed))


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


_TOKEN_RE = re.compile(r"\d|[^\W\d]+|\s+|[^\w\s]")
ANSWER_DIGIT_P, QUOTE_P = 0.7, 0.05  # at a digit 1..5: its own probability, and a non-digit alternative's


def _digit_alternatives(digit: int) -> list[float]:
    """Raw P(1..5) at a digit: ANSWER_DIGIT_P on it, the rest (but QUOTE_P) on the others, nearer ones more."""
    weights = [0.0 if k == digit else 1.0 / (1 + abs(k - digit)) for k in range(1, 6)]
    rest = 1.0 - ANSWER_DIGIT_P - QUOTE_P
    return [
        ANSWER_DIGIT_P if k == digit else rest * w / sum(weights) for k, w in zip(range(1, 6), weights, strict=True)
    ]


def digit_probs(digit: int) -> list[float]:
    """The test server's P(1..5) at a rating digit, renormalised over 1..5: what doppel should store."""
    raw = _digit_alternatives(digit)
    return [x / sum(raw) for x in raw]


def token_logprobs(content: str, top_n: int) -> list[dict]:
    """OpenAI-style logprobs.content for `content`: digits are single tokens, as in Qwen's vocabulary;
    a digit 1..5 has the other digits and '"' as alternatives (_digit_alternatives)."""
    out = []
    for token in _TOKEN_RE.findall(content):
        top = [(token, 0.0)]
        if len(token) == 1 and token in "12345":
            top = [(str(k), math.log(p)) for k, p in zip(range(1, 6), _digit_alternatives(int(token)), strict=True)]
            top = sorted(top + [('"', math.log(QUOTE_P))], key=lambda t: -t[1])
        out.append(
            {
                "token": token,
                "logprob": top[0][1],
                "bytes": list(token.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top[:top_n]],
            }
        )
    return out
