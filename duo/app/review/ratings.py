"""The review page's Ratings panel: a person rates judged test responses, so the judge can be checked
against people (duo/evaluation/calibration.py; the gate's gate.min_ratings and gate.min_agreement).

Where things live:
- what is rated: this cycle's student responses (data/predictions.jsonl) that the judge scored
  (data/judgments.jsonl), shown in a fixed random order (a hash of each response's key), so rating from
  the top is rating a random sample; responses rated in earlier cycles are listed too, to revise;
- the ratings: data/ratings.jsonl (duo/evaluation/ratings.py), rewritten atomically on every rating,
  one row per (conversation, response): a response seen again in a later cycle keeps its rating.

The judge's score of a response is shown only once it is rated, so it cannot anchor the rating.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from duo import contracts
from duo.data import chat, records
from duo.evaluation import calibration, ratings as ratings_mod

FILTERS = ("unrated", "rated", "")


def judged(predictions: Path, judgments: Path) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """(the judged student responses, {judge: {key: mean precision}}) of the current cycle."""
    if not predictions.exists() or not judgments.exists():
        return [], {}
    preds = records.read_records(predictions, contracts.PREDICTION_FIELDS, allow_blank=True)
    rows = records.read_records(judgments, {"prompt_id": str}, allow_empty=True)
    keys = {(p["prompt_id"], p["sample_idx"]): ratings_mod.key(p) for p in preds}
    scores = calibration.judge_scores(rows, keys)
    scored = set().union(*(s.keys() for s in scores.values())) if scores else set()
    return [p for p in preds if keys[(p["prompt_id"], p["sample_idx"])] in scored], scores


def _order(key: str) -> str:
    return hashlib.sha256(f"sample:{key}".encode()).hexdigest()


class Ratings:
    """The panel's state and actions (thread-safe: the server handles requests in threads)."""

    name, title = "ratings", "Ratings"

    def __init__(self, path: Path = contracts.RATINGS, predictions: Path = contracts.PREDICTIONS,
                 judgments: Path = contracts.JUDGMENTS, zetas: list[int] | None = None):
        self.path = path
        self.zetas = list(zetas or [50, 70])
        self._lock = threading.Lock()
        self.ratings = ratings_mod.read(path)  # a bad line stops here (file:line), never rewritten away
        preds, self.scores = judged(predictions, judgments)
        items: dict[str, dict] = {}
        for p in preds:  # K samples of one prompt may say the same thing: one rating covers them all
            items.setdefault(ratings_mod.key(p), p)
        for key, row in self.ratings.items():
            items.setdefault(key, row)  # rated in an earlier cycle: shown to revise
        self.items = dict(sorted(items.items(), key=lambda kv: _order(kv[0])))
        self.current = {ratings_mod.key(p) for p in preds}

    def _judge(self, key: str) -> float | None:
        values = [s[key] for s in self.scores.values() if key in s]
        return round(sum(values) / len(values), 1) if values else None

    def view(self, key: str) -> dict:
        item, rating = self.items[key], self.ratings.get(key)
        return {"key": key, "task": item["task"], "prompt_id": item["prompt_id"], "messages": chat.messages(item),
                "reference": item["reference"], "response": item["response"], "cycle": item.get("cycle"),
                "current": key in self.current, "rated": rating is not None,
                "score": rating and rating.get("score"), "verdict": rating and rating.get("verdict"),
                "zeta": rating and rating.get("zeta"),
                "judge": self._judge(key) if rating else None}  # shown after rating only: no anchoring

    def list(self, query: dict) -> dict:
        """`filter`: unrated | rated | "" (all); `offset`/`limit` page through them."""
        wanted = query.get("filter", "unrated")
        if wanted not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(f or 'all' for f in FILTERS)}")
        offset, limit = int(query.get("offset") or 0), min(200, int(query.get("limit") or 20))
        with self._lock:
            keys = [k for k in self.items if not wanted or (k in self.ratings) == (wanted == "rated")]
            items = [self.view(k) for k in keys[offset:offset + limit]]
            rated = {k: r for k, r in self.ratings.items() if k in self.items}
            agreement = calibration.agreement(rated, calibration.pooled(self.scores), self.zetas, resamples=0) \
                if rated and self.scores else None  # the live line: no intervals, an answer per click stays quick
        return {"total": len(keys), "items": items, "zetas": self.zetas, "ratings": str(self.path),
                "counts": {"rated": len(rated), "unrated": len(self.items) - len(rated),
                           "judged": len(self.current)},
                "agreement": agreement}

    def rate(self, body: dict) -> dict:
        """Rate a response: {"key", "score": 1-100} or {"key", "verdict": pass|fail, "zeta"}; {"key",
        "clear": true} removes its rating."""
        key = body.get("key")
        if key not in self.items:
            raise ValueError(f"no judged response {key!r}")
        with self._lock:
            ratings = dict(self.ratings)
            if body.get("clear"):
                ratings.pop(key, None)
            else:
                score = body.get("score")
                if isinstance(score, str) and score.strip().isdigit():
                    score = int(score)
                zeta = body.get("zeta")
                if zeta is not None and zeta not in self.zetas:
                    raise ValueError(f"zeta {zeta!r} is not one of judge.zetas {self.zetas}")
                item = self.items[key]
                ratings[key] = ratings_mod.rating_row(item, score=score, verdict=body.get("verdict"), zeta=zeta,
                                                      cycle=item.get("cycle"))
            ratings_mod.write(self.path, ratings)
            self.ratings = ratings
            return self.view(key)

    def actions(self) -> dict:
        return {"list": self.list, "rate": self.rate}


def from_project(params_path: Path = Path("params.yaml")) -> Ratings:
    """The panel for the project in the current directory (ζ from judge.zetas when params.yaml exists)."""
    from duo import params as params_mod

    zetas = params_mod.load(params_path).judge.zetas if params_path.exists() else None
    return Ratings(zetas=zetas)


def count_line(panel: Ratings) -> str:
    counts = panel.list({"filter": ""})["counts"]
    return (f"review: {counts['judged']} judged test responses to rate, {counts['rated']} rated -> {panel.path}"
            if panel.items else f"review: no judged test responses to rate yet (run a cycle; ratings -> {panel.path})")

