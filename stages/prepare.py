"""prepare: seeded train/test split of the coverage dataset by Φ (coverage.train_ratio), per task, and a
validation split carved from train (finetune.validation_ratio, validation_min_rows): what training, early stopping and every
choice of defaults look at. The test split belongs to the judge: the validation ratio never changes it.

Run: python -m stages.prepare   (reads params.yaml `coverage`, `finetune.validation_*`; writes
data/train.jsonl, data/val.jsonl, data/test.jsonl)
"""
from __future__ import annotations

import click

from duo import contracts, entry
from duo.data import chat
from duo import params as params_mod
from duo import progress
from duo.data import records, splits, text


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.coverage
    # Validate everything first, keeping only (id, task, offset) per row: memory stays bounded by the
    # row count, not the file size; rows are then copied over in split order.
    # The same prompt (normalised; a conversation's whole transcript) under several ids stays on one side.
    rows = [{"id": obj["id"], "task": obj["task"], "at": at, "key": text.key(chat.transcript(obj))}
            for _, at, obj in records.iter_records(p.path, contracts.COVERAGE_FIELDS, unique="id",
                                                   max_bytes=p.max_record_bytes, what="coverage.max_record_bytes",
                                                   check=chat.problem)]
    train, val, test, joined = splits.split_by_prompt(rows, p.train_ratio, p.seed, params.finetune.validation_ratio,
                                                      params.finetune.validation_min_rows, p.path)
    for path, part in ((contracts.TRAIN, train), (contracts.VAL, val), (contracts.TEST, test)):
        # a conversation row gets its final user turn as `prompt`, which curation and reports read
        records.write_jsonl(path, map(chat.with_prompt, records.read_at(p.path, (r["at"] for r in part))))
    tasks = sorted({r["task"] for r in rows})
    same = f" ({joined} rows repeat an earlier id's prompt: kept on its side)" if joined else ""
    progress.summary("prepare", f"{len(rows)} rows, {len(tasks)} tasks -> {len(train)} train, {len(val)} validation, "
                     f"{len(test)} test{same}")


if __name__ == "__main__":
    entry.run(main)
