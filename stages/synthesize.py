"""synthesize (cycle >= 1): the teacher writes new (instruction, response) pairs seeded from train.

Seeds are drawn from train without replacement, seeded by (synth.seed, cycle); each request asks
for several pairs as JSON {"contents": [...]}. Exact duplicates (of train, test, earlier cycles and
each other) and exact test prompts are removed; the rest goes to data/synth/cycle-<t>.jsonl, which
later cycles keep (the directory is a persisted DVC output).

Run: python -m stages.synthesize   (reads data/train.jsonl, data/test.jsonl; writes data/synth/,
metrics/synth.json)
"""
from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

import click
from tqdm import tqdm

from duo import judge, prompts
from duo import params as params_mod
from duo import records, service

SYNTH_DIR = Path("data/synth")
FIELDS = {"id": str, "task": str, "prompt": str, "response": str}
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


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def draw_seeds(train: list[dict], n: int, seed: int, cycle: int) -> list[dict]:
    rng = random.Random(f"{seed}:{cycle}")
    return rng.sample(sorted(train, key=lambda r: r["id"]), min(n, len(train)))


def request_for(seed_row: dict, p, structured: bool) -> service.Request:
    name = "synth_summarization.txt" if seed_row["task"] == "summarization" else "synth.txt"
    topic = TOPICS.get(seed_row["task"], seed_row["task"].replace("_", " "))
    text = prompts.render(name, instruction=seed_row["prompt"], response=seed_row["response"], topic=topic,
                          n=str(p.pairs_per_request))
    fmt = {"type": "json_object", "schema": schema(p.pairs_per_request)} if structured else {"type": "json_object"}
    return service.Request(messages=[{"role": "user", "content": text}], temperature=p.temperature,
                           max_tokens=p.max_tokens, seed=p.seed, response_format=fmt)


def parse_pairs(text: str | None) -> list[dict]:
    """The `contents` list of a reply, tolerating code fences and prose around the JSON."""
    if not text:
        return []
    for candidate in judge._candidates(text):
        obj = judge._load(candidate)
        if isinstance(obj, dict) and isinstance(obj.get("contents"), list):
            return [c for c in obj["contents"] if isinstance(c, dict)
                    and isinstance(c.get("instruction"), str) and isinstance(c.get("response"), str)
                    and c["instruction"].strip() and c["response"].strip()]
    return []


def dedup(candidates: list[dict], seen_prompts: set[str], seen_pairs: set[tuple[str, str]],
          test_prompts: set[str]) -> tuple[list[dict], dict]:
    kept, removed = [], {"exact_duplicate": 0, "test_prompt": 0}
    for row in candidates:
        prompt, pair = normalise(row["prompt"]), (normalise(row["prompt"]), normalise(row["response"]))
        if prompt in test_prompts:
            removed["test_prompt"] += 1
        elif prompt in seen_prompts or pair in seen_pairs:
            removed["exact_duplicate"] += 1
        else:
            seen_prompts.add(prompt)
            seen_pairs.add(pair)
            kept.append(row)
    return kept, removed


def synthesize(train, test, earlier, svc: service.Service, p, cycle: int) -> tuple[list[dict], dict]:
    seeds = draw_seeds(train, p.seeds_per_cycle, p.seed, cycle)
    reqs = [request_for(s, p, svc.supports_schema) for s in seeds]
    bar = tqdm(total=len(reqs), desc="synthesize", unit="req", disable=None)
    replies = svc.map(reqs, on_done=lambda i, r: bar.update(1))
    bar.close()
    candidates, unusable, failed = [], 0, 0
    for seed_row, reply in zip(seeds, replies):
        failed += reply.error is not None
        pairs = parse_pairs(reply.text)
        unusable += reply.error is None and not pairs
        for k, pair in enumerate(pairs):
            candidates.append({"id": f"syn-c{cycle}-{seed_row['id']}-{k}", "task": seed_row["task"],
                               "prompt": pair["instruction"].strip(), "response": pair["response"].strip(),
                               "seed_id": seed_row["id"], "cycle": cycle})
    seen_rows = train + earlier
    kept, removed = dedup(candidates, {normalise(r["prompt"]) for r in seen_rows},
                          {(normalise(r["prompt"]), normalise(r["response"])) for r in seen_rows},
                          {normalise(r["prompt"]) for r in test})
    metrics = {"cycle": cycle, "seeds": [s["id"] for s in seeds], "requests": len(reqs), "failed_calls": failed,
               "unusable_replies": unusable, "pairs_generated": len(candidates), "removed": removed,
               "kept": len(kept)}
    return kept, metrics


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p, cycle = params.synth, params.cycle
    SYNTH_DIR.mkdir(parents=True, exist_ok=True)
    if cycle < 1:
        # Cycle 0 trains on the coverage data alone (the paper's first turn).
        records.write_json("metrics/synth.json", {"cycle": cycle, "requests": 0, "kept": 0, "skipped": True})
        click.echo("synthesize: cycle 0, nothing to synthesize")
        return
    train = records.read_records("data/train.jsonl", FIELDS, unique="id")
    test = records.read_records("data/test.jsonl", FIELDS, unique="id")
    earlier = []
    for path in sorted(SYNTH_DIR.glob("cycle-*.jsonl")):
        if int(path.stem.split("-")[1]) < cycle:
            earlier += records.read_records(path, FIELDS, allow_empty=True)
    with service.from_params(params.service, p.model, journal="synth") as svc:
        kept, metrics = synthesize(train, test, earlier, svc, p, cycle)
    metrics["service"] = svc.stats.as_dict()
    records.write_jsonl(SYNTH_DIR / f"cycle-{cycle}.jsonl", kept)
    records.write_json("metrics/synth.json", metrics)
    click.echo(f"synthesize: {metrics['requests']} requests, {metrics['pairs_generated']} pairs, "
               f"{metrics['kept']} kept -> {SYNTH_DIR / f'cycle-{cycle}.jsonl'}")
    if not kept:
        raise click.ClickException("synthesize: no usable pair survived; check the teacher "
                                   "(service.model / synth.model) and .duo/journal/synth.jsonl")


if __name__ == "__main__":
    main()
