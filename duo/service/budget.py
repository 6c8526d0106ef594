"""The budget every paid call answers to, one per project and shared by every Service of every process:
what the journals record as paid (the ledger, per cycle) plus what calls in flight have reserved.

A call reserves its worst case before it is sent (its prompt tokens plus all of its max_tokens at the
model's price, duo/service/pricing.py) and goes only if spend + every reservation + its own stay within
`service.budget_usd` (this cycle) and `service.budget_total_usd` (all cycles); once its reply is
journaled at the real price, the reservation is dropped. Calls in flight can therefore never carry the
spend past a cap, whatever the concurrency (checking spend alone let 16 calls in flight through a cap
of 1.5 calls).

Processes (stages run one after another, `dvc queue start -j N` workers, `--temp` experiments: all
under the main checkout's .duo/, see journal.state_dir) share it through files, behind an exclusive
lock on .duo/budget/lock (fcntl.flock, released by the kernel when a process dies):
- the journals are the spend (duo/service/journal.py, Ledger: read incrementally under the lock);
- each process's reservations are .duo/budget/reserved-<pid>.json, dropped once that pid is gone.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from duo.service import pricing
from duo.service.journal import Ledger, Spend, journal_dir, state_dir


@dataclass
class Refusal:
    """The amounts do not fit: which cap, its value, what is spent and what calls in flight hold."""
    key: str
    cap: float
    spent: float
    held: float
    scope: str  # "cycle 3" or "all cycles"


class Budget:
    _shared: dict[Path, "Budget"] = {}
    _guard = threading.Lock()

    @classmethod
    def shared(cls, root: Path | None = None) -> "Budget":
        """The process's one Budget for this project's .duo/ (every Service in it uses the same)."""
        root = Path(root or state_dir()).resolve()
        with cls._guard:
            if root not in cls._shared:
                cls._shared[root] = cls(root)
            return cls._shared[root]

    def __init__(self, root: Path):
        self.dir = root / "budget"
        self.ledger = Ledger(root / "journal")
        self._mine: dict[int, tuple[int, float]] = {}  # reservation id -> (cycle, usd)
        self._ids = itertools.count(1)
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fh = None

    @contextlib.contextmanager
    def locked(self):
        """Exclusive across threads and processes (reentrant within this process)."""
        with self._thread_lock:
            if self._depth == 0:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.dir / "lock", "a+b")
                fcntl.flock(self._fh, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fh, fcntl.LOCK_UN)
                    self._fh.close()
                    self._fh = None

    def spent(self) -> Spend:
        with self.locked():
            return self.ledger.spend()

    def held(self) -> Spend:
        """What calls in flight hold, in this process and every live one beside it."""
        out = Spend()
        for _, (cycle, usd) in self._mine.items():
            out.add(cycle, usd)
        for path in self.dir.glob("reserved-*.json") if self.dir.exists() else []:
            pid = int(path.stem.rsplit("-", 1)[1])
            if pid == os.getpid():
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)  # killed while it held calls: what it paid is journaled
                continue
            try:
                other = Spend.from_json(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # replaced while read: the next look sees it
            out.merge(other)
        return out

    def reserve(self, cycle: int, amounts: list[float], budget_usd: float, budget_total_usd: float,
                force: bool = False) -> tuple[int, int | None, Refusal | None]:
        """Reserve the longest prefix of `amounts` that fits under both caps (all of it with `force`:
        work already sent). Returns how many fit, the reservation's id (None when none fit) and the
        refusal of the first that did not fit (None when all did)."""
        with self.locked():
            spent, held = self.ledger.spend(), self.held()
            n, total, over = 0, 0.0, None
            for usd in amounts:
                if not force:
                    over = _over(cycle, total, usd, spent, held, budget_usd, budget_total_usd)
                    if over:
                        break
                n, total = n + 1, total + usd
            if not n:
                return 0, None, over
            rid = next(self._ids)
            self._mine[rid] = (cycle, total)
            self._write_mine()
            return n, rid, over

    def release(self, rid: int | None) -> None:
        """Drop a reservation (its reply, if any, is journaled at the real price by now)."""
        if rid is None:
            return
        with self.locked():
            if self._mine.pop(rid, None) is not None:
                self._write_mine()

    def save(self) -> None:
        with self.locked():
            self.ledger.save()

    def _write_mine(self) -> None:
        path = self.dir / f"reserved-{os.getpid()}.json"
        if not self._mine:
            path.unlink(missing_ok=True)
            return
        spend = Spend()
        for cycle, usd in self._mine.values():
            spend.add(cycle, usd)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(spend.as_json(0)))  # no fsync: a reservation dies with its process
        os.replace(tmp, path)


class Allowance:
    """One Service's side of the budget: its model and caps, and the reservations of its calls in flight."""

    def __init__(self, model: str, cycle: int, budget_usd: float, budget_total_usd: float):
        self.model, self.cycle = model, cycle
        self.caps = (budget_usd, budget_total_usd)
        self.budget = Budget.shared()
        self.holds: set[int] = set()
        self.freed: asyncio.Event | None = None  # set on the Service's loop whenever a hold is released

    def worst_cases(self, reqs: list, batch: bool = False) -> list[float] | None:
        """The most each request can cost; None when litellm has no price for the model."""
        out = [pricing.worst_case(self.model, r.messages, r.max_tokens, batch) for r in reqs]
        return None if any(u is None for u in out) else out

    def hold(self, amounts: list[float], force: bool = False) -> tuple[int, int | None, Refusal | None]:
        n, rid, over = self.budget.reserve(self.cycle, amounts, *self.caps, force=force)
        if rid is not None:
            self.holds.add(rid)
        return n, rid, over

    def release(self, rid: int | None) -> None:
        if rid in self.holds:
            self.holds.discard(rid)
            self.budget.release(rid)
            if self.freed is not None:
                self.freed.set()

    async def reserve(self, usd: float, stopped) -> int | str:
        """Hold `usd` for one call: its reservation id, or the stop line. While it does not fit, wait
        for this Service's calls in flight to settle (a reply usually costs less than its worst case);
        with none left (or `stopped()` says another call stopped), give up."""
        while True:
            _, rid, over = self.hold([usd])
            if rid is not None:
                return rid
            if stopped():
                return stopped()
            if not self.holds:
                return self.refusal(over, usd, "the next call")
            self.freed.clear()
            await self.freed.wait()

    def refusal(self, over: Refusal, usd: float, what: str, batch: bool = False) -> str:
        """The one line a budget stop says."""
        held = f" and calls in flight hold {_usd(over.held)}" if over.held else ""
        price = "batch price" if batch else "price"
        return (f"{over.key}={over.cap:g} would be passed: {over.scope} has spent {_usd(over.spent)}{held}; "
                f"{what} may cost up to {_usd(usd)} (prompt + max_tokens at {self.model}'s {price}); replies so "
                f"far are kept in {journal_dir()}; raise the budget and rerun to continue")


def _usd(x: float) -> str:
    return f"${x:.6f}" if x < 1 else f"${x:,.2f}"


def _over(cycle: int, before: float, usd: float, spent: Spend, held: Spend, budget_usd: float,
          budget_total_usd: float) -> Refusal | None:
    """Whether `usd` fits beside the spend, the holds and `before` (reserved ahead of it in the same
    call, which the refusal counts as held)."""
    slack = 1e-12  # float sums: a reservation equal to what is left fits
    if budget_usd and spent.cycle(cycle) + held.cycle(cycle) + before + usd > budget_usd + slack:
        return Refusal("service.budget_usd", budget_usd, spent.cycle(cycle), held.cycle(cycle) + before,
                       f"cycle {cycle}")
    if budget_total_usd and spent.total() + held.total() + before + usd > budget_total_usd + slack:
        return Refusal("service.budget_total_usd", budget_total_usd, spent.total(), held.total() + before,
                       "all cycles")
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
