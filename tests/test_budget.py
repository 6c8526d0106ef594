"""Budgets that hold in every mode (issue 28), against the loopback provider priced as gpt-4o: a call
reserves its worst case before it is sent, so calls in flight and batch jobs cannot carry the spend past
a cap; a batch resumed after kill -9 records each reply once; processes (and experiments' temp copies)
share one ledger; a stop is exit 75 and one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from duo import service
from duo.service.budget import Budget
from tests.conftest import ROOT
from tests.fake_provider import FakeProvider
from tests.test_spend import CALL_USD, PRICED, worst

BATCH_CALL_USD = CALL_USD / 2  # gpt-4o's *_batches prices in litellm's table


@pytest.fixture
def fake(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-budget-0000000000")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with FakeProvider() as provider:
        provider.default = (200, "ok", {})
        yield provider


def reqs(n, tag="q"):
    return [service.Request(messages=[{"role": "user", "content": f"{tag} {i}"}], max_tokens=8) for i in range(n)]


def journaled(name: str) -> list[dict]:
    path = service.JOURNAL_DIR / f"{name}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_calls_in_flight_cannot_pass_the_cap_at_concurrency_16(fake):
    fake.delay_s = 0.2  # without reservations all 16 go out before the first reply is priced (17 paid)
    with service.Service(PRICED, api_base=fake.url, concurrency=16, budget_usd=1.5 * CALL_USD, journal="live",
                         cycle=1) as svc:
        with pytest.raises(service.ServiceStop) as err:
            svc.map(reqs(40))
    assert len(fake.requests) <= 2, f"{len(fake.requests)} calls paid under a cap of 1.5 calls"
    assert err.value.exit_code == 75 and "\n" not in err.value.message
    assert err.value.message.startswith(f"service.budget_usd={1.5 * CALL_USD:g} would be passed: cycle 1 has spent")
    assert len(journaled("live")) == len(fake.requests), "every paid reply is journaled"
    assert service.ledger().cycle(1) <= 1.5 * CALL_USD


def test_calls_wait_for_replies_to_settle_and_use_the_budget_exactly(fake):
    """A reply usually costs less than its worst case: a call that does not fit waits for the calls in
    flight to settle instead of stopping early, and the stage stops only when none is left. The calls
    paid are then exactly the k with (k - 1) x price + worst case <= cap < k x price + worst case."""
    fake.delay_s = 0.05
    [w] = {worst(f"q {i}") for i in range(40)}  # one worst case for all 40 requests
    cap = 6 * CALL_USD + 2 * w
    with service.Service(PRICED, api_base=fake.url, concurrency=16, budget_usd=cap, journal="w") as svc:
        with pytest.raises(service.ServiceStop, match="budget_usd"):
            svc.map(reqs(40))
    k = len(fake.requests)
    assert (k - 1) * CALL_USD + w <= cap < k * CALL_USD + w, k
    room = cap - CALL_USD  # after the first call (it goes alone)
    assert 1 < max(fake.arrivals) <= room // w, "calls overlap only as far as their worst cases fit"
    assert service.ledger().cycle(0) == pytest.approx(k * CALL_USD) and k * CALL_USD <= cap


def test_a_batch_sends_only_what_fits_and_says_how_much_waits(fake):
    with service.Service(PRICED, api_base=fake.url, batch=True, batch_poll_s=0.01, budget_usd=1.5 * BATCH_CALL_USD,
                         journal="b", cycle=1) as svc:
        with pytest.raises(service.ServiceStop) as err:
            svc.map(reqs(40))
    assert len(fake.requests) <= 2, f"{len(fake.requests)} of 40 batch lines paid under a cap of 1.5 calls"
    assert err.value.exit_code == 75 and "\n" not in err.value.message
    sent = len(fake.requests)
    assert f"{sent} of 40 requests went out as a batch job and {40 - sent} wait" in err.value.message
    assert len(journaled("b")) == sent and service.ledger().cycle(1) <= 1.5 * BATCH_CALL_USD
    # raised: the rest go out as the next job, and what was paid is replayed, not paid again
    with service.Service(PRICED, api_base=fake.url, batch=True, batch_poll_s=0.01, budget_usd=1.0, journal="b",
                         cycle=1) as svc:
        assert all(r.text == "ok" for r in svc.map(reqs(40)))
    assert len(fake.requests) == 40 and svc.stats.cached == sent


def _batch_child(url: str, kill_after: int) -> None:
    """Answer 20 requests as one batch job and die by SIGKILL once `kill_after` answers are journaled."""
    from duo.service import journal

    plain, added = journal.Journal.add, [0]

    def add(self, *a, **kw):
        plain(self, *a, **kw)
        added[0] += 1
        if added[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    journal.Journal.add = add
    with service.Service(PRICED, api_base=url, batch=True, batch_poll_s=0.01, journal="r", cycle=1) as svc:
        svc.map(reqs(20, "r"))


def test_kill_9_while_a_batch_is_journaled_then_resume_equals_an_uninterrupted_run(fake, in_tmp):
    totals = {}
    for name in ("straight", "killed"):
        (in_tmp / name).mkdir()
        os.chdir(in_tmp / name)
        if name == "killed":
            code = f"from tests.test_budget import _batch_child; _batch_child({fake.url!r}, 7)"
            proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  capture_output=True, text=True)
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
            assert len(journaled("r")) == 7
        before = len(fake.requests)
        with service.Service(PRICED, api_base=fake.url, batch=True, batch_poll_s=0.01, journal="r", cycle=1) as svc:
            replies = svc.map(reqs(20, "r"))
        lines = journaled("r")
        totals[name] = {"texts": [r.text for r in replies], "cost_usd": svc.stats.cost_usd,
                        "prompt_tokens": svc.stats.prompt_tokens, "completion_tokens": svc.stats.completion_tokens,
                        "ledger": service.ledger().cycle(1), "lines": len(lines),
                        "keys": len({x["key"] for x in lines})}
        if name == "killed":
            assert len(fake.requests) == before, "the resumed run polled the job it had paid for, sent none"
    straight, killed = totals["straight"], totals["killed"]
    assert killed["lines"] == killed["keys"] == 20, "each reply journaled once"
    for key in ("texts", "prompt_tokens", "completion_tokens", "lines"):
        assert killed[key] == straight[key], key
    for key in ("cost_usd", "ledger"):
        assert killed[key] == pytest.approx(straight[key]) and straight[key] == pytest.approx(20 * BATCH_CALL_USD)


HOLD = """
import sys
from duo.service.budget import Budget
n, rid, over = Budget.shared().reserve(1, [float(sys.argv[1])], float(sys.argv[2]), 0.0)
print(n, flush=True)
sys.stdin.read()
"""


def test_processes_share_the_reservations_and_a_dead_ones_are_dropped(in_tmp):
    child = subprocess.Popen([sys.executable, "-c", HOLD, "0.6", "1.0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "1"
        budget = Budget(in_tmp / ".duo")
        n, rid, over = budget.reserve(1, [0.3, 0.3], 1.0, 0.0)
        assert n == 1 and over.held == pytest.approx(0.9) and over.scope == "cycle 1", "0.6 held elsewhere, 0.3 here"
        budget.release(rid)
    finally:
        child.kill()
        child.wait()
    n, rid, over = budget.reserve(1, [0.3, 0.3, 0.3], 1.0, 0.0)
    assert n == 3 and over is None, "a killed process's reservations are dropped"
    assert not list((in_tmp / ".duo" / "budget").glob(f"reserved-{child.pid}.json"))


def test_an_experiment_temp_copy_uses_the_main_checkouts_ledger(fake, in_tmp, monkeypatch):
    """DVC runs a queued or --temp experiment in a copy under .dvc/tmp/exps/ (without the git-ignored
    .duo/) and names the repository in DVC_ROOT: journals, batches and budget are the repository's."""
    main = in_tmp / "repo"
    copy = main / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    with service.Service(PRICED, api_base=fake.url, journal="judge", cycle=1) as svc:  # spent in the checkout
        svc.map(reqs(2))
    os.rename(in_tmp / ".duo", main / ".duo")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(main))
    with service.Service(PRICED, api_base=fake.url, budget_usd=1.5 * CALL_USD, journal="judge", cycle=1) as svc:
        assert svc.map(reqs(2))[1].cached, "replayed from the checkout's journal"
        with pytest.raises(service.ServiceStop, match="cycle 1 has spent"):
            svc.map(reqs(3, "new"))
    assert len(fake.requests) == 2 and not (copy / ".duo").exists()
    assert service.journal_dir() == main / ".duo" / "journal"


