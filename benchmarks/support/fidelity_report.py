"""The fidelity benchmark's output: the summary over folds, its Markdown table, the trade-off plot and
the sentences on the LLM's part."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from doppel.tasks.baselines import BASELINES

MARGIN_CF, MARGIN_LLM = "llm_margin:cf(cross-fit)", "llm_margin:cf+llm(cross-fit)"
# the calibrator with the LLM's answer (its distribution over 1..5 where the run stored one), with its
# answer as a certain rating (one-hot; only where distributions exist), and without the LLM
WITH_LLM, WITH_ANSWER, WITHOUT_LLM = "llm_input:with", "llm_input:with(answer only)", "llm_input:without"
# the seed's GPT-3.5 simulator as reported in issue 10 (not measured here): ranges over u1..u5
SEED_REPORTED = {"rmse": (1.30, 1.34), "tv": (0.13, 0.16)}


def summarize(per_fold: pd.DataFrame) -> pd.DataFrame:
    cols = ["rmse", "exact", "close", "tv", "tv_bucket"]
    g = per_fold.groupby("simulator", sort=False)[cols]
    mean, lo, hi = g.mean(), g.min(), g.max()
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[c] = mean[c]
        out[f"{c}_min"], out[f"{c}_max"] = lo[c], hi[c]
    out["folds"] = g.size()
    out["n_mean"] = per_fold.groupby("simulator", sort=False)["n"].mean()
    return out.reset_index()


def markdown(summary: pd.DataFrame) -> str:
    def cell(r, c, nd):
        return f"{r[c]:.{nd}f} ({r[c + '_min']:.{nd}f}-{r[c + '_max']:.{nd}f})"

    lines = ["| simulator | RMSE | exact % | close % | TV | TV worst bucket | folds |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r['simulator']} | {cell(r, 'rmse', 3)} | {cell(r, 'exact', 1)} | {cell(r, 'close', 1)} "
            f"| {cell(r, 'tv', 3)} | {cell(r, 'tv_bucket', 3)} | {int(r['folds'])} |"
        )
    return "\n".join(lines)


def plot(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary.set_index("simulator")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    curve = s[s.index.str.startswith("tradeoff:")]
    ax.plot(curve["tv"], curve["rmse"], "o-", color="tab:blue", label="hybrid trade-off (lam 0..1)")
    for name, label, marker in (
        ("hybrid:accuracy", "hybrid accuracy mode", "s"),
        ("hybrid:realism", "hybrid realism mode", "D"),
    ):
        if name in s.index:
            ax.errorbar(
                s.loc[name, "tv"],
                s.loc[name, "rmse"],
                xerr=[[s.loc[name, "tv"] - s.loc[name, "tv_min"]], [s.loc[name, "tv_max"] - s.loc[name, "tv"]]],
                yerr=[[s.loc[name, "rmse"] - s.loc[name, "rmse_min"]], [s.loc[name, "rmse_max"] - s.loc[name, "rmse"]]],
                fmt=marker,
                color="tab:blue",
                ms=8,
                capsize=3,
                label=label,
            )
    for name in BASELINES:
        key = f"baseline:{name}"
        if key in s.index:
            ax.plot(s.loc[key, "tv"], s.loc[key, "rmse"], "x", color="tab:gray", ms=8)
            ax.annotate(
                name, (s.loc[key, "tv"], s.loc[key, "rmse"]), textcoords="offset points", xytext=(5, 3), fontsize=8
            )
    if "decoder:calibrated_sampling" in s.index:
        ax.plot(
            s.loc["decoder:calibrated_sampling", "tv"],
            s.loc["decoder:calibrated_sampling", "rmse"],
            "^",
            color="tab:green",
            label="hybrid calibrated sampling",
        )
    if "llm" in s.index:
        ax.plot(s.loc["llm", "tv"], s.loc["llm", "rmse"], "*", color="tab:red", ms=12, label="LLM-only (this run)")
    (r0, r1), (t0, t1) = SEED_REPORTED["rmse"], SEED_REPORTED["tv"]
    ax.add_patch(
        plt.Rectangle(
            (t0, r0),
            t1 - t0,
            r1 - r0,
            color="tab:orange",
            alpha=0.4,
            label="seed GPT-3.5 (reported in issue 10, not measured)",
        )
    )
    ax.axhline(0.95, color="tab:purple", ls=":", lw=1)
    ax.axvline(0.05, color="tab:purple", ls=":", lw=1)
    ax.set_xlabel("rating-histogram TV distance to the real ratings (lower = more realistic)")
    ax.set_ylabel("RMSE of integer ratings (lower = more accurate)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gaps_text(gaps: dict[str, dict]) -> str:
    """'u1: rmse +0.010 [-0.020, +0.040], ...; u2: ...' for {fold: paired_gap(...)}."""
    return "; ".join(
        f"{fold}: " + ", ".join(f"{m} {v:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, (v, lo, hi) in g.items())
        for fold, g in gaps.items()
    )


def llm_summary(args, gaps: dict, input_gaps: dict, dist_gaps: dict) -> str:
    """The sentences on the LLM's part that head the table (95% bootstrap intervals over users)."""
    if not args.llm_run_id:
        return "LLM: absent (no --llm-run-id): every hybrid row uses CF and profile features only"
    text = f"LLM-only row: run {args.llm_run_id}. "
    if args.llm_slice_run_id:
        text += (
            f"The LLM as a calibrator input (slice run {args.llm_slice_run_id}: {WITH_LLM} vs {WITHOUT_LLM}, "
            f"the same hash slice, accuracy mode, with minus without): {gaps_text(input_gaps)}. "
        )
        text += (
            f"Its distribution over 1..5 (logprobs or draws) against its answer alone ({WITH_LLM} minus {WITH_ANSWER}): "
            f"{gaps_text(dist_gaps)}. "
            if dist_gaps
            else "The runs stored no rating distributions (no logprobs, no draws): the LLM input is its answer alone. "
        )
    else:
        text += "The hybrid rows' calibrator has no LLM input (give --llm-slice-run-id for that). "
    return text + (
        f"Cross-fitted over users ({MARGIN_CF} vs {MARGIN_LLM}, tasks/fidelity/llm_margin.py): "
        f"{gaps_text(gaps)} (cf+llm minus cf, 95% bootstrap interval over users)"
    )
