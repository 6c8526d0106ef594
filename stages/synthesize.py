"""synthesize (cycle >= 1): the teacher writes new (instruction, response) pairs seeded from train.

Seeds are drawn from train without replacement, seeded by (synth.seed, cycle); each request asks
for several pairs as JSON {"contents": [...]}. Every round is curated (duo/curate.py: quality filters,
decontamination against test, exact and near duplicates of train, earlier cycles and each other);
requests continue until `synth.per_cycle` kept rows (doubling per cycle with `schedule: doubling`) or
`synth.max_requests`. Kept rows go to data/synth/cycle-<t>.jsonl, removed ones with their reason to
data/synth/rejected-cycle-<t>.jsonl; later cycles keep both (the directory is a persisted output).

Run: python -m stages.synthesize   (reads data/train.jsonl, data/test.jsonl; writes data/synth/,
metrics/synth.json)
"""
from __future__ import annotations

import random
from pathlib import Path

import click

from collections import Counter

from duo import curate, judge, progress, prompts
from duo import params as params_mod
from duo import records, service

SYNTH_DIR = Path("data/synth")
FIELDS = records.ROW_FIELDS
TOPICS = {"summarization": "concise, faithful summaries of passages",
          "classification": "text classification with a fixed label set",
          "coding": "short, correct programming solutions",
          "closed_qa": "answering questions from a given passage only"}


def schema(n: int) -> dict:
    pair = {"type": "object", "properties": {"instruction": {"type": "string", "minLength": 1},
                                             "response": {"type": "string", "minLength": 1}},
            "required": ["instruction", "response"]}
    return {"type": "object", "properties": {"contents": {"type": "array", "items": pair,
                                                          "minItems": 1, "maxItems": n}},
            "required": ["contents"]}


def seed_stream(train: list[dict], seed: int, cycle: int):
    """Train rows in a seeded order without replacement; a further pass reshuffles (and is marked, so
    its requests differ from the first pass's)."""
    rows = sorted(train, key=lambda r: r["id"])
    for pass_no in range(1_000_000):
        order = rows[:]
        random.Random(f"{seed}:{cycle}:{pass_no}").shuffle(order)
        for row in order:
            yield pass_no, row


def draw_seeds(train: list[dict], n: int, seed: int, cycle: int) -> list[dict]:
    stream = seed_stream(train, seed, cycle)
    return [next(stream)[1] for _ in range(min(n, len(train)))]


def target_rows(p, cycle: int) -> int:
    if not p.per_cycle:
        return 0
    return p.per_cycle * (2 ** (cycle - 1) if p.schedule == "doubling" else 1)


def request_for(seed_row: dict, p, structured: bool, pass_no: int = 0) -> service.Request:
    name = "synth_summarization.txt" if seed_row["task"] == "summarization" else "synth.txt"
    topic = TOPICS.get(seed_row["task"], seed_row["task"].replace("_", " "))
    text = prompts.render(name, instruction=seed_row["prompt"], response=seed_row["response"], topic=topic,
                          n=str(p.pairs_per_request))
    fmt = {"type": "json_object", "schema": schema(p.pairs_per_request)} if structured else {"type": "json_object"}
    return service.Request(messages=[{"role": "user", "content": text}], temperature=p.temperature,
                           max_tokens=p.max_tokens, seed=p.seed + pass_no, sample_idx=pass_no, response_format=fmt)


def parse_pairs(text: str | None) -> list[dict]:
    """The `contents` list of a reply, tolerating code fences and prose around the JSON."""
    if not text:
        return []
    for obj in judge.json_objects(text):
        if isinstance(obj.get("contents"), list):
            return [c for c in obj["contents"] if isinstance(c, dict)
                    and isinstance(c.get("instruction"), str) and isinstance(c.get("response"), str)
                    and c["instruction"].strip() and c["response"].strip()]
    return []


