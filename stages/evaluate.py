"""evaluate: the service LLM judges each (prompt, response, reference) M times.

single mode (default): similarity and precision, 1-100; metrics/eval.json gets V (mean), C@ζ and a
95% bootstrap interval per score, overall and per task, pooled over the judge panel and per judge,
with the agreement between judges. With `judge.pmatch`, the teacher's own answers to the test
prompts (generated once, journaled) are judged the same way and P-Match = student / teacher.
pairwise mode: the judge compares the student's response with the reference in both orders;
inconsistent verdicts are ties; win/tie/loss rates.
An unparseable reply is a judge error: kept with its raw text, excluded from every mean, counted;
above judge.max_error_rate the stage fails. Deterministic ROUGE-L and exact match sit beside.

Run: python -m stages.evaluate   (reads data/predictions.jsonl, data/test.jsonl; writes
data/judgments.jsonl, data/teacher.jsonl, metrics/eval.json)
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

import click

from duo import contracts, judge, progress, prompts
from duo import params as params_mod
from duo import records, service

FIELDS = {"prompt_id": str, "sample_idx": int, "task": str, "prompt": str, "reference": str, "response": str}
TEST_FIELDS = records.ROW_FIELDS


def _request(text: str, schema: dict, judge_idx: int, attempt: int, p, structured: bool, *seed_parts):
    fmt = {"type": "json_object", "schema": schema} if structured else {"type": "json_object"}
    return service.Request(messages=[{"role": "user", "content": text}], sample_idx=judge_idx, attempt=attempt,
                           temperature=p.temperature, max_tokens=p.max_tokens,
                           seed=contracts.derived_seed(p.seed, *seed_parts, judge_idx, attempt), response_format=fmt)


def judge_request(pred: dict, judge_idx: int, attempt: int, p, structured: bool) -> service.Request:
    text = prompts.render("judge.txt", instruction=pred["prompt"], human_response=pred["reference"],
                          lm_response=pred["response"])
    return _request(text, judge.SCHEMA, judge_idx, attempt, p, structured, pred["prompt_id"], pred["sample_idx"])


def pairwise_request(pred: dict, student_first: bool, judge_idx: int, attempt: int, p, structured: bool):
    a, b = (pred["response"], pred["reference"]) if student_first else (pred["reference"], pred["response"])
    text = prompts.render("judge_pairwise.txt", instruction=pred["prompt"], response_a=a, response_b=b)
    return _request(text, judge.PAIRWISE_SCHEMA, judge_idx, attempt, p, structured, pred["prompt_id"],
                    pred["sample_idx"], "AB" if student_first else "BA")


def _ask(jobs: list, make_request, parse, svc: service.Service, p, desc: str) -> list[tuple]:
    """(value, error, raw) per job; an unusable reply is re-asked up to max_parse_retries times."""
    results: dict[int, tuple] = {}
    pending = list(range(len(jobs)))
    bar = progress.bar(len(jobs), desc, unit="call")
    for attempt in range(p.max_parse_retries + 1):
        if not pending:
            break
        replies = svc.map([make_request(jobs[i], attempt) for i in pending])
        retry = []
        for i, reply in zip(pending, replies):
            if reply.error:
                results[i] = (None, f"call failed: {reply.error}", None)
            else:
                try:
                    results[i] = (parse(reply.text), None, reply.text)
                except judge.JudgeParseError as exc:
                    results[i] = (None, f"unparseable: {exc}", reply.text)
            if results[i][1] and attempt < p.max_parse_retries:
                retry.append(i)
            else:
                bar.update(1)
        pending = retry
    bar.close()
    return [results[i] for i in range(len(jobs))]


def judge_single(preds: list[dict], svc, p, name: str, subject: str, teacher: list[dict] = ()) -> list[dict]:
    """Judge rows of `preds` (as `subject`) and of `teacher` (the service's own answers, for P-Match).
    A prompt's samples and its teacher answer share the rubric, instruction and reference; they are
    asked one after another, interleaved with other prompts' (`_interleave`), so a local llama.cpp server
    evaluates that prefix once per prompt. Rows come back students first, in input order."""
    items = [(pred, subject) for pred in preds] + [(row, "teacher") for row in teacher]
    groups: dict[str, list[int]] = {}
    for k, (pred, _) in enumerate(items):
        groups.setdefault(pred["prompt_id"], []).append(k)
    jobs = [(k, j) for k in _interleave(list(groups.values()), svc.concurrency) for j in range(p.m)]
    desc = f"judge {subject}" + (" + teacher" if teacher else "")
    out = _ask(jobs, lambda job, a: judge_request(items[job[0]][0], job[1], a, p, svc.supports_schema),
               judge.parse_reply, svc, p, desc)
    rows = []
    for (k, j), (scores, error, raw) in sorted(zip(jobs, out), key=lambda pair: pair[0]):
        pred, who = items[k]
        rows.append({"prompt_id": pred["prompt_id"], "sample_idx": pred["sample_idx"], "judge_idx": j,
                     "judge": name, "subject": who, "similarity": scores and scores["similarity"],
                     "precision": scores and scores["precision"], "error": error, "raw": raw})
    return rows


def _interleave(groups: list[list[int]], width: int) -> list[int]:
    """Items of `width` prompts at a time, round-robin: the requests in flight together are for different
    prompts, and a prompt's next sample is asked when its previous one is done, so a llama.cpp server
    routes it to the slot already holding that prompt's rubric, instruction and reference (prefix
    reuse) instead of evaluating them again on another slot."""
    order = []
    for start in range(0, len(groups), width):
        chunk = groups[start:start + width]
        for k in range(max(map(len, chunk))):
            order += [group[k] for group in chunk if k < len(group)]
    return order


def judge_pairwise(preds: list[dict], svc, p, name: str) -> list[dict]:
    jobs = [(pred, j, order) for pred in preds for j in range(p.m) for order in (True, False)]
    out = _ask(jobs, lambda job, a: pairwise_request(job[0], job[2], job[1], a, p, svc.supports_schema),
               judge.parse_pairwise, svc, p, "judge pairwise")
    rows = []
    for k in range(0, len(jobs), 2):
        pred, j, _ = jobs[k]
        (first, e1, r1), (second, e2, r2) = out[k], out[k + 1]
        error = e1 or e2
        rows.append({"prompt_id": pred["prompt_id"], "sample_idx": pred["sample_idx"], "judge_idx": j,
                     "judge": name, "subject": "student", "verdicts": [first, second],
                     "outcome": None if error else judge.pairwise_outcome(first, second), "error": error,
                     "raw": [r1, r2]})
    return rows


def teacher_answers(test: list[dict], svc, infer_p) -> list[dict]:
    """The service's own answer to each test prompt, once (journaled), as a prediction row."""
    reqs = [service.Request(messages=[{"role": "user", "content": r["prompt"]}], max_tokens=infer_p.max_tokens,
                            temperature=0.0, seed=infer_p.seed) for r in test]
    replies = svc.map(reqs)
    return [{"prompt_id": r["id"], "sample_idx": 0, "task": r["task"], "prompt": r["prompt"],
             "reference": r["response"], "response": reply.text or "", "error": reply.error}
            for r, reply in zip(test, replies)]


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


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.judge
    preds = records.read_records("data/predictions.jsonl", FIELDS)
    test = records.read_records("data/test.jsonl", TEST_FIELDS, unique="id")
    names = p.models or [params.service.model]
    rows, teacher, stats = [], [], {}
    if p.mode == "single" and p.pmatch:
        with service.from_params(params.service, params.synth.model, journal="teacher", cycle=params.cycle) as svc:
            teacher = teacher_answers(test, svc, params.infer)
        stats["teacher"] = svc.stats.as_dict()
    for name in names:
        with service.from_params(params.service, name if p.models else None, journal="judge",
                                 cycle=params.cycle) as svc:
            if p.mode == "pairwise":
                rows += judge_pairwise(preds, svc, p, name)
            else:
                answered = [t for t in teacher if t["error"] is None]
                rows += judge_single(preds, svc, p, name, "student", answered)
        stats[name] = svc.stats.as_dict()
    records.write_jsonl("data/judgments.jsonl", rows)
    records.write_jsonl("data/teacher.jsonl", teacher)
    tasks = {r["id"]: r["task"] for r in test}
    errors = sum(r["error"] is not None for r in rows)
    summary = summarise_pairwise(rows, tasks, names) if p.mode == "pairwise" else \
        summarise_single(rows, tasks, p, names)
    rate = round(errors / len(rows), 4) if rows else 0.0
    metrics = {"cycle": params.cycle, "mode": p.mode, **summary, "reference": reference_metrics(preds),
               "judge": {"models": names, "samples": len(rows), "judge_errors": errors, "error_rate": rate,
                         "calls": stats}}
    records.write_json("metrics/eval.json", metrics)
    if p.mode == "pairwise":
        pw = metrics["pairwise"]
        progress.summary("evaluate", f"pairwise win {pw['win']} tie {pw['tie']} loss {pw['loss']}, {errors} judge errors")
    else:
        s, pr = metrics["similarity"], metrics["precision"]
        pm = metrics.get("pmatch", {}).get("pooled", {}).get("precision", {}).get("overall")
        progress.summary("evaluate", f"similarity V={s['mean']} C@70={s.get('c70')}, precision V={pr['mean']} "
                         f"C@70={pr.get('c70')}, P-Match(precision)={pm}, ROUGE-L {metrics['reference']['rougeL']}, "
                         f"{errors}/{len(rows)} judge errors")
    if rate > p.max_error_rate:
        raise click.ClickException(f"judge error rate {rate:.1%} is above judge.max_error_rate "
                                   f"{p.max_error_rate:.0%}: the judge is not answering in the expected JSON; "
                                   f"see the raw replies in data/judgments.jsonl")


if __name__ == "__main__":
    main()