def test_a_budget_stop_in_a_stage_exits_75_with_one_line_and_keeps_the_paid_replies(fake, in_tmp):
    from tests.test_spend import _answer, _project

    fake.default = (200, _answer(), {})
    fake.usage = {"prompt_tokens": 10, "completion_tokens": 1000, "total_tokens": 1010}  # near the worst case
    root = in_tmp / "project"
    _project(root, fake.url)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["service"]["budget_usd"] = 0.025  # two calls (worst case ~$0.011, real ~$0.010 each), not three
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "stages.synthesize"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 75, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: service.budget_usd=0.025 would be passed: cycle 1"), lines
    paid = len(fake.requests)
    assert paid == 2 and len((root / ".duo" / "journal" / "synth.jsonl").read_text().splitlines()) == paid


STAGE = """
import os, sys
from duo import entry, service
entry.environment()
reqs = [service.Request(messages=[{"role": "user", "content": f"{sys.argv[1]} {i}"}], max_tokens=8) for i in range(3)]
try:
    with service.Service("openai/gpt-4o", api_base=os.environ["FAKE_URL"], budget_usd=float(sys.argv[2]),
                         journal="judge", cycle=1) as svc:
        svc.map(reqs)
except service.ServiceStop as exc:
    sys.exit(f"Error: {exc.message}")
open("out.txt", "w").write(os.getcwd())
"""


