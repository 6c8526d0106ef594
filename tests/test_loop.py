"""The loop's judgement: the capable stand-in provider, the task score, a gate that knows its noise,
regressions against the best earlier cycle, and delivery of the best cycle's GGUF (from DVC's cache)."""
import json
import subprocess
import sys

import pytest

from duo import contracts
from duo.data import records
from duo.loop import delivery, gate
from duo.evaluation import reference, validation
from duo.params import Gate
from tests.capable_provider import CapableTeacher


@pytest.fixture
def devdata(tmp_path):
    d = tmp_path / "devdata"
    d.mkdir()
    cov = [{"id": "a1", "task": "classification", "prompt": "Rate: great app", "response": "★★★★★"},
           {"id": "b1", "task": "summarization", "prompt": "Summarize: " + "the council met and voted " * 5,
            "response": "The council voted on the new budget for the town library"}]
    records.write_jsonl(d / "coverage.jsonl", cov)
    records.write_jsonl(d / "templates.jsonl", [{"id": "a1", "template": "stars"}, {"id": "b1", "template": "tldr"}])
    records.write_jsonl(d / "pool.jsonl", [{"template": "stars", "task": "classification", "prompt": f"Rate: app {i}",
                                            "response": "★★"} for i in range(4)] +
                        [{"template": "tldr", "task": "summarization", "prompt": "Summarize: x", "response": "y"}])
    return d


def _judge_text(instruction, reference_text, response):
    from duo import prompts

    return prompts.render("judge.txt", instruction=instruction, human_response=reference_text, lm_response=response)


def test_capable_teacher_answers_synthesis_with_pool_rows_of_the_seed_template(devdata, in_tmp):
    from duo import prompts

    t = CapableTeacher(devdata)
    text = prompts.render("synth.txt", instruction="Rate: great app", response="★★★★★", topic="x", n="3")
    first = json.loads(t({"messages": [{"role": "user", "content": text}], "seed": 1}))["contents"]
    assert len(first) == 3 and all(p["response"] == "★★" and p["instruction"].startswith("Rate: app") for p in first)
    again = json.loads(t({"messages": [{"role": "user", "content": text}], "seed": 2}))["contents"]
    assert len({p["instruction"] for p in first} | {p["instruction"] for p in again}) == 4, "each pool row once first"


def test_capable_judge_scores_from_the_reference(devdata, in_tmp):
    t = CapableTeacher(devdata)
    exact = json.loads(t({"messages": [{"role": "user", "content": _judge_text("Rate: great app", "★★★★★", "★★★★★")}]}))
    wrong = json.loads(t({"messages": [{"role": "user", "content": _judge_text("Rate: great app", "★★★★★", "★★")}]}))
    assert exact["precision_assessment"]["score"] == 95 and wrong["similarity_assessment"]["score"] == 5
    ref = "The council voted on the new budget for the town library"
    part = json.loads(t({"messages": [{"role": "user", "content": _judge_text("Summarize: ...", ref,
                                                                               "The council voted on a budget")}]}))
    assert 30 < part["precision_assessment"]["score"] < 95
    assert t({"messages": [{"role": "user", "content": "Rate: great app"}]}) == "★★★★★", "P-Match: the reference"


def test_task_score_uses_the_metric_each_task_calls_for():
    preds = [{"prompt_id": "c1", "task": "cls", "reference": "positive", "response": "Positive."},
             {"prompt_id": "c2", "task": "cls", "reference": "negative", "response": "positive"},
             {"prompt_id": "s1", "task": "sum", "reference": "the cat sat on the mat today in the sun",
              "response": "the cat sat on the mat"}]
    scores = reference.prompt_scores(preds)
    assert scores["c1"][1:] == ("exact_match", 100.0) and scores["c2"][2] == 0.0 and scores["s1"][1] == "rougeL"
    got = reference.task_score(scores)
    assert got["by_task"]["cls"]["score"] == 50.0
    assert got["task_score"] == round((50.0 + got["by_task"]["sum"]["score"]) / 2, 2), "a mean of task means"
    low, high = reference.bootstrap({k: (t, m, v + 10) for k, (t, m, v) in scores.items()}, scores)
    assert low == high == 10.0, "a paired difference that is the same everywhere has no spread"


def _judgments(values):
    return [{"prompt_id": f"p{i}", "subject": "student", "error": None, "precision": v, "similarity": v}
            for i, v in enumerate(values)]


