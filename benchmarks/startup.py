"""How long `doppel run` on the embedded default takes before its first LLM request, and what of it overlaps.

    python benchmarks/startup.py                       # 3 rounds of `doppel run --dataset synthetic --users 1`
    python benchmarks/startup.py --rounds 5 --dataset ml-100k

Each round runs the whole command a new user types (no --base-url: the embedded model; --verbose for
the phase lines), in a fresh folder (database, LLM cache, Prefect home), one round after another, and
reads from its timestamped output:

- start-up: seconds from the command's start until the fan-out submitted its chunks (the first LLM
  request follows at once), and the phases before it (the flow begins once the Prefect API answers;
  the dataset is loaded; the users are planned);
- the embedded server: its load (child start to /health) and how long the flow then waited for it.
  `doppel run` starts the server while the Prefect API boots and the Dask workers spawn
  (flows/cli_run.py), so saved = load - waited is what that overlap took off the start-up, the
  server's load on these 2 cores slowing the other start-up work as it may;
- the whole command's wall.

Last line: RESULT startup_s=<median until submitted> server_load_s=<median> server_wait_s=<median>
saved_s=<median load - waited> wall_s=<median>
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

from support import machine, output, runs
from support.output import log

SERVER_LINE = re.compile(r"embedded server \S+: loaded in ([\d.]+) s, waited for ([\d.]+) s \(([^)]+)\)")
PHASES = ("flow_begin", "dataset_ready", "planned", "submitted")


def one_round(args: argparse.Namespace, folder: Path, log_path: Path) -> dict:
    """One whole `doppel run` in `folder`: its phases, the server's load and wait, its wall."""
    argv = [sys.executable, "-m", "doppel.flows.cli", "run", "--dataset", args.dataset, "--fold", args.fold]
    argv += ["--users", str(args.users), "--db", str(folder / "doppel.duckdb"), "--verbose", "--no-progress"]
    if args.data_dir is not None and args.dataset == "ml-100k":
        argv += ["--data-dir", str(args.data_dir)] + (["--item-text", str(args.item_text)] if args.item_text else [])
    env = runs.doppel_env(folder / "prefect-home", timed=True)  # the LLM cache: beside the fresh database
    timed = runs.run_timed(argv, env, folder, log_path, timeout=args.timeout, sample_rss=False)
    if timed.returncode != 0:
        raise SystemExit(f"doppel run exited {timed.returncode}; its output: {log_path}")
    found = SERVER_LINE.search(timed.text)
    if found is None:
        raise SystemExit(f"no 'embedded server ... loaded in' line in the output: {log_path}")
    row = {phase: timed.phases.get(phase, float("nan")) for phase in PHASES}
    row.update(server_load_s=float(found[1]), server_wait_s=float(found[2]), server=found[3])
    row.update(saved_s=row["server_load_s"] - row["server_wait_s"], wall_s=timed.wall_s, load=timed.load_mean)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    output.add_data_options(ap)
    ap.add_argument("--dataset", default="synthetic", help="synthetic (generated) or ml-100k")
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--users", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=output.RESULTS / "startup.md")
    args = ap.parse_args(argv)
    machine.exit_cleanly_on_sigterm()
    head = output.provenance()
    log(head)
    rows = []
    with tempfile.TemporaryDirectory(prefix="doppel-startup-") as tmp:
        log_path = Path(tmp) / "runs.log"
        for k in range(args.rounds):
            machine.quiet_machine()
            folder = Path(tmp) / f"round-{k}"
            folder.mkdir()
            rows.append({"round": k + 1, **one_round(args, folder, log_path)})
            log(output.markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1])
    columns = ["round", *PHASES, "server_load_s", "server_wait_s", "saved_s", "server", "wall_s", "load"]
    table = output.markdown_table(rows, columns)
    med = {key: statistics.median(r[key] for r in rows) for key in ("submitted", "server_load_s", "server_wait_s")}
    med.update(
        saved_s=statistics.median(r["saved_s"] for r in rows), wall_s=statistics.median(r["wall_s"] for r in rows)
    )
    text = (
        f"# Start-up of `doppel run` on the embedded default\n\n{head}\n\n"
        f"`doppel run --dataset {args.dataset} --users {args.users}` (no --base-url: the embedded model), "
        f"{args.rounds} rounds, each in a fresh folder. Phases: seconds from the command's start until the "
        "line was printed; submitted: the fan-out's chunks are submitted (the first LLM request follows). "
        "server_load_s: the embedded server's start until /health; server_wait_s: how long the flow waited "
        "for it; saved_s = load - wait; load: the machine's mean 1-min load average over the round.\n\n"
        f"{table}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(table)
    log(
        output.result_line(
            startup_s=med["submitted"],
            server_load_s=med["server_load_s"],
            server_wait_s=med["server_wait_s"],
            saved_s=med["saved_s"],
            wall_s=med["wall_s"],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
