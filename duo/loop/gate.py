"""The gate: whether a cycle's evaluation clears ε with the stated confidence (the lower bound of the
statistic, bootstrapped over test prompts, must reach it), how many test prompts a verdict that cannot
be decided would need, the cycle's standing against earlier ones on validation (regression, best cycle),
what happens next (one rule, used by the gate stage, `make cycle` and `duo status`), the verdict in one
sentence, and the cycle's service spend."""
from __future__ import annotations

import math
import random
from collections import defaultdict

RESAMPLES = 2000


def after(cycle: int, passed: bool, max_cycles: int, uncalibrated: str | None = None) -> tuple[str, str]:
    """What follows a finished cycle: (passed | uncalibrated | stopped | next, in words). `uncalibrated`:
    why the statistic cleared ε but the judge may not be trusted yet."""
    if uncalibrated:
        return "uncalibrated", (f"rate: the judge is uncalibrated ({uncalibrated}); rate test responses in `duo review` "
                                f"(Ratings tab), then `make cycle` re-evaluates cycle {cycle} (only rated responses "
                                f"the judge has not scored cost calls)")
    if passed:
        return "passed", f"deliver: the gate passed at cycle {cycle}; the best cycle's GGUF is the deliverable"
    if cycle + 1 >= max_cycles:
        return "stopped", f"stop: gate.max_cycles={max_cycles} reached without passing"
    return "next", f"run cycle {cycle + 1}: synthesize more data and retrain"


def _samples(judgments: list[dict], gate) -> dict[str, list[float]]:
    """Per test prompt, the values whose mean is the gate statistic: the judge score (mean), 100/0 per
    sample at or above ζ (c<ζ>), 100/0 per win (or win or tie) in pairwise mode."""
    out: dict[str, list[float]] = defaultdict(list)
    for j in judgments:
        if j.get("error") is not None or j.get("subject", "student") != "student":
            continue
        if gate.score == "pairwise":
            good = ("win",) if gate.statistic == "win" else ("win", "tie")
            value = 100.0 * (j.get("outcome") in good)
        elif gate.statistic == "mean":
            value = float(j[gate.score])
        else:
            value = 100.0 * (j[gate.score] >= int(gate.statistic[1:]))
        out[j["prompt_id"]].append(value)
    return out


def bounds(groups: dict[str, list[float]], confidence: float, seed: int = 0) -> tuple[float, list[float]]:
    """(one-sided lower bound at `confidence`, two-sided interval at `confidence`) of the mean, resampling
    prompts (a prompt's K x M samples are correlated; they move together)."""
    keys = sorted(groups)
    rng = random.Random(seed)
    means = []
    for _ in range(RESAMPLES):
        pick = [groups[keys[rng.randrange(len(keys))]] for _ in keys]
        means.append(sum(map(sum, pick)) / sum(map(len, pick)))
    means.sort()
    tail = (1 - confidence) / 2
    return (round(means[int((1 - confidence) * RESAMPLES)], 2),
            [round(means[int(tail * RESAMPLES)], 2), round(means[min(RESAMPLES - 1, int((1 - tail) * RESAMPLES))], 2)])


def calibration_check(eval_metrics: dict, gate) -> dict | None:
    """Whether people's ratings back the judge (None: gate.min_ratings is 0, the check is off): at least
    gate.min_ratings rated responses scored by the panel, and the panel's Spearman ρ with them at least
    gate.min_agreement."""
    if not gate.min_ratings:
        return None
    panel = ((eval_metrics.get("calibration") or {}).get("panel")) or {}
    n, rho = panel.get("n", 0), (panel.get("spearman") or {}).get("value")
    why = None
    if n < gate.min_ratings:
        why = f"{n} rated responses < gate.min_ratings {gate.min_ratings}"
    elif rho is None:
        why = f"Spearman ρ with the {n} ratings is undefined (give 1-100 scores that differ)"
    elif rho < gate.min_agreement:
        why = f"Spearman ρ {rho:+.2f} with {n} ratings < gate.min_agreement {gate.min_agreement:g}"
    return {"n": n, "spearman": rho, "min_ratings": gate.min_ratings, "min_agreement": gate.min_agreement,
            "calibrated": why is None, "why": why}


def verdict(eval_metrics: dict, gate, cycle: int, judgments: list[dict] = (), standing: dict | None = None) -> dict:
    block = eval_metrics.get(gate.score) or {}
    if gate.statistic == "win_or_tie":
        value = None if block.get("win") is None else block["win"] + block["tie"]
    else:
        value = block.get(gate.statistic)
    if value is not None and gate.statistic != "mean":
        value = round(100 * value, 2)  # C@ζ and win rates are shares; ε is given in percent
    groups = _samples(judgments, gate)
    lower, interval, needed = value, None, None
    if value is not None and gate.confidence and len(groups) >= 2:
        lower, interval = bounds(groups, gate.confidence)
    cleared = lower is not None and lower >= gate.threshold
    check = calibration_check(eval_metrics, gate)
    passed = cleared and (check is None or check["calibrated"])
    blocked = check["why"] if cleared and not passed else None  # cleared ε, but people have not backed the judge
    if value is not None and not cleared and value >= gate.threshold and value > lower:
        # the interval's half-width shrinks as 1/sqrt(n): rows for the lower bound to reach ε at this value
        needed = math.ceil(len(groups) * ((value - lower) / max(value - gate.threshold, 1e-9)) ** 2)
        needed = max(needed, len(groups) + 1)
    nxt = after(cycle, passed, gate.max_cycles, blocked)[1]
    best = standing["best_cycle"] if standing else cycle
    return {"cycle": cycle, "score": gate.score, "statistic": gate.statistic, "value": value,
            "confidence": gate.confidence, "lower": lower, "interval": interval, "prompts": len(groups),
            "threshold": gate.threshold, "passed": passed, "undecided": needed is not None,
            "prompts_needed": needed, "max_cycles": gate.max_cycles, "next": nxt, "best_cycle": best,
            "validation": standing, "calibration": check, "uncalibrated": blocked}


def sentence(v: dict) -> str:
    """The verdict in one line: what `make cycle`, the gate stage, `duo status` and the report say."""
    state = "PASSED" if v["passed"] else "not passed"
    stat = f"{v['score']} {v['statistic']} = {v['value']}"
    if v.get("interval"):
        stat += f" ({v['confidence']:.0%} lower bound {v['lower']}, interval {v['interval']}, {v['prompts']} prompts)"
    words = f"cycle {v['cycle']}: {stat} vs ε = {v['threshold']:g} -> {state}"
    check = v.get("calibration")
    if check and not check["calibrated"]:
        words += f" (uncalibrated judge: {check['why']})"
    elif check:
        words += f" (judge calibrated: Spearman ρ {check['spearman']:+.2f} with {check['n']} ratings)"
    if v.get("undecided"):
        words += (f" (undecided: {v['prompts']} test prompts are too few to decide at confidence "
                  f"{v['confidence']:g}; about {v['prompts_needed']} would be needed at this value)")
    standing = v.get("validation") or {}
    worse = standing.get("regression")
    if worse:
        words += (f"; REGRESSION on validation: task score {standing['task_score']} vs {worse['from_cycle']}'s "
                  f"{standing['task_score'] - worse['difference']:.2f} (difference 95% {worse['ci95']}"
                  f"{', beyond noise' if worse['beyond_noise'] else ', within noise'})")
    if standing and v.get("best_cycle") != v["cycle"]:
        words += f"; best cycle on validation: {v['best_cycle']}"
    return f"{words}; next: {v['next']}" if v.get("next") else words  # a cycle.json from before "next"


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

