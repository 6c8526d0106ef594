"""Asking the judge: one request per (response, judge sample), re-asked after an unusable reply, in an
order that lets a local llama.cpp server reuse each prompt's prefix; the teacher's own answers for
P-Match."""
from __future__ import annotations

from duo import contracts, progress, prompts, service
from duo.data import chat
from duo.evaluation import scores as judge


def _request(text: str, schema: dict, judge_idx: int, attempt: int, p, structured: bool, *seed_parts):
    fmt = {"type": "json_object", "schema": schema} if structured else {"type": "json_object"}
    return service.Request(messages=[{"role": "user", "content": text}], sample_idx=judge_idx, attempt=attempt,
                           temperature=p.temperature, max_tokens=p.max_tokens,
                           seed=contracts.derived_seed(p.seed, *seed_parts, judge_idx, attempt), response_format=fmt)


def judge_request(pred: dict, judge_idx: int, attempt: int, p, structured: bool) -> service.Request:
    text = prompts.render("judge.txt", instruction=chat.transcript(pred), human_response=pred["reference"],
                          lm_response=pred["response"])
    return _request(text, judge.SCHEMA, judge_idx, attempt, p, structured, pred["prompt_id"], pred["sample_idx"])


def pairwise_request(pred: dict, student_first: bool, judge_idx: int, attempt: int, p, structured: bool):
    a, b = (pred["response"], pred["reference"]) if student_first else (pred["reference"], pred["response"])
    text = prompts.render("judge_pairwise.txt", instruction=chat.transcript(pred), response_a=a, response_b=b)
    return _request(text, judge.PAIRWISE_SCHEMA, judge_idx, attempt, p, structured, pred["prompt_id"],
                    pred["sample_idx"], "AB" if student_first else "BA")


def _ask(jobs: list, make_request, parse, svc: service.Service, p, desc: str) -> list[tuple]:
    """(value, error, raw) per job; an unusable reply is re-asked up to max_parse_retries times."""
    results: dict[int, tuple] = {}
    pending = list(range(len(jobs)))
    bar = progress.bar(len(jobs), desc, unit="call")
    for attempt in range(p.max_parse_retries + 1):
        if not pending:
            break
        replies = svc.map([make_request(jobs[i], attempt) for i in pending])
        retry = []
        for i, reply in zip(pending, replies):
            if reply.error:
                results[i] = (None, f"call failed: {reply.error}", None)
            else:
                try:
                    results[i] = (parse(reply.text), None, reply.text)
                except judge.JudgeParseError as exc:
                    results[i] = (None, f"unparseable: {exc}", reply.text)
            if results[i][1] and attempt < p.max_parse_retries:
                retry.append(i)
            else:
                bar.update(1)
        pending = retry
    bar.close()
    return [results[i] for i in range(len(jobs))]


def judge_single(preds: list[dict], svc, p, name: str, subject: str, teacher: list[dict] = (),
                 rated: list[dict] = ()) -> list[dict]:
    """Judge rows of `preds` (as `subject`), of `teacher` (the service's own answers, for P-Match) and
    `rated` (people's ratings of responses not among `preds`, for calibration: asked exactly as when they
    were predictions, so a journaled reply is replayed, not paid again; their rows carry the rating key).
    A prompt's samples and its teacher answer share the rubric, instruction and reference; they are
    asked one after another, interleaved with other prompts' (`_interleave`), so a local llama.cpp server
    evaluates that prefix once per prompt. Rows come back students first, in input order."""
    items = [(pred, subject) for pred in preds] + [(row, "teacher") for row in teacher] + \
        [(row, "rated") for row in rated]
    groups: dict[str, list[int]] = {}
    for k, (pred, _) in enumerate(items):
        groups.setdefault(pred["prompt_id"], []).append(k)
    jobs = [(k, j) for k in _interleave(list(groups.values()), svc.concurrency) for j in range(p.m)]
    desc = f"judge {subject}" + (" + teacher" if teacher else "") + (" + rated" if rated else "")
    out = _ask(jobs, lambda job, a: judge_request(items[job[0]][0], job[1], a, p, svc.supports_schema),
               judge.parse_reply, svc, p, desc)
    rows = []
    for (k, j), (scores, error, raw) in sorted(zip(jobs, out), key=lambda pair: pair[0]):
        pred, who = items[k]
        rows.append({"prompt_id": pred["prompt_id"], "sample_idx": pred["sample_idx"], "judge_idx": j,
                     "judge": name, "subject": who, "similarity": scores and scores["similarity"],
                     "precision": scores and scores["precision"], "error": error, "raw": raw,
                     **({"key": pred["key"]} if who == "rated" else {})})
    return rows


def _interleave(groups: list[list[int]], width: int) -> list[int]:
    """Items of `width` prompts at a time, round-robin: the requests in flight together are for different
    prompts, and a prompt's next sample is asked when its previous one is done, so a llama.cpp server
    routes it to the slot already holding that prompt's rubric, instruction and reference (prefix
    reuse) instead of evaluating them again on another slot."""
    order = []
    for start in range(0, len(groups), width):
        chunk = groups[start:start + width]
        for k in range(max(map(len, chunk))):
            order += [group[k] for group in chunk if k < len(group)]
    return order


def judge_pairwise(preds: list[dict], svc, p, name: str) -> list[dict]:
    jobs = [(pred, j, order) for pred in preds for j in range(p.m) for order in (True, False)]
    out = _ask(jobs, lambda job, a: pairwise_request(job[0], job[2], job[1], a, p, svc.supports_schema),
               judge.parse_pairwise, svc, p, "judge pairwise")
    rows = []
    for k in range(0, len(jobs), 2):
        pred, j, _ = jobs[k]
        (first, e1, r1), (second, e2, r2) = out[k], out[k + 1]
        error = e1 or e2
        rows.append({"prompt_id": pred["prompt_id"], "sample_idx": pred["sample_idx"], "judge_idx": j,
                     "judge": name, "subject": "student", "verdicts": [first, second],
                     "outcome": None if error else judge.pairwise_outcome(first, second), "error": error,
                     "raw": [r1, r2]})
    return rows


def teacher_answers(test: list[dict], svc, infer_p) -> list[dict]:
    """The service's own answer to each test prompt, once (journaled), as a prediction row."""
    reqs = [service.Request(messages=chat.messages(r), max_tokens=infer_p.max_tokens,
                            temperature=0.0, seed=infer_p.seed) for r in test]
    replies = svc.map(reqs)
    return [{"prompt_id": r["id"], "sample_idx": 0, "task": r["task"], "prompt": r["prompt"], **chat.context_of(r),
             "reference": r["response"], "response": reply.text or "", "error": reply.error}
            for r, reply in zip(test, replies)]
