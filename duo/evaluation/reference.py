"""Judge-free reference metrics: ROUGE-L and exact match of each response against its reference."""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    return re.sub(r"[\s\.\!\?\"']+$", "", re.sub(r"\s+", " ", text))


def reference_metrics(preds: list[dict]) -> dict:
    """ROUGE-L F1 (x100) and exact match, overall and per task: deterministic, judge-free."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    by_task: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for pred in preds:
        rouge = scorer.score(pred["reference"], pred["response"])["rougeL"].fmeasure * 100
        by_task[pred["task"]].append((rouge, _norm(pred["reference"]) == _norm(pred["response"])))

    def summary(values):
        return {"rougeL": round(sum(v[0] for v in values) / len(values), 2),
                "exact_match": round(sum(v[1] for v in values) / len(values), 4), "n": len(values)}

    everything = [v for vals in by_task.values() for v in vals]
    return {**summary(everything), "by_task": {t: summary(v) for t, v in sorted(by_task.items())}}
