"""The review page's first panel: the recorded and imported exchanges, each accepted (with a task and,
if edited, a better response), rejected, or left pending. Accepted exchanges are coverage rows.

Where things live:
- the exchanges: data/traffic/*.jsonl (`duo record`) and any file `duo import` reads, given on the
  command line (its rows keep their task, if they name one);
- the decisions: data/review.json, `{key: {"status", "task", "response", "at"}}` (atomic writes): a
  rejection or an edit of a pending exchange survives a restart;
- the rows: data/coverage.jsonl, rewritten atomically on every decision: the rows the review manages
  (id `rec-` + 16 hex of a hash of the exchange's key: stable across runs) follow the decisions, every
  other row of the file is kept as it is. A bad line in the existing file stops `duo review` at start
  with `file:line: reason`, as it stops prepare, so nothing the review writes can hide it.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from duo.app import traffic
from duo.data import chat, importer, openai_logs, records

STATUSES = ("pending", "accepted", "rejected")


def row_id(key: str) -> str:
    return "rec-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Item:
    key: str
    messages: list[dict]
    response: str
    task: str | None
    source: str
    at: str | None = None
    model: str | None = None


def from_traffic(directory: Path) -> list[Item]:
    """Finished exchanges of duo record (failed calls and replies without text are not pairs)."""
    out = []
    for path in traffic.files(directory):
        for lineno, obj in traffic.read(path):
            try:
                conv, response = openai_logs.pair(obj)
            except openai_logs.RowError:
                continue
            out.append(Item(str(obj.get("id") or f"{path.name}:{lineno}"), conv, response, None,
                            f"{path}:{lineno}", obj.get("at"), obj.get("model")))
    return out


def from_file(path: Path, task: str | None) -> list[Item]:
    """The rows `duo import` makes of a file (invalid records skipped), their tasks kept."""
    fmt = importer.detect_format(path, None)
    mapping = importer.Mapping(task=task, task_optional=True)
    rows, _ = importer.run(path, fmt, mapping, skip_invalid=True)
    return [Item(r["id"], chat.messages(r), r["response"], r.get("task"), str(path)) for r in rows]


class Exchanges:
    """The panel's state and actions (thread-safe: the server handles requests in threads)."""

    name, title = "exchanges", "Exchanges"

    def __init__(self, items: list[Item], coverage: Path, decisions: Path):
        seen: dict[str, Item] = {}
        for item in items:
            seen.setdefault(item.key, item)  # a traffic file given again as a source is one exchange
        self.items = list(seen.values())
        self.by_key = {i.key: i for i in self.items}
        self.coverage, self.decisions_path = coverage, decisions
        self._lock = threading.Lock()
        # a bad line stops here (file:line), as it stops prepare: never rewritten away
        self.rows = chat.read_coverage(coverage) if coverage.exists() and coverage.stat().st_size else []
        self.decisions: dict[str, dict] = records.read_json(decisions, default={}) or {}
        managed = {row_id(k) for k in self.decisions}
        keys = {row_id(i.key): i.key for i in self.items}
        for row in self.rows:  # rows accepted in an earlier session whose decision file was lost: adopt them
            key = keys.get(row["id"])
            if key and row["id"] not in managed:
                self.decisions[key] = {"status": "accepted", "task": row["task"], "response": row["response"],
                                       "at": time.time()}

    def tasks(self) -> list[str]:
        found = {r["task"] for r in self.rows} | {d["task"] for d in self.decisions.values() if d.get("task")}
        found |= {i.task for i in self.items if i.task}
        return sorted(found)

    def view(self, item: Item) -> dict:
        d = self.decisions.get(item.key, {})
        return {"key": item.key, "id": row_id(item.key), "messages": item.messages, "original": item.response,
                "response": d.get("response") or item.response, "edited": bool(d.get("response")),
                "task": d.get("task") or item.task or "", "status": d.get("status", "pending"),
                "source": item.source, "at": item.at, "model": item.model}

    def list(self, query: dict) -> dict:
        """Filtered exchanges: `task` (exact), `q` (text anywhere in the conversation or the response),
        `status`; `offset`/`limit` page through them."""
        task, text, status = query.get("task") or "", (query.get("q") or "").lower(), query.get("status") or ""
        offset, limit = int(query.get("offset") or 0), min(500, int(query.get("limit") or 100))
        with self._lock:
            views = [self.view(i) for i in self.items]
        hits = [v for v in views if (not task or v["task"] == task) and (not status or v["status"] == status)
                and (not text or text in v["response"].lower()
                     or any(text in m["content"].lower() for m in v["messages"]))]
        counts = {s: sum(v["status"] == s for v in views) for s in STATUSES}
        return {"total": len(hits), "items": hits[offset:offset + limit], "counts": counts, "tasks": self.tasks(),
                "coverage": str(self.coverage)}

    def decide(self, body: dict) -> dict:
        """Set an exchange's status, task or edited response; accepted ones go to the coverage file."""
        key = body.get("key")
        item = self.by_key.get(key)
        if item is None:
            raise ValueError(f"no exchange {key!r}")
        with self._lock:
            d = dict(self.decisions.get(key, {"status": "pending"}))
            if "status" in body:
                if body["status"] not in STATUSES:
                    raise ValueError(f"status must be one of {', '.join(STATUSES)}")
                d["status"] = body["status"]
            if "task" in body:
                d["task"] = str(body["task"]).strip() or None
            if "response" in body:
                text = str(body["response"]).strip()
                if not text:
                    raise ValueError("the response is empty")
                d["response"] = None if text == item.response else text
            task = d.get("task") or item.task
            if d["status"] == "accepted" and not task:
                raise ValueError("give the exchange a task before accepting it")
            d["at"] = time.time()
            decisions = {**self.decisions, key: d}
            rows = self._rows(decisions)
            records.write_json(self.decisions_path, decisions)
            records.write_jsonl(self.coverage, rows)
            self.decisions = decisions
            return self.view(item)

    def _rows(self, decisions: dict) -> list[dict]:
        """The coverage file after these decisions: unmanaged rows as they were, then the accepted
        exchanges in the order they were accepted."""
        managed = {row_id(k) for k in decisions if k in self.by_key}  # an exchange no longer here: its row stays
        out = [r for r in self.rows if r["id"] not in managed]
        accepted = sorted((d["at"], k) for k, d in decisions.items() if d.get("status") == "accepted" and k in self.by_key)
        for _, key in accepted:
            item, d = self.by_key[key], decisions[key]
            row = {"id": row_id(key), "task": d.get("task") or item.task, **chat.fields(item.messages),
                   "response": d.get("response") or item.response}
            why = chat.problem(row)
            if why:
                raise ValueError(f"exchange {key}: {why}")
            out.append(row)
        return out

    def actions(self) -> dict:
        return {"list": self.list, "decide": self.decide}
