"""Answer contracts of the sandbox prompts: a JSON schema for constrained decoding and a pydantic check.

Each schema is built for the decision at hand (the friends an agent has, the ids a page shows), so a
grammar-constrained model can only name what exists; the pydantic models check the same on servers
that ignore the schema. A schema's name starts with ``sandbox_`` (the test server answers by it).
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from doppel.tasks.llm.schemas import load_json


def _text(max_length: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": required or list(properties),
        "additionalProperties": False,
    }


class Decision(BaseModel):
    action: Literal["recommender", "chat", "post", "nothing"]
    friend: str = "none"


def decision_schema(actions: list[str], friends: list[str]) -> dict:
    return _object(
        {"action": {"type": "string", "enum": actions}, "friend": {"type": "string", "enum": [*friends, "none"]}}
    )


class Browse(BaseModel):
    choice: Literal["watch", "next", "search", "leave"]
    watch: list[str] = Field(default_factory=list)
    query: str = ""


def browse_schema(item_ids: list[str], max_watch: int) -> dict:
    return _object(
        {
            "choice": {"type": "string", "enum": ["watch", "next", "search", "leave"]},
            "watch": {
                "type": "array",
                "items": {"type": "string", "enum": item_ids},
                "minItems": 0,
                "maxItems": max_watch,
            },
            "query": {"type": "string", "maxLength": 24},
        }
    )


class Review(BaseModel):
    item_id: str
    rating: int = Field(ge=1, le=5)
    feeling: str = Field(min_length=1, max_length=160)


class Reviews(BaseModel):
    reviews: list[Review]
    importance: int = Field(ge=1, le=10)


def reviews_schema(item_ids: list[str]) -> dict:
    def entry(i: str) -> dict:
        return _object(
            {
                "item_id": {"type": "string", "const": i},
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "feeling": _text(80),
            }
        )

    return _object(
        {
            "reviews": {
                "type": "array",
                "prefixItems": [entry(i) for i in item_ids],
                "minItems": len(item_ids),
                "maxItems": len(item_ids),
            },
            "importance": {"type": "integer", "minimum": 1, "maximum": 10},
        }
    )


class Line(BaseModel):
    speaker: str
    text: str = Field(min_length=1, max_length=200)


class Chat(BaseModel):
    dialogue: list[Line]
    importance: int = Field(ge=1, le=10)


def chat_schema(speakers: list[str]) -> dict:
    """One const speaker per position: the two agents alternate, the initiator first."""
    line = lambda s: _object({"speaker": {"type": "string", "const": s}, "text": _text(100)})  # noqa: E731
    return _object(
        {
            "dialogue": {
                "type": "array",
                "prefixItems": [line(s) for s in speakers],
                "minItems": len(speakers),
                "maxItems": len(speakers),
            },
            "importance": {"type": "integer", "minimum": 1, "maximum": 10},
        }
    )


class Post(BaseModel):
    post: str = Field(min_length=3, max_length=300)


def post_schema() -> dict:
    return _object({"post": _text(160)})


class Reflection(BaseModel):
    insights: list[str] = Field(min_length=1, max_length=3)

    @field_validator("insights")
    @classmethod
    def _short(cls, value: list[str]) -> list[str]:
        value = [v.strip() for v in value if v and v.strip()]
        if not value:
            raise ValueError("give at least one insight")
        return value


def reflection_schema() -> dict:
    return _object({"insights": {"type": "array", "items": _text(120), "minItems": 1, "maxItems": 2}})


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], text: str | None) -> tuple[M | None, str | None]:
    """(parsed answer, None) or (None, a problem stated so a model can act on it)."""
    try:
        return model.model_validate(load_json(text)), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at char {exc.pos})"
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return None, f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", "invalid")
