"""Each cycle's student scored on the validation split (never test), from the GGUF that ships: greedy
answers, the task score per row (duo/evaluation/reference.py). Kept per cycle in data/validation/, it is
what the loop steers by: synthesis aims at the rows the last student got wrong (synth.focus: failures), a
cycle worse than the best earlier one is a regression, and the best cycle's GGUF is the one delivered."""
from __future__ import annotations

from pathlib import Path

from duo import contracts
from duo.data import records
from duo.evaluation import reference


def score(preds: list[dict], train: list[dict]) -> tuple[list[dict], dict]:
    """Per-row scores (each task by the metric its train answers call for) and the summary with a 95%
    interval of the task score."""
    scores = reference.prompt_scores(preds, reference.task_metrics(train))
    rows = [{"id": pred["prompt_id"], "task": pred["task"], "metric": scores[pred["prompt_id"]][1],
             "score": round(scores[pred["prompt_id"]][2], 2), "response": pred["response"]} for pred in preds]
    summary = reference.task_score(scores) | {"ci95": reference.bootstrap(scores), "n": len(rows)}
    return rows, summary


def load(cycle: int, folder: Path = contracts.VALIDATION_DIR) -> dict | None:
    """{"summary", "scores": {id: (task, metric, score)}} of a finished cycle, or None."""
    summary = records.read_json(contracts.validation_summary(cycle, folder), default=None)
    rows_path = contracts.validation_file(cycle, folder)
    if summary is None or not rows_path.exists():
        return None
    rows = records.read_records(rows_path, {"id": str, "task": str, "metric": str}, allow_empty=True)
    return {"summary": summary, "scores": {r["id"]: (r["task"], r["metric"], float(r["score"])) for r in rows}}


def failures(cycle: int, folder: Path = contracts.VALIDATION_DIR) -> list[dict] | None:
    """The validation rows cycle `cycle`'s student answered worse than fully right, with their score
    (0-100), for synthesis to aim at; None when that cycle has no validation record."""
    found = load(cycle, folder)
    if found is None:
        return None
    return [{"id": pid, "task": task, "score": value} for pid, (task, _, value) in sorted(found["scores"].items())
            if value < 100.0]


def standing(cycle: int, folder: Path = contracts.VALIDATION_DIR) -> dict | None:
    """This cycle against the earlier ones on the same validation rows: the best cycle so far (the
    highest task score; the later one on a tie), and whether this cycle regressed from the best earlier
    one, with the 95% interval of the paired difference."""
    now = load(cycle, folder)
    if now is None:
        return None
    history = {t: found for t in range(cycle + 1) if (found := (now if t == cycle else load(t, folder)))}
    comparable = {t: h for t, h in history.items() if h["scores"].keys() == now["scores"].keys()}
    best = max(comparable, key=lambda t: (comparable[t]["summary"]["task_score"], t))
    earlier = [t for t in comparable if t < cycle]
    out = {"cycle": cycle, "task_score": now["summary"]["task_score"], "best_cycle": best,
           "best_task_score": comparable[best]["summary"]["task_score"],
           "by_cycle": {str(t): h["summary"]["task_score"] for t, h in sorted(history.items())},
           "gguf_md5": {str(t): h["summary"].get("gguf_md5") for t, h in sorted(history.items())},
           "card_md5": {str(t): h["summary"].get("card_md5") for t, h in sorted(history.items())},
           "regression": None}
    if earlier:
        prior = max(earlier, key=lambda t: (comparable[t]["summary"]["task_score"], t))
        diff = now["summary"]["task_score"] - comparable[prior]["summary"]["task_score"]
        if diff < 0:
            ci = reference.bootstrap(now["scores"], comparable[prior]["scores"])
            out["regression"] = {"from_cycle": prior, "difference": round(diff, 2), "ci95": ci,
                                 "beyond_noise": bool(ci and ci[1] < 0)}
    return out
