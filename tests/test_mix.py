"""What a cycle asks the teacher for: answer shares of labelled tasks held against a skewing teacher, the
overflow kept in reserve, seeds aimed at the last student's validation failures (never at test)."""
import json
import random
from collections import Counter

import pytest

from duo import contracts, service
from duo.data import records
from duo.evaluation import validation
from duo.params import Curate, Synth
from duo.synth import generate, mix
from tests.fake_provider import FakeProvider

LABELS = ["positive"] * 6 + ["negative"] * 4  # train shares 60/40


def _train(n_per_task=40):
    rows = []
    for i in range(n_per_task):
        rows.append({"id": f"c{i:03d}", "task": "classification", "response": LABELS[i % 10],
                     "prompt": f"Is this review positive or negative? review {i} says the gadget {i % 7} works"})
        rows.append({"id": f"q{i:03d}", "task": "qa", "response": f"the answer is number {i} today",
                     "prompt": f"Question {i}: what number is written in passage {i} of the weather report"})
    return rows


VOCAB = [f"{a}{b}{c}" for a in "bcdfghklmnprst" for b in "aeiou" for c in "nrstlmk"]


def skewed_teacher(positive_share: float):
    """A teacher that answers classification seeds with new reviews (fresh random words), `positive_share`
    of them positive whatever the seed's label (the majority skew a real teacher shows), and qa seeds
    with new questions."""
    def reply(body: dict) -> str:
        text = body["messages"][0]["content"]
        rng = random.Random(json.dumps(body, sort_keys=True))

        def words(n):
            return " ".join(rng.choice(VOCAB) for _ in range(n))

        pairs = []
        for _ in range(3):
            if "positive or negative" in text:
                label = "Positive." if rng.random() < positive_share else "negative"
                pairs.append({"instruction": f"Is this review positive or negative? {words(14)}", "response": label})
            else:
                pairs.append({"instruction": f"Question: {words(12)}?", "response": words(5)})
        return json.dumps({"contents": pairs})

    return reply