def test_the_gate_passes_only_when_the_lower_bound_clears_epsilon():
    rows = _judgments([72, 74, 71, 73] * 25)  # 100 prompts, tight
    ev = {"precision": {"mean": 72.5}}
    v = gate.verdict(ev, Gate(threshold=70, confidence=0.9), 0, rows)
    assert v["passed"] and v["lower"] >= 70 and v["interval"][0] <= v["value"] <= v["interval"][1]
    noisy = _judgments([95, 45] * 10)  # mean 70+ on 20 prompts, but wide
    ev = {"precision": {"mean": 71.0}}
    v = gate.verdict(ev, Gate(threshold=70, confidence=0.9), 0, noisy)
    assert not v["passed"] and v["undecided"] and v["prompts_needed"] > 20
    assert "too few to decide" in gate.sentence(v) and str(v["prompts_needed"]) in gate.sentence(v)
    assert gate.verdict(ev, Gate(threshold=70, confidence=0.0), 0, noisy)["passed"], "confidence 0: the value decides"


def _cycle_record(folder, cycle, scores, md5=None):
    rows = [{"id": f"v{i}", "task": "t", "metric": "exact_match", "score": s, "response": ""} for i, s in enumerate(scores)]
    records.write_jsonl(contracts.validation_file(cycle, folder), rows)
    records.write_json(contracts.validation_summary(cycle, folder),
                       {"task_score": sum(scores) / len(scores), "gguf_md5": md5 or f"md5-{cycle}"})


def test_a_worse_cycle_is_a_regression_and_the_best_cycle_is_remembered(tmp_path):
    folder = tmp_path / "validation"
    _cycle_record(folder, 0, [100] * 10 + [0] * 30)
    _cycle_record(folder, 1, [100] * 30 + [0] * 10)
    _cycle_record(folder, 2, [100] * 12 + [0] * 28)
    s = validation.standing(2, folder)
    assert s["best_cycle"] == 1 and s["regression"]["from_cycle"] == 1 and s["regression"]["difference"] == -45.0
    assert s["regression"]["beyond_noise"] and s["gguf_md5"]["1"] == "md5-1"
    assert validation.standing(1, folder)["regression"] is None
    assert [f["id"] for f in validation.failures(0, folder)][:2] == ["v10", "v11"]
    v = gate.verdict({"precision": {"mean": 50.0}}, Gate(), 2, [], s)
    assert v["best_cycle"] == 1 and "REGRESSION" in gate.sentence(v) and "best cycle on validation: 1" in gate.sentence(v)


def test_delivery_takes_the_best_cycles_gguf_from_the_dvc_cache(in_tmp):
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True)
    from dvc.repo import Repo

    best = b"GGUF best cycle"
    md5 = __import__("hashlib").md5(best).hexdigest()
    with Repo() as repo:
        path = repo.cache.local.oid_to_path(md5)
    (in_tmp / path).parent.mkdir(parents=True, exist_ok=True)
    (in_tmp / path).write_bytes(best)
    records.write_bytes(contracts.GGUF, b"GGUF last cycle")
    records.write_text(contracts.MODELFILE, "FROM ./student.gguf\n")
    card = "# duo student model\n\n## Metrics at release\nPending: later.\n\n## Use\nllama-cli\n"
    card_md5 = __import__("hashlib").md5(card.encode()).hexdigest()
    with Repo() as repo:
        card_path = repo.cache.local.oid_to_path(card_md5)
    (in_tmp / card_path).parent.mkdir(parents=True, exist_ok=True)
    (in_tmp / card_path).write_text(card)
    standing = {"best_cycle": 1, "task_score": 40.0, "gguf_md5": {"1": md5, "2": "other"},
                "card_md5": {"1": card_md5}, "regression": None}
    verdict = {"cycle": 2, "passed": True, "validation": standing, "best_cycle": 1}
    delivery.deliver(verdict)
    assert (in_tmp / "dist" / "student.gguf").read_bytes() == best
    made = json.loads((in_tmp / "dist" / "deliverable.json").read_text())
    assert made["cycle"] == 1 and made["gate_cycle"] == 2
    text = (in_tmp / "dist" / "MODEL_CARD.md").read_text()
    assert "best cycle on validation" in text and "## Use" in text and "Pending" not in text
    assert delivery.default_model()[0] == contracts.DIST / "student.gguf"
