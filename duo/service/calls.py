"""What one provider call is: the request (and its journal key), the reply, and the counters a stage
reports."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass
class Request:
    messages: list
    sample_idx: int = 0
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int | None = None
    response_format: dict | None = None
    attempt: int = 0  # a re-ask after an unusable reply is a different request
    # Who asks, e.g. "synth:c3:d17" (cycle 3, draw 17): part of the key, never sent. Two draws that
    # render the same prompt stay two paid replies, and a cycle never replays another cycle's draws.
    tag: str = ""

    def body(self, model: str) -> dict:
        return {"model": model, "messages": self.messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.seed, "response_format": self.response_format}

    def key(self, model: str) -> str:
        ident = {"body": self.body(model), "sample_idx": self.sample_idx, "attempt": self.attempt}
        if self.tag:
            ident["tag"] = self.tag
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def token_estimate(self) -> int:
        return sum(len(str(m.get("content", ""))) for m in self.messages) // 4 + self.max_tokens


@dataclass
class Reply:
    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    cached: bool = False
    cycle: int | None = None  # the cycle that paid for it (journal replays carry the original's)


@dataclass
class Stats:
    """One Service's counters. Tokens and cost are the work this stage used in this cycle: fresh calls
    plus journal replays paid earlier in the same cycle (a resumed stage reports what an uninterrupted
    one would). Replays paid in an earlier cycle (`reused`) cost this cycle nothing."""
    calls: int = 0            # requests sent to the provider, retries included
    cached: int = 0           # answered from the journal
    reused: int = 0           # of those, paid in an earlier cycle
    failed: int = 0           # requests that ended without a reply
    retries: int = 0
    overflows: int = 0        # context-window overflows (truncated or skipped)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    paid_now_usd: float | None = 0.0  # of cost_usd, spent by this process (not replayed)
    max_in_flight: int = 0
    batches: int = 0          # provider batch jobs this process submitted or resumed

    def add(self, reply: Reply, fresh: bool) -> None:
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.cost_usd = _plus(self.cost_usd, reply.cost_usd)
        if fresh:
            self.paid_now_usd = _plus(self.paid_now_usd, reply.cost_usd)

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("calls", "cached", "reused", "failed", "retries", "overflows",
                                             "prompt_tokens", "completion_tokens", "cost_usd", "paid_now_usd",
                                             "max_in_flight", "batches")}
        for k in ("cost_usd", "paid_now_usd"):
            if out[k] is not None:
                out[k] = round(out[k], 6)
        return out


def _plus(total: float | None, cost: float | None) -> float | None:
    """An unknown price makes the total unknown, not smaller."""
    return None if total is None or cost is None else total + cost