@pytest.fixture
def api(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeProvider() as fake:
        yield fake


def _run(fake, train, p, cycle=1, **kw):
    with service.Service("openai/t", api_base=fake.url, backoff_s=0.01, concurrency=4) as svc:
        return generate.synthesize(train, [], kw.pop("earlier", []), svc, p, Curate(min_instruction_tokens=1,
                                   min_response_tokens=1), cycle, **kw)


def test_labels_are_found_only_where_answers_form_a_small_set():
    found = mix.labels(_train())
    assert set(found) == {"classification"} and found["classification"] == Counter(positive=24, negative=16)
    assert mix.canonical([{"task": "t", "response": "Yes."}, {"task": "t", "response": "yes"},
                          {"task": "t", "response": "yes"}])["t", "yes"] == "yes"


def test_quotas_split_by_task_and_label_and_sum_to_the_target():
    train = _train()
    q = mix.quotas(train, 50, mix.task_weights(train, None))
    assert sum(q.values()) == 50 and q["qa", None] == 25
    assert q["classification", "positive"] == 15 and q["classification", "negative"] == 10
    balanced = mix.quotas(train, 50, mix.task_weights(train, None), balanced=True)
    assert abs(balanced["classification", "positive"] - balanced["classification", "negative"]) <= 1


def test_balanced_shares_are_equal_within_each_template_and_templates_keep_their_train_share():
    """One task, two templates with labels of their own (the development data's paraphrase yes/no beside a
    star rating): balanced gives each template its train share, split equally among its own labels."""
    rng = random.Random(0)

    def text(n):
        return " ".join(rng.choice(VOCAB) for _ in range(n))

    rows = [{"id": f"p{i}", "task": "classification", "response": "yes" if i < 24 else "no",
             "prompt": f"Do these two sentences mean the same thing? {text(9)} / {text(9)}"} for i in range(30)]
    rows += [{"id": f"s{i}", "task": "classification", "response": "★" * (1 if i < 14 else 2 if i < 18 else 3),
              "prompt": f"How many stars would the writer give, from one to three? Review: {text(12)}"}
             for i in range(20)]
    found = mix.labels(rows)["classification"]
    family = mix.families(rows, found)
    assert family["yes"] == family["no"] != family["★"] == family["★★"] == family["★★★"]
    assert mix.shares(found, family) == pytest.approx({"yes": 0.3, "no": 0.3, "★": 0.4 / 3, "★★": 0.4 / 3,
                                                       "★★★": 0.4 / 3})
    q = mix.quotas(rows, 60, {"classification": 1.0}, balanced=True)
    assert q["classification", "yes"] == q["classification", "no"] == 18
    assert sorted(q["classification", s] for s in ("★", "★★", "★★★")) == [8, 8, 8]
    # free-form prompts share no template: one family, equal shares as for a single template
    free = [{**r, "prompt": text(12)} for r in rows]
    assert len(set(mix.families(free, found).values())) == 1


def test_kept_rows_keep_the_train_answer_shares_against_an_80_20_teacher(api):
    """An 80/20 teacher against a 60/40 train split: the kept classification rows stay within 0.1 (total
    variation) of train; the positive overflow waits in reserve, spelled as train spells the label."""
    api.default = (200, skewed_teacher(0.8), {})
    train = _train()
    out = _run(api, train, Synth(per_cycle=60, pairs_per_request=3, max_requests=200))
    kept = Counter(r["response"] for r in out.kept if r["task"] == "classification")
    assert sum(kept.values()) == 30 and set(kept) == {"positive", "negative"}, kept
    assert mix.tvd(kept, Counter(positive=24, negative=16)) <= 0.1
    assert out.metrics["answers"]["classification"]["tvd"] <= 0.1
    assert out.reserve and {r["response"] for r in out.reserve} == {"positive"}
    assert out.metrics["reserve"] == {"used": 0, "held": len(out.reserve)}
    # a teacher that ignored the quotas would have kept the skew: what the reserve held back is why
    everything = kept + Counter(r["response"] for r in out.reserve)
    assert mix.tvd(everything, Counter(positive=24, negative=16)) > 0.1

    # the next cycle takes the reserve first, checked again, before anything new is asked
    before = len(api.requests)
    nxt = _run(api, train, Synth(per_cycle=10, pairs_per_request=3, max_requests=200), cycle=2,
               reserve=out.reserve, earlier=out.kept)
    used = [r for r in nxt.kept if r["id"].startswith("syn-c1-")]
    assert nxt.metrics["reserve"]["used"] == len(used) == 3, "positive quota of 3 filled from the reserve"
    assert all(r["response"] == "positive" for r in used)
    assert len(api.requests) > before and not any(r["id"] in {k["id"] for k in out.kept} for r in nxt.kept)


def test_a_teacher_that_cannot_fill_a_label_stops_without_spending_the_request_cap(api):
    api.default = (200, skewed_teacher(1.0), {})  # never a negative review
    out = _run(api, _train(), Synth(per_cycle=40, pairs_per_request=3, max_requests=200))
    assert out.metrics["stalled"] and "classification/negative" in out.metrics["unfilled"]
    assert out.metrics["requests"] < 60


def test_answers_outside_the_labels_are_rejected(api):
    api.default = (200, json.dumps({"contents": [{"instruction": "Is this review positive or negative? "
                                                                 "a brand new kettle review 77", "response": "mixed"}]}), {})
    out = _run(api, [r for r in _train() if r["task"] == "classification"], Synth(per_cycle=0, seeds_per_cycle=1))
    assert not out.kept and [r["reason"] for r in out.rejected] == ["answer_not_a_label"]


def test_failures_steer_tasks_and_rows_and_test_rows_steer_nothing(in_tmp):
    train = _train()
    val = [{"id": f"v{i}", "task": "qa", "prompt": f"Question {i}: what number is written in passage {i} of the "
                                                   f"weather report", "response": f"the answer is number {i} today"}
           for i in (3, 17)] + [{"id": f"v{i}", "task": "classification", "prompt": "Is this review positive or "
                                 f"negative? review {i} says the gadget 2 works", "response": "negative"} for i in (9, 8)]
    folder = in_tmp / "validation"  # the record synthesis reads: failures() drops the rows answered right
    records.write_jsonl(contracts.validation_file(0, folder), [
        {"id": v["id"], "task": v["task"], "metric": "exact_match", "score": s, "response": ""}
        for v, s in zip(val, (0.0, 10.0, 100.0, 0.0))])
    records.write_json(contracts.validation_summary(0, folder), {"task_score": 36.7})
    failed = validation.failures(0, folder)
    assert [f["id"] for f in failed] == ["v17", "v3", "v8"]
    w = mix.task_weights(train, failed, val)  # qa: 2 of 2 failed, classification 1 of 2
    assert w["qa"] > 0.5 > w["classification"], "the task the student fails more gets more of the pairs"
    assert w["classification"] < mix.task_weights(train, None)["classification"], "a task answered right gets less"
    rows = mix.row_weights(train, failed, val)
    assert rows["q003"] > 1 and rows["q017"] > 1
    assert sum(v > 1 for k, v in rows.items() if k.startswith("c")) == mix.NEIGHBOURS, "v8 lends weight, v9 (right) none"

    def seeds(p, failed):
        quota = generate._Quota(train, p, 1, 40, 40, failed, val)
        counts = Counter()
        out = []
        for _ in range(12):
            bucket, _, row = quota.planner.next(counts)
            counts[bucket] += 1
            out.append(row["id"])
        return out

    focused = seeds(Synth(focus="failures"), failed)
    assert seeds(Synth(focus="uniform"), failed) == seeds(Synth(focus="uniform"), None), "uniform ignores them"
    assert sum(r.startswith("q") for r in focused) > sum(r.startswith("q") for r in seeds(Synth(), None))
    assert "q003" in focused[:8] or "q017" in focused[:8]


def test_synthesis_never_reads_the_test_split_to_steer(api):
    """Seeds and requests are the same whatever the test split holds (it only removes overlapping rows)."""
    api.default = (200, skewed_teacher(0.6), {})
    train = _train()
    val = [{"id": "v3", "task": "qa", "prompt": "Question 3: what number is written in passage 3 of the weather",
            "response": "the answer is number 3 today"}]
    failed = [{"id": "v3", "task": "qa", "score": 0.0}]
    runs = []
    for test in ([], [{"id": "t1", "task": "qa", "prompt": "Completely unrelated test question about oceans",
                       "response": "whales and plankton live in the ocean"}]):
        api.requests.clear()
        with service.Service("openai/t", api_base=api.url, backoff_s=0.01, concurrency=4) as svc:
            out = generate.synthesize(train, test, [], svc, Synth(per_cycle=20, focus="failures", max_requests=50),
                                      Curate(min_instruction_tokens=1, min_response_tokens=1), 1, failed=failed,
                                      val=val)
        runs.append((out.seeds, sorted(json.dumps(r["body"], sort_keys=True) for r in api.requests)))
    assert runs[0] == runs[1]
