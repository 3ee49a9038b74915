"""llama.cpp's own rates on this machine: the ceiling every embedded figure is divided by.

The embedded server doppel starts (xllamacpp, the default model), asked directly over HTTP with no
doppel in between: prompt tokens/s (P distinct ~rating-sized prompts at once, one token generated,
prompt cache off) and generated tokens/s (P short prompts at once, a fixed number of tokens each,
end-of-sequence ignored) at P = 1, 2, 4 parallel sequences, each on a server started with P slots.
Aggregate rate = tokens of all P sequences / wall of the round; the median of `rounds` rounds.
At P = 1 also the generated tokens/s with the top TOP_LOGPROBS alternatives of every token (llama.cpp's
`n_probs`), as doppel's rating calls ask for them (the ideal still uses the plain rate).
"""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _provenance
import httpx

from doppel.tasks.llm.embedded import EmbeddedServer
from doppel.tasks.llm.gateway import TOP_LOGPROBS

FILLER = (
    "Toy Story (1995) | Animation, Children's, Comedy | A cowboy doll is profoundly threatened and jealous when a "
    "new spaceman figure supplants him as top toy in a boy's room. "
)


def _post(url: str, body: dict) -> dict:
    return httpx.post(url, json=body, timeout=900).json()


def _round(server: EmbeddedServer, bodies: list[dict]) -> tuple[float, list[dict]]:
    url = server.address + "/completion"
    started = time.monotonic()
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: _post(url, b), bodies))
    return time.monotonic() - started, answers


def measure(server: EmbeddedServer, parallel: int, prompt_tokens: int = 700, gen_tokens: int = 32, rounds: int = 3):
    """{prompt_tps, gen_tps} aggregate over `parallel` sequences (median of `rounds`)."""
    repeat = max(1, prompt_tokens // 40)  # FILLER is ~40 tokens
    prompt_rates: list[float] = []
    gen_rates: list[float] = []
    logprob_rates: list[float] = []
    for _ in range(rounds):
        # distinct first tokens: no sequence reuses another's prompt cache
        bodies = [
            {
                "prompt": f"Session {secrets.token_hex(6)}.\n" + FILLER * repeat,
                "n_predict": 1,
                "cache_prompt": False,
                "temperature": 0,
            }
            for _ in range(parallel)
        ]
        wall, answers = _round(server, bodies)
        prompt_rates.append(sum(a["timings"]["prompt_n"] for a in answers) / wall)
        bodies = [
            {
                "prompt": f"Session {secrets.token_hex(6)}. Write a long review of a movie:",
                "n_predict": gen_tokens,
                "ignore_eos": True,
                "cache_prompt": False,
                "temperature": 0,
            }
            for _ in range(parallel)
        ]
        gen_rates.append(_gen_rate(server, bodies, prompt_rates[-1]))
        if parallel == 1:  # what doppel's rating calls add: the top alternatives of every answer token
            logprob_rates.append(_gen_rate(server, [{**b, "n_probs": TOP_LOGPROBS} for b in bodies], prompt_rates[-1]))
    rates = {"prompt_tps": statistics.median(prompt_rates), "gen_tps": statistics.median(gen_rates)}
    if logprob_rates:
        rates["gen_logprobs_tps"] = statistics.median(logprob_rates)
    return rates


def _gen_rate(server: EmbeddedServer, bodies: list[dict], prompt_tps: float) -> float:
    """Generated tokens/s of one round of `bodies`."""
    wall, answers = _round(server, bodies)
    # the short prompts' evaluation is inside the wall: subtract it at the measured prompt rate
    prompt_n = sum(a["timings"]["prompt_n"] for a in answers)
    gen_wall = max(1e-6, wall - prompt_n / prompt_tps)
    return sum(a["timings"]["predicted_n"] for a in answers) / gen_wall


def ceiling(model: str, parallels: tuple[int, ...] = (1, 2, 4), rounds: int = 3, log=print) -> dict[int, dict]:
    """{P: {prompt_tps, gen_tps}}: each P on a fresh server with P slots."""
    out = {}
    for parallel in parallels:
        with EmbeddedServer.from_model(model, slots=parallel) as server:
            _round(server, [{"prompt": "warm up", "n_predict": 4}])
            out[parallel] = measure(server, parallel, rounds=rounds)
        log(
            f"  llama.cpp alone, {parallel} parallel sequence(s): prompt {out[parallel]['prompt_tps']:.0f} tok/s, "
            f"generation {out[parallel]['gen_tps']:.1f} tok/s (aggregate)"
        )
    return out


def ideal_seconds(prompt_tokens: float, gen_tokens: float, rates: dict) -> float:
    """Wall of evaluating and generating these tokens at llama.cpp's own best rates."""
    prompt_tps = max(r["prompt_tps"] for r in rates.values())
    gen_tps = max(r["gen_tps"] for r in rates.values())
    return prompt_tokens / prompt_tps + gen_tokens / gen_tps


def write(out: Path, head: str, lines: list[str]) -> None:
    """The results file: `head`, `lines` and the load average at the end; the lines are printed too."""
    lines = [*lines, "", f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def header(title: str, model: str) -> str:
    """The results file's first lines: date, command, commit (`_provenance`'s), machine (cores, model), its load."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"# {title}\n\n"
        f"- date: {_provenance.STARTED:%Y-%m-%d %H:%M} UTC\n"
        f"- command: `{_provenance.command()}`\n"
        f"- commit: {_provenance.COMMIT}\n"
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; model {model}\n"
        f"- load average (1, 5, 15 min) at start: {load} (the machine is shared; 2 cores)\n"
    )
