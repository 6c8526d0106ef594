"""One cycle's evaluation: every judge of the panel on the student's responses (single or pairwise),
P-Match from the teacher's own answers, reference metrics beside; and the stage's summary line."""
from __future__ import annotations

from duo import contracts, service
from duo.evaluation import calibration, judging, ratings as ratings_mod, reference, summary


def evaluate(preds: list[dict], test: list[dict], params, rated: dict[str, dict] | None = None
             ) -> tuple[dict, list[dict], list[dict]]:
    """(metrics/eval.json, judgment rows, the teacher's answers) for one cycle's predictions: every judge
    of the panel (judge.models, else service.model) in judge.mode, P-Match from the teacher's answers,
    and in single mode the panel's agreement with people's ratings (`rated`, {key: rating row}): rated
    responses that are not this cycle's predictions are judged too (only they cost calls, once)."""
    p = params.judge
    names = p.models or [params.service.model]
    rows, teacher, stats = [], [], {}
    rated = rated or {}
    keys = {(pred["prompt_id"], pred["sample_idx"]): ratings_mod.key(pred) for pred in preds}
    current = set(keys.values())
    extra = [r for k, r in sorted(rated.items()) if k not in current] if p.mode == "single" else []
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
                rows += judging.judge_single(preds, svc, p, name, "student", answered, extra)
        stats[name] = svc.stats.as_dict()
    tasks = {r["id"]: r["task"] for r in test}
    scored = [r for r in rows if r["subject"] != "rated"]  # rated rows count only in the calibration
    errors = sum(r["error"] is not None for r in scored)
    scores = summary.summarise_pairwise(scored, tasks, names) if p.mode == "pairwise" else \
        summary.summarise_single(scored, tasks, p, names)
    metrics = {"cycle": params.cycle, "mode": p.mode, **scores, "reference": reference.reference_metrics(preds),
               "judge": {"models": names, "samples": len(scored), "judge_errors": errors,
                         "error_rate": round(errors / len(scored), 4) if scored else 0.0, "calls": stats}}
    if p.mode == "single":
        metrics["calibration"] = calibration.calibrate(rated, calibration.judge_scores(rows, keys), names, p.zetas) | {
            "judged_extra": len(extra)}
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
