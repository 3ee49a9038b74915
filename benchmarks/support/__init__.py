"""Helpers shared by the benchmark scripts (`python benchmarks/<name>.py` puts benchmarks/ on sys.path).

- `output`: paths, `log`, the `RESULT key=value` line, Markdown tables, the results-file header.
- `servers`: the scripted LLM test server (doppel.testing.llm_server) and a Prefect API server as subprocesses.
- `runs`: `doppel run` as a subprocess: its environment and argv, plain or timed line by line.
- `machine`: load average, RSS and CPU of a process tree.
- `db`: read-only DuckDB reads and the facts of a run.
- `processes`: the processes a killed run leaves behind.
- `schedule`: the product's own scheduler (planning, chunking, slot priorities, simulate_user) on a virtual clock.
"""
