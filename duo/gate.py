"""The gate: compare the chosen statistic of a cycle's evaluation with ε, say what happens next (one
rule, used by the gate stage, `make cycle` and `duo status`), and sum the cycle's service spend."""
from __future__ import annotations

from duo import contracts


def after(cycle: int, passed: bool, max_cycles: int) -> tuple[str, str]:
    """What follows a finished cycle: (passed | stopped | next, in words)."""
    if passed:
        return "passed", f"deliver: the gate passed at cycle {cycle}; {contracts.GGUF} is the deliverable"
    if cycle + 1 >= max_cycles:
        return "stopped", f"stop: gate.max_cycles={max_cycles} reached without passing"
    return "next", f"run cycle {cycle + 1}: synthesize more data and retrain"


def verdict(eval_metrics: dict, gate, cycle: int) -> dict:
    block = eval_metrics.get(gate.score) or {}
    if gate.statistic == "win_or_tie":
        value = None if block.get("win") is None else block["win"] + block["tie"]
    else:
        value = block.get(gate.statistic)
    if value is not None and gate.statistic != "mean":
        value = round(100 * value, 2)  # C@ζ and win rates are shares; ε is given in percent
    passed = value is not None and value >= gate.threshold
    nxt = after(cycle, passed, gate.max_cycles)[1]
    return {"cycle": cycle, "score": gate.score, "statistic": gate.statistic, "value": value,
            "threshold": gate.threshold, "passed": passed, "max_cycles": gate.max_cycles, "next": nxt}


def cost(synth: dict | None, eval_metrics: dict, cycle: int) -> dict:
    """Tokens and USD per stage and for the cycle (None = a price litellm does not know)."""
    stages = {}
    if synth and synth.get("service"):
        stages["synthesize"] = synth["service"]
    for name, stats in (eval_metrics.get("judge", {}).get("calls") or {}).items():
        stages[f"evaluate:{name}"] = stats
    costs = [s.get("cost_usd") for s in stages.values()]
    return {"cycle": cycle, "stages": stages,
            "prompt_tokens": sum(s.get("prompt_tokens", 0) for s in stages.values()),
            "completion_tokens": sum(s.get("completion_tokens", 0) for s in stages.values()),
            "cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6)}
