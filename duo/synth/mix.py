"""What a cycle asks the teacher for: how many kept pairs of each task, and, for a task whose answers come
from a small closed set (labels), of each answer; and which train rows seed the requests.

A teacher asked for pairs "like this example" skews labels toward the majority (measured: 74% of one
class where train had 60%); trained on that, the student learned the skew and lost 14 points of exact
match. So a labelled task's kept rows keep each answer's share of the train split (or equal shares,
`synth.answer_shares: balanced`): seeds are drawn by answer, and curation holds a label's overflow in
reserve for later cycles instead of training on it. One task may hold several templates with labels of
their own (a paraphrase yes/no beside a five-star rating): balanced shares are equal within each template's
labels, and the templates keep their train shares.

With `synth.focus: failures`, the last cycle's student, scored on the validation split (never test),
steers the seeds: tasks with more failed validation rows get a larger share of the pairs, and within a
task, the train rows most like the failed validation rows seed more requests."""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from typing import Iterator

from duo.evaluation.reference import normalise_answer
from duo.synth.filters import words

MAX_LABELS = 20     # more distinct answers than this: not a label set
FAILED_BELOW = 50   # a validation row scoring below this (0-100) is a failure
NEIGHBOURS = 3      # train rows that each failed validation row lends weight to
TEMPLATE_WORDS = 0.8  # a word in this share of a label's prompts belongs to the template the label answers
SAME_TEMPLATE = 0.5   # two labels whose template words overlap this much (of the smaller set) share one


def labels(rows: list[dict]) -> dict[str, Counter]:
    """Per task whose answers form a small closed set (at most MAX_LABELS distinct normalised answers, each
    seen twice on average): the count of each answer. Open tasks are absent."""
    by_task: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        by_task[row["task"]][normalise_answer(row["response"])] += 1
    return {task: counts for task, counts in sorted(by_task.items())
            if 1 < len(counts) <= MAX_LABELS and sum(counts.values()) >= 2 * len(counts)}


