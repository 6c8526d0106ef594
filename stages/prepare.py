"""prepare: seeded train/test split of the coverage dataset by Φ (coverage.train_ratio), per task, and a
validation split carved from train (finetune.validation_ratio): what training, early stopping and every
choice of defaults look at. The test split belongs to the judge: the validation ratio never changes it.

Run: python -m stages.prepare   (reads params.yaml `coverage`, `finetune.validation_ratio`; writes
data/train.jsonl, data/val.jsonl, data/test.jsonl)
"""
from __future__ import annotations

import random
from collections import defaultdict

import click

from duo import contracts
from duo import params as params_mod
from duo import progress
from duo import records

FIELDS = records.ROW_FIELDS


def split(rows: list[dict], train_ratio: float, seed: int, validation_ratio: float = 0.0
          ) -> tuple[list[dict], list[dict], list[dict]]:
    """Per task: shuffle with a task-specific seed, hold out round(n * (1 - Φ)) rows (at least one) as
    test; of the rest, round(m * validation_ratio) rows (at least one when the ratio is set and two
    rows remain) as validation. (train, validation, test)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    train, val, test = [], [], []
    for task in sorted(by_task):
        group = sorted(by_task[task], key=lambda r: r["id"])
        if len(group) < 2:
            raise click.ClickException(
                f"task '{task}' has {len(group)} row(s): at least 2 are needed so that both train and "
                f"test get one")
        random.Random(f"{seed}:{task}").shuffle(group)
        n_test = max(1, round(len(group) * (1.0 - train_ratio)))
        if n_test >= len(group):
            raise click.ClickException(
                f"task '{task}': train_ratio {train_ratio} leaves no training row out of {len(group)}")
        test.extend(group[:n_test])
        rest = group[n_test:]
        n_val = min(len(rest) - 1, max(1, round(len(rest) * validation_ratio))) if validation_ratio else 0
        val.extend(rest[:n_val])
        train.extend(rest[n_val:])
    return train, val, test


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.coverage
    # Validate everything first, keeping only (id, task, offset) per row: memory stays bounded by the
    # row count, not the file size; rows are then copied over in split order.
    rows = [{"id": obj["id"], "task": obj["task"], "at": at} for _, at, obj in records.iter_records(
        p.path, FIELDS, unique="id", max_bytes=p.max_record_bytes, what="coverage.max_record_bytes")]
    train, val, test = split(rows, p.train_ratio, p.seed, params.finetune.validation_ratio)
    for path, part in ((contracts.TRAIN, train), (contracts.VAL, val), (contracts.TEST, test)):
        records.write_jsonl(path, records.read_at(p.path, (r["at"] for r in part)))
    tasks = sorted({r["task"] for r in rows})
    progress.summary("prepare", f"{len(rows)} rows, {len(tasks)} tasks -> {len(train)} train, {len(val)} validation, "
                     f"{len(test)} test")


if __name__ == "__main__":
    main()
