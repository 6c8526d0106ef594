"""Streaming synthesis: teacher requests flow at the service's concurrency, each reply is curated as it
lands against one index (train ∪ earlier cycles ∪ kept so far; the test n-grams built once), and no
request is started once the kept target is in sight.

Replies are curated in draw order and requests are committed only at points fixed by the replies
already curated, never by timing: the same replies give the same files, and a stage resumed after a
kill (replies replayed from the journal) ends exactly as an uninterrupted one.

The target is split into quotas per task and, for a labelled task, per answer (duo/synth/mix.py). The
requests still in flight when a quota is reached were paid for: their rows of an open task go into the
cycle's file too (`surplus` in the metrics); rows of a label over its quota go to the reserve
(data/synth/reserve.jsonl), which the next cycle uses before asking the teacher anything.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

from duo.data import chat
from duo.synth import filters, mix, teacher
from duo.synth.curate import CurationIndex


def target_rows(p, cycle: int) -> int:
    """Kept pairs wanted this cycle (0: one round of seeds, whatever is kept)."""
    if not p.per_cycle:
        return 0
    return p.per_cycle * (2 ** (cycle - 1) if p.schedule == "doubling" else 1)


STALL_REQUESTS = 8  # this many replies in a row that fill no open bucket: the teacher cannot fill the rest


@dataclass
class Result:
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # candidate rows + reason, duplicate_of
    seeds: list[dict] = field(default_factory=list)     # {"draw", "seed_id", "pass"} per request
    reserve: list[dict] = field(default_factory=list)   # kept by curation, over a label's quota: for later cycles
    metrics: dict = field(default_factory=dict)


class _Tally:
    def __init__(self):
        self.candidates: Counter = Counter()
        self.kept: Counter = Counter()
        self.removed: dict[str, Counter] = defaultdict(Counter)
        self.requests = self.failed = self.unusable = self.pairs = 0
        self.buckets: Counter = Counter()    # kept rows per (task, label) bucket, within or over quota
        self.asked: Counter = Counter()      # requests seeded per bucket
        self.from_reserve = self.last_fill = 0

    def warnings(self) -> list[str]:
        """Filters that removed more than half of a task's candidates: the user's data may not fit them."""
        out = []
        for task, reasons in sorted(self.removed.items()):
            for reason, n in sorted(reasons.items()):
                if n * 2 > self.candidates[task]:
                    out.append(f"{task}: {reason} removed {n} of {self.candidates[task]} candidates")
        return out


class _Quota:
    """Kept pairs wanted per (task, label) bucket, and whether a new row fits."""

    def __init__(self, train: list[dict], p, cycle: int, target: int, requests: int, failed, val):
        focus = failed if p.focus == "failures" else None
        self.found = mix.labels(train)
        self.canonical = mix.canonical(train)
        self.target = target
        self.want = mix.quotas(train, target or requests, mix.task_weights(train, focus, val),
                               balanced=p.answer_shares == "balanced")
        streams = mix.seed_streams(train, self.want, self.found, mix.row_weights(train, focus, val), p.seed, cycle)
        self.planner = mix.Planner(self.want, streams)

    def place(self, row: dict, tally: _Tally) -> str:
        """'keep', 'reserve' (a label over its quota) or 'outside' (an answer that is not one of the labels)."""
        bucket = mix.bucket_of(row, self.found)
        if bucket is None:
            return "outside"
        if bucket[1] is not None:
            row["response"] = self.canonical[bucket]  # the label as train spells it
            if self.target and tally.buckets[bucket] >= self.want.get(bucket, 0):
                return "reserve"
        if tally.buckets[bucket] < self.want.get(bucket, 0):
            tally.last_fill = tally.requests
        tally.buckets[bucket] += 1
        return "keep"

    def filled(self, tally: _Tally) -> int:
        return sum(min(tally.buckets[k], q) for k, q in self.want.items())


def planned_seeds(train: list[dict], p, cycle: int, n: int, failed: list[dict] | None = None,
                  val: list[dict] = ()) -> list[dict]:
    """The seed rows of a cycle's first `n` requests as planned before any reply (what `duo estimate`
    prices; the real draws follow the same plan until replies fill buckets)."""
    quota = _Quota(train, p, cycle, target_rows(p, cycle), n, failed, val)
    asked, out = Counter(), []
    while len(out) < n and (choice := quota.planner.next(asked)) is not None:
        asked[choice[0]] += 1
        out.append(choice[2])
    return out


def synthesize(train: list[dict], test: list[dict], earlier: list[dict], svc, p, cfg, cycle: int,
               progress=None, reserve: list[dict] = (), failed: list[dict] | None = None,
               val: list[dict] = ()) -> Result:
    """Take what the reserve holds, then draw seeds, ask the teacher and curate each reply as it lands,
    until every bucket's quota of `target_rows` is kept (or, with per_cycle 0, one round of
    `seeds_per_cycle` requests), `synth.max_requests`, or the teacher stops filling the open buckets.
    `failed`: the last student's validation rows and scores (synth.focus: failures); `val` their texts."""
    thresholds = filters.derive(train, cfg)
    index = CurationIndex(train + earlier, test, cfg, thresholds, train=train)
    target = target_rows(p, cycle)
    limit = p.max_requests if target else min(p.seeds_per_cycle, len(train), p.max_requests)
    window = svc.batch_max if svc.batched else 2 * svc.concurrency
    quota = _Quota(train, p, cycle, target, limit, failed, val)
    out, tally = Result(), _Tally()
    pending: deque = deque()
    for row in reserve:  # paid for in an earlier cycle: checked again, used before anything new is asked
        verdict = index.check(row)
        if verdict:
            out.rejected.append(row | verdict)
            continue
        placed = quota.place(row, tally)
        if placed == "keep":
            out.kept.append(row)
            tally.from_reserve += 1
        else:
            out.reserve.append(row)

    def wanted() -> int:
        """New requests worth committing now, from the replies curated so far (never from timing)."""
        if not target:
            return limit
        remaining = target - quota.filled(tally)
        if remaining <= 0 or tally.requests - tally.last_fill >= STALL_REQUESTS:
            return 0
        rate = quota.filled(tally) / tally.requests if tally.requests else p.pairs_per_request
        return math.ceil(remaining / max(rate, 0.05)) - len(pending)

    def refill() -> None:
        for _ in range(min(window - len(pending), wanted(), limit - len(out.seeds))):
            choice = quota.planner.next(tally.buckets if target else tally.asked)
            if choice is None:
                break
            bucket, pass_no, row = choice
            tally.asked[bucket] += 1
            draw = len(out.seeds)
            out.seeds.append({"draw": draw, "seed_id": row["id"], "pass": pass_no})
            pending.append((draw, row, svc.submit(teacher.request_for(row, p, svc.supports_schema, cycle, draw))))
        svc.flush()

    try:
        while True:
            if not pending or not svc.batched:  # a batch is consumed whole before the next is sent
                refill()
            if not pending:
                break
            draw, row, future = pending.popleft()
            before = quota.filled(tally)
            _take(draw, row, future.result(), index, quota, cycle, out, tally)
            if progress:
                progress(min(quota.filled(tally), target) - min(before, target) if target else 1)
    except BaseException:
        svc.cancel_all()
        raise
    out.metrics = _metrics(cycle, target, out, tally, thresholds, index, quota, earlier)
    return out


