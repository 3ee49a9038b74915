"""Read-only DuckDB reads of a run's file, and the facts of a run (calls, tokens, pairs, chains)."""

from __future__ import annotations

import time
from pathlib import Path


def read_db(db: Path, sql: str, params: list | dict | None = None, wait_s: float = 60.0):
    """A DataFrame from a short read-only connection (retrying while a writer holds the file)."""
    import duckdb

    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(db), read_only=True)
            break
        except duckdb.Error as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


def db_is_locked(db: Path) -> bool:
    """True while another process holds the file read-write (a read-only open fails on the lock)."""
    import duckdb

    try:
        duckdb.connect(str(db), read_only=True).close()
        return False
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            return True
        raise


FACTS_SQL = """
select count(*) filter (where not cached)                        as calls,
       count(*) filter (where cached)                            as cached_calls,
       coalesce(sum(prompt_tokens) filter (where not cached), 0) as prompt_tokens,
       coalesce(sum(completion_tokens) filter (where not cached), 0) as completion_tokens,
       count(*) filter (where not cached and status <> 'ok')     as bad_calls
from llm_calls where run_id = ?
"""
BY_PROMPT_SQL = """
select prompt_name, count(*) as calls, avg(prompt_tokens) as prompt_tokens_avg,
       sum(prompt_tokens) as prompt_tokens, avg(completion_tokens) as completion_tokens_avg
from llm_calls where run_id = ? and not cached group by 1 order by 1
"""
CHAINS_SQL = """
select fold, user_id,
       count(*) filter (where prompt_name like 'profile%')             as chain_profile_calls,
       count(*) filter (where prompt_name = 'rating')                  as rating_calls
from llm_calls where run_id = ? and not cached group by 1, 2
"""
LATENCY_SQL = """
select avg(latency_s) as mean, quantile_cont(latency_s, 0.5) as p50, quantile_cont(latency_s, 0.95) as p95,
       max(latency_s) as max, sum(latency_s) as total
from llm_calls where run_id = ? and not cached
"""
RATINGS_SQL = """
select count(*) as pairs, count(*) filter (where status = 'ok') as rated,
       count(*) filter (where status <> 'ok') as failed
from simulated_ratings where run_id = ?
"""


def run_facts(db: Path, run_id: str) -> dict:
    facts = {k: int(v) for k, v in read_db(db, FACTS_SQL, [run_id]).iloc[0].items()}
    facts.update({k: int(v) for k, v in read_db(db, RATINGS_SQL, [run_id]).iloc[0].items()})
    chains = read_db(db, CHAINS_SQL, [run_id])
    if not chains.empty:
        # a user's chain: profile create/refine/update calls in sequence + one rating call at the end
        chain = chains["chain_profile_calls"] + (chains["rating_calls"] > 0).astype(int)
        facts["longest_chain_calls"] = int(chain.max())
    else:
        facts["longest_chain_calls"] = 0
    facts["by_prompt"] = read_db(db, BY_PROMPT_SQL, [run_id])
    lat = read_db(db, LATENCY_SQL, [run_id]).iloc[0]
    facts["latency"] = {k: float(v) if v == v else float("nan") for k, v in lat.items()}
    return facts
