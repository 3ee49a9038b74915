"""The test server's options: latency, a server-side concurrency cap, fault rates and how it poses
(json_schema/logprobs support, llama.cpp, several models). Changed at run time through ``update``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .llm_faults import FAULTS, check_rates


@dataclass
class ServerOptions:
    latency: float = 0.0  # seconds per chat request (inside the concurrency slot)
    max_concurrency: int | None = None  # requests beyond it wait; None/0 = unlimited
    seed: int = 0
    retry_after: float = 1.0  # Retry-After of the 429 fault
    hang_seconds: float = 120.0  # the hang fault answers after this (or when the client leaves)
    trickle_seconds: float = 3.0  # the trickle fault spreads its body over this
    model: str = "doppel-test-model"  # listed by /v1/models; answers echo the request's model
    reject_json_schema: bool = False  # act like a server without json_schema support (HTTP 400)
    logprobs: bool = True  # answer token logprobs when asked (False: ignore the request, as some servers do)
    reject_logprobs: bool = False  # reject requests asking for logprobs (HTTP 400), as some models do
    llama_cpp: bool = False  # pose as llama.cpp: GET /props answers, `model` (a .gguf path) served under any name
    other_models: str = ""  # comma list listed beside `model`; then an unlisted model gets 404, as vLLM answers
    faults: dict[str, float] = field(default_factory=dict)  # {fault name: rate in [0, 1]}

    def update(self, **changes: Any) -> None:
        """Apply changes: option names, fault rates by name (``http_500=0.1``: the others stay), or
        ``faults={...}``: the whole fault map (faults not named there drop to 0)."""
        base = self.faults if changes.get("faults") is None else {}
        changes = {**(changes.pop("faults", None) or {}), **changes}
        rates = check_rates({k: v for k, v in changes.items() if k in FAULTS})
        settings = {k: v for k, v in changes.items() if k not in FAULTS}
        names = {f.name for f in fields(self)} - {"faults"}
        if unknown := set(settings) - names:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(names)} and {FAULTS}")
        for name, value in settings.items():
            if name in ("model", "other_models"):
                value = str(value)
            elif name in ("seed", "max_concurrency"):
                value = int(value) if value else (0 if name == "seed" else None)
            else:
                value = float(value)
            if name not in ("model", "other_models") and value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            setattr(self, name, value)
        self.faults = {**base, **rates}

    def listed_models(self) -> list[str]:
        return [self.model, *[m.strip() for m in self.other_models.split(",") if m.strip()]]

    def as_dict(self) -> dict:
        flat = {k: v for k, v in asdict(self).items() if k != "faults"}
        return {**flat, **{f: self.faults.get(f, 0.0) for f in FAULTS}}
