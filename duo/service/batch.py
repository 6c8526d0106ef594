"""Provider batch jobs (OpenAI-style /v1/files + /v1/batches, through litellm): about half the price of
live calls at the big providers, answered within the provider's completion window (minutes to hours).

A job's id and the keys it carries are recorded (.duo/batches/<journal>.jsonl, fsync'd) right after it
is created, before the first status check: a stage killed while it waits resumes polling the same job
instead of paying for a new one. Every answer of a finished job is journaled like a live reply (also the
ones this run no longer needed: they were paid for), once: a job resumed after a kill that came while
its answers were being journaled skips the ones already there. Failed lines are failures, never
journaled, and a rerun asks for them again in a new job.

Under a budget a job carries only the requests whose worst cases (at the batch price) fit beside what is
spent and held (duo/service/budget.py); the rest wait, and once the job is done they stop the stage
with one line saying how many wait. A job already sent (resumed) is held in full: it will be paid.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

from duo.service import pricing
from duo.service.calls import Reply
from duo.service.errors import ServiceStop
from duo.service.journal import state_dir

BATCH_DIR = Path(".duo/batches")  # relative to the project: under journal.state_dir()
TERMINAL = {"completed", "failed", "expired", "cancelled"}


class Registry:
    """The jobs one journal has sent: {"batch_id", "keys", "cycle"} lines, then {"batch_id", "done"}."""

    def __init__(self, name: str):
        directory = state_dir() / "batches"
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.jsonl"
        self.open_jobs: dict[str, list[str]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # torn by a crash
                if rec.get("done"):
                    self.open_jobs.pop(rec["batch_id"], None)
                elif isinstance(rec.get("keys"), list):
                    self.open_jobs[rec["batch_id"]] = rec["keys"]

    def _append(self, rec: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, batch_id: str, keys: list[str], cycle: int) -> None:
        self._append({"batch_id": batch_id, "keys": keys, "cycle": cycle})
        self.open_jobs[batch_id] = keys

    def close(self, batch_id: str, status: str) -> None:
        self._append({"batch_id": batch_id, "done": status})
        self.open_jobs.pop(batch_id, None)


def _line(svc, key: str, req) -> dict:
    body = {k: v for k, v in svc.call_kwargs(req).items() if k not in ("api_base", "api_key")}
    body["model"] = svc.model.split("/", 1)[1] if "/" in svc.model else svc.model
    return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _cost(svc, usage: dict) -> float | None:
    """The provider's batch price for one answer (litellm's table; half the live price where it lists
    no batch price); None where litellm knows no price at all."""
    return pricing.usd(svc.model, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), batch=True)


async def run(svc, items: list) -> None:
    """Answer [(Request, Future)]: journal replays first, then jobs already sent for the rest (resumed),
    then one new job for what no job carries."""
    todo: dict[str, tuple] = {}
    for req, fut in items:
        cached = svc.replay(req)
        if cached:
            fut.set_result(cached)
        else:
            todo.setdefault(req.key(svc.model), (req, []))[1].append(fut)
    if not todo:
        return
    registry = Registry(svc.journal_name or "service")
    creds = {"custom_llm_provider": svc.provider, **({"api_base": svc.api_base} if svc.api_base else {})}
    jobs = [bid for bid, keys in registry.open_jobs.items() if todo.keys() & set(keys)]
    carried = {k for bid in jobs for k in registry.open_jobs[bid]}
    fresh = [k for k in todo if k not in carried]
    holds, waiting = [], []
    if svc.stopped:
        raise ServiceStop(svc.stopped)
    if svc.purse:
        fresh, waiting, holds = _fit(svc, todo, carried, fresh)
    try:
        await _send_and_finish(svc, registry, todo, jobs, fresh, creds)
    finally:
        for rid in holds:
            svc.purse.release(rid)
    for key in waiting:
        for fut in todo[key][1]:
            if not fut.done():
                fut.set_exception(ServiceStop(svc.stopped))
    for key, (_, futures) in todo.items():
        for fut in futures:
            if not fut.done():
                fut.set_result(Reply(text=None, error="the provider's batch job returned no answer for it"))
                svc.stats.failed += 1


def _fit(svc, todo: dict, carried: set, fresh: list) -> tuple[list, list, list]:
    """(keys to send, keys that wait, reservations): jobs already sent are held in full; of the new
    requests, the longest prefix whose worst cases fit."""
    purse, holds = svc.purse, []
    costs = purse.worst_cases([todo[k][0] for k in fresh], batch=True)
    sent = purse.worst_cases([todo[k][0] for k in todo if k in carried], batch=True)
    if costs is None or sent is None:
        raise ServiceStop(svc.unpriced())
    if sent:
        holds.append(purse.hold([sum(sent)], force=True)[1])
    n, rid, over = purse.hold(costs) if costs else (0, None, None)
    holds.append(rid)
    if n < len(fresh):
        what = (f"{n} of {len(fresh)} requests went out as a batch job and {len(fresh) - n} wait: they")
        svc.stopped = purse.refusal(over, sum(costs[n:]), what, batch=True)
    return fresh[:n], fresh[n:], holds


async def _send_and_finish(svc, registry: "Registry", todo: dict, jobs: list, fresh: list, creds: dict) -> None:
    import litellm

    if fresh:
        data = "".join(json.dumps(_line(svc, k, todo[k][0])) + "\n" for k in fresh).encode()
        upload = io.BytesIO(data)
        upload.name = "duo-batch.jsonl"
        file = await litellm.acreate_file(file=upload, purpose="batch", **creds)
        job = await litellm.acreate_batch(completion_window="24h", endpoint="/v1/chat/completions",
                                          input_file_id=file.id, **creds)
        registry.add(job.id, fresh, svc.cycle)
        jobs.append(job.id)
        svc.stats.calls += len(fresh)
    svc.stats.batches += len(jobs)
    await asyncio.gather(*(_finish(svc, registry, bid, todo, creds) for bid in jobs))


async def _finish(svc, registry: Registry, batch_id: str, todo: dict, creds: dict) -> None:
    import litellm
    from litellm import ModelResponse

    while True:
        job = await litellm.aretrieve_batch(batch_id=batch_id, **creds)
        if job.status in TERMINAL:
            break
        await asyncio.sleep(svc.batch_poll_s)
    answers = b""
    if job.output_file_id:  # also for an expired job: the lines it finished
        answers = (await litellm.afile_content(file_id=job.output_file_id, **creds)).content
    for raw in answers.splitlines():
        line = json.loads(raw)
        key, resp = line.get("custom_id"), line.get("response") or {}
        if svc.journal is not None and svc.journal.get(key) is not None:
            continue  # journaled before a kill stopped this loop: paid once, recorded once (replayed)
        if resp.get("status_code") == 200:
            body = resp["body"]
            reply = svc.reply_of(ModelResponse(**body), price=False)
            reply.cost_usd = _cost(svc, body.get("usage") or {})
        else:
            err = (resp.get("body") or {}).get("error") or line.get("error") or {}
            reply = Reply(text=None, error=f"batch line failed ({resp.get('status_code')}): {str(err)[:300]}")
        svc.record(key, reply)  # journaled even when no longer wanted here: it was paid for
        for fut in todo.get(key, (None, []))[1]:
            if not fut.done():
                fut.set_result(reply)
    registry.close(batch_id, job.status)