def canonical(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(task, normalised answer) -> the answer as train spells it most often: what a kept row is given."""
    spelled: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for row in rows:
        spelled[row["task"], normalise_answer(row["response"])][row["response"].strip()] += 1
    return {key: counts.most_common(1)[0][0] for key, counts in spelled.items()}


def families(rows: list[dict], counts: Counter) -> dict[str, int]:
    """label -> its family: the labels that answer one question form. A label's template is the words of
    at least TEMPLATE_WORDS of its prompts; two labels are apart only when both have a template and the
    templates share less than SAME_TEMPLATE of the smaller one, so free-form prompts (no template) make
    one family and balance as before."""
    template = {}
    for label in counts:
        bags = [set(words(r["prompt"])) for r in rows if normalise_answer(r["response"]) == label]
        seen = Counter(w for bag in bags for w in bag)
        template[label] = {w for w, n in seen.items() if n >= TEMPLATE_WORDS * len(bags)}
    parent = {label: label for label in counts}

    def root(label: str) -> str:
        while parent[label] != label:
            label = parent[label]
        return label

    for a, b in itertools.combinations(sorted(counts), 2):
        ta, tb = template[a], template[b]
        if not ta or not tb or len(ta & tb) >= SAME_TEMPLATE * min(len(ta), len(tb)):
            parent[root(b)] = root(a)
    ids: dict[str, int] = {}
    return {label: ids.setdefault(root(label), len(ids)) for label in sorted(counts)}


def shares(counts: Counter, family: dict[str, int] | None = None) -> dict[str, float]:
    """Each label's share of a task's kept rows: its train share, or with `family` (balanced) its family's
    train share split equally among the family's labels."""
    total = sum(counts.values())
    if family is None:
        return {label: n / total for label, n in sorted(counts.items())}
    size, in_family = Counter(family.values()), Counter()
    for label, n in counts.items():
        in_family[family[label]] += n
    return {label: in_family[family[label]] / total / size[family[label]] for label in sorted(counts)}


def tvd(a: Counter | dict, b: Counter | dict) -> float | None:
    """Total variation distance between two answer distributions (counts or shares); None if either is empty."""
    ta, tb = sum(a.values()), sum(b.values())
    if not ta or not tb:
        return None
    return round(0.5 * sum(abs(a.get(k, 0) / ta - b.get(k, 0) / tb) for k in set(a) | set(b)), 4)


def task_weights(train: list[dict], failed: list[dict] | None, val: list[dict] = ()) -> dict[str, float]:
    """Each task's share of a cycle's pairs: its share of train rows, scaled by (1/2 + the share of its
    validation rows `val` the last student failed) when that student's validation record is given.
    `failed` holds only the rows it got less than fully right, so the share is taken of `val`'s rows:
    of `failed` alone every exact-match task would count as failed throughout."""
    n = Counter(row["task"] for row in train)
    mult = {task: 1.0 for task in n}
    if failed is not None:
        rows = Counter(r["task"] for r in val)
        bad = Counter(r["task"] for r in failed if r["score"] < FAILED_BELOW)
        mult = {task: 0.5 + (min(bad[task] / rows[task], 1.0) if rows[task] else 0.5) for task in n}
    total = sum(n[t] * mult[t] for t in n)
    return {task: n[task] * mult[task] / total for task in sorted(n)}


def quotas(train: list[dict], target: int, weights: dict[str, float], balanced: bool = False) -> dict:
    """{(task, label or None): kept pairs wanted}: the target split over tasks by `weights`, and over a
    labelled task's answers by their train shares (or equally). Largest remainders keep the sum exact."""
    found = labels(train)
    parts = {}
    for task, w in weights.items():
        if task in found:
            family = families([r for r in train if r["task"] == task], found[task]) if balanced else None
            for label, share in shares(found[task], family).items():
                parts[task, label] = target * w * share
        else:
            parts[task, None] = target * w
    out = {key: math.floor(v) for key, v in parts.items()}
    for key in sorted(parts, key=lambda k: (out[k] - parts[k], str(k)))[:target - sum(out.values())]:
        out[key] += 1
    return out


def bucket_of(row: dict, found: dict[str, Counter]) -> tuple[str, str | None] | None:
    """A row's (task, label) bucket; None when a labelled task's row carries an answer outside its labels."""
    if row["task"] not in found:
        return row["task"], None
    label = normalise_answer(row["response"])
    return (row["task"], label) if label in found[row["task"]] else None


def row_weights(train: list[dict], failed: list[dict] | None, val: list[dict]) -> dict[str, float]:
    """Per train row: 1, plus 1 for every failed validation row of its task it is among the NEIGHBOURS most
    alike (word-set Jaccard) — "rows like the ones the student gets wrong"."""
    weights = {row["id"]: 1.0 for row in train}
    if not failed:
        return weights
    text = {row["id"]: row["prompt"] + " " + row["response"] for row in val}
    bags = {row["id"]: set(words(row["prompt"])) for row in train}
    by_task = defaultdict(list)
    for row in train:
        by_task[row["task"]].append(row["id"])
    for miss in failed:
        if miss["score"] >= FAILED_BELOW or miss["id"] not in text:
            continue
        probe = set(words(text[miss["id"]]))

        def alike(rid: str) -> float:
            return len(probe & bags[rid]) / (len(probe | bags[rid]) or 1)

        for rid in sorted(by_task[miss["task"]], key=lambda r: (-alike(r), r))[:NEIGHBOURS]:
            weights[rid] += 1.0
    return weights


def seed_streams(train: list[dict], buckets: dict, found: dict, weights: dict[str, float], seed: int,
                 cycle: int) -> dict:
    """Per bucket, an endless stream of (pass, row): the bucket's train rows without replacement in a
    seeded order (weighted by `weights`: heavier rows come earlier), reshuffled each pass."""
    members = defaultdict(list)
    for row in sorted(train, key=lambda r: r["id"]):
        key = bucket_of(row, found)
        if key in buckets:
            members[key].append(row)

    def stream(key, rows) -> Iterator[tuple[int, dict]]:
        for pass_no in range(1_000_000):
            name = "" if key[1] is None and len(buckets) == 1 else f":{key[0]}:{key[1]}"
            rng = random.Random(f"{seed}:{cycle}:{pass_no}{name}")
            if all(weights.get(r["id"], 1.0) == 1.0 for r in rows):
                order = rows[:]
                rng.shuffle(order)
            else:  # weighted sampling without replacement (Efraimidis-Spirakis keys)
                order = sorted(rows, key=lambda r: -rng.random() ** (1.0 / weights.get(r["id"], 1.0)))
            yield from ((pass_no, row) for row in order)

    return {key: stream(key, rows) for key, rows in members.items()}


class Planner:
    """Which bucket the next request seeds from: smooth weighted round-robin over the buckets by quota,
    skipping buckets already full. Decisions depend only on the kept counts, never on timing."""

    def __init__(self, quota: dict, streams: dict):
        self.quota = {k: q for k, q in quota.items() if q > 0 and k in streams}
        self.streams = streams
        self.current = {k: 0.0 for k in self.quota}

    def next(self, kept: Counter) -> tuple[tuple, int, dict] | None:
        open_ = [k for k in self.quota if kept[k] < self.quota[k]]
        if not open_:
            return None
        total = sum(self.quota[k] for k in open_)
        for k in open_:
            self.current[k] += self.quota[k]
        key = max(open_, key=lambda k: (self.current[k], str(k)))
        self.current[key] -= total
        pass_no, row = next(self.streams[key])
        return key, pass_no, row
