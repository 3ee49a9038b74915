"""Seconds to load MovieLens-100K (u.data, u.item, u.user, the seven fold files, checked line by line).

    python benchmarks/load.py [--data-dir DIR] [--item-text TSV] [--repeats 5]

The loader's timing claim lives here, not in a test: tests/test_data_loaders.py checks what is loaded.
Writes benchmarks/results/load.md. Last line: RESULT load_s_median=<s> load_s_min=<s> ratings=<n>
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from doppel.tasks.data import load_movielens
from support.output import RESULTS, add_data_options, log, provenance, result_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ds = load_movielens(args.data_dir, item_text=args.item_text)
        seconds.append(time.perf_counter() - start)
        log(f"loaded {len(ds.ratings):,} ratings, {len(ds.items):,} items, folds {ds.folds} in {seconds[-1]:.2f} s")
    median, best = statistics.median(seconds), min(seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.md").write_text(
        f"# MovieLens-100K load time\n\n{provenance()}\n\n"
        f"{args.repeats} loads of {args.data_dir} (item text: {args.item_text}): "
        f"median {median:.2f} s, min {best:.2f} s, all {', '.join(f'{s:.2f}' for s in seconds)} s\n"
    )
    print(result_line(load_s_median=median, load_s_min=best, ratings=len(ds.ratings)))


if __name__ == "__main__":
    main()
