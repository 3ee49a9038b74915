"""Prompt templates: one file per prompt in prompts/, rendered with Jinja2, hashed for the audit log."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

PROMPT_DIR = Path(__file__).parent / "prompts"
PROMPT_NAMES = ("system", "profile_create", "profile_refine", "profile_update", "rating", "repair")


def item_line(item: Any, overview: bool = True, overview_chars: int = 160) -> str:
    """One item as a compact line: `Title (year) | Genre, Genre | overview…`."""
    year = f" ({item.year})" if getattr(item, "year", None) else ""
    parts = [f"{_clean(item.title)}{year}", _clean(item.genres.replace("|", ", ")) or "unknown genre"]
    text = _clean(item.text)
    if overview and text and overview_chars > 0:
        parts.append(text if len(text) <= overview_chars else text[: overview_chars - 1].rstrip() + "…")
    return " | ".join(parts)


def _clean(text: str) -> str:
    """Data stays data: fold whitespace and neutralise our own delimiters inside dataset text."""
    text = " ".join(str(text or "").split())
    for tag in ("<data>", "</data>", "<profile>", "</profile>"):
        text = text.replace(tag, tag.replace("<", "(").replace(">", ")"))
    return text


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PROMPT_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )
    return env


def render(name: str, *, overview_chars: int = 160, **variables: Any) -> str:
    """Render prompt `name` with `variables`; dataset text is cleaned by `item_line`."""
    if "profile" in variables and variables["profile"]:
        variables["profile"] = _clean(variables["profile"])

    def line(item: Any, overview: bool = True) -> str:
        return item_line(item, overview=overview, overview_chars=overview_chars)

    template = _env().get_template(f"{name}.md")
    return template.render(item_line=line, **variables).strip()


@lru_cache(maxsize=None)
def prompt_hash(name: str) -> str:
    """sha256 of the template and the partials it can include (short hex)."""
    digest = hashlib.sha256()
    for path in [PROMPT_DIR / f"{name}.md", *sorted(PROMPT_DIR.glob("_*.md"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def all_prompt_hashes() -> dict[str, str]:
    return {name: prompt_hash(name) for name in PROMPT_NAMES}


def ids_json(item_ids: list[str]) -> str:
    return json.dumps(list(item_ids))
