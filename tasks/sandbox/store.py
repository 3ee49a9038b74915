"""The sandbox's reads and writes (tables in sql/sandbox.sql, statements in sql/queries/sandbox_*.sql).

Writes are one short transaction each; only the flow process calls them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from doppel.tasks.llm.calls import CallRecord
from doppel.tasks.sandbox.records import Agent, Outcome
from doppel.tasks.sandbox.social import neighbours
from doppel.tasks.store.db import connect, execute, query, transaction
from doppel.tasks.store.schema import frame_columns
from doppel.tasks.store.writes import RECORDED_CALL_COLUMNS, write_checked

TABLES = (
    "sandbox_runs",
    "sandbox_agents",
    "sandbox_friends",
    "sandbox_rounds",
    "sandbox_actions",
    "sandbox_pages",
    "sandbox_ratings",
    "sandbox_messages",
    "sandbox_posts",
    "sandbox_memories",
)
# a round's rows as frames: each table's columns (sql/sandbox.sql) minus what the insert binds or numbers
# itself; `k` orders the rows whose seq the insert assigns
_BOUND = ("sandbox_id", "round")
_COLUMNS = {
    "actions": ["k", *frame_columns("sandbox_actions", (*_BOUND, "seq", "created"))],
    "pages": frame_columns("sandbox_pages", _BOUND),
    "ratings": frame_columns("sandbox_ratings", _BOUND),
    "messages": ["k", *frame_columns("sandbox_messages", (*_BOUND, "seq"))],
    "posts": frame_columns("sandbox_posts", _BOUND),
    "memories": ["k", *frame_columns("sandbox_memories", (*_BOUND, "seq"))],
}


def read(db: str | Path, name: str, **params) -> pd.DataFrame:
    return query(db, name, **params)


def check_same_model(db: str | Path, sandbox_id: str, model: str, endpoint: str | None) -> None:
    """A sandbox resumes with the model that played it: one sandbox, one model's agents (a llama.cpp
    server answers under any name, so the same --model may be another file)."""
    from doppel.tasks.llm.endpoint import refuse_another_model

    stored = read(db, "sandbox_run", sandbox_id=sandbox_id)
    if not stored.empty:
        refuse_another_model(
            f"sandbox {sandbox_id} was played",
            stored["model"].iloc[0],
            model,
            endpoint,
            "start a new sandbox (another --sandbox-id)",
        )


def start(
    db: str | Path,
    sandbox_id: str,
    dataset: str,
    fold: str,
    model: str,
    recommender: str,
    config: dict,
    code_version: str,
    prompt_hashes: dict,
) -> None:
    transaction(
        db,
        "sandbox_start",
        sandbox_id=sandbox_id,
        dataset=dataset,
        fold=fold,
        model=model,
        recommender=recommender,
        config=json.dumps(config),
        code_version=code_version,
        prompt_hashes=json.dumps(prompt_hashes),
    )


def set_status(db: str | Path, sandbox_id: str, status: str) -> None:
    transaction(db, "sandbox_set_status", sandbox_id=sandbox_id, status=status)


def calls_frame(rows: list[tuple[str, CallRecord]]) -> pd.DataFrame:
    """(user id, CallRecord) pairs as the rows of sql/queries/record_calls.sql (no fold)."""
    return pd.DataFrame(
        [{"fold": None, "user_id": user, **asdict(call)} for user, call in rows], columns=RECORDED_CALL_COLUMNS
    )


def save_setup(
    db: str | Path,
    sandbox_id: str,
    agents: pd.DataFrame,
    friends: pd.DataFrame,
    memories: pd.DataFrame,
    calls: pd.DataFrame,
) -> None:
    transaction(
        db,
        ("record_calls", "sandbox_save_agents"),
        {"new_agents": agents, "new_friends": friends, "new_memories": memories, "new_calls": calls},
        sandbox_id=sandbox_id,
        run_id=sandbox_id,
    )


def save_profiles(db: str | Path, sandbox_id: str, profiles: pd.DataFrame, calls: pd.DataFrame) -> None:
    """A resume's profiles asked again (`build.asked_again`) and the calls they took, in one transaction."""
    transaction(
        db,
        ("record_calls", "sandbox_save_profiles"),
        {"new_profiles": profiles, "new_calls": calls},
        sandbox_id=sandbox_id,
        run_id=sandbox_id,
    )


def begin_round(db: str | Path, sandbox_id: str, round_no: int, post_reads: pd.DataFrame, recommender: dict) -> None:
    transaction(
        db,
        "sandbox_begin_round",
        {"new_memories": post_reads},
        sandbox_id=sandbox_id,
        round=round_no,
        recommender=json.dumps(recommender),
    )


def outcome_frames(outcomes: list[Outcome], user_of: dict[str, str], embed) -> dict[str, pd.DataFrame]:
    """The rows of finished agents; `embed(texts) -> (n, d) array` embeds their new memories."""
    rows: dict[str, list[dict]] = {name: [] for name in _COLUMNS}
    calls: list[tuple[str, CallRecord]] = []
    for o in outcomes:
        for kind in ("actions", "pages", "ratings", "posts"):
            for row in getattr(o, kind):
                rows[kind].append({"agent_id": o.agent_id, "user_id": user_of[o.agent_id], **row})
        rows["messages"].extend(o.messages)
        rows["memories"].extend(o.memories)
        calls.extend((user_of[o.agent_id], c) for c in o.calls)
    texts = [m["text"] for m in rows["memories"]]
    vectors = embed(texts) if texts else []
    for memory, vector in zip(rows["memories"], vectors, strict=True):
        memory["embedding"] = [float(x) for x in vector]
    for name in ("actions", "messages", "memories"):
        for k, row in enumerate(rows[name]):
            row["k"] = k
    frames = {f"new_{name}": pd.DataFrame(rows[name], columns=cols) for name, cols in _COLUMNS.items()}
    frames["new_ratings"] = frames["new_ratings"].astype({"rating": "int64"})
    frames["new_calls"] = calls_frame(calls)
    return frames


