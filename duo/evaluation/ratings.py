"""People's ratings of judged test responses (`duo review`, Ratings tab): data/ratings.jsonl.

A row holds everything a judge needs to score the response again (the conversation, the reference, the
response, and the prompt id and sample index its judge requests were seeded with) plus the person's
rating: either `score`, 1-100 on the judge's precision scale, or `verdict` "pass"/"fail" at one ζ
(`zeta`). Rows are keyed by a hash of the conversation and the response (`key`): a rating outlives the
cycle that showed it, a new split that renumbers prompts, and a change of judge or judge prompt.
One row per key; the file is rewritten atomically on every rating.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from duo.data import chat, records

FIELDS = {"key": str, "prompt_id": str, "sample_idx": int, "task": str, "prompt": str, "reference": str,
          "response": str}
VERDICTS = ("pass", "fail")


def key(row: dict) -> str:
    """16 hex of a hash of the conversation (as the judge reads it) and the response."""
    ident = json.dumps([chat.transcript(row), row["response"]], ensure_ascii=False)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _whole(value, lo: int = 1, hi: int = 100) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def problem(row: dict) -> str | None:
    """Why a rating row is unusable (None: it is fine)."""
    has_score, has_verdict = row.get("score") is not None, row.get("verdict") is not None
    if has_score == has_verdict:
        return "a rating holds either 'score' (1-100) or 'verdict' (pass/fail at 'zeta'), exactly one"
    if has_score and not _whole(row["score"]):
        return f"score must be a whole number 1-100, got {row['score']!r}"
    if has_verdict and (row["verdict"] not in VERDICTS or not _whole(row.get("zeta"))):
        return f"verdict must be pass or fail with a whole 'zeta' 1-100, got {row['verdict']!r} at {row.get('zeta')!r}"
    if row["key"] != key(row):
        return f"key {row['key']!r} is not the hash of this row's conversation and response ({key(row)})"
    return None


def read(path: str | Path) -> dict[str, dict]:
    """{key: rating row}; a missing file is no ratings, a bad line stops with `file:line: reason`."""
    path = Path(path)
    if not path.exists():
        return {}
    rows = records.read_records(path, FIELDS, unique="key", allow_empty=True, allow_blank=True, check=problem)
    return {r["key"]: r for r in rows}


def rating_row(pred: dict, *, score: int | None = None, verdict: str | None = None, zeta: int | None = None,
               cycle: int | None = None) -> dict:
    """A rating of a prediction row (its conversation, reference and response kept beside the rating)."""
    row = {"key": key(pred), "prompt_id": pred["prompt_id"], "sample_idx": pred["sample_idx"], "task": pred["task"],
           "prompt": pred["prompt"], **chat.context_of(pred), "reference": pred["reference"],
           "response": pred["response"], "score": score, "verdict": verdict, "zeta": zeta if verdict else None,
           "cycle": cycle, "at": round(time.time(), 3)}
    why = problem(row)
    if why:
        raise ValueError(why)
    return row


def write(path: str | Path, ratings: dict[str, dict]) -> None:
    """The whole file, atomically, in the order the ratings were given."""
    records.write_jsonl(path, sorted(ratings.values(), key=lambda r: (r.get("at") or 0, r["key"])))


def human_label(row: dict, zeta: int) -> bool | None:
    """The person's pass (True) or fail at ζ: a score at or above ζ, or a verdict given at this ζ."""
    if row.get("score") is not None:
        return row["score"] >= zeta
    if row.get("zeta") == zeta:
        return row["verdict"] == "pass"
    return None
