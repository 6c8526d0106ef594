"""What a migration costs and what caps it: budgets per cycle and in total, across reruns, stages and
roles (teacher and judges read one ledger); metrics/cost.json after a kill -9 and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from duo import service
from stages import evaluate, gate, synthesize
from tests.conftest import ROOT
from tests.fake_provider import FakeProvider, unique_pairs

PRICED = "openai/gpt-4o"  # litellm's bundled table prices it; the fake answers 10 prompt + 5 completion tokens
CALL_USD = 10 * 2.5e-06 + 5 * 1e-05


def worst(text: str, max_tokens: int = 8) -> float:
    """What a call reserves before it is sent: its prompt tokens plus all its max_tokens, at gpt-4o's price."""
    import litellm

    return litellm.token_counter(model=PRICED, messages=[{"role": "user", "content": text}]) * 2.5e-06 + \
        max_tokens * 1e-05


@pytest.fixture
def fake(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-spend-0000000000")
    with FakeProvider() as provider:
        yield provider


def make(fake, **kw):
    kw.setdefault("concurrency", 1)
    return service.Service(PRICED, api_base=fake.url, backoff_s=0.01, **kw)


def reqs(n, tag="x"):
    return [service.Request(messages=[{"role": "user", "content": f"{tag} {i}"}], max_tokens=8) for i in range(n)]


def test_a_rerun_after_a_budget_stop_does_not_spend_a_new_budget(fake):
    cap = 2 * CALL_USD + 1.01 * worst("x 0")  # a third call's worst case fits beside two paid, a fourth's not
    with make(fake, budget_usd=cap, journal="synth", cycle=1) as svc:
        with pytest.raises(service.ServiceStop, match="budget_usd"):
            svc.map(reqs(6))
    assert len(fake.requests) == 3, "no call starts whose worst case would pass the cap"
    with make(fake, budget_usd=cap, journal="synth", cycle=1) as svc:
        with pytest.raises(service.ServiceStop):
            svc.map(reqs(6))
    assert len(fake.requests) == 3 and svc.stats.cached == 3, "replays are free, and no new call starts"
    assert svc.stats.cost_usd == pytest.approx(3 * CALL_USD), "replays of this cycle count as spent"
    with make(fake, budget_usd=10 * cap, journal="synth", cycle=1) as svc:
        svc.map(reqs(6))
    assert len(fake.requests) == 6 and svc.stats.paid_now_usd == pytest.approx(3 * CALL_USD)
    assert service.ledger().cycle(1) == pytest.approx(6 * CALL_USD)


def test_teacher_and_judges_share_the_cycle_budget_and_the_total_caps_every_cycle(fake):
    with make(fake, journal="synth", cycle=1) as svc:
        svc.map(reqs(2, "teacher"))
    with make(fake, budget_usd=1.5 * CALL_USD, journal="judge", cycle=1) as svc:
        with pytest.raises(service.ServiceStop, match="cycle 1 has spent"):
            svc.map(reqs(2, "judge"))
    assert len(fake.requests) == 2, "the judge saw the teacher's spend of this cycle"
    total = 2 * CALL_USD + 1.01 * worst("judge 0")  # room for one more call over all cycles
    with make(fake, budget_usd=10 * CALL_USD, budget_total_usd=total, journal="judge", cycle=2) as svc:
        with pytest.raises(service.ServiceStop, match="budget_total_usd.*all cycles has spent"):
            svc.map(reqs(4, "judge"))
    assert len(fake.requests) == 3, "cycle 2 has its own budget, but the migration's total caps it"


def test_unpriced_model_with_a_budget_stops_instead_of_running_uncapped(fake):
    with service.Service("openai/no-such-model", api_base=fake.url, budget_usd=1.0, concurrency=1) as svc:
        with pytest.raises(service.ServiceStop, match="no price"):
            svc.map(reqs(3))
    assert len(fake.requests) == 0, "a cap that cannot be enforced stops before the first call"


def test_journal_index_stays_small(in_tmp):
    """A reply's text is read back only when replayed: the index holds hash -> offset per line."""
    import tracemalloc

    path = service.JOURNAL_DIR / "big.jsonl"
    path.parent.mkdir(parents=True)
    text = "x" * 400
    with open(path, "w") as fh:
        for i in range(100_000):
            fh.write(json.dumps({"key": f"{i:064x}", "cycle": 1, "text": text, "prompt_tokens": 1,
                                 "completion_tokens": 1, "cost_usd": 0.0}) + "\n")
    tracemalloc.start()
    journal = service.Journal("big")
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert size / 100_000 < 200, f"{size / 100_000:.0f} bytes per line"  # 1M lines: < 200 MB, not GBs
    assert journal.get(f"{99_999:064x}")["text"] == text and journal.get("missing") is None
    journal.close()


# -- metrics/cost.json after kill -9 and resume --------------------------------------------------
def _project(root: Path, url: str) -> None:
    (root / "data").mkdir(parents=True)
    (root / "prompts").exists() or os.symlink(ROOT / "prompts", root / "prompts")
    train = [{"id": f"t{i}", "task": "qa", "prompt": f"question number {i} about the weather today",
              "response": f"answer {i}"} for i in range(6)]
    test = [{"id": f"q{i}", "task": "qa", "prompt": f"Which month is number {i}?", "response": f"Month {i}."}
            for i in range(3)]
    preds = [{"prompt_id": t["id"], "sample_idx": k, "task": "qa", "prompt": t["prompt"], "reference": t["response"],
              "response": f"Student {k}.", "cycle": 1} for t in test for k in range(2)]
    for name, rows in (("train", train), ("test", test), ("predictions", preds)):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["cycle"] = 1
    params["service"].update({"model": PRICED, "api_base": url, "concurrency": 2, "max_retries": 1})
    params["synth"].update({"per_cycle": 16, "max_requests": 40})
    params["judge"].update({"m": 2, "pmatch": True})
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def _answer(pairs=unique_pairs(2)):
    def reply(body):
        text = body["messages"][0]["content"]
        if "evaluator" in text:
            return '{"similarity_assessment": {"score": 60}, "precision_assessment": {"score": 70}}'
        return pairs(body) if "contents" in text else "The teacher's answer."
    return reply


def _killed_then_resumed(root: Path, fake: FakeProvider, stage: str, main, after: int) -> None:
    """Run the stage in a child, SIGKILL it once `after` of its calls have been answered, rerun it here."""
    start = len(fake.spans)
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 900  # a hang guard: the event is the provider's count
    while len(fake.spans) - start < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"{stage} finished before the kill"
    result = CliRunner().invoke(main, [], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_cost_after_kill_9_and_resume_equals_an_uninterrupted_run(in_tmp, fake):
    fake.default = (200, _answer(), {})
    fake.delay_s = 0.15
    totals = []
    for name, interrupted in (("straight", False), ("killed", True)):
        root = in_tmp / name
        _project(root, fake.url)
        os.chdir(root)
        for stage, main, after in (("synthesize", synthesize.main, 4), ("evaluate", evaluate.main, 5)):
            if interrupted:
                _killed_then_resumed(root, fake, stage, main, after)
            else:
                assert CliRunner().invoke(main, [], catch_exceptions=False).exit_code == 0
        assert CliRunner().invoke(gate.main, [], catch_exceptions=False).exit_code == 0
        totals.append(json.loads((root / "metrics" / "cost.json").read_text()))
    straight, killed = totals
    assert straight["cost_usd"] > 0
    for key in ("prompt_tokens", "completion_tokens", "cost_usd"):
        assert killed[key] == straight[key], key
        for stage in straight["stages"]:
            assert killed["stages"][stage][key] == straight["stages"][stage][key], (stage, key)
    assert killed["stages"]["synthesize"]["cached"] > 0, "the resumed run replayed the killed run's replies"
