"""`duo estimate`: what a cycle's service calls will cost, before any is paid, and whether the budgets
cover it. `make cycle` prints the one-line form before it starts the cycle.

- synthesis (cycle >= 1): the requests `synth.per_cycle` needs at the keep rate of the last cycle
  (`pairs_per_request` before any), at most `synth.max_requests`; their prompts rendered exactly as the
  stage renders them (seeds in draw order), those already journaled for the cycle are free;
- P-Match teacher answers (judge.pmatch, single mode): one per test prompt, free once journaled;
- judging: test prompts x infer.k x judge.m (x 2 orders pairwise, + the teacher answers), per judge
  of the panel, the reference standing in for the student's response it has not written yet.
Prompt tokens are counted with litellm's tokenizer for each model; completion tokens are the last
cycle's mean per reply where one ran, else max_tokens (the worst case). Dollars come from litellm's
price table, at the batch price with `service.batch`. The split is computed as prepare computes it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import click

from duo import contracts
from duo.data import chat, records, splits, text
from duo import params as params_mod

SAMPLE = 200  # prompts whose tokens are counted; the mean stands for the rest


@dataclass
class Part:
    role: str
    model: str
    calls: int                # expected calls to pay
    max_calls: int            # the most the stage may make (synth.max_requests)
    replayed: int             # answered from the journal, free
    prompt_tokens: float      # per call, mean
    completion_tokens: int    # per call, expected
    max_completion_tokens: int
    usd: float | None = None      # expected; None: litellm has no price
    usd_max: float | None = None  # max_calls at max_tokens

    def price(self, batch: bool) -> None:
        if _local(self.model):
            self.usd = self.usd_max = 0.0
            return
        from duo.service import pricing

        each = pricing.usd(self.model, self.prompt_tokens, self.completion_tokens, batch)
        worst = pricing.usd(self.model, self.prompt_tokens, self.max_completion_tokens, batch)
        self.usd = None if each is None else each * self.calls
        self.usd_max = None if worst is None else worst * self.max_calls


def _local(model: str) -> bool:
    return model == "local" or model.startswith("local:")


def _model(spec: str) -> str:
    """The litellm model string of a service spec (`name@http://...` carries an endpoint)."""
    return spec.split("@http", 1)[0]


def _mean_reply(stats: dict | None) -> int | None:
    """Completion tokens per reply of a stage's Stats (metrics), None without one."""
    if not stats:
        return None
    replies = stats.get("calls", 0) - stats.get("retries", 0) - stats.get("failed", 0) + \
        stats.get("cached", 0) - stats.get("reused", 0)
    return round(stats.get("completion_tokens", 0) / replies) if replies > 0 else None