def _take(draw: int, seed_row: dict, reply, index: CurationIndex, quota: _Quota, cycle: int, out: Result,
          tally: _Tally) -> None:
    tally.requests += 1
    tally.failed += reply.error is not None
    pairs = teacher.parse_pairs(reply.text)
    tally.unusable += reply.error is None and not pairs
    task = seed_row["task"]
    for k, pair in enumerate(pairs):
        row = {"id": f"syn-c{cycle}-d{draw}-{k}", "task": task, "prompt": pair["instruction"].strip(),
               "response": pair["response"].strip(), "seed_id": seed_row["id"], "cycle": cycle}
        row.update(chat.like(seed_row, row["prompt"]))  # the seed's system prompt and earlier turns, verbatim
        tally.pairs += 1
        tally.candidates[task] += 1
        verdict = index.check(row)
        placed = "rejected" if verdict else quota.place(row, tally)
        if placed == "outside":
            verdict = {"id": row["id"], "reason": "answer_not_a_label", "duplicate_of": None}
        if verdict:
            tally.removed[task][verdict["reason"]] += 1
            out.rejected.append(row | verdict)
        elif placed == "reserve":
            out.reserve.append(row)
        else:
            tally.kept[task] += 1
            out.kept.append(row)


def _metrics(cycle: int, target: int, out: Result, tally: _Tally, thresholds: dict, index: CurationIndex,
             quota: _Quota, earlier: list[dict]) -> dict:
    removed = Counter()
    for reasons in tally.removed.values():
        removed.update(reasons)
    pairs = tally.pairs or 1
    answers = {}
    for task, train_counts in quota.found.items():
        kept = Counter(mix.normalise_answer(r["response"]) for r in out.kept if r["task"] == task)
        overall = kept + Counter(mix.normalise_answer(r["response"]) for r in earlier if r["task"] == task)
        answers[task] = {"train": mix.shares(train_counts), "kept": dict(sorted(kept.items())),
                         "tvd": mix.tvd(kept, train_counts), "tvd_all_cycles": mix.tvd(overall, train_counts)}
    unfilled = {f"{t}/{lab}" if lab is not None else t: q - tally.buckets[t, lab]
                for (t, lab), q in quota.want.items() if target and tally.buckets[t, lab] < q}
    return {
        "cycle": cycle, "target": target, "requests": tally.requests, "failed_calls": tally.failed,
        "unusable_replies": tally.unusable, "pairs_generated": tally.pairs, "kept": len(out.kept),
        "surplus": max(0, len(out.kept) - target) if target else 0,
        "target_reached": bool(target) and quota.filled(tally) >= target,
        "kept_per_request": round(len(out.kept) / tally.requests, 3) if tally.requests else None,
        "keep_rate": round(len(out.kept) / pairs, 4),
        "exact_duplicate_rate": round((removed["exact_duplicate"] + removed["exact_instruction"]) / pairs, 4),
        "near_duplicate_rate": round(removed["near_duplicate"] / pairs, 4),
        "removed": dict(sorted(removed.items())),
        "lsh_candidates": index.lsh_candidates,
        "test_ngrams_shared_with_train": index.test.shared,
        "quotas": {f"{t}/{lab}" if lab is not None else t: q for (t, lab), q in sorted(quota.want.items(), key=str)},
        "unfilled": unfilled,
        "stalled": bool(unfilled) and tally.requests - tally.last_fill >= STALL_REQUESTS,
        "reserve": {"used": tally.from_reserve, "held": len(out.reserve)},
        "answers": answers,
        "by_task": {task: {"candidates": tally.candidates[task], "kept": tally.kept[task],
                           "removed": dict(sorted(tally.removed[task].items())),
                           "thresholds": filters.as_dict({task: t})[task]}
                    for task, t in sorted(thresholds.items())},
        "warnings": tally.warnings(),
    }
