"""The profile answer contract: what makes a profile text degenerate.

One function, `profile_problems`, used at both ends: the gateway re-asks a profile answer that has a
problem, quoting it (tasks/llm/gateway.py), and the output contract rejects a stored profile that has
one (expectations/profiles.json through tasks/validate.py). Small models loop and get cut off; these
are the shapes seen in runs of the 0.5B model (issue 26): the same few titles repeated ~8 times, an
answer that stops mid-word at the token limit, a stray `<profile>` tag, a header written twice.
"""

from __future__ import annotations

import re
from collections import Counter

MIN_CHARS = 5
SPAN_WORDS = 5  # a span of this many words ...
SPAN_REPEATS = 3  # ... seen this often is a loop, not prose
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
# our own delimiters (<profile>, <data>), chat-template tokens (<|im_end|>), Jinja left-overs
_TAG = re.compile(r"</?\s*[A-Za-z_][\w-]*\s*/?>|<\|[^|>\n]{1,40}\|>|\{\{|\}\}|\{%|%\}")
# the 0.5B model echoes the prompt's layout: the viewer line, then its profile inside our <profile> tags, then
# more echoed prompt; what the tags hold is the profile it meant
_PROFILE_BLOCK = re.compile(r"<\s*profile\s*>(.*?)(?:<\s*/\s*profile\s*>|$)", re.DOTALL | re.IGNORECASE)
_HEADER = re.compile(r"^\s*(?:#{1,6}\s*(?P<md>[^\n]+)|\*\*(?P<bold>[^*\n]+?)\*\*|(?P<label>[^\W\d][^:\n]{0,40}?)\s*:)")
_ENDS = ".!?…"
_CLOSERS = "\"')]*_`»”’"
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
# A degenerate answer whose salvage keeps at least this many words is kept at once, not re-asked
# (LLMSettings.profile_keep_words): the 0.5B model's re-asks mostly come back degenerate again, often
# word for word (benchmarks/one_slot.py measures both policies).
KEEP_WORDS = 20


def profile_problems(text: str | None) -> list[str]:
    """What is wrong with a profile text, in words a model can act on; [] when it is fine.

    Checks, in order: empty; template tags; a header (`# X`, `**X**`, `X:` at a line start) written
    twice; a span of SPAN_WORDS words repeated SPAN_REPEATS or more times; a cut-off ending (prose
    that does not end a sentence, or any line ending on `,;:-(`).
    """
    text = (text or "").strip()
    if len(text) < MIN_CHARS:
        return ["empty answer"]
    problems = []
    if tags := list(dict.fromkeys(m.group(0) for m in _TAG.finditer(text))):
        problems.append(f"contains template tags {', '.join(repr(t) for t in tags[:3])}: write plain prose only")
    if header := _repeated_header(text):
        problems.append(f"the header {header!r} appears more than once: write it once or not at all")
    if span := _repeated_span(text):
        words, times = span
        problems.append(f"repeats {words!r} {times} times: say each thing once")
    if _cut_off(_TAG.sub("", text).strip()):
        tail = text[-30:].replace("\n", " ")
        problems.append(f"stops mid-sentence (ends with ...{tail!r}): write a shorter profile that ends properly")
    return problems


def _repeated_header(text: str) -> str | None:
    seen: set[str] = set()
    for line in text.splitlines():
        match = _HEADER.match(line)
        if not match:
            continue
        raw = next(g for g in match.groups() if g)
        key = " ".join(_WORD.findall(raw.lower()))
        if key and key in seen:
            return raw.strip()
        if key:
            seen.add(key)
    return None


def _repeated_span(text: str) -> tuple[str, int] | None:
    words = _WORD.findall(text.lower())
    spans = Counter(tuple(words[i : i + SPAN_WORDS]) for i in range(len(words) - SPAN_WORDS + 1))
    if not spans:
        return None
    span, times = spans.most_common(1)[0]
    return (" ".join(span), times) if times >= SPAN_REPEATS else None


def _cut_off(text: str) -> bool:
    if not text:
        return False
    last_line = text.splitlines()[-1]
    end = last_line.rstrip().rstrip(_CLOSERS).rstrip()
    if not end:
        return False
    if end[-1] in ",;:-(–—":
        return True
    # a list item or a `Label: value` line may end without a full stop; prose may not
    return end[-1] not in _ENDS and not _LIST_ITEM.match(last_line) and not _HEADER.match(last_line)


def judged_profile(text: str, keep_words: int = KEEP_WORDS) -> tuple[str, str | None, str | None]:
    """(the text to keep, the problem a re-ask quotes or None, a note of what was trimmed or None).

    A degenerate answer whose salvage keeps at least `keep_words` words (> 0) is kept trimmed, not re-asked."""
    problems = "; ".join(profile_problems(text))[:600]
    if not problems:
        return text, None, None
    kept = salvaged_profile(text)
    if keep_words and kept and len(_WORD.findall(kept)) >= keep_words:
        return kept, None, f"trimmed: {problems}"[:600]
    return text, problems, None


def salvaged_profile(text: str | None) -> str | None:
    """What a degenerate profile said before it went wrong, if that is a profile with no problem; else None.

    The gateway keeps it at once when it is long enough (`judged_profile`), else re-asks, and uses it as the
    last resort once re-asks are spent (small models echo the prompt's `<profile>` delimiters, loop and
    run into the token limit, and a re-ask rarely changes that). It only removes: what is outside a
    `<profile>` block the answer wrapped its profile in, template tags, a header line written again, the
    text from where a loop begins again (the repeated span's second occurrence; a list ends at its last
    entry before it), then, while the text is still cut off, its last line, and at last everything after
    the last whole sentence. Never a word added.
    """
    block = _PROFILE_BLOCK.search(text or "")
    text = block.group(1) if block and _WORD.search(block.group(1)) else text
    text = "\n".join(" ".join(line.split()) for line in _TAG.sub(" ", text or "").splitlines()).strip()
    text = _without_repeated_headers(text)
    if span := _repeated_span(text):
        starts = [m.start() for m in _WORD.finditer(text)]
        words = [w.lower() for w in _WORD.findall(text)]
        first = span[0].split()
        hits = [i for i in range(len(words) - SPAN_WORDS + 1) if words[i : i + SPAN_WORDS] == first]
        text = text[: starts[hits[1]]].rstrip(" ,;:-–—\n")  # a list cut at its loop ends at its last entry
    while profile_problems(text) and "\n" in text:
        text = text.rsplit("\n", 1)[0].rstrip(" ,;:-–—\n")
    if profile_problems(text):
        ends = [m.end() for m in re.finditer(r"[.!?…][\"')\]»”’]*(?=\s|$)", text)]
        text = text[: ends[-1]].strip() if ends else ""
    return text if not profile_problems(text) else None


def _without_repeated_headers(text: str) -> str:
    kept, seen = [], set()
    for line in text.splitlines():
        match = _HEADER.match(line)
        key = " ".join(_WORD.findall(next(g for g in match.groups() if g).lower())) if match else ""
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(line)
    return "\n".join(kept)
