"""The budget probe of issue 28: how many calls a cap of 1.5 x one call's price lets through, against the
loopback provider priced as gpt-4o (litellm's table), and whether a batch resumed after kill -9 counts
its replies once.

- live: 40 requests at concurrency 16, each answered after 200 ms;
- batch: 40 requests through the provider's batch API (the cap is 1.5 x one call's batch price);
- resume: 20 requests as one batch job, the client SIGKILLed after journaling 7 of its answers, then
  rerun: the ledger and the stage's cost against an uninterrupted run of the same requests.

Run: python -m tests.probe_budgets   (prints one JSON object; nothing is written outside a temp dir)

Measured (issue 28): before the reservations, live 17 paid (cap 1.5 calls), batch 40 of 40 paid, the
resumed batch journaled 27 lines for 20 keys (ledger and cost $0.0010125 vs $0.00075 uninterrupted);
after: live 1 paid, batch 1 paid and 39 waiting, the resumed batch 20 lines for 20 keys ($0.00075).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRICED = "openai/gpt-4o"
LIVE_USD = 10 * 2.5e-06 + 5 * 1e-05   # the fake answers 10 prompt + 5 completion tokens
BATCH_USD = LIVE_USD / 2              # gpt-4o's *_batches prices in litellm's table
N, KILL_AFTER = 40, 7


def reqs(n: int, tag: str = "q"):
    from duo import service

    return [service.Request(messages=[{"role": "user", "content": f"{tag} {i}"}], max_tokens=8) for i in range(n)]


def _paid(fake, svc_kw: dict, n: int) -> dict:
    from duo import service

    before = len(fake.requests)
    stop = None
    with service.Service(PRICED, api_base=fake.url, backoff_s=0.01, **svc_kw) as svc:
        try:
            svc.map(reqs(n, svc_kw.get("journal", "q")))
        except service.ServiceStop as exc:
            stop = exc.message
    return {"paid": len(fake.requests) - before, "stats_cost_usd": svc.stats.cost_usd, "stop": stop}


def _resume(fake, root: Path) -> dict:
    from duo import service

    out = {}
    for name, killed in (("straight", False), ("killed", True)):
        work = root / f"resume-{name}"
        work.mkdir()
        os.chdir(work)
        if killed:
            code = f"from tests.test_budget import _batch_child; _batch_child({fake.url!r}, {KILL_AFTER})"
            proc = subprocess.run([sys.executable, "-c", code], cwd=work,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
            assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        with service.Service(PRICED, api_base=fake.url, batch=True, batch_poll_s=0.01, journal="r", cycle=1) as svc:
            svc.map(reqs(20, "r"))
        lines = (service.JOURNAL_DIR / "r.jsonl").read_text().splitlines()
        out[name] = {"ledger_usd": round(service.ledger().cycle(1), 9), "stats_cost_usd": svc.stats.cost_usd,
                     "journal_lines": len(lines), "distinct_keys": len({json.loads(x)["key"] for x in lines})}
    return out


def main() -> None:
    from duo import entry
    from tests.fake_provider import FakeProvider

    entry.environment()
    os.environ.setdefault("OPENAI_API_KEY", "sk-probe-0000000000")
    with tempfile.TemporaryDirectory() as tmp, FakeProvider() as fake:
        root = Path(tmp)
        fake.default = (200, "ok", {})
        result = {"call_usd": LIVE_USD, "batch_call_usd": BATCH_USD}
        (root / "live").mkdir()
        os.chdir(root / "live")
        fake.delay_s = 0.2
        result["live"] = _paid(fake, {"concurrency": 16, "budget_usd": 1.5 * LIVE_USD, "journal": "live"}, N)
        fake.delay_s = 0.0
        (root / "batch").mkdir()
        os.chdir(root / "batch")
        result["batch"] = _paid(fake, {"batch": True, "batch_poll_s": 0.01, "budget_usd": 1.5 * BATCH_USD,
                                       "journal": "batch"}, N)
        result["resume"] = _resume(fake, root)
        os.chdir(ROOT)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