def _tokens(model: str, messages: list[list]) -> float:
    """Mean prompt tokens over (a sample of) these requests' messages; 0 for the local model (free)."""
    if _local(model) or not messages:
        return 0
    from duo.service import pricing

    step = max(1, len(messages) // SAMPLE)
    sample = messages[::step]
    return sum(pricing.prompt_tokens(model, m) for m in sample) / len(sample)


def _journaled(name: str) -> set[int]:
    """Hashes of the keys a journal holds (read only: an estimate writes nothing)."""
    from duo.service import journal

    path = journal.journal_dir() / f"{name}.jsonl"
    keys: set[int] = set()
    if path.exists():
        journal._scan(path, 0, lambda _, rec: keys.add(hash(rec["key"])))
    return keys


def _split(params) -> tuple[list[dict], list[dict]]:
    """(train, test) as the prepare stage splits the coverage rows now."""
    p = params.coverage
    rows = [dict(chat.with_prompt(obj), line=line, key=text.key(chat.transcript(obj)))
            for line, _, obj in records.iter_records(p.path, contracts.COVERAGE_FIELDS, unique="id",
                                                     max_bytes=p.max_record_bytes, what="coverage.max_record_bytes",
                                                     check=chat.problem)]
    train, _, test, _ = splits.split_by_prompt(rows, p.train_ratio, p.seed, params.finetune.validation_ratio,
                                               params.finetune.validation_min_rows, p.path)
    return train, test


def synthesis(params, t: int, train: list[dict], last: dict | None) -> Part | None:
    from duo.service import Request
    from duo.synth import generate, teacher

    p = params.synth
    if t < 1:
        return None
    name = _model(p.model or params.service.model)
    key_model = "openai/local" if _local(name) else name  # the model string a Service keys requests with
    target = generate.target_rows(p, t)
    rate = (last or {}).get("kept_per_request") or p.pairs_per_request
    if target:
        calls, most = min(p.max_requests, math.ceil(target / max(rate, 0.05))), p.max_requests
    else:
        calls = most = min(p.seeds_per_cycle, len(train), p.max_requests)
    reqs: list[Request] = [teacher.request_for(row, p, _local(name), t, draw)
                           for draw, row in enumerate(generate.planned_seeds(train, p, t, most))]
    done = _journaled("synth") if not _local(name) else set()
    replayed = sum(hash(r.key(key_model)) in done for r in reqs)
    mean = _mean_reply((last or {}).get("service"))
    return Part("synthesis", name, max(0, calls - replayed), max(0, most - replayed), replayed,
                _tokens(name, [r.messages for r in reqs[:max(1, calls)]]), mean or p.max_tokens, p.max_tokens)


def judging(params, test: list[dict], last: dict | None) -> list[Part]:
    from duo.evaluation import judging as asking
    from duo.service import Request

    j, k = params.judge, params.infer.k
    stats = ((last or {}).get("judge") or {}).get("calls") or {}
    parts = []
    teacher_rows = len(test) if j.mode == "single" and j.pmatch else 0
    if teacher_rows:
        name = _model(params.synth.model or params.service.model)
        reqs = [Request(messages=[{"role": "user", "content": r["prompt"]}], max_tokens=params.infer.max_tokens,
                        temperature=0.0, seed=params.infer.seed) for r in test]  # as judging.teacher_answers
        done = _journaled("teacher") if not _local(name) else set()
        replayed = sum(hash(r.key("openai/local" if _local(name) else name)) in done for r in reqs)
        paid = teacher_rows - replayed
        parts.append(Part("P-Match teacher answers", name, paid, paid, replayed,
                          _tokens(name, [r.messages for r in reqs]),
                          _mean_reply(stats.get("teacher")) or params.infer.max_tokens, params.infer.max_tokens))
    per_response = j.m * (2 if j.mode == "pairwise" else 1)
    calls = (len(test) * k + teacher_rows) * per_response
    for name in j.models or [params.service.model]:
        stand_in = [{"prompt_id": r["id"], "sample_idx": 0, "prompt": r["prompt"], "reference": r["response"],
                     "response": r["response"]} for r in test]
        if j.mode == "pairwise":
            messages = [asking.pairwise_request(pred, True, 0, 0, j, _local(name)).messages for pred in stand_in]
        else:
            messages = [asking.judge_request(pred, 0, 0, j, _local(name)).messages for pred in stand_in]
        parts.append(Part(f"judge {name}", _model(name), calls, calls, 0, _tokens(_model(name), messages),
                          _mean_reply(stats.get(name)) or j.max_tokens, j.max_tokens))
    return parts


def forecast(t: int, params_path: str = "params.yaml") -> dict:
    """Every part of cycle t's service spend, the totals, and what the budgets say."""
    from duo.service import journal

    params = params_mod.load(params_path)
    train, test = _split(params)
    last_synth, last_eval = records.read_json(contracts.SYNTH_METRICS), records.read_json(contracts.EVAL_METRICS)
    parts = [p for p in [synthesis(params, t, train, last_synth)] if p] + judging(params, test, last_eval)
    batch = params.service.batch
    for part in parts:
        part.price(batch)
    usd = [p.usd for p in parts]
    usd_max = [p.usd_max for p in parts]
    spent = journal.ledger() if journal.journal_dir().exists() else journal.Spend()
    return {"cycle": t, "batch": batch, "parts": [asdict(p) for p in parts],
            "calls": sum(p.calls for p in parts), "max_calls": sum(p.max_calls for p in parts),
            "replayed": sum(p.replayed for p in parts),
            "prompt_tokens": round(sum(p.prompt_tokens * p.calls for p in parts)),
            "completion_tokens": round(sum(p.completion_tokens * p.calls for p in parts)),
            "usd": None if None in usd else round(sum(usd), 6),
            "usd_max": None if None in usd_max else round(sum(usd_max), 6),
            "unpriced": sorted({p.model for p in parts if p.usd is None}),
            "spent_cycle": round(spent.cycle(t), 6), "spent_total": round(spent.total(), 6),
            "budget_usd": params.service.budget_usd, "budget_total_usd": params.service.budget_total_usd}


def _cover(cap: float, spent: float, usd: float | None, usd_max: float | None, key: str, scope: str) -> str:
    if not cap:
        return ""
    left = cap - spent
    if usd is None:
        return f"; {key} ${cap:g}: cannot be enforced (no price)"
    verdict = ("covers it" if usd_max is not None and usd_max <= left else
               "covers the expected cost, not the most" if usd <= left else "does NOT cover it")
    return f"; {key} ${cap:g} ({_usd(spent)} spent {scope}): {verdict}"


def _usd(x: float) -> str:
    return f"${x:.4f}" if x < 10 else f"${x:,.2f}"


def summary(f: dict) -> str:
    """The one line `make cycle` prints."""
    roles = ", ".join(f"{p['role']} {p['calls']}" + (f" (+{p['replayed']} replayed)" if p["replayed"] else "")
                      for p in f["parts"])
    models = {p["model"] for p in f["parts"]}
    if all(_local(m) for m in models):
        return f"estimate: cycle {f['cycle']}: {roles} calls on the local model: $0"
    if f["usd"] is None:
        cost = f"cost unknown: litellm has no price for {', '.join(f['unpriced'])}"
    else:
        price = "batch prices" if f["batch"] else "prices"
        cost = (f"{f['prompt_tokens']:,} prompt + {f['completion_tokens']:,} completion tokens, about "
                f"{_usd(f['usd'])} (at most {_usd(f['usd_max'])}) at litellm's {price}")
    return (f"estimate: cycle {f['cycle']}: {roles} calls; {cost}"
            + _cover(f["budget_usd"], f["spent_cycle"], f["usd"], f["usd_max"], "service.budget_usd",
                     f"in cycle {f['cycle']}")
            + _cover(f["budget_total_usd"], f["spent_total"], f["usd"], f["usd_max"], "service.budget_total_usd",
                     "in all"))


def line(t: int, params_path: str = "params.yaml") -> str:
    """`summary` of cycle t, or why there is none: a forecast never stops a cycle (the stages report
    the same problems with their own messages)."""
    try:
        return summary(forecast(t, params_path))
    except click.ClickException as exc:
        return f"estimate: unavailable ({exc.message.strip().splitlines()[-1]})"
    except Exception as exc:  # a forecast must not stop the cycle it forecasts
        return f"estimate: unavailable ({type(exc).__name__}: {str(exc)[:200]})"


def render(f: dict) -> str:
    """The table `duo estimate` prints above the line."""
    rows = [f"{'':28} {'calls':>7} {'max':>7} {'replayed':>8} {'prompt/call':>11} {'reply/call':>10} "
            f"{'USD':>10} {'USD max':>10}"]
    for p in f["parts"]:
        def usd(x):
            return "?" if x is None else f"{x:.4f}"

        rows.append(f"{p['role'][:28]:28} {p['calls']:>7} {p['max_calls']:>7} {p['replayed']:>8} "
                    f"{p['prompt_tokens']:>11.0f} {p['completion_tokens']:>10} {usd(p['usd']):>10} "
                    f"{usd(p['usd_max']):>10}")
    return "\n".join(rows + [summary(f)])


def next_cycle(params_path: str = "params.yaml") -> int | None:
    """The cycle `make cycle` runs next (None: the gate passed or gate.max_cycles is reached)."""
    from duo.loop import experiments

    params = params_mod.load(params_path)
    try:
        stale = experiments.stale_stages()
    except click.ClickException:
        stale = []
    action, _ = experiments.next_step(params.cycle, records.read_json(contracts.VERDICT), stale, params.gate.max_cycles)
    return {"run": params.cycle, "next": params.cycle + 1}.get(action)
