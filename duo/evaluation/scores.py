"""Judge replies in, scores out: strict parsing with bounded repair, and aggregation (V, C@zeta).

A score comes only from the judge's own JSON fields (`similarity_assessment.score`,
`precision_assessment.score`); a reply that cannot be read that way is a judge error, excluded
from every mean and counted, never a 0.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict

from duo.contracts import SCORES
from duo.replies import json_objects

FIELDS = {"similarity": "similarity_assessment", "precision": "precision_assessment"}

# JSON schema for providers that constrain output (llama.cpp grammar): enum, since llama.cpp
# does not enforce minimum/maximum.
_SCORE = {"type": "integer", "enum": list(range(1, 101))}
SCHEMA = {
    "type": "object",
    "properties": {
        FIELDS[s]: {"type": "object", "properties": {"score": _SCORE}, "required": ["score"]} for s in SCORES
    },
    "required": [FIELDS[s] for s in SCORES],
}


class JudgeParseError(ValueError):
    pass


def _score(obj: dict, score: str) -> float:
    block = obj.get(FIELDS[score])
    if not isinstance(block, dict) or "score" not in block:
        raise JudgeParseError(f"missing {FIELDS[score]}.score")
    value = block["score"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JudgeParseError(f"{score} score is not a number: {value!r}")
    if not 1 <= value <= 100:
        raise JudgeParseError(f"{score} score {value} outside 1-100")
    return float(value)


def parse_reply(text: str | None) -> dict:
    """Return {"similarity": x, "precision": y} or raise JudgeParseError."""
    if not text or not text.strip():
        raise JudgeParseError("empty reply")
    last = "no JSON object in reply"
    for obj in json_objects(text):
        try:
            return {s: _score(obj, s) for s in SCORES}
        except JudgeParseError as exc:
            last = str(exc)
    raise JudgeParseError(last)


def bootstrap_ci(groups: list[list[float]], resamples: int = 1000, seed: int = 0) -> list[float] | None:
    """95% interval of the mean, resampling prompts (not samples: the K x M samples of one prompt
    are correlated)."""
    if len(groups) < 2:
        return None
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        pick = [groups[rng.randrange(len(groups))] for _ in groups]
        total = sum(sum(g) for g in pick)
        means.append(total / sum(len(g) for g in pick))
    means.sort()
    return [round(means[int(0.025 * resamples)], 3), round(means[int(0.975 * resamples) - 1], 3)]


def _stats(rows: list[tuple[str, float]], zetas: list[int]) -> dict:
    """rows: (prompt_id, score) of valid samples."""
    values = [v for _, v in rows]
    if not values:
        return {"mean": None, "n": 0, **{f"c{z}": None for z in zetas}, "ci95": None}
    out = {"mean": round(sum(values) / len(values), 3), "n": len(values)}
    for z in zetas:
        out[f"c{z}"] = round(sum(v >= z for v in values) / len(values), 4)
    by_prompt = defaultdict(list)
    for pid, v in rows:
        by_prompt[pid].append(v)
    out["ci95"] = bootstrap_ci([by_prompt[k] for k in sorted(by_prompt)])
    return out


def aggregate(judgments: list[dict], tasks: dict[str, str], zetas: list[int]) -> dict:
    """V (mean) and C@zeta (share of samples >= zeta) per score, overall and per task."""
    valid = [j for j in judgments if j.get("error") is None]
    out: dict = {}
    for score in SCORES:
        out[score] = _stats([(j["prompt_id"], j[score]) for j in valid], zetas)
        by_task = defaultdict(list)
        for j in valid:
            by_task[tasks[j["prompt_id"]]].append((j["prompt_id"], j[score]))
        out[score]["by_task"] = {t: _stats(v, zetas) for t, v in sorted(by_task.items())}
    return out


PAIRWISE_SCHEMA = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}},
                   "required": ["winner"]}


def parse_pairwise(text: str | None) -> str:
    """'A', 'B' or 'tie' from the judge's own {"winner": ...} field, else JudgeParseError."""
    if not text or not text.strip():
        raise JudgeParseError("empty reply")
    for obj in json_objects(text):
        if "winner" in obj:
            value = str(obj["winner"]).strip()
            if value.upper() in ("A", "B"):
                return value.upper()
            if value.lower() == "tie":
                return "tie"
            raise JudgeParseError(f"winner {value!r} is not A, B or tie")
    raise JudgeParseError("no winner field in reply")


def pairwise_outcome(student_first: str, reference_first: str) -> str:
    """Combine the two position-swapped verdicts (student as A, then as B), as MT-Bench does:
    a win or a loss must hold in both orders; anything inconsistent is a tie."""
    as_a = {"A": "win", "B": "loss", "tie": "tie"}[student_first]
    as_b = {"B": "win", "A": "loss", "tie": "tie"}[reference_first]
    return as_a if as_a == as_b else "tie"


def pairwise_rates(outcomes: list[str]) -> dict:
    n = len(outcomes)
    if not n:
        return {"win": None, "tie": None, "loss": None, "n": 0}
    return {k: round(outcomes.count(k) / n, 4) for k in ("win", "tie", "loss")} | {"n": n}


def agreement(per_judge: dict[str, dict[tuple, float]]) -> dict:
    """Per pair of judges: mean absolute score difference on the samples both scored."""
    names, out = sorted(per_judge), {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = per_judge[a].keys() & per_judge[b].keys()
            if common:
                diff = sum(abs(per_judge[a][k] - per_judge[b][k]) for k in common) / len(common)
                out[f"{a} vs {b}"] = {"mean_abs_diff": round(diff, 3), "n": len(common)}
    return out