def save_outcomes(db: str | Path, sandbox_id: str, round_no: int, frames: dict[str, pd.DataFrame]) -> None:
    """A round's outcomes under the sandbox_actions and sandbox_ratings contracts (expectations/)."""
    contracts = {"sandbox_actions": "sandbox_round_actions", "sandbox_ratings": "sandbox_round_ratings"}
    write_checked(
        db,
        ("record_calls", "sandbox_save_outcomes"),
        frames,
        contracts,
        sandbox_id,
        sandbox_id=sandbox_id,
        run_id=sandbox_id,
        round=round_no,
    )


def finish_round(db: str | Path, sandbox_id: str, round_no: int, stats: dict) -> None:
    transaction(
        db,
        "sandbox_finish_round",
        sandbox_id=sandbox_id,
        round=round_no,
        wall_s=stats["wall_s"],
        active_agents=stats["active"],
        new_calls=stats["new_calls"],
        cached_calls=stats["cached_calls"],
        failed_actions=stats["failed"],
    )


def export(db: str | Path, sandbox_id: str, out_dir: str | Path, fmt: str) -> list[Path]:
    """Every sandbox table's rows of this sandbox as one file each (parquet | csv | json lines)."""
    from doppel.tasks.paths import sql_text

    if fmt not in ("parquet", "csv", "json"):
        raise ValueError(f"unknown format {fmt!r}: parquet, csv or json")
    out = Path(out_dir)
    written = []
    with connect(db, read_only=True) as con:
        found = execute(con, "sandbox_run", sandbox_id=sandbox_id)
        if found is None or found.empty:
            raise ValueError(f"no sandbox {sandbox_id!r} in {db}")
        out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        for table in TABLES:
            select = sql_text("queries/sandbox_export.sql").replace("{table}", table)
            relation = con.sql(select, params={"sandbox_id": sandbox_id})
            path = out / f"{table}.{'jsonl' if fmt == 'json' else fmt}"
            if fmt == "parquet":
                relation.write_parquet(str(path))
            elif fmt == "csv":
                relation.write_csv(str(path))
            else:
                relation.df().to_json(path, orient="records", lines=True, date_format="iso")
            written.append(path)
    return written


def finished_rounds(db: str | Path, sandbox_id: str) -> int:
    """The last round of an unbroken run of finished rounds from round 1 (0: none); a resume goes on after it."""
    rounds = read(db, "sandbox_rounds", sandbox_id=sandbox_id)
    done = 0
    for r in rounds.itertuples(index=False):
        if r.round != done + 1 or r.status != "finished":
            break
        done = r.round
    return done


def load_agents(db: str, sandbox_id: str) -> list[Agent]:
    frame = read(db, "sandbox_agents", sandbox_id=sandbox_id)
    edges = read(db, "sandbox_friends", sandbox_id=sandbox_id)
    ids = frame["agent_id"].tolist()
    friends = neighbours(list(zip(edges["agent_id"], edges["friend_id"])), ids)
    return [
        Agent(r.agent_id, r.user_id, r.demographics, r.profile, float(r.activity), friends[r.agent_id])
        for r in frame.itertuples(index=False)
    ]


def summary(db: str | Path, sandbox_id: str) -> dict:
    """What the CLI prints: rounds and their timings, the action mix, items watched, ratings."""
    run = read(db, "sandbox_run", sandbox_id=sandbox_id)
    agents = read(db, "sandbox_agents", sandbox_id=sandbox_id)
    rounds = read(db, "sandbox_rounds", sandbox_id=sandbox_id)
    return {
        "sandbox_id": sandbox_id,
        "db": str(db),
        "dataset": run["dataset"].iloc[0] if len(run) else None,
        "recommender": recommenders_used(rounds, run["recommender"].iloc[0] if len(run) else None),
        "agents": len(agents),
        "profiles_failed": int((agents["profile_source"] == "failed").sum()),
        "profile_calls": read(db, "sandbox_profile_calls", sandbox_id=sandbox_id).iloc[0].to_dict(),
        "rounds": rounds.to_dict(orient="records"),
        "action_mix": read(db, "sandbox_action_mix", sandbox_id=sandbox_id).to_dict(orient="records"),
        "ratings": read(db, "sandbox_rating_stats", sandbox_id=sandbox_id).to_dict(orient="records")[0],
        "top_watched": read(db, "sandbox_top_watched", sandbox_id=sandbox_id).to_dict(orient="records"),
    }


def recommenders_used(rounds: pd.DataFrame, registered: str | None) -> str | None:
    """The recommenders the rounds were played with, in order ("mf -> popular" when a resume switched
    them, as an intervention study does); the registered one before any round."""
    kinds = [json.loads(r)["kind"] for r in rounds.sort_values("round")["recommender"] if isinstance(r, str)]
    used = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    return " -> ".join(used) if used else registered
