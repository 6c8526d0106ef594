"""The seeded per-task split of the coverage rows: test by Φ (coverage.train_ratio), then a validation
share of the rest (finetune.validation_ratio, at least finetune.validation_min_rows per task). The
validation split never changes the test split."""
from __future__ import annotations

import random
from collections import defaultdict

import click


VALIDATION_MAX_SHARE = 0.25  # a minimum never takes more than this share of a small task's training rows


def validation_size(m: int, ratio: float, min_rows: int) -> int:
    """Validation rows of a task with m non-test rows: the ratio's share, raised to min_rows (what an
    evaluation needs to tell settings apart: 10% of a 30-row task is 3 rows, where one answer moves exact
    match by 33 points) but never above a quarter of the rows; at least one when asked for at all."""
    if not ratio and not min_rows:
        return 0
    n = max(round(m * ratio), min(min_rows, int(m * VALIDATION_MAX_SHARE)), 1)
    return min(n, m - 1)


def split(rows: list[dict], train_ratio: float, seed: int, validation_ratio: float = 0.0,
          validation_min_rows: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """Per task: shuffle with a task-specific seed, hold out round(n * (1 - Φ)) rows (at least one) as
    test; of the rest, `validation_size` rows as validation. (train, validation, test)."""
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
        n_val = validation_size(len(rest), validation_ratio, validation_min_rows)
        val.extend(rest[:n_val])
        train.extend(rest[n_val:])
    return train, val, test
