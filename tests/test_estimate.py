"""`duo estimate`: the forecast of a cycle's service spend, checked against what the cycle then pays
(the loopback provider priced as gpt-4o, reporting the prompt's real token count and every max_token
as used, so the worst case is the real case); budgets, replays, batch prices, and `make cycle`
printing the line before it starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from duo import cli, service
from duo.loop import cycle, estimate
from stages import evaluate, gate, prepare, synthesize
from tests.conftest import ROOT
from tests.fake_provider import FakeProvider, unique_pairs
from tests.test_spend import _answer

PRICED = "openai/gpt-4o"


def usage(body: dict) -> dict:
    import litellm

    prompt = litellm.token_counter(model=PRICED, messages=body["messages"])
    return {"prompt_tokens": prompt, "completion_tokens": body["max_tokens"],
            "total_tokens": prompt + body["max_tokens"]}


@pytest.fixture
def fake(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-estimate-000000000")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with FakeProvider() as provider:
        judge_or_teacher = _answer(unique_pairs(3))

        def reply(body):  # the teacher answers as the reference does: the estimate's stand-in is exact
            text = body["messages"][0]["content"]
            return f"City{text.split()[-1][:-1]}" if text.startswith("In one word") else judge_or_teacher(body)

        provider.default = (200, reply, {})
        provider.usage = usage
        yield provider


def project(root, url, **service_kw) -> None:
    (root / "data").mkdir()
    rows = [{"id": f"q{i:02d}", "task": "qa", "prompt": f"In one word, which city is the capital of country {i}?",
             "response": f"City{i}"} for i in range(12)]
    (root / "data" / "coverage.jsonl").write_text(  # 2 test rows (Φ 0.8), 10 train rows
        "".join(json.dumps(r) + "\n" for r in rows))
    params = yaml.safe_load((estimate.contracts.Path(__file__).parent.parent / "params.yaml").read_text())
    params["cycle"] = 1
    params["service"].update({"model": PRICED, "api_base": url, "concurrency": 2, **service_kw})
    params["synth"].update({"per_cycle": 6, "pairs_per_request": 3, "max_requests": 20})
    params["judge"].update({"m": 2, "pmatch": True})
    params["infer"].update({"k": 2})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert CliRunner().invoke(prepare.main, [], catch_exceptions=False).exit_code == 0
    test = [json.loads(x) for x in (root / "data" / "test.jsonl").read_text().splitlines()]
    preds = [{"prompt_id": t["id"], "sample_idx": k, "task": "qa", "prompt": t["prompt"], "reference": t["response"],
              "response": t["response"], "cycle": 1} for t in test for k in range(2)]  # the estimate's stand-in
    (root / "data" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))


def test_the_forecast_is_what_the_cycle_then_pays(fake, in_tmp):
    project(in_tmp, fake.url)
    f = estimate.forecast(1)
    parts = {p["role"]: p for p in f["parts"]}
    assert parts["synthesis"]["calls"] == 2  # 6 pairs wanted, 3 a reply
    assert parts["P-Match teacher answers"]["calls"] == 2 and parts[f"judge {PRICED}"]["calls"] == (2 * 2 + 2) * 2
    for stage in (synthesize.main, evaluate.main, gate.main):
        assert CliRunner().invoke(stage, [], catch_exceptions=False).exit_code == 0
    cost = json.loads((in_tmp / "metrics" / "cost.json").read_text())
    synth = json.loads((in_tmp / "metrics" / "synth.json").read_text())
    assert synth["requests"] == 2 and synth["kept"] == 6
    assert len(fake.requests) == f["calls"] == 2 + 2 + 12
    assert f["prompt_tokens"] == cost["prompt_tokens"] and f["completion_tokens"] == cost["completion_tokens"]
    assert f["usd"] == pytest.approx(cost["cost_usd"], rel=1e-6)
    # the same cycle again: what is journaled is replayed, free
    again = {p["role"]: p for p in estimate.forecast(1)["parts"]}
    assert again["synthesis"]["replayed"] == 2 and again["synthesis"]["calls"] == 0
    assert again["P-Match teacher answers"]["replayed"] == 2 and again["P-Match teacher answers"]["calls"] == 0


def test_the_line_says_whether_the_budgets_cover_it(fake, in_tmp):
    project(in_tmp, fake.url, budget_usd=1.0, budget_total_usd=0.04)
    f = estimate.forecast(1)
    assert 0.04 < f["usd"] < f["usd_max"] < 1.0
    text = estimate.summary(f)
    assert text.startswith(f"estimate: cycle 1: synthesis 2, P-Match teacher answers 2, judge {PRICED} 12 calls; ")
    assert "service.budget_usd $1 ($0.0000 spent in cycle 1): covers it" in text
    assert "service.budget_total_usd $0.04 ($0.0000 spent in all): does NOT cover it" in text
    with service.Service(PRICED, api_base=fake.url, journal="judge", cycle=0) as svc:  # an earlier cycle's spend
        svc.map([service.Request(messages=[{"role": "user", "content": "x"}], max_tokens=4000)])
    spent = estimate.forecast(1)
    assert spent["spent_total"] == pytest.approx(4000 * 1e-05, rel=0.01) and spent["spent_cycle"] == 0
    assert "service.budget_total_usd $0.04 ($0.0400 spent in all): does NOT cover it" in estimate.summary(spent)
    yaml_params = yaml.safe_load((in_tmp / "params.yaml").read_text())
    yaml_params["service"]["batch"] = True
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(yaml_params))
    halved = estimate.forecast(1)
    assert halved["usd"] == pytest.approx(spent["usd"] / 2) and "at litellm's batch prices" in estimate.summary(halved)


def test_unpriced_and_local_models(fake, in_tmp):
    project(in_tmp, fake.url)
    params = yaml.safe_load((in_tmp / "params.yaml").read_text())
    params["service"]["model"] = "openai/no-such-model"
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    assert "cost unknown: litellm has no price for openai/no-such-model" in estimate.line(1)
    params["service"].update(model="local", api_base=None)
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    assert estimate.line(1).endswith("calls on the local model: $0")
    (in_tmp / "data" / "coverage.jsonl").write_text("{bad\n")
    assert estimate.line(1).startswith("estimate: unavailable (data/coverage.jsonl:1: invalid JSON")


def test_duo_estimate_prints_the_parts_and_the_line(fake, in_tmp):
    project(in_tmp, fake.url)
    result = CliRunner().invoke(cli.main, ["estimate", "--cycle", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[1].startswith("synthesis") and lines[-1].startswith("estimate: cycle 1:")
    as_json = json.loads(CliRunner().invoke(cli.main, ["estimate", "--cycle", "1", "--json"]).output)
    assert as_json["calls"] == 16 and not fake.requests, "an estimate calls nothing"


def test_make_cycle_prints_the_estimate_before_it_starts_the_cycle(fake, in_tmp, capsys):
    """Here the experiment fails at once (no git repository): the estimate came first."""
    project(in_tmp, fake.url)
    with pytest.raises(Exception, match="cycle 1 failed"):
        cycle.run_cycle(1)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("estimate: cycle 1: synthesis 2") and out[1].startswith("cycle: running cycle 1")


@pytest.mark.integration  # a real git repository and `dvc exp run`
def test_a_budget_stop_inside_the_cycle_exits_75_with_one_line(fake, in_tmp, monkeypatch):
    """The synthesize stage stops at the budget inside `dvc exp run` (which exits with its own code):
    `make cycle` still says why and exits 75, and the replies paid before the stop are journaled."""
    project(in_tmp, fake.url, budget_usd=0.015)  # one synthesis call reserves up to ~$0.011: room for one
    (in_tmp / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"synthesize": {
        "cmd": "python -m stages.synthesize", "params": ["cycle"], "outs": ["data/synth"]}}}))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # `python`
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start"]):
        subprocess.run(cmd, check=True, capture_output=True)
    with pytest.raises(service.ServiceStop, match=r"cycle 1 stopped: .*budget_usd") as stop:
        cycle.run_cycle(1)
    assert stop.value.exit_code == service.EXIT_STOPPED == 75
    paid = [line for line in (in_tmp / ".duo" / "journal" / "synth.jsonl").read_text().splitlines() if line]
    assert len(fake.requests) >= 1 and len(paid) == len(fake.requests), "every paid reply is journaled"
