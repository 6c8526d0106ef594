"""Streaming synthesis: teacher requests flow at the service's concurrency, each reply is curated as it
lands against one index (train ∪ earlier cycles ∪ kept so far; the test n-grams built once), and no
request is started once the kept target is in sight.

Replies are curated in draw order and requests are committed only at points fixed by the replies
already curated, never by timing: the same replies give the same files, and a stage resumed after a
kill (replies replayed from the journal) ends exactly as an uninterrupted one. The requests still in
flight when the target is reached were paid for: their kept pairs go into the cycle's file too
(`surplus` in the metrics), so a cycle's file holds at least the target.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

from duo import chat
from duo.synth import filters, teacher
from duo.synth.curate import CurationIndex


def target_rows(p, cycle: int) -> int:
    """Kept pairs wanted this cycle (0: one round of seeds, whatever is kept)."""
    if not p.per_cycle:
        return 0
    return p.per_cycle * (2 ** (cycle - 1) if p.schedule == "doubling" else 1)


@dataclass
class Result:
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # candidate rows + reason, duplicate_of
    seeds: list[dict] = field(default_factory=list)     # {"draw", "seed_id", "pass"} per request
    metrics: dict = field(default_factory=dict)


class _Tally:
    def __init__(self):
        self.candidates: Counter = Counter()
        self.kept: Counter = Counter()
        self.removed: dict[str, Counter] = defaultdict(Counter)
        self.requests = self.failed = self.unusable = self.pairs = 0

    def warnings(self) -> list[str]:
        """Filters that removed more than half of a task's candidates: the user's data may not fit them."""
        out = []
        for task, reasons in sorted(self.removed.items()):
            for reason, n in sorted(reasons.items()):
                if n * 2 > self.candidates[task]:
                    out.append(f"{task}: {reason} removed {n} of {self.candidates[task]} candidates")
        return out


def synthesize(train: list[dict], test: list[dict], earlier: list[dict], svc, p, cfg, cycle: int,
               progress=None) -> Result:
    """Draw seeds, ask the teacher, curate each reply as it lands, until `target_rows` pairs are kept
    (or, with per_cycle 0, one round of `seeds_per_cycle` requests), or `synth.max_requests`."""
    thresholds = filters.derive(train, cfg)
    index = CurationIndex(train + earlier, test, cfg, thresholds)
    target = target_rows(p, cycle)
    limit = p.max_requests if target else min(p.seeds_per_cycle, len(train), p.max_requests)
    window = svc.batch_max if svc.batched else 2 * svc.concurrency
    seeds = teacher.seed_stream(train, p.seed, cycle)
    out, tally = Result(), _Tally()
    pending: deque = deque()

    def wanted() -> int:
        """New requests worth committing now, from the replies curated so far (never from timing)."""
        if not target:
            return limit
        remaining = target - len(out.kept)
        if remaining <= 0:
            return 0
        rate = len(out.kept) / tally.requests if tally.requests else p.pairs_per_request
        return math.ceil(remaining / max(rate, 0.05)) - len(pending)

    def refill() -> None:
        for _ in range(min(window - len(pending), wanted(), limit - len(out.seeds))):
            draw = len(out.seeds)
            pass_no, row = next(seeds)
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
            before = len(out.kept)
            _take(draw, row, future.result(), index, cycle, out, tally)
            if progress:
                progress(min(len(out.kept), target) - min(before, target) if target else 1)
    except BaseException:
        svc.cancel_all()
        raise
    out.metrics = _metrics(cycle, target, out, tally, thresholds, index)
    return out


def _take(draw: int, seed_row: dict, reply, index: CurationIndex, cycle: int, out: Result, tally: _Tally) -> None:
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
        if verdict:
            tally.removed[task][verdict["reason"]] += 1
            out.rejected.append(row | verdict)
        else:
            tally.kept[task] += 1
            out.kept.append(row)


def _metrics(cycle: int, target: int, out: Result, tally: _Tally, thresholds: dict, index: CurationIndex) -> dict:
    removed = Counter()
    for reasons in tally.removed.values():
        removed.update(reasons)
    pairs = tally.pairs or 1
    return {
        "cycle": cycle, "target": target, "requests": tally.requests, "failed_calls": tally.failed,
        "unusable_replies": tally.unusable, "pairs_generated": tally.pairs, "kept": len(out.kept),
        "surplus": max(0, len(out.kept) - target) if target else 0,
        "target_reached": bool(target) and len(out.kept) >= target,
        "kept_per_request": round(len(out.kept) / tally.requests, 3) if tally.requests else None,
        "keep_rate": round(len(out.kept) / pairs, 4),
        "exact_duplicate_rate": round((removed["exact_duplicate"] + removed["exact_instruction"]) / pairs, 4),
        "near_duplicate_rate": round(removed["near_duplicate"] / pairs, 4),
        "removed": dict(sorted(removed.items())),
        "lsh_candidates": index.lsh_candidates,
        "by_task": {task: {"candidates": tally.candidates[task], "kept": tally.kept[task],
                           "removed": dict(sorted(tally.removed[task].items())),
                           "thresholds": filters.as_dict({task: t})[task]}
                    for task, t in sorted(thresholds.items())},
        "warnings": tally.warnings(),
    }
