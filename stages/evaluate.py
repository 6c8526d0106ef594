"""evaluate: the service LLM judges each (prompt, response, reference) M times for similarity and
precision (1-100); metrics/eval.json gets V (mean) and C@ζ per score, overall and per task, beside
deterministic ROUGE-L and exact match. An unparseable reply is a judge error: kept with its raw
text, excluded from the means, counted; never a 0.

Run: python -m stages.evaluate   (reads data/predictions.jsonl; writes data/judgments.jsonl,
metrics/eval.json)
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict

import click
from tqdm import tqdm

from duo import judge, prompts
from duo import params as params_mod
from duo import records, service

FIELDS = {"prompt_id": str, "sample_idx": int, "task": str, "prompt": str, "reference": str, "response": str}


def _seed(seed: int, *parts) -> int:
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def judge_request(pred: dict, judge_idx: int, attempt: int, p, structured: bool) -> service.Request:
    text = prompts.render("judge.txt", instruction=pred["prompt"], human_response=pred["reference"],
                          lm_response=pred["response"])
    fmt = {"type": "json_object", "schema": judge.SCHEMA} if structured else {"type": "json_object"}
    return service.Request(messages=[{"role": "user", "content": text}], sample_idx=judge_idx, attempt=attempt,
                           temperature=p.temperature, max_tokens=p.max_tokens,
                           seed=_seed(p.seed, pred["prompt_id"], pred["sample_idx"], judge_idx, attempt),
                           response_format=fmt)


def judge_all(preds: list[dict], svc: service.Service, p) -> list[dict]:
    """M judgments per prediction; unusable replies are re-asked up to max_parse_retries times."""
    jobs = [(pred, j) for pred in preds for j in range(p.m)]
    results: dict[int, dict] = {}
    pending = list(range(len(jobs)))
    bar = tqdm(total=len(jobs), desc="judge", unit="call", disable=None)
    for attempt in range(p.max_parse_retries + 1):
        if not pending:
            break
        reqs = [judge_request(jobs[i][0], jobs[i][1], attempt, p, svc.supports_schema) for i in pending]
        replies = svc.map(reqs)
        retry = []
        for i, reply in zip(pending, replies):
            pred, j = jobs[i]
            row = {"prompt_id": pred["prompt_id"], "sample_idx": pred["sample_idx"], "judge_idx": j,
                   "similarity": None, "precision": None, "error": None, "raw": reply.text}
            if reply.error:
                row["error"] = f"call failed: {reply.error}"
            else:
                try:
                    row.update(judge.parse_reply(reply.text))
                except judge.JudgeParseError as exc:
                    row["error"] = f"unparseable: {exc}"
            results[i] = row
            if row["error"] and attempt < p.max_parse_retries:
                retry.append(i)
            else:
                bar.update(1)
        pending = retry
    bar.close()
    return [results[i] for i in range(len(jobs))]


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


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.judge
    preds = records.read_records("data/predictions.jsonl", FIELDS)
    with service.from_params(params.service, p.model, journal="judge") as svc:
        judgments = judge_all(preds, svc, p)
    records.write_jsonl("data/judgments.jsonl", judgments)
    tasks = {pred["prompt_id"]: pred["task"] for pred in preds}
    errors = sum(j["error"] is not None for j in judgments)
    metrics = {"cycle": params.cycle, **judge.aggregate(judgments, tasks, p.zetas),
               "reference": reference_metrics(preds),
               "judge": {"model": p.model or params.service.model, "samples": len(judgments),
                         "judge_errors": errors, "error_rate": round(errors / len(judgments), 4),
                         **svc.stats.as_dict()}}
    records.write_json("metrics/eval.json", metrics)
    s, pr = metrics["similarity"], metrics["precision"]
    click.echo(f"evaluate: similarity V={s['mean']} C@70={s.get('c70')}, precision V={pr['mean']} "
               f"C@70={pr.get('c70')}, ROUGE-L {metrics['reference']['rougeL']}, "
               f"{errors}/{len(judgments)} judge errors")


if __name__ == "__main__":
    main()