@pytest.mark.integration
def test_dvc_exp_run_temp_shares_the_checkouts_journals_and_budget(fake, in_tmp):
    """A real `dvc exp run --temp` (the executor queued experiments use too): the stage runs in a copy
    under .dvc/tmp/exps/, yet reads and writes the checkout's .duo/."""
    from tests.test_pipeline import git_commit

    repo = in_tmp / "repo"
    repo.mkdir()
    (repo / "call.py").write_text(STAGE)
    (repo / "params.yaml").write_text("tag: a\nbudget: 0.000112\n")
    (repo / "dvc.yaml").write_text("stages:\n  call:\n    cmd: python call.py ${tag} ${budget}\n"
                                   "    deps: [call.py]\n    params: [tag, budget]\n    outs: [out.txt]\n")
    (repo / ".gitignore").write_text("/.duo/\n")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "CI": "true",
           "PYTHONPATH": str(ROOT), "FAKE_URL": fake.url}
    env.pop("DVC_ROOT", None)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)
    git_commit(repo, "init")
    # the checkout has spent three calls of cycle 1: under a cap of 1.5 calls the experiment may start none
    subprocess.run([sys.executable, "-c", STAGE, "pre", "0"], cwd=repo, env=env, check=True)
    assert len(fake.requests) == 3
    fake.requests.clear()

    def exp(*args):
        return subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--temp", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300)

    stopped = exp("-S", "budget=0.000112")
    assert stopped.returncode != 0 and "cycle 1 has spent $0.000225" in stopped.stdout + stopped.stderr
    assert not fake.requests, "the temp copy saw the checkout's spend"
    ran = exp("-S", "budget=1.0", "-S", "tag=b")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert len(fake.requests) == 3
    lines = (repo / ".duo" / "journal" / "judge.jsonl").read_text().splitlines()
    assert len(lines) == 6, "the experiment journaled its replies in the checkout"
