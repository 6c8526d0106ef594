"""People's ratings and the judge's calibration: the ratings file (keys that survive a new cycle and a
re-split), Spearman ρ and Cohen's κ on sets whose values are worked out by hand, the gate's
"uncalibrated judge", and the evaluate stage against a loopback judge: ratings never cost a call for a
response already judged, rated responses of earlier cycles cost only their own calls, once."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from duo.data import records
from duo.evaluation import calibration, ratings
from duo.loop import gate
from duo.params import Gate, ParamsError, load
from tests.conftest import ROOT
from tests.fake_provider import FakeProvider


def pred(i: int, response: str, pid: str | None = None, **extra) -> dict:
    return {"prompt_id": pid or f"q{i}", "sample_idx": 0, "task": "qa", "prompt": f"Question {i}?",
            "reference": f"Answer {i}.", "response": response, **extra}


# --- the file ------------------------------------------------------------------------------------

def test_round_trip_and_a_key_survives_a_new_cycle_and_a_resplit(tmp_path):
    path = tmp_path / "data" / "ratings.jsonl"
    assert ratings.read(path) == {}, "no file is no ratings"
    conv = pred(2, "Paris.", messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Question 2?"}])
    rows = {r["key"]: r for r in (ratings.rating_row(pred(1, "42."), score=80, cycle=0),
                                  ratings.rating_row(conv, verdict="fail", zeta=70, cycle=0))}
    ratings.write(path, rows)
    back = ratings.read(path)
    assert back == rows and back[ratings.key(conv)]["messages"] == conv["messages"]
    # cycle 3 after a re-split: another prompt id, another sample, same conversation and response -> same key
    later = pred(1, "42.", pid="t17", sample_idx=2)
    assert ratings.key(later) in back
    assert ratings.key(pred(1, "43.")) not in back, "another response is another rating"
    assert ratings.key(conv) != ratings.key(pred(2, "Paris.")), "the system prompt is part of what was rated"
    # hand edits that break a row stop with file:line
    scored, other = sorted(path.read_text().splitlines(), key=lambda line: json.loads(line)["score"] is None)
    path.write_text(other + "\n" + json.dumps(json.loads(scored) | {"score": 0}) + "\n")
    with pytest.raises(records.DataError, match=r"ratings.jsonl:2: score must be a whole number 1-100"):
        ratings.read(path)
    path.write_text(json.dumps(json.loads(scored) | {"response": "edited"}) + "\n")
    with pytest.raises(records.DataError, match=r"ratings.jsonl:1: key .* is not the hash"):
        ratings.read(path)
    with pytest.raises(ValueError, match="exactly one"):
        ratings.rating_row(pred(1, "x"), score=50, verdict="pass", zeta=50)


# --- the numbers ---------------------------------------------------------------------------------

def rated_set(people: list[int], judge: list[float]) -> tuple[dict, dict]:
    rows = [ratings.rating_row(pred(i, f"r{i}"), score=s) for i, s in enumerate(people)]
    return {r["key"]: r for r in rows}, {r["key"]: v for r, v in zip(rows, judge)}


def test_spearman_and_kappa_match_the_hand_computation():
    # people rank 1..8; the judge swaps ranks 4<->5 and 7<->8: d² = 4, ρ = 1 - 6·4 / (8·63) = 0.952
    # at ζ=50 people pass the last 4, the judge 4 of 8 with one swap each way: agreement 6/8, chance 1/2, κ = 0.5
    # at ζ=70 people pass the last 2 (70, 80), the judge the last 2 (85, 75): κ = 1
    rated, scores = rated_set([10, 20, 30, 40, 50, 60, 70, 80], [15, 25, 35, 55, 45, 65, 85, 75])
    a = calibration.agreement(rated, scores, [50, 70])
    assert a["n"] == 8 and a["spearman"]["value"] == round(1 - 24 / 504, 3) and a["spearman"]["n"] == 8
    assert a["kappa_c50"]["value"] == 0.5 and a["kappa_c50"]["agree"] == 0.75 and a["kappa_c50"]["n"] == 8
    assert a["kappa_c70"]["value"] == 1.0
    lo, hi = a["spearman"]["ci95"]
    assert lo <= a["spearman"]["value"] <= hi <= 1.0
    assert a["kappa_c50"]["ci95"][0] < 0.5 < a["kappa_c50"]["ci95"][1], "8 ratings cannot pin κ down"
    # a judge that reverses people's order
    _, reverse = rated_set([10, 20, 30, 40, 50, 60, 70, 80], [80, 70, 60, 50, 40, 30, 20, 10])
    b = calibration.agreement(rated, dict(zip(rated, reverse.values())), [50])
    assert b["spearman"]["value"] == -1.0 and b["kappa_c50"]["value"] == -1.0
    # ties are averaged (scipy): people 1,2,2,3 vs judge 1,2,3,4 -> ρ = 0.9487
    tied, tscores = rated_set([10, 20, 20, 30], [1, 2, 3, 4])
    assert calibration.agreement(tied, tscores, [50])["spearman"]["value"] == 0.949
    # undefined, never a number: too few, or one side all alike
    assert calibration.spearman([1, 2], [1, 2]) is None and calibration.spearman([5, 5, 5], [1, 2, 3]) is None
    assert calibration.kappa([True, True], [True, True]) is None


def test_pass_fail_ratings_count_at_their_own_zeta_only_and_panel_pools_judges():
    rows = [ratings.rating_row(pred(i, f"r{i}"), verdict=v, zeta=70) for i, v in enumerate(["pass", "fail", "pass", "fail"])]
    rated = {r["key"]: r for r in rows}
    a_scores = dict(zip(rated, [90, 20, 75, 30]))   # agrees with every verdict at 70
    b_scores = dict(zip(rated, [30, 90, 20, 80]))   # disagrees with every one
    block = calibration.calibrate(rated, {"a": a_scores, "b": b_scores}, ["a", "b"], [50, 70])
    assert block["by_judge"]["a"]["kappa_c70"]["value"] == 1.0 and block["by_judge"]["b"]["kappa_c70"]["value"] == -1.0
    assert block["by_judge"]["a"]["kappa_c50"]["n"] == 0, "a verdict at 70 says nothing about 50"
    assert block["by_judge"]["a"]["spearman"]["n"] == 0 and block["by_judge"]["a"]["spearman"]["value"] is None
    assert block["panel"]["n"] == 4 and block["ratings"] == 4
    # the panel's score is the judges' mean: 60, 55, 47.5, 55 -> pass, fail, fail, fail at 70 -> all fail at 70
    assert block["panel"]["kappa_c70"]["agree"] == 0.5
    assert "panel: 4 rated responses" in calibration.describe(block)[0] and len(calibration.describe(block)) == 3


# --- the gate ------------------------------------------------------------------------------------

def eval_with(n: int, rho: float | None) -> dict:
    return {"precision": {"mean": 80.0}, "calibration": {"panel": {"n": n, "spearman": {"value": rho, "n": n}}}}


def test_gate_says_uncalibrated_judge_below_min_ratings_or_min_agreement_and_passes_above():
    g = Gate(threshold=70, confidence=0, min_ratings=30, min_agreement=0.6)
    few = gate.verdict(eval_with(12, 0.9), g, cycle=1)
    assert not few["passed"] and "uncalibrated judge: 12 rated responses < gate.min_ratings 30" in gate.sentence(few)
    assert few["next"].startswith("rate:") and "duo review" in few["next"]
    weak = gate.verdict(eval_with(40, 0.31), g, cycle=1)
    assert not weak["passed"] and "Spearman ρ +0.31 with 40 ratings < gate.min_agreement 0.6" in gate.sentence(weak)
    undefined = gate.verdict(eval_with(40, None), g, cycle=1)
    assert not undefined["passed"] and "undefined" in undefined["uncalibrated"]
    none_yet = gate.verdict({"precision": {"mean": 80.0}}, g, cycle=0)  # an eval.json without the block
    assert not none_yet["passed"] and "0 rated responses" in gate.sentence(none_yet)
    good = gate.verdict(eval_with(30, 0.6), g, cycle=1)
    assert good["passed"] and "judge calibrated: Spearman ρ +0.60 with 30 ratings" in gate.sentence(good)
    assert good["next"].startswith("deliver")
    # below ε the loop goes on (a failing statistic is not what the ratings would unblock), and says why
    low = gate.verdict({**eval_with(3, 0.1), "precision": {"mean": 50.0}}, g, cycle=0)
    assert not low["passed"] and low["next"].startswith("run cycle 1") and "uncalibrated judge" in gate.sentence(low)
    # off by default: today's behaviour, no calibration asked for
    off = gate.verdict(eval_with(0, None), Gate(threshold=70, confidence=0), cycle=0)
    assert off["passed"] and off["calibration"] is None and "calibrat" not in gate.sentence(off)


def test_the_cycle_driver_stops_to_ask_for_ratings():
    from duo.loop import experiments

    v = gate.verdict(eval_with(5, 0.9), Gate(threshold=70, confidence=0, min_ratings=10), cycle=2)
    action, words = experiments.next_step(2, v, [], max_cycles=3)
    assert action == "uncalibrated" and words.startswith("nothing until people back the judge")
    assert experiments.next_step(2, v, ["evaluate"], 3)[0] == "run", "new ratings make evaluate stale: rerun this cycle"


def test_min_ratings_needs_single_mode_and_ranges(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["judge"]["mode"] = "pairwise"
    raw["gate"].update({"score": "pairwise", "statistic": "win", "min_ratings": 20})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="gate.min_ratings"):
        load(tmp_path / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["gate"]["min_agreement"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="gate.min_agreement"):
        load(tmp_path / "params.yaml")


# --- the evaluate stage: what ratings cost -------------------------------------------------------

SCORE = re.compile(r"(Student|Better) answer (\d+)\.")


def judge_reply(body) -> str:
    text = body["messages"][0]["content"]
    found = SCORE.findall(text)
    n = int(found[-1][1]) if found else 0
    score = 10 + 15 * n if found[-1][0] == "Student" else 95 - 10 * n
    return json.dumps({"similarity_assessment": {"score": score}, "precision_assessment": {"score": score}})


def write_cycle(tmp: Path, url: str, cycle: int, responses: dict[str, str], ids: dict[int, str]) -> None:
    test = [{"id": ids[i], "task": "qa", "prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(6)]
    preds = [pred(i, responses.get(ids[i], f"Student answer {i}."), pid=ids[i]) for i in range(6)]
    records.write_jsonl(tmp / "data" / "test.jsonl", test)
    records.write_jsonl(tmp / "data" / "predictions.jsonl", preds)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["cycle"] = cycle
    params["service"].update({"model": "openai/judge-a", "api_base": url, "max_retries": 1, "concurrency": 2})
    params["judge"].update({"pmatch": False})
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))


def test_ratings_cost_no_call_for_judged_responses_and_only_their_own_calls_after_a_judge_change(in_tmp, monkeypatch):
    from stages import evaluate

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ratings")

    def run() -> dict:
        result = CliRunner().invoke(evaluate.main, [], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(Path("metrics/eval.json").read_text())

    with FakeProvider() as fake:
        fake.default = (200, judge_reply, {})
        ids0 = {i: f"q{i}" for i in range(6)}
        write_cycle(in_tmp, fake.url, 0, {}, ids0)
        ev = run()
        assert len(fake.requests) == 6 and ev["calibration"]["ratings"] == 0
        # a person rates 4 of cycle 0's responses (the judge gave 10, 25, 40, 55): no call is needed
        preds = records.read_records("data/predictions.jsonl", {"prompt_id": str})
        given = {ratings.rating_row(p, score=s, cycle=0)["key"]: ratings.rating_row(p, score=s, cycle=0)
                 for p, s in zip(preds[:4], [5, 30, 20, 60])}
        ratings.write("data/ratings.jsonl", given)
        ev = run()
        assert len(fake.requests) == 6, "every rated response was judged already: replayed, not paid"
        panel = ev["calibration"]["panel"]
        assert panel["n"] == 4 and panel["spearman"]["value"] == 0.8  # ranks 1,3,2,4 vs 1,2,3,4: 1 - 6·2/60
        assert ev["calibration"]["judged_extra"] == 0 and ev["judge"]["samples"] == 6

        # cycle 1, after a re-split that renamed every prompt: new answers to 0-3, the same to 4-5
        ids1 = {i: f"t{i}" for i in range(6)}
        write_cycle(in_tmp, fake.url, 1, {f"t{i}": f"Better answer {i}." for i in range(4)}, ids1)
        given |= {r["key"]: r for r in [ratings.rating_row(pred(5, "Student answer 5.", pid="t5"), score=90, cycle=1)]}
        ratings.write("data/ratings.jsonl", given)
        ev = run()
        # the 6 renamed prompts are new requests (the prompt id seeds them); the 4 rated cycle-0 responses
        # are asked exactly as they were then: journal replays, no call
        assert len(fake.requests) == 6 + 6
        assert ev["calibration"]["judged_extra"] == 4 and ev["calibration"]["panel"]["n"] == 5
        assert ev["judge"]["samples"] == 6 and ev["precision"]["n"] == 6, "rated rows stay out of V and C@ζ"
        rated_rows = [j for j in map(json.loads, Path("data/judgments.jsonl").read_text().splitlines())
                      if j["subject"] == "rated"]
        assert sorted(j["key"] for j in rated_rows) == sorted(list(given)[:4])

        # a changed judge prompt: the cycle's 6 responses and the 4 rated ones not among them, nothing more
        prompt = Path("prompts/judge.txt")
        prompt.write_text(prompt.read_text() + "\nBe strict.\n")
        before = len(fake.requests)
        ev = run()
        assert len(fake.requests) - before == 6 + 4
        assert run() and len(fake.requests) - before == 6 + 4, "and a rerun pays nothing"


def test_the_gate_stage_writes_an_uncalibrated_verdict_and_the_headline(in_tmp):
    from stages import gate as gate_stage

    judgments = [{"prompt_id": f"q{i}", "sample_idx": 0, "judge_idx": 0, "judge": "j", "subject": "student",
                  "similarity": 90.0, "precision": 90.0, "error": None} for i in range(6)]
    judgments.append({**judgments[0], "subject": "rated", "key": "0" * 16, "precision": 5.0})  # never in the statistic
    records.write_jsonl("data/judgments.jsonl", judgments)
    ev = {"cycle": 0, "mode": "single", "precision": {"mean": 90.0}, "similarity": {"mean": 90.0},
          "reference": {}, "judge": {"calls": {}},
          "calibration": {"ratings": 8, "panel": {"n": 8, "spearman": {"value": 0.9, "n": 8}}}}
    records.write_json("metrics/eval.json", ev)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["gate"].update({"min_ratings": 10, "threshold": 70})
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(gate_stage.main, [], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    verdict = json.loads(Path("metrics/cycle.json").read_text())
    assert verdict["lower"] == 90.0 and not verdict["passed"] and verdict["uncalibrated"].startswith("8 rated")
    summary = json.loads(Path("metrics/summary.json").read_text())
    assert summary["rated"] == 8 and summary["judge_rho"] == 0.9 and summary["passed"] is False
    raw["gate"]["min_ratings"] = 8
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    assert CliRunner().invoke(gate_stage.main, [], catch_exceptions=False).exit_code == 0
    assert json.loads(Path("metrics/cycle.json").read_text())["passed"] is True
