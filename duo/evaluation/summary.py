"""metrics/eval.json from judgments: V and C@ζ per score, task and judge (single mode), P-Match, the
agreement between judges, or win/tie/loss rates (pairwise mode)."""
from __future__ import annotations

from collections import defaultdict

from duo.evaluation import scores as judge


def pmatch(student: dict, teacher: dict) -> dict:
    """Student V / teacher V per score, overall and per task (None where either is missing)."""
    def ratio(s, t):
        return round(s / t, 4) if s is not None and t else None

    out = {}
    for score in judge.SCORES:
        s, t = student[score], teacher[score]
        out[score] = {"overall": ratio(s["mean"], t["mean"]),
                      "by_task": {task: ratio(v["mean"], t["by_task"].get(task, {}).get("mean"))
                                  for task, v in s["by_task"].items()}}
    return out


def summarise_single(rows: list[dict], tasks: dict, p, names: list[str]) -> dict:
    student = [r for r in rows if r["subject"] == "student"]
    teacher = [r for r in rows if r["subject"] == "teacher"]
    out = judge.aggregate(student, tasks, p.zetas)
    out["by_judge"] = {n: judge.aggregate([r for r in student if r["judge"] == n], tasks, p.zetas) for n in names}
    if teacher:
        out["teacher"] = judge.aggregate(teacher, tasks, p.zetas)
        out["pmatch"] = {"pooled": pmatch(out, out["teacher"])} | {
            n: pmatch(out["by_judge"][n], judge.aggregate([r for r in teacher if r["judge"] == n], tasks, p.zetas))
            for n in names}
    if len(names) > 1:
        per_judge = {n: {(r["prompt_id"], r["sample_idx"], r["judge_idx"]): (r["similarity"] + r["precision"]) / 2
                         for r in student if r["judge"] == n and r["error"] is None} for n in names}
        out["agreement"] = judge.agreement(per_judge)
    return out


def summarise_pairwise(rows: list[dict], tasks: dict, names: list[str]) -> dict:
    ok = [r for r in rows if r["error"] is None]
    by_task = defaultdict(list)
    for r in ok:
        by_task[tasks[r["prompt_id"]]].append(r["outcome"])
    return {"pairwise": judge.pairwise_rates([r["outcome"] for r in ok]) | {
        "by_task": {t: judge.pairwise_rates(v) for t, v in sorted(by_task.items())},
        "by_judge": {n: judge.pairwise_rates([r["outcome"] for r in ok if r["judge"] == n]) for n in names}}}