def synthesize(train, test, earlier, svc: service.Service, p, cfg, cycle: int):
    """Request rounds of seeds until `per_cycle` kept rows (or one round when 0) or max_requests;
    every round is curated against train, earlier cycles, what this cycle kept so far, and test."""
    target = target_rows(p, cycle)
    stream = seed_stream(train, p.seed, cycle)
    kept, removed, rejected, seeds = [], [], [], []
    totals = {"requests": 0, "failed_calls": 0, "unusable_replies": 0, "pairs_generated": 0}
    bar = progress.bar(target or min(p.seeds_per_cycle, p.max_requests), "synthesize",
                       unit="row" if target else "req")
    while totals["requests"] < p.max_requests:
        n = min(p.seeds_per_cycle, p.max_requests - totals["requests"])
        if not target:
            n = min(n, len(train))
        batch = [next(stream) for _ in range(n)]
        seeds += [{"id": row["id"], "pass": pass_no} for pass_no, row in batch]
        replies = svc.map([request_for(row, p, svc.supports_schema, pass_no) for pass_no, row in batch],
                          on_done=None if target else (lambda i, r: bar.update(1)))
        candidates = []
        for (pass_no, seed_row), reply in zip(batch, replies):
            totals["requests"] += 1
            totals["failed_calls"] += reply.error is not None
            pairs = parse_pairs(reply.text)
            totals["unusable_replies"] += reply.error is None and not pairs
            for k, pair in enumerate(pairs):
                candidates.append({"id": f"syn-c{cycle}-{seed_row['id']}-p{pass_no}-{k}", "task": seed_row["task"],
                                   "prompt": pair["instruction"].strip(), "response": pair["response"].strip(),
                                   "seed_id": seed_row["id"], "cycle": cycle})
        totals["pairs_generated"] += len(candidates)
        new_kept, new_removed, _ = curate.curate(candidates, train + earlier + kept, test, cfg)
        kept += new_kept
        removed += new_removed
        by_id = {c["id"]: c for c in candidates}
        rejected += [by_id[r["id"]] | r for r in new_removed]
        if target:
            bar.update(min(len(new_kept), target - bar.n))
        if not target or len(kept) >= target:
            break
    bar.close()
    kept = kept[:target] if target else kept
    reasons = dict(sorted(Counter(r["reason"] for r in removed).items()))
    metrics = {"cycle": cycle, "target": target, **totals, "kept": len(kept), "removed": reasons,
               "removed_rows": removed, "seeds": seeds}
    return kept, rejected, metrics


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p, cycle = params.synth, params.cycle
    SYNTH_DIR.mkdir(parents=True, exist_ok=True)
    if cycle < 1:
        # Cycle 0 trains on the coverage data alone (the paper's first turn).
        records.write_json("metrics/synth.json", {"cycle": cycle, "requests": 0, "kept": 0, "skipped": True})
        progress.summary("synthesize", "cycle 0, nothing to synthesize")
        return
    train = records.read_records("data/train.jsonl", FIELDS, unique="id")
    test = records.read_records("data/test.jsonl", FIELDS, unique="id")
    earlier = []
    for path in sorted(SYNTH_DIR.glob("cycle-*.jsonl")):
        if path.stem.split("-")[1].isdigit() and int(path.stem.split("-")[1]) < cycle:
            earlier += records.read_records(path, FIELDS, allow_empty=True)
    with service.from_params(params.service, p.model, journal="synth") as svc:
        kept, removed, metrics = synthesize(train, test, earlier, svc, p, params.curate, cycle)
    metrics["service"] = svc.stats.as_dict()
    records.write_jsonl(SYNTH_DIR / f"rejected-cycle-{cycle}.jsonl", removed)
    records.write_jsonl(SYNTH_DIR / f"cycle-{cycle}.jsonl", kept)
    records.write_json("metrics/synth.json", metrics)
    progress.summary("synthesize", f"{metrics['requests']} requests, {metrics['pairs_generated']} pairs, "
               f"{metrics['kept']} kept (removed: {metrics['removed'] or 'none'}) -> {SYNTH_DIR / f'cycle-{cycle}.jsonl'}")
    if not kept:
        raise click.ClickException("synthesize: no usable pair survived; check the teacher "
                                   "(service.model / synth.model) and .duo/journal/synth.jsonl")


if __name__ == "__main__":
    main()
