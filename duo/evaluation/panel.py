"""One cycle's evaluation: every judge of the panel on the student's responses (single or pairwise),
P-Match from the teacher's own answers, reference metrics beside; and the stage's summary line."""
from __future__ import annotations

from duo import contracts, service
from duo.evaluation import judging, reference, summary


def evaluate(preds: list[dict], test: list[dict], params) -> tuple[dict, list[dict], list[dict]]:
    """(metrics/eval.json, judgment rows, the teacher's answers) for one cycle's predictions: every judge
    of the panel (judge.models, else service.model) in judge.mode, P-Match from the teacher's answers."""
    p = params.judge
    names = p.models or [params.service.model]
    rows, teacher, stats = [], [], {}
    if p.mode == "single" and p.pmatch:
        with service.from_params(params.service, params.synth.model, journal="teacher", cycle=params.cycle) as svc:
            teacher = judging.teacher_answers(test, svc, params.infer)
        stats["teacher"] = svc.stats.as_dict()
    for name in names:
        with service.from_params(params.service, name if p.models else None, journal="judge",
                                 cycle=params.cycle) as svc:
            if p.mode == "pairwise":
                rows += judging.judge_pairwise(preds, svc, p, name)
            else:
                answered = [t for t in teacher if t["error"] is None]
                rows += judging.judge_single(preds, svc, p, name, "student", answered)
        stats[name] = svc.stats.as_dict()
    tasks = {r["id"]: r["task"] for r in test}
    errors = sum(r["error"] is not None for r in rows)
    scores = summary.summarise_pairwise(rows, tasks, names) if p.mode == "pairwise" else \
        summary.summarise_single(rows, tasks, p, names)
    metrics = {"cycle": params.cycle, "mode": p.mode, **scores, "reference": reference.reference_metrics(preds),
               "judge": {"models": names, "samples": len(rows), "judge_errors": errors,
                         "error_rate": round(errors / len(rows), 4) if rows else 0.0, "calls": stats}}
    return metrics, rows, teacher


def headline(metrics: dict) -> str:
    """The evaluate stage's summary line."""
    errors, samples = metrics["judge"]["judge_errors"], metrics["judge"]["samples"]
    if metrics["mode"] == "pairwise":
        pw = metrics["pairwise"]
        return f"pairwise win {pw['win']} tie {pw['tie']} loss {pw['loss']}, {errors} judge errors"
    def score(name: str) -> str:
        cs = " ".join(f"C@{z}={v}" for z, v in contracts.coverages(metrics[name]).items())
        return f"{name} V={metrics[name]['mean']} {cs}"

    pm = metrics.get("pmatch", {}).get("pooled", {}).get("precision", {}).get("overall")
    return (f"{score('similarity')}, {score('precision')}, P-Match(precision)={pm}, "
            f"ROUGE-L {metrics['reference']['rougeL']}, {errors}/{samples} judge errors")
