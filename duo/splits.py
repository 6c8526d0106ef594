"""The seeded per-task split of the coverage rows: test by Φ (coverage.train_ratio), then a validation
share of the rest (finetune.validation_ratio). The validation ratio never changes the test split."""
from __future__ import annotations

import random
from collections import defaultdict

import click


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


def split_by_prompt(rows: list[dict], train_ratio: float, seed: int, validation_ratio: float = 0.0,
                    path: str = "coverage") -> tuple[list[dict], list[dict], list[dict], int]:
    """`split`, with each prompt on one side: rows whose prompts are equal once normalised (their
    `key`, duo.text.key) are one unit, drawn under their smallest id, and follow it to train,
    validation or test; without such rows this is `split` exactly. The same prompt under two tasks is
    refused with both lines (`line`): which task it is cannot be guessed. Returns (train, validation,
    test, rows that went where an earlier id of their prompt went)."""
    heads: dict = {}
    members: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        head = heads.setdefault(row["key"], row)
        if head["task"] != row["task"]:
            first, second = sorted((head, row), key=lambda r: r["line"])
            raise click.ClickException(
                f"{path}:{second['line']}: the same prompt as line {first['line']} under another task "
                f"('{second['task']}' vs '{first['task']}'): give both rows one task, or drop one")
        members.setdefault(head["id"], []).append(row)
    for task in sorted({r["task"] for r in rows}):
        lines = [r["line"] for r in rows if r["task"] == task]
        if len(lines) >= 2 and sum(h["task"] == task for h in heads.values()) < 2:
            raise click.ClickException(
                f"{path}:{min(lines)}: task '{task}' has {len(lines)} rows but one prompt (lines "
                f"{', '.join(map(str, sorted(lines)[:5]))}): train and test need a distinct prompt each")
    parts = split(list(heads.values()), train_ratio, seed, validation_ratio)
    train, val, test = ([m for head in part for m in members[head["id"]]] for part in parts)
    return train, val, test, len(rows) - len(heads)
