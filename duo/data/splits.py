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


def split_by_prompt(rows: list[dict], train_ratio: float, seed: int, validation_ratio: float = 0.0,
                    validation_min_rows: int = 0, path: str = "coverage"
                    ) -> tuple[list[dict], list[dict], list[dict], int]:
    """`split`, with each prompt on one side: rows whose prompts are equal once normalised (their
    `key`, duo.data.text.key) are one unit, drawn under their smallest id, and follow it to train,
    validation or test; without such rows this is `split` exactly. The same prompt under two tasks is
    refused with both lines (a row's `line`, else counted up to its byte offset `at` in `path`): which
    task it is cannot be guessed. Returns (train, validation, test, rows that went where an earlier id
    of their prompt went). Memory: two sorted lists of references, and lists for repeats only."""
    by_key = sorted(sorted(rows, key=lambda r: r["id"]), key=lambda r: r["key"])  # stable: smallest id first
    heads, joined = [], {}  # joined: head id -> the other rows of its prompt
    for i, row in enumerate(by_key):
        if i and by_key[i - 1]["key"] == row["key"]:
            head = heads[-1]
            if head["task"] != row["task"]:
                (n1, one), (n2, two) = sorted([(_line(path, head), head), (_line(path, row), row)],
                                              key=lambda pair: pair[0])
                raise click.ClickException(
                    f"{path}:{n2}: the same prompt as line {n1} under another task ('{two['task']}' vs "
                    f"'{one['task']}'): give both rows one task, or drop one")
            joined.setdefault(head["id"], []).append(row)
        else:
            heads.append(row)
    del by_key
    if not joined:
        return (*split(heads, train_ratio, seed, validation_ratio, validation_min_rows), 0)
    for task in sorted({r["task"] for r in rows}):
        if sum(h["task"] == task for h in heads) < 2 <= sum(r["task"] == task for r in rows):
            lines = sorted(_line(path, r) for r in rows if r["task"] == task)
            raise click.ClickException(
                f"{path}:{lines[0]}: task '{task}' has {len(lines)} rows but one prompt (lines "
                f"{', '.join(map(str, lines[:5]))}): train and test need a distinct prompt each")
    parts = split(heads, train_ratio, seed, validation_ratio, validation_min_rows)
    train, val, test = ([m for head in part for m in (head, *joined.get(head["id"], ()))] for part in parts)
    return train, val, test, len(rows) - len(heads)


def _line(path: str, row: dict) -> int:
    if "line" in row:
        return row["line"]
    with open(path, "rb") as fh:  # an error message's line: read up to the row once
        return fh.read(row["at"]).count(b"\n") + 1
