"""prepare: seeded train/test split of the coverage dataset by Φ (coverage.train_ratio), per task, and a
validation split carved from train (finetune.validation_ratio): what training, early stopping and every
choice of defaults look at. The test split belongs to the judge: the validation ratio never changes it.

Run: python -m stages.prepare   (reads params.yaml `coverage`, `finetune.validation_ratio`; writes
data/train.jsonl, data/val.jsonl, data/test.jsonl)
"""
from __future__ import annotations

import click

from duo import chat, contracts, entry
from duo import params as params_mod
from duo import progress
from duo import records, splits

@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.coverage
    # Validate everything first, keeping only (id, task, offset) per row: memory stays bounded by the
    # row count, not the file size; rows are then copied over in split order.
    rows = [{"id": obj["id"], "task": obj["task"], "at": at} for _, at, obj in records.iter_records(
        p.path, contracts.COVERAGE_FIELDS, unique="id", max_bytes=p.max_record_bytes, what="coverage.max_record_bytes",
        check=chat.problem)]
    train, val, test = splits.split(rows, p.train_ratio, p.seed, params.finetune.validation_ratio)
    for path, part in ((contracts.TRAIN, train), (contracts.VAL, val), (contracts.TEST, test)):
        # a conversation row gets its final user turn as `prompt`, which curation and reports read
        records.write_jsonl(path, map(chat.with_prompt, records.read_at(p.path, (r["at"] for r in part))))
    tasks = sorted({r["task"] for r in rows})
    progress.summary("prepare", f"{len(rows)} rows, {len(tasks)} tasks -> {len(train)} train, {len(val)} validation, "
                     f"{len(test)} test")


if __name__ == "__main__":
    entry.run(main)
