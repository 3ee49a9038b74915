"""`doppel run --dry-run`: what a run would cost before it spends anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from doppel.tasks.llm.templates import answer_layout, rating_variables, render
from doppel.tasks.llm.tokens import count_messages
from doppel.tasks.planning import build_work, select_users
from doppel.tasks.records import UserWork
from doppel.tasks.settings import RunSettings
from doppel.tasks.simulation import PROFILE_WORDS, batches, chain_shape, critical_path

ANSWER_TOKENS_PER_ITEM = {"positions": 2, "numbered": 5, "item_ids": 14}  # benchmarks/results/answer_shapes.md
PLACEHOLDER_PROFILE = " ".join(["taste"] * PROFILE_WORDS)


@dataclass
class Estimate:
    users: int
    pairs: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    longest_chain: int
    cost_usd: float

    def wall_s(self, seconds_per_call: float, concurrency: int) -> float:
        """The LLM-bound limit: work over concurrency, or the longest user chain."""
        return max(self.calls * seconds_per_call / max(1, concurrency), self.longest_chain * seconds_per_call)


def _tokens(system: str, user: str) -> int:
    """Prompt tokens of a [system, user] call, counted with the embedded model's tokenizer (the run
    records the server's own counts; another model's tokenizer differs by some percent)."""
    return count_messages([{"role": "system", "content": system}, {"role": "user", "content": user}])


def _user_tokens(work: UserWork, settings: RunSettings) -> tuple[int, int]:
    """(prompt, completion) tokens of one user's calls, by rendering the real prompts."""
    sim, llm = settings.sim, settings.llm
    asked = 1 + planned_draws(settings)  # a rating prompt is asked once, then once per draw
    system = render("system", prompts=sim.prompts)
    common = {"demographics": work.demographics, "max_words": PROFILE_WORDS}
    prompt = completion = 0
    for i, batch in enumerate(batches(work.history, sim.profile_batch)):
        name = "profile_create" if i == 0 else "profile_refine"
        text = render(
            name,
            prompts=sim.prompts,
            overview_chars=sim.overview_chars,
            **common,
            items=batch,
            mean_rating="3.5",
            profile=None if i == 0 else PLACEHOLDER_PROFILE,
        )
        prompt += _tokens(system, text)
        completion += llm.max_tokens_profile
    recent = work.history[-sim.recent_k :] if sim.recent_k else []
    rate_batches = batches(work.candidates, sim.rate_batch)
    layout = answer_layout(sim.prompts)
    for j, batch in enumerate(rate_batches):
        ids = [c.item_id for c in batch]
        text = render(
            "rating",
            prompts=sim.prompts,
            overview_chars=sim.overview_chars,
            **common,
            profile=PLACEHOLDER_PROFILE,
            recent=recent,
            candidates=batch,
            **rating_variables(ids, layout, constrained=llm.json_mode in ("auto", "schema")),
        )
        prompt += _tokens(system, text) * asked
        # the answer per item: a digit and a comma by position, ~5 tokens keyed by number, ~14 as an {id, rating} object
        completion += (6 + ANSWER_TOKENS_PER_ITEM[layout] * len(batch)) * asked
        if sim.update_profile and j < len(rate_batches) - 1:
            text = render(
                "profile_update",
                prompts=sim.prompts,
                overview_chars=sim.overview_chars,
                **common,
                profile=PLACEHOLDER_PROFILE,
                items=batch,
            )
            prompt += _tokens(system, text)
            completion += llm.max_tokens_profile
    return prompt, completion


def planned_draws(settings: RunSettings) -> int:
    """Draws per rating call that a run certainly makes: with --no-rating-probs every rating call's
    --rating-samples; with logprobs asked, only where the server gives none (not known before)."""
    return settings.llm.rating_samples if not settings.llm.rating_probs else 0


def _calls(work: UserWork, settings: RunSettings) -> int:
    n_profile, n_rate, n_update = chain_shape(work, settings.sim)
    return n_profile + n_rate * (1 + planned_draws(settings)) + n_update


def estimate(settings: RunSettings, dataset: str) -> Estimate:
    """Calls and tokens of a new run with these settings (the dataset must be ingested)."""
    works: list[UserWork] = []
    for fold in settings.folds:
        users = select_users(settings.db, dataset, fold, settings.users, settings.user_ids, settings.sample_seed)
        works += build_work(settings.db, dataset, fold, users, settings.sim)
    prompt = completion = 0
    for work in works:
        p, c = _user_tokens(work, settings)
        prompt, completion = prompt + p, completion + c
    llm = settings.llm
    cost = (prompt * llm.price_prompt_per_mtok + completion * llm.price_completion_per_mtok) / 1e6
    return Estimate(
        users=len(works),
        pairs=sum(len(w.candidates) for w in works),
        calls=sum(_calls(w, settings) for w in works),
        prompt_tokens=prompt,
        completion_tokens=completion,
        longest_chain=max((critical_path(w, settings.sim) for w in works), default=0),
        cost_usd=cost,
    )


def measured_speed(db: str | Path, every_call: bool = False) -> dict[str, tuple[float, int]]:
    """model -> (seconds, calls) from the database's own answered, uncached calls: the median rating
    call, or with `every_call` the mean of all its calls (profiles are longer than ratings); {} when
    there are none or the file cannot be read (no figure rather than a wrong one)."""
    if not Path(db).expanduser().is_file():
        return {}
    from doppel.tasks.store.db import query

    try:
        frame = query(db, "model_speed", read_only=True)
    except Exception:  # noqa: BLE001 - a locked or foreign file
        return {}
    seconds, calls = ("mean_s", "all_calls") if every_call else ("median_s", "calls")
    return {str(row["model"]): (float(row[seconds]), int(row[calls])) for _, row in frame.iterrows() if row[calls] > 0}
