"""Judge-free reference metrics: ROUGE-L and exact match of each response against its reference, and the
*task score*: per task the metric that fits its answers (exact match where they are short answers —
labels, names, numbers —, ROUGE-L otherwise), averaged per task and then over tasks, so a task with many
rows does not drown the others. Bootstrap intervals resample prompts within each task."""
from __future__ import annotations

import random
import re
import unicodedata
from collections import defaultdict

SHORT_ANSWER_WORDS = 5  # a task whose answers are this short (90% of them) is scored by exact match
EXACT, ROUGE = "exact_match", "rougeL"


def normalise_answer(text: str) -> str:
    """Case, spacing and trailing punctuation insensitive form of an answer."""
    text = unicodedata.normalize("NFKC", text).lower().strip()
    return re.sub(r"[\s\.\!\?\"']+$", "", re.sub(r"\s+", " ", text))


def metric_for(references: list[str]) -> str:
    """exact_match when at least 90% of a task's references are short answers, else rougeL."""
    short = sum(len(r.split()) <= SHORT_ANSWER_WORDS for r in references)
    return EXACT if references and short >= 0.9 * len(references) else ROUGE


def task_metrics(rows: list[dict], field: str = "response") -> dict[str, str]:
    by_task: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row[field])
    return {task: metric_for(refs) for task, refs in sorted(by_task.items())}


_SCORER = None


def _rouge_l(reference: str, response: str) -> float:
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER.score(reference, response)["rougeL"].fmeasure * 100


def reference_metrics(preds: list[dict]) -> dict:
    """ROUGE-L F1 (x100), exact match and the task score, overall and per task: deterministic, judge-free."""
    by_task: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for pred in preds:
        by_task[pred["task"]].append((_rouge_l(pred["reference"], pred["response"]),
                                      normalise_answer(pred["reference"]) == normalise_answer(pred["response"])))

    def summary(values):
        return {"rougeL": round(sum(v[0] for v in values) / len(values), 2),
                "exact_match": round(sum(v[1] for v in values) / len(values), 4), "n": len(values)}

    everything = [v for vals in by_task.values() for v in vals]
    fitted = task_score(prompt_scores(preds))
    return {**summary(everything), "task_score": fitted["task_score"],
            "by_task": {t: summary(v) | fitted["by_task"][t] for t, v in sorted(by_task.items())}}


def prompt_scores(preds: list[dict], metrics: dict[str, str] | None = None) -> dict[str, tuple[str, str, float]]:
    """{prompt_id: (task, metric, score 0-100)}: each prediction scored by its task's metric (from the
    references themselves unless given), the K samples of a prompt averaged."""
    metrics = metrics or task_metrics(preds, "reference")
    sums: dict[str, list] = {}
    for pred in preds:
        metric = metrics.get(pred["task"]) or metric_for([pred["reference"]])
        if metric == EXACT:
            value = 100.0 * (normalise_answer(pred["reference"]) == normalise_answer(pred["response"]))
        else:
            value = _rouge_l(pred["reference"], pred["response"])
        entry = sums.setdefault(pred["prompt_id"], [pred["task"], metric, 0.0, 0])
        entry[2] += value
        entry[3] += 1
    return {pid: (task, metric, total / n) for pid, (task, metric, total, n) in sums.items()}


def task_score(scores: dict[str, tuple[str, str, float]]) -> dict:
    """{"task_score": mean over tasks of each task's mean, "by_task": {task: {"metric", "score", "n"}}}."""
    by_task: dict[str, list[float]] = defaultdict(list)
    metric: dict[str, str] = {}
    for task, m, value in scores.values():
        by_task[task].append(value)
        metric[task] = m
    per = {t: {"metric": metric[t], "score": round(sum(v) / len(v), 2), "n": len(v)} for t, v in sorted(by_task.items())}
    overall = round(sum(p["score"] for p in per.values()) / len(per), 2) if per else None
    return {"task_score": overall, "by_task": per}


def _mean_of_task_means(groups: dict[str, list[float]]) -> float:
    return sum(sum(v) / len(v) for v in groups.values()) / len(groups)


def bootstrap(scores: dict[str, tuple[str, str, float]], baseline: dict | None = None, *, level: float = 0.95,
              resamples: int = 2000, seed: int = 0, one_sided: bool = False) -> list[float] | None:
    """Interval of the task score (or, with `baseline`, of the paired difference scores - baseline over
    the prompts both have), resampling prompts within each task. Two-sided at `level` ([low, high]), or
    with `one_sided` the lower bound at `level` and the observed value ([low, value])."""
    ids = sorted(scores if baseline is None else scores.keys() & baseline.keys())
    if len(ids) < 2:
        return None
    by_task: dict[str, list[float]] = defaultdict(list)
    for pid in ids:
        diff = scores[pid][2] - (baseline[pid][2] if baseline is not None else 0.0)
        by_task[scores[pid][0]].append(diff)
    rng = random.Random(seed)
    draws = sorted(_mean_of_task_means({t: [v[rng.randrange(len(v))] for _ in v] for t, v in by_task.items()})
                   for _ in range(resamples))
    if one_sided:
        return [round(draws[int((1 - level) * resamples)], 2), round(_mean_of_task_means(by_task), 2)]
    return _two_sided(draws, level, 2)


def _two_sided(draws: list[float], level: float, digits: int) -> list[float]:
    """Percentile interval at `level` of sorted bootstrap draws."""
    tail, n = (1 - level) / 2, len(draws)
    return [round(draws[int(tail * n)], digits), round(draws[min(n - 1, int((1 - tail) * n))], digits)]


def bootstrap_statistic(n: int, statistic, *, level: float = 0.95, resamples: int = 2000, seed: int = 0,
                        digits: int = 3) -> list[float] | None:
    """Two-sided interval at `level` of any statistic of n items (a correlation, an agreement):
    `statistic(indices)` on resamples of the n indices with replacement; a draw where the statistic is
    undefined (None, e.g. every pick alike) is left out, and with fewer than half the draws defined
    there is no interval."""
    if n < 2:
        return None
    rng = random.Random(seed)
    draws = [statistic([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)]
    draws = sorted(d for d in draws if d is not None)
    return _two_sided(draws, level, digits) if len(draws) >= resamples / 2 else None
