"""The friendship graph: generated (ring lattice with seeded rewiring, Watts-Strogatz style) or loaded."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def generate(agent_ids: list[str], friends: int, seed: int, rewire: float = 0.3) -> list[tuple[str, str]]:
    """Undirected edges (a, b) with a < b: each agent linked to ~`friends` others, reproducible per seed."""
    n = len(agent_ids)
    if n < 2 or friends <= 0:
        return []
    rng = np.random.default_rng(seed)
    half = max(1, friends // 2)
    edges: set[tuple[int, int]] = set()
    for i in range(n):
        for k in range(1, half + 1):
            j = (i + k) % n
            if rng.random() < rewire:
                j = int(rng.integers(n))
            if j != i:
                edges.add((min(i, j), max(i, j)))
    if friends % 2:  # odd degree: one more seeded link per agent
        for i in range(n):
            j = int(rng.integers(n))
            if j != i:
                edges.add((min(i, j), max(i, j)))
    return sorted((agent_ids[a], agent_ids[b]) for a, b in edges)


def load(path: str | Path, agent_ids: list[str], user_to_agent: dict[str, str]) -> list[tuple[str, str]]:
    """Edges from a two-column CSV (agent ids like A03, or dataset user ids); a header row is allowed."""
    known = set(agent_ids)
    edges: set[tuple[str, str]] = set()
    with open(path, newline="") as handle:
        for n, row in enumerate(csv.reader(handle), start=1):
            if len(row) < 2 or not row[0].strip():
                continue
            a, b = (user_to_agent.get(x.strip(), x.strip()) for x in row[:2])
            if a not in known or b not in known:
                if n == 1 and a not in known and b not in known:
                    continue  # a header
                raise ValueError(f"{path}:{n}: {row[:2]} names no agent of this sandbox")
            if a != b:
                edges.add((min(a, b), max(a, b)))
    return sorted(edges)


def neighbours(edges: list[tuple[str, str]], agent_ids: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, set[str]] = {a: set() for a in agent_ids}
    for a, b in edges:
        out[a].add(b)
        out[b].add(a)
    return {a: tuple(sorted(f)) for a, f in out.items()}
