"""The rating answer contract: JSON schema for constrained decoding, and a forgiving parser.

The parser accepts what the schema allows and, for servers that ignore the schema, digs the
JSON object out of prose. It keeps every valid (requested id, integer 1..5) pair and reports
the rest as problems, so a repair re-ask can ask only for what is missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, ValidationError


class RatingEntry(BaseModel):
    item_id: str
    rating: int = Field(ge=1, le=5)


class RatingAnswer(BaseModel):
    ratings: list[RatingEntry]


def ratings_json_schema(item_ids: list[str]) -> dict:
    """One `const` item_id per array position: small models cannot repeat or invent ids."""
    entry = lambda item_id: {  # noqa: E731
        "type": "object",
        "properties": {
            "item_id": {"type": "string", "const": item_id},
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["item_id", "rating"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "ratings": {
                "type": "array",
                # exactly these positions; llama.cpp rejects `"items": false`, min/max pin the length
                "prefixItems": [entry(i) for i in item_ids],
                "minItems": len(item_ids),
                "maxItems": len(item_ids),
            }
        },
        "required": ["ratings"],
        "additionalProperties": False,
    }


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


def parse_ratings(text: str, item_ids: list[str]) -> ParsedRatings:
    """Keep every valid requested pair; describe every problem in words a model can act on."""
    out = ParsedRatings()
    requested = set(item_ids)
    try:
        data = load_json(text or "")
    except json.JSONDecodeError as exc:
        out.problems.append(f"not valid JSON ({exc.msg} at char {exc.pos})")
        return out
    entries = data.get("ratings") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        out.problems.append('expected an object {"ratings": [...]}')
        return out
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
    missing = out.missing(item_ids)
    if missing:
        out.problems.append(f"missing item_ids {missing}")
    return out


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", "invalid")
