"""The rating answer contract: JSON schema for constrained decoding, and a forgiving parser.

Three answer layouts: ratings keyed by the movies' numbers in the prompt ({"1": r, "2": r, ...}: the
default, ~5 decoded tokens per item), {item_id, rating} objects (the seed's and the "item_ids" prompt
set's, ~14 per item) and ratings by position (the "positions" prompt set: a digit per item; the 0.5B
model copies its first digit down the array, benchmarks/results/answer_shapes.md). The parser accepts
what the schema allows and, for servers that ignore the schema, digs the JSON object out of prose. It
keeps every valid (requested id, integer 1..5) pair and reports the rest as problems, so a repair re-ask
can ask only for what is missing.

Where the server returns token logprobs, `rating_distributions` reads each rating's distribution
over 1..5 off the token that holds its digit (the gateway keeps those tokens, see
`digit_distributions`): the model's own uncertainty, a calibrator input (tasks/fidelity/).
`read_completion` reads a chat completion body (content, usage, logprobs) as plain data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError


class RatingEntry(BaseModel):
    item_id: str
    rating: int = Field(ge=1, le=5)


class RatingAnswer(BaseModel):
    ratings: list[RatingEntry]


LAYOUTS = ("numbered", "item_ids", "positions")  # the rating answer (see the module docstring)
RATING = {"type": "integer", "minimum": 1, "maximum": 5}


def ratings_json_schema(item_ids: list[str], layout: str = "positions", numbers: list[int] | None = None) -> dict:
    """The rating answer's schema for these ids, in `layout`.

    numbered: {"ratings": {"1": r1, ..., "n": rn}}, one required key per movie number (`numbers`, the
    asked items' numbers in the rating prompt: 1..n unless a repair asks for some of them), in order,
    nothing else. The ids ride along as the object's description, as in the positional layout.
    positions: {"ratings": [r1, ..., rn]}, an array of exactly n integers 1..5, one per
    numbered item of the prompt: the model decodes only what carries information (a digit and a comma
    per item). The ids ride along as the array's description (an annotation: it constrains nothing,
    but a reader of the request, such as the test server, knows which items were asked).
    item_ids (the item_ids and seed prompt sets'): one `const` item_id per array position, so small models cannot
    repeat or invent ids, at ~15 decoded tokens per item.
    """
    described = f"ratings of item_ids {ids_json(item_ids)} in this order"
    if layout == "numbered":
        keys = list(_by_number(item_ids, numbers))
        ratings = {
            "type": "object",
            "description": described,
            "properties": {k: RATING for k in keys},
            "required": keys,
            "additionalProperties": False,
        }
    elif layout == "positions":
        ratings = {
            "type": "array",
            "description": described,
            "items": RATING,
            "minItems": len(item_ids),
            "maxItems": len(item_ids),
        }
    elif layout == "item_ids":
        entry = lambda item_id: {  # noqa: E731
            "type": "object",
            "properties": {
                "item_id": {"type": "string", "const": item_id},
                "rating": RATING,
            },
            "required": ["item_id", "rating"],
            "additionalProperties": False,
        }
        # exactly these positions; llama.cpp rejects `"items": false`, min/max pin the length
        ratings = {
            "type": "array",
            "prefixItems": [entry(i) for i in item_ids],
            "minItems": len(item_ids),
            "maxItems": len(item_ids),
        }
    else:
        raise ValueError(f"rating answer layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return {
        "type": "object",
        "properties": {"ratings": ratings},
        "required": ["ratings"],
        "additionalProperties": False,
    }


def schema_layout(schema: dict) -> tuple[str, list[int] | None]:
    """(layout, movie numbers asked or None) of a rating schema from `ratings_json_schema`."""
    ratings = (schema.get("properties") or {}).get("ratings") or {}
    if ratings.get("type") == "object":
        return "numbered", [int(k) for k in ratings.get("properties") or {}]
    return ("item_ids" if "prefixItems" in ratings else "positions"), None


def schema_item_ids(schema: dict) -> list[str] | None:
    """The ids a rating schema (any layout) asks for, or None for another schema."""
    ratings = (schema.get("properties") or {}).get("ratings") or {}
    if "prefixItems" in ratings:
        return [p["properties"]["item_id"]["const"] for p in ratings["prefixItems"]]
    match = re.match(r"ratings of item_ids (\[.*\]) in this order$", ratings.get("description") or "")
    return [str(i) for i in json.loads(match.group(1))] if match else None


def ids_json(item_ids: list[str]) -> str:
    return json.dumps([str(i) for i in item_ids])


@dataclass
class ParsedRatings:
    ratings: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def missing(self, item_ids: list[str]) -> list[str]:
        return [i for i in item_ids if i not in self.ratings]


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def load_json(text: str | None) -> object:
    """The JSON value of an answer; code fences and chatter around one object are tolerated."""
    text = (text or "").strip()
    if text.startswith("```"):
        text = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        match = _OBJECT.search(text)
        if not match:
            raise
        return json.loads(match.group(0))


def parse_ratings(text: str, item_ids: list[str], numbers: list[int] | None = None) -> ParsedRatings:
    """Keep every valid requested pair; describe every problem in words a model can act on.

    Any layout is read: {"ratings": {"1": r, ...}} by the movies' `numbers` (default 1..n, one per
    id), {"ratings": [{"item_id": .., "rating": ..}, ...]} by id, or {"ratings": [r1, ..., rn]} (or a
    bare [r1, ...]) by position, which must then hold exactly one rating per requested id."""
    out = ParsedRatings()
    try:
        data = load_json(text or "")
    except json.JSONDecodeError as exc:
        out.problems.append(f"not valid JSON ({exc.msg} at char {exc.pos})")
        return out
    entries = data.get("ratings") if isinstance(data, dict) else data
    if entries is None and isinstance(data, dict) and data and all(str(k).strip().isdigit() for k in data):
        entries = data  # a bare {"1": r, ...}
    if isinstance(entries, dict):
        asked = _by_number(item_ids, numbers)
        _read_numbered(entries, asked, out)
        unanswered = [n for n, i in asked.items() if i not in out.ratings]
        if unanswered:
            out.problems.append(f"missing movies {', '.join(unanswered)}")
        return out
    if not isinstance(entries, list):
        out.problems.append('expected an object {"ratings": ...}')
        return out
    if entries and not any(isinstance(e, dict) for e in entries):
        _read_positions(entries, item_ids, out)
    else:
        _read_entries(entries, item_ids, out)
    missing = out.missing(item_ids)
    if missing:
        out.problems.append(f"missing item_ids {missing}")
    return out


def _by_number(item_ids: list[str], numbers: list[int] | None) -> dict[str, str]:
    """{movie number as its key: item_id}; the numbers default to 1..n."""
    return {str(n): i for n, i in zip(numbers or range(1, len(item_ids) + 1), item_ids, strict=True)}


def _read_numbered(entries: dict, asked: dict[str, str], out: ParsedRatings) -> None:
    for key, raw in entries.items():
        if str(key).strip() not in asked:
            out.problems.append(f"movie {key!r} was not asked for (asked: {', '.join(asked)})")
        elif not _is_rating(raw):
            out.problems.append(f"rating of movie {key} ({raw!r}) is not an integer 1..5")
        else:
            out.ratings[asked[str(key).strip()]] = int(raw)


def _is_rating(raw: object) -> bool:
    return not isinstance(raw, bool) and isinstance(raw, (int, float)) and raw == int(raw) and 1 <= raw <= 5


def _read_positions(entries: list, item_ids: list[str], out: ParsedRatings) -> None:
    if len(entries) != len(item_ids):
        out.problems.append(f"expected {len(item_ids)} ratings, one per numbered item, got {len(entries)}")
        return
    for position, (item_id, raw) in enumerate(zip(item_ids, entries, strict=True), start=1):
        if not _is_rating(raw):
            out.problems.append(f"rating {position} ({raw!r}) is not an integer 1..5")
        else:
            out.ratings[item_id] = int(raw)


def _read_entries(entries: list, item_ids: list[str], out: ParsedRatings) -> None:
    requested = set(item_ids)
    seen: set[str] = set()
    for raw in entries:
        try:
            entry = RatingEntry.model_validate(raw, strict=False)
        except ValidationError as exc:
            item = raw.get("item_id") if isinstance(raw, dict) else raw
            out.problems.append(f"entry for item_id {item!r}: {_first_error(exc)}")
            continue
        if isinstance(raw.get("rating"), float) and not float(raw["rating"]).is_integer():
            out.problems.append(f"item_id {entry.item_id!r}: rating must be an integer")
            continue
        if entry.item_id not in requested:
            out.problems.append(f"item_id {entry.item_id!r} was not requested")
        elif entry.item_id in seen:
            out.problems.append(f"item_id {entry.item_id!r} appears more than once")
            out.ratings.pop(entry.item_id, None)
        else:
            seen.add(entry.item_id)
            out.ratings[entry.item_id] = entry.rating
    # an id answered twice is ambiguous: ask again rather than guess which one was meant
    for dup in {p.split("'")[1] for p in out.problems if "more than once" in p}:
        out.ratings.pop(dup, None)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", "invalid")


# ----------------------------------------------------------------------------- completion bodies


@dataclass
class Completion:
    """What a chat completion body says, read as plain data."""

    content: str
    prompt_tokens: int | None = None  # None: the server sent no usage
    completion_tokens: int | None = None
    cached_tokens: int = 0  # prompt tokens the server reused from its prefix cache
    tokens: list[dict] | None = None  # the answer's token logprobs as sent (OpenAI wire format), if any


def read_completion(body: bytes) -> Completion:
    """The first choice's content, the usage and the token logprobs of a chat completion body.

    A body that is not a completion (not JSON, no choices) gives an empty answer, which the caller's
    validation rejects and repairs like any bad answer. Logprobs stay plain dicts: the client's typed
    objects for ten alternatives per token cost ~3.5 ms of CPU per call (measured).
    """
    try:
        data = json.loads(body)
    except ValueError:
        return Completion(content="")
    if not isinstance(data, dict):
        return Completion(content="")
    choices = data.get("choices")
    choice: dict = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = found if isinstance(found := choice.get("message"), dict) else {}
    content = found if isinstance(found := message.get("content"), str) else ""
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    tokens = [t for t in tokens if isinstance(t, dict)] if isinstance(tokens, list) else None
    usage = found if isinstance(found := data.get("usage"), dict) else {}
    details = found if isinstance(found := usage.get("prompt_tokens_details"), dict) else {}
    return Completion(
        content=content,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(details.get("cached_tokens")) or 0,
        tokens=tokens or None,
    )


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ----------------------------------------------------------------------------- rating distributions

_ENTRY = re.compile(r"\{[^{}]*\}")
_ENTRY_ID = re.compile(r'"item_id"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|([^,}\s]+))')
_ENTRY_RATING = re.compile(r'"rating"\s*:\s*"?([1-5])(?![\d.])')
_NUMBERED = re.compile(r'"\s*(\d+)\s*"\s*:\s*"?([1-5])(?![\d.])')  # "3": 4 of the numbered layout
_POSITIONS = re.compile(r"\[([\s\d,.\-]*)\]")  # the positional ratings array
_POSITION_DIGIT = re.compile(r"(?<![\d.])([1-5])(?![\d.])")
SCALE_DIGITS = "12345"


def digit_distributions(content: str, tokens: list[dict]) -> list[list[float]]:
    """[byte offset in `content`, p1..p5] for every answer token that is a digit 1..5 (surrounding
    spaces allowed).

    tokens: the answer's logprobs as the server sends them (OpenAI wire format: token, bytes,
    top_logprobs [{token, logprob}]). p is the top alternatives' probability mass on each digit,
    renormalised over 1..5: what a decoder constrained to a rating 1..5 samples from. A digit
    missing from the top alternatives gets 0. The tokens may spell more than `content` (llama.cpp
    drops a code fence the model wrote around the JSON); where `content` is not inside what they
    spell (a server that re-encodes text), there is no distribution rather than a wrong one.
    """
    data = content.encode()
    pieces = [bytes(t["bytes"]) if t.get("bytes") is not None else (t.get("token") or "").encode() for t in tokens]
    start = b"".join(pieces).find(data) if data else -1
    if start < 0:
        return []
    pos, out = -start, []
    for token, piece in zip(tokens, pieces, strict=True):
        digit = (token.get("token") or "").strip()
        if len(digit) == 1 and digit in SCALE_DIGITS and 0 <= pos and pos + len(piece) <= len(data):
            p = [0.0] * 5
            for alt in token.get("top_logprobs") or ():
                name, logprob = (alt.get("token") or "").strip(), alt.get("logprob")
                if len(name) == 1 and name in SCALE_DIGITS and logprob is not None and math.isfinite(logprob):
                    p[int(name) - 1] += math.exp(logprob)
            total = sum(p)
            if total > 0:
                out.append([pos + piece.index(digit.encode()), *(x / total for x in p)])
        pos += len(piece)
    return out


def rating_distributions(
    content: str, digits: list[list[float]] | None, item_ids: list[str], numbers: list[int] | None = None
) -> dict[str, list[float]]:
    """{item_id: [p1..p5]} for the requested ids whose rating digit has a distribution in `digits`
    (from `digit_distributions`); ids without one are left out. Any layout: by id, by the movies'
    `numbers` (default 1..n), or by position (the i-th digit of the ratings array is the i-th
    requested id's, when the array holds one per id)."""
    if not digits:
        return {}
    by_offset = {int(d[0]): [float(x) for x in d[1:6]] for d in digits}
    wanted, out = set(item_ids), {}
    for entry in _ENTRY.finditer(content or ""):
        item, rating = _ENTRY_ID.search(entry.group(0)), _ENTRY_RATING.search(entry.group(0))
        if not item or not rating:
            continue
        item_id = item.group(2) if item.group(1) is None else _unescape(item.group(1))
        offset = len(content[: entry.start() + rating.start(1)].encode())
        if item_id in wanted and offset in by_offset:
            out[item_id] = by_offset[offset]
    if out or not content:
        return out
    asked = _by_number(item_ids, numbers)
    for match in _NUMBERED.finditer(content):
        offset = len(content[: match.start(2)].encode())
        if match.group(1) in asked and offset in by_offset:
            out[asked[match.group(1)]] = by_offset[offset]
    if out:
        return out
    array = _POSITIONS.search(content)
    if array:
        ratings = list(_POSITION_DIGIT.finditer(array.group(1)))
        if len(ratings) == len(item_ids):
            for item_id, match in zip(item_ids, ratings, strict=True):
                offset = len(content[: array.start(1) + match.start(1)].encode())
                if offset in by_offset:
                    out[item_id] = by_offset[offset]
    return out


def _unescape(text: str) -> str:
    try:
        return json.loads(f'"{text}"')
    except ValueError:
        return text
