"""Threads of one process sharing a DuckDB file: the web UI reads while the sandbox writes."""

from __future__ import annotations

import threading

import pandas as pd

from doppel.tasks.store.db import connect, init_db, query
from doppel.tasks.store.writes import save_metrics


def test_threads_reading_and_writing_one_file_never_fail(tmp_path):
    """Writers (a transaction with a registered frame) and readers (read-write and read-only) side by
    side; DuckDB refused a read-only connection beside a writing one in the same process ("a different
    configuration") and once lost its pandas_scan while an instance was being made."""
    db = tmp_path / "d.duckdb"
    init_db(db)
    errors: list[str] = []
    done = threading.Event()

    def write(worker: int) -> None:
        try:
            for i in range(40):
                frame = pd.DataFrame({"fold": [f"u{worker}"], "simulator": ["llm"], "metric": ["n"], "value": [i]})
                save_metrics(db, f"run-{worker}", frame)
        except Exception as exc:
            errors.append(f"write: {exc}")

    def read(read_only: bool) -> None:
        try:
            while not done.is_set():
                query(db, "run_metrics", read_only=read_only, run_id="run-0")
                with connect(db, read_only=read_only) as con:
                    con.execute("select count(*) from metrics").fetchall()
        except Exception as exc:
            errors.append(f"read (read_only={read_only}): {exc}")

    writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    readers = [threading.Thread(target=read, args=(ro,)) for ro in (True, False)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    stored = query(db, "run_metrics", read_only=True, run_id="run-1")
    assert stored["value"].tolist() == [39.0]
