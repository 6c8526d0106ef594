"""service.batch: requests through the provider's batch API (/v1/files + /v1/batches, via litellm),
against a loopback server that implements those endpoints."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from duo import service
from duo.params import Curate, Synth
from duo.synth import generate
from tests.conftest import ROOT
from tests.fake_provider import FakeProvider, unique_pairs

LIVE_USD = 10 * 2.5e-06 + 5 * 1e-05   # gpt-4o, 10 prompt + 5 completion tokens
BATCH_USD = 10 * 1.25e-06 + 5 * 5e-06  # its batch price in litellm's table


@pytest.fixture
def fake(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch-0000000000")
    with FakeProvider() as provider:
        provider.default = (200, lambda body: "re: " + body["messages"][0]["content"], {})
        yield provider


def make(fake, **kw):
    return service.Service("openai/gpt-4o", api_base=fake.url, batch=True, batch_poll_s=0.01, journal="j", **kw)


def reqs(n):
    return [service.Request(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=8, seed=i) for i in range(n)]


def test_requests_go_through_one_batch_job_at_the_batch_price(fake):
    with make(fake) as svc:
        replies = svc.map(reqs(5))
    assert [r.text for r in replies] == [f"re: q{i}" for i in range(5)]
    assert len(fake.batches) == 1 and len(fake.files) == 2  # the input and the output file
    assert svc.stats.batches == 1 and svc.stats.cost_usd == pytest.approx(5 * BATCH_USD)
    assert BATCH_USD == pytest.approx(LIVE_USD / 2)
    with make(fake) as svc:
        again = svc.map(reqs(5))
    assert [r.text for r in again] == [r.text for r in replies] and len(fake.batches) == 1, "replayed, not resent"


def test_a_kill_while_waiting_resumes_polling_the_same_job(fake):
    fake.batch_polls_until_done = 10 ** 6
    script = ("import sys; from duo import service; from tests.test_batch import make_from_env; "
              "make_from_env(sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", script, fake.url], cwd=os.getcwd(),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    # the event, not a clock: the child's first status check of its job (only a hang guard bounds it)
    deadline = time.monotonic() + 900
    while not any(b["polls"] for b in fake.batches.values()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the child ended before it waited on its batch job"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(fake.batches) == 1 and not (service.JOURNAL_DIR / "j.jsonl").read_text().strip()
    fake.batch_polls_until_done = 1
    with make(fake) as svc:
        replies = svc.map(reqs(5))
    assert [r.text for r in replies] == [f"re: q{i}" for i in range(5)]
    assert len(fake.batches) == 1, "the journaled job was polled again, not paid for again"
    assert len(fake.requests) == 5


def make_from_env(url: str) -> None:
    """The child of the kill test: submit five requests as a batch and wait."""
    with service.Service("openai/gpt-4o", api_base=url, batch=True, batch_poll_s=0.01, journal="j") as svc:
        svc.map(reqs(5))


def test_synthesis_in_batch_mode_sends_what_the_target_needs(fake):
    fake.default = (200, unique_pairs(2), {})
    train = [{"id": f"t{i}", "task": "qa", "prompt": f"question number {i} about the sky", "response": "blue"}
             for i in range(5)]
    with make(fake) as svc:
        out = generate.synthesize(train, [], [], svc, Synth(per_cycle=10, max_requests=50), Curate(), cycle=1)
    # job 1: ceil(10 / 3 hoped per request) = 4 requests -> 8 pairs; job 2: the 1 request the rest needs
    assert len(fake.batches) == 2 and out.metrics["requests"] == 5 and len(out.kept) == 10


def test_batch_needs_a_provider_with_a_batch_api(in_tmp):
    with pytest.raises(Exception, match="no batch API"):
        with service.Service("anthropic/claude-3-5-sonnet-latest", batch=True):
            pass
