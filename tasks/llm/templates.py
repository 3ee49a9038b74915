"""Prompt templates: one file per prompt in prompts/, rendered with Jinja2, hashed for the audit log.

A prompt set is a folder of such files: "compact" (prompts/, the default: ratings keyed by the movies'
numbers), "seed" (prompts/seed/: the seed's verbose layout with full item descriptions everywhere, kept to
measure against), "item_ids" (compact, answered as {item_id, rating} objects), "positions" (compact, ratings
by position: the fewest decoded tokens) or any folder of the user's.
A set may hold only some prompts; the others come from prompts/.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jinja2

from doppel.tasks.llm.schemas import LAYOUTS, ids_json  # noqa: F401 - ids_json re-exported

PROMPT_DIR = Path(__file__).parent / "prompts"
PROMPT_NAMES = ("system", "profile_create", "profile_refine", "profile_update", "profile_repair", "rating", "repair")
PROMPT_SETS = {"compact": PROMPT_DIR} | {name: PROMPT_DIR / name for name in ("seed", "item_ids", "positions")}


def prompt_dir(prompts: str = "compact") -> Path:
    """The folder of prompt set `prompts`: a named set, or a folder path with <name>.md files."""
    if prompts in PROMPT_SETS:
        return PROMPT_SETS[prompts]
    folder = Path(prompts).expanduser()
    if not folder.is_dir():
        raise ValueError(f"prompt set {prompts!r}: not one of {', '.join(PROMPT_SETS)} and not a folder")
    unknown = sorted(p.stem for p in folder.glob("*.md") if p.stem not in PROMPT_NAMES and not p.stem.startswith("_"))
    if unknown or not any(folder.glob("*.md")):
        raise ValueError(
            f"prompt set folder {folder}: expected some of {', '.join(n + '.md' for n in PROMPT_NAMES)}"
            + (f", found unknown {', '.join(u + '.md' for u in unknown)}" if unknown else ", found none")
        )
    return folder.resolve()


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


@lru_cache(maxsize=8)
def _env(prompts: str = "compact") -> jinja2.Environment:
    folder = prompt_dir(prompts)
    folders = [folder] + ([PROMPT_DIR] if folder != PROMPT_DIR else [])
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )
    return env


def render(name: str, *, prompts: str = "compact", overview_chars: int = 160, **variables: Any) -> str:
    """Render prompt `name` of set `prompts` with `variables`; dataset text is cleaned by `item_line`.

    Templates get `item_line(item, overview=True)` (overview cut to `overview_chars`) and
    `item_full(item)` (the whole description, as the seed's prompts show it).
    """
    if "profile" in variables and variables["profile"]:
        variables["profile"] = _clean(variables["profile"])

    def line(item: Any, overview: bool = True) -> str:
        return item_line(item, overview=overview, overview_chars=overview_chars)

    def full(item: Any) -> str:
        return item_line(item, overview=True, overview_chars=1_000_000)

    template = _env(prompts).get_template(f"{name}.md")
    return template.render(item_line=line, item_full=full, **variables).strip()


@cache
def prompt_hash(name: str, prompts: str = "compact") -> str:
    """sha256 of the template and the partials it can include (short hex)."""
    folder = prompt_dir(prompts)
    own = folder / f"{name}.md"
    paths = [own if own.exists() else PROMPT_DIR / f"{name}.md"]
    partials = {p.name: p for p in sorted(PROMPT_DIR.glob("_*.md"))} | {p.name: p for p in sorted(folder.glob("_*.md"))}
    digest = hashlib.sha256()
    for path in paths + [partials[k] for k in sorted(partials)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def all_prompt_hashes(prompts: str = "compact") -> dict[str, str]:
    return {name: prompt_hash(name, prompts) for name in PROMPT_NAMES}


LAYOUT_MARK = re.compile(r"\{#-?\s*answer:\s*(\w+)\s*-?#\}")


@cache
def answer_layout(prompts: str = "compact") -> str:
    """The rating answer layout of a prompt set (schemas.LAYOUTS): "item_ids" unless its rating template
    declares another in a Jinja comment, as the default's does: `{# answer: numbered #}`."""
    folder = prompt_dir(prompts)
    own = folder / "rating.md"
    match = LAYOUT_MARK.search((own if own.exists() else PROMPT_DIR / "rating.md").read_text())
    layout = match.group(1) if match else "item_ids"
    if layout not in LAYOUTS:
        raise ValueError(f"prompt set {prompts!r}: rating.md declares answer {layout!r}, not one of {LAYOUTS}")
    return layout


def item_numbers(item_ids: list[str], asked: list[str]) -> list[int]:
    """The numbers (1-based places in `item_ids`, as the rating prompt lists them) of the `asked` items."""
    position = {item_id: n for n, item_id in enumerate(item_ids, start=1)}
    return [position[i] for i in asked]


def rating_variables(item_ids: list[str], layout: str, constrained: bool, asked: list[str] | None = None) -> dict:
    """What the rating and repair templates need about the ids: `item_ids_json` (the ids asked),
    `layout`, `numbers` (the asked items' numbers in the rating prompt) and `ids_line` (show the
    ids: always in the item_ids layout; in the positional one only when no schema carries them)."""
    asked = item_ids if asked is None else asked
    return {
        "item_ids_json": ids_json(asked),
        "layout": layout,
        "numbers": item_numbers(item_ids, asked),
        "ids_line": layout == "item_ids" or not constrained,
    }
