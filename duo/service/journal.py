"""The record of paid work: an append-only journal of successful replies per role (synth, teacher,
judge), and the ledger of what was spent per cycle over all of them.

A journal line is `{"key", "cycle", "text", "prompt_tokens", "completion_tokens", "cost_usd"}`, appended
and fsync'd before the reply is used. It lives under .duo/, outside every DVC output (`dvc repro`
deletes outputs), and a queued or `--temp` experiment, which runs in a copy of the repository under
.dvc/tmp/exps/ without the git-ignored .duo/, uses the main checkout's (DVC names it in DVC_ROOT): its
replays, its spend and the budgets are the project's, not a fresh copy's. The index keeps only
hash(key) -> byte offset; a reply's text is read back when it is replayed, so a million-line journal
costs ~100 MB of memory, not its size on disk. Several processes may append to one journal (O_APPEND,
one write per line); the ledger reads whole lines only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from duo.data import records
from duo.service.calls import Reply

JOURNAL_DIR = Path(".duo/journal")  # relative to the project: journal_dir() is where it is now


def state_dir() -> Path:
    """The project's .duo/: the main checkout's also from inside an experiment's temp copy."""
    root = os.environ.get("DVC_ROOT")  # set by DVC for every stage command: the repository (not the copy)
    return Path(root) / ".duo" if root else Path(".duo")


def journal_dir() -> Path:
    return state_dir() / "journal"


def stop_note() -> Path:
    """Written when a stage stops for a budget or quota (errors.ServiceStop): why, and when."""
    return state_dir() / "stopped.json"


class Spend:
    """USD per cycle that paid it (None: a line written before cycles were recorded); cycles with a
    reply litellm could not price."""

    def __init__(self):
        self.by_cycle: dict[int | None, float] = {}
        self.unpriced: set[int | None] = set()

    def add(self, cycle: int | None, cost: float | None) -> None:
        if cost is None:
            self.unpriced.add(cycle)
        else:
            self.by_cycle[cycle] = self.by_cycle.get(cycle, 0.0) + cost

    def merge(self, other: "Spend") -> None:
        for cycle, usd in other.by_cycle.items():
            self.by_cycle[cycle] = self.by_cycle.get(cycle, 0.0) + usd
        self.unpriced |= other.unpriced

    def cycle(self, t: int) -> float:
        return self.by_cycle.get(t, 0.0)

    def total(self) -> float:
        return sum(self.by_cycle.values())

    def as_json(self, offset: int) -> dict:
        return {"offset": offset, "by_cycle": [[c, round(u, 9)] for c, u in sorted(
            self.by_cycle.items(), key=lambda kv: -1 if kv[0] is None else kv[0])],
                "unpriced": sorted(self.unpriced, key=lambda c: -1 if c is None else c)}

    @classmethod
    def from_json(cls, obj: dict) -> "Spend":
        out = cls()
        out.by_cycle = {c: float(u) for c, u in obj.get("by_cycle", [])}
        out.unpriced = set(obj.get("unpriced", []))
        return out


def _scan(path: Path, start: int, on_record) -> int:
    """Feed (offset, record) of each whole line from byte `start`; returns the offset after the last
    whole line. A line torn by a crash (no newline, or not JSON) is not a record."""
    offset = start
    with open(path, "rb") as fh:
        fh.seek(start)
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                on_record(offset, rec)
            offset += len(raw)
    return offset


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".spend.json")


class Journal:
    def __init__(self, name: str, directory: str | Path | None = None):
        directory = Path(directory or journal_dir())
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.jsonl"
        self._index: dict[int, int] = {}

        def index(offset: int, rec: dict) -> None:
            self._index[hash(rec["key"])] = offset

        if self.path.exists():
            _scan(self.path, 0, index)
        self._fh = open(self.path, "ab")
        self._reader = open(self.path, "rb")
        if self._fh.tell():
            self._reader.seek(-1, os.SEEK_END)
            if self._reader.read(1) != b"\n":
                self._fh.write(b"\n")  # end a torn line, or the next record would be glued onto it

    def get(self, key: str) -> dict | None:
        offset = self._index.get(hash(key))
        if offset is None:
            return None
        self._reader.seek(offset)
        try:
            rec = json.loads(self._reader.readline())
        except ValueError:
            return None
        return rec if rec.get("key") == key else None  # a hash collision is a miss, never a wrong reply

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def keys(self) -> set[str]:
        out: set[str] = set()
        _scan(self.path, 0, lambda _, rec: out.add(rec["key"]))
        return out

    def add(self, key: str, reply: Reply, cycle: int | None = None) -> None:
        rec = {"key": key, "cycle": cycle, "text": reply.text, "prompt_tokens": reply.prompt_tokens,
               "completion_tokens": reply.completion_tokens, "cost_usd": reply.cost_usd}
        self._fh.seek(0, os.SEEK_END)
        offset = self._fh.tell()
        self._fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._index[hash(key)] = offset  # (another process appending at once makes it a miss, never wrong)

    def close(self) -> None:
        self._fh.close()
        self._reader.close()


class Ledger:
    """What the journals in one directory record as paid, per cycle, read incrementally: each journal's
    sidecar (`<name>.spend.json`) remembers how far it was summed, and a Ledger kept open reads only the
    lines appended since its last look (by any process). Sums come from the file itself, never from
    one writer's view of it, so writers in several processes cannot make it miss a line."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory or journal_dir())
        self._read: dict[Path, tuple[int, int, Spend]] = {}  # journal -> (inode, offset summed to, spend)
        self._saved: dict[Path, int] = {}

    def spend(self) -> Spend:
        total = Spend()
        for path in sorted(self.directory.glob("*.jsonl")) if self.directory.exists() else []:
            stat = path.stat()
            inode, start, spend = self._read.get(path) or (stat.st_ino, *self._sidecar(path))
            if inode != stat.st_ino or start > stat.st_size:  # another file now: sum it again
                start, spend = 0, Spend()
            end = _scan(path, start, lambda _, rec: spend.add(rec.get("cycle"), rec.get("cost_usd")))
            self._read[path] = (stat.st_ino, end, spend)
            total.merge(spend)
        return total

    def _sidecar(self, path: Path) -> tuple[int, Spend]:
        side = _sidecar(path)
        cached = records.read_json(side, default=None) if side.exists() else None
        if isinstance(cached, dict) and 0 <= cached.get("offset", -1) <= path.stat().st_size:
            self._saved[path] = cached["offset"]
            return cached["offset"], Spend.from_json(cached)
        return 0, Spend()

    def save(self) -> None:
        """Write the sidecars of journals read further than their sidecar says."""
        for path, (_, end, spend) in self._read.items():
            if end != self._saved.get(path):
                records.write_json(_sidecar(path), spend.as_json(end))
                self._saved[path] = end


def ledger(directory: str | Path | None = None) -> Spend:
    """What every journal in `directory` records as paid, per cycle (sidecars brought up to date)."""
    book = Ledger(directory)
    total = book.spend()
    book.save()
    return total
