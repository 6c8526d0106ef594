"""Judge replies in, scores out: strict parsing with bounded repair, and aggregation (V, C@zeta).

A score comes only from the judge's own JSON fields (`similarity_assessment.score`,
`precision_assessment.score`); a reply that cannot be read that way is a judge error, excluded
from every mean and counted, never a 0.
"""
from __future__ import annotations

import ast
import json
import math
import re
from collections import defaultdict

SCORES = ("similarity", "precision")
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


def _objects(text: str):
    """Every top-level {...} JSON object in the text, last first: a judge's verdict comes after
    any text it echoes."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            _, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        found.append(text[i:end])
        i = end
    return reversed(found)


def _candidates(text: str):
    """The reply itself, then the body of a code fence, then each embedded object, last first."""
    yield text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        yield fence.group(1).strip()
    yield from _objects(text)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        yield text[start:end + 1]


def _load(candidate: str):
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    repaired = re.sub(r",\s*([}\]])", r"\1", candidate)  # trailing commas
    try:
        return json.loads(repaired)
    except json.JSONDecodeError:
        pass
    try:  # single quotes: a Python literal, parsed safely (no evaluation)
        return ast.literal_eval(repaired)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


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
    for candidate in _candidates(text):
        obj = _load(candidate)
        if not isinstance(obj, dict):
            continue
        try:
            return {s: _score(obj, s) for s in SCORES}
        except JudgeParseError as exc:
            last = str(exc)
    raise JudgeParseError(last)


def _stats(values: list[float], zetas: list[int]) -> dict:
    if not values:
        return {"mean": None, "n": 0, **{f"c{z}": None for z in zetas}}
    out = {"mean": round(sum(values) / len(values), 3), "n": len(values)}
    for z in zetas:
        out[f"c{z}"] = round(sum(v >= z for v in values) / len(values), 4)
    return out


def aggregate(judgments: list[dict], tasks: dict[str, str], zetas: list[int]) -> dict:
    """V (mean) and C@zeta (share of samples >= zeta) per score, overall and per task."""
    valid = [j for j in judgments if j.get("error") is None]
    out: dict = {}
    for score in SCORES:
        out[score] = _stats([j[score] for j in valid], zetas)
        by_task = defaultdict(list)
        for j in valid:
            by_task[tasks[j["prompt_id"]]].append(j[score])
        out[score]["by_task"] = {t: _stats(v, zetas) for t, v in sorted(by_task.items())}
    return out
