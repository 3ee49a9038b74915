"""How long `doppel run` on the embedded default takes before its first LLM request, and what of it overlaps.

    python benchmarks/startup.py                       # 3 rounds of `doppel run --dataset synthetic --users 1`
    python benchmarks/startup.py --rounds 5 --dataset ml-100k
    python benchmarks/startup.py --against OTHER_VENV/bin/python   # alternate with another install of doppel

Each round runs the whole command a new user types (no --base-url: the embedded model; --verbose for
the phase lines), in a fresh folder (database, LLM cache), one round after another, and reads from its
timestamped output. The Prefect home is kept across rounds, as a user's is: an unrecorded first run
creates its database. With --against, the same rounds alternate with another Python whose installed
doppel is another commit (a venv), side by side on the same machine:

- start-up: seconds from the command's start until the fan-out submitted its chunks (the first LLM
  request follows at once), and the phases before it (the flow begins once the Prefect API answers;
  the dataset is loaded; the users are planned);
- the embedded server: its load (child start to /health) and how long the flow waited for it (the
  line the flow logs; a build that starts the server ahead of the flow, as 29a7906 did while the
  Prefect API booted, waits less than the load);
- the whole command's wall.

Last line: RESULT server_load_s=<median> server_wait_s=<median> wall_s=<median> startup_s=<median until
submitted> (with --against: startup_s_against=<..> wall_s_against=<..> startup_ratio=<this / against>)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support import machine, output, runs
from support.output import log

SERVER_LINE = re.compile(r"embedded server \S+: loaded in ([\d.]+) s, waited for ([\d.]+) s")
PHASES = ("flow_begin", "dataset_ready", "planned", "submitted")


def one_round(args: argparse.Namespace, build: Build, folder: Path, log_path: Path) -> dict:
    """One whole `doppel run` of `build` in `folder`: its phases, the server's load and wait, its wall."""
    argv = [build.python, "-m", "doppel.flows.cli", "run", "--dataset", args.dataset, "--fold", args.fold]
    argv += ["--users", str(args.users), "--db", str(folder / "doppel.duckdb"), "--verbose", "--no-progress"]
    if args.data_dir is not None and args.dataset == "ml-100k":
        argv += output.data_argv(args.data_dir, args.item_text)
    env = runs.doppel_env(build.prefect_home, timed=True)  # the LLM cache: beside the fresh database
    if build.python != sys.executable:
        env.pop("PYTHONPATH")  # the other Python runs the doppel installed in it
    timed = runs.run_timed(argv, env, folder, log_path, timeout=args.timeout, sample_rss=False)
    if timed.returncode != 0:
        raise SystemExit(f"doppel run ({build.name}) exited {timed.returncode}; its output: {log_path}")
    found = SERVER_LINE.search(timed.text)
    row: dict = {"build": build.name, **{phase: timed.phases.get(phase, float("nan")) for phase in PHASES}}
    load_s, wait_s = (float(found[1]), float(found[2])) if found else (float("nan"), float("nan"))
    row.update(server_load_s=load_s, server_wait_s=wait_s, wall_s=timed.wall_s, load=timed.load_mean)
    return row


@dataclass
class Build:
    """An install of doppel to time: its Python, its commit, the folder of its rounds (one Prefect home)."""

    name: str
    python: str
    folder: Path

    @property
    def prefect_home(self) -> Path:
        return self.folder / "prefect-home"

    @classmethod
    def of(cls, python: str, folder: Path) -> Build:
        if python == sys.executable:  # this checkout (its rounds run with PYTHONPATH on it)
            return cls(output.commit(), python, folder / "this")
        where = subprocess.run(
            [python, "-c", "import doppel.flows.cli as m; print(m.__file__)"], capture_output=True, text=True
        )
        if where.returncode != 0:
            raise SystemExit(f"{python} has no doppel installed: {where.stderr.strip()[-300:]}")
        repo = Path(where.stdout.strip()).parents[1]
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        name = f"{commit.stdout.strip() or repo}"
        if name == output.commit():
            name += " (against)"  # the same commit in another install: its rows stay apart
        return cls(name, python, folder / "against")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    output.add_data_options(ap)
    ap.add_argument("--dataset", default="synthetic", help="synthetic (generated) or ml-100k")
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--users", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--against", help="another Python with doppel installed (e.g. an older commit's venv)")
    ap.add_argument("--out", type=Path, default=output.RESULTS / "startup.md")
    args = ap.parse_args(argv)
    machine.exit_cleanly_on_sigterm()
    head = output.provenance()
    log(head)
    rows = []
    with tempfile.TemporaryDirectory(prefix="doppel-startup-") as tmp:
        log_path = Path(tmp) / "runs.log"
        builds = [Build.of(python, Path(tmp)) for python in [sys.executable, *([args.against] if args.against else [])]]
        for build in builds:  # unrecorded: creates the Prefect home's database, as a user's first run does
            log(f"warm-up run of {build.name}")
            (build.folder / "warm-up").mkdir(parents=True)
            one_round(args, build, build.folder / "warm-up", log_path)
        for k in range(args.rounds):
            for build in builds if k % 2 == 0 else builds[::-1]:
                machine.quiet_machine()
                folder = build.folder / f"round-{k}"
                folder.mkdir()
                rows.append({"round": k + 1, **one_round(args, build, folder, log_path)})
                log(output.markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1])
    columns = ["round", "build", *PHASES, "server_load_s", "server_wait_s", "wall_s", "load"]
    table = output.markdown_table(rows, columns)

    def median(key: str, build: Build) -> float:
        return statistics.median(r[key] for r in rows if r["build"] == build.name)

    this = builds[0]
    result = {key: median(key, this) for key in ("submitted", "server_load_s", "server_wait_s", "wall_s")}
    result["startup_s"] = result.pop("submitted")
    compared = ""
    if len(builds) > 1:
        other = builds[1]
        result.update(startup_s_against=median("submitted", other), wall_s_against=median("wall_s", other))
        result.update(startup_ratio=result["startup_s"] / result["startup_s_against"])
        compared = f" Alternating with {other.name} (`--against {other.python}`); ratios: {this.name} / {other.name}."
    text = (
        f"# Start-up of `doppel run` on the embedded default\n\n{head}\n\n"
        f"`doppel run --dataset {args.dataset} --users {args.users}` (no --base-url: the embedded model), "
        f"{args.rounds} rounds of build {this.name}, each in a fresh folder.{compared} Phases: seconds from the "
        "command's start until the line was printed; submitted: the fan-out's chunks are submitted (the first "
        "LLM request follows). server_load_s: the embedded server's start until /health; server_wait_s: how "
        "long the flow waited for it; load: the machine's mean 1-min load average over "
        "the round. Medians of each build's rounds:\n\n"
        f"{output.result_line(**result)}\n\n{table}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(table)
    log(output.result_line(**result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
