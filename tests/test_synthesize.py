"""Streaming synthesis against the loopback provider: request flow, targets, new data every cycle."""
import json
from pathlib import Path

import pytest

from duo import service
from duo.params import Curate, Synth
from duo.synth import generate, mix, teacher
from duo.train.finetune import load_rows, lora_size
from tests.fake_provider import FakeProvider, unique_pairs


def _rows(n, task="qa"):
    return [{"id": f"t{i}", "task": task, "prompt": f"question number {i} about the weather today",
             "response": f"answer {i}"} for i in range(n)]


@pytest.fixture
def teacher_api(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeProvider() as fake:
        fake.default = (200, unique_pairs(2), {})
        yield fake


def svc_for(fake, **kw):
    return service.Service("openai/t", api_base=fake.url, backoff_s=0.01, **kw)


def _draw(train, n, seed, cycle):
    stream = next(iter(mix.seed_streams(train, {("qa", None): 1}, {}, {}, seed, cycle).values()))
    return [next(stream)[1] for _ in range(min(n, len(train)))]


def test_seeds_without_replacement_and_seeded_by_cycle():
    train = _rows(20)
    a = _draw(train, 8, seed=1, cycle=1)
    assert len({r["id"] for r in a}) == 8
    assert a == _draw(list(reversed(train)), 8, seed=1, cycle=1)
    assert a != _draw(train, 8, seed=1, cycle=2)
    assert len(_draw(train, 50, seed=1, cycle=1)) == 20


def test_parse_pairs_tolerates_wrappers_and_drops_bad_items():
    reply = 'Sure!\n```json\n{"contents": [{"instruction": "Q1", "response": "A1"}, {"instruction": "", ' \
            '"response": "x"}, {"instruction": "Q2"}, "junk", {"instruction": "Q3", "response": "A3"}]}\n```'
    assert [p["instruction"] for p in teacher.parse_pairs(reply)] == ["Q1", "Q3"]
    assert teacher.parse_pairs("no json here") == []
    assert teacher.parse_pairs('{"items": []}') == []


def test_requests_stop_once_the_target_is_in_sight(teacher_api):
    """Two pairs per reply, target 5: two requests first (3 pairs hoped each), then one more once the
    replies show 2 per request; the third lands past the target and is kept (paid for)."""
    train = _rows(5)
    with svc_for(teacher_api, journal="s") as svc:
        out = generate.synthesize(train, [], [], svc, Synth(per_cycle=5, max_requests=20), Curate(), cycle=1)
    assert out.metrics["requests"] == 3 and len(out.kept) == 6 and out.metrics["surplus"] == 1
    assert [s["draw"] for s in out.seeds] == [0, 1, 2] and len(teacher_api.requests) == 3
    # doubling: cycle 2 wants 10, but max_requests stops it at 3 requests (6 pairs)
    p = Synth(per_cycle=5, schedule="doubling", max_requests=3)
    assert generate.target_rows(p, 2) == 10 and generate.target_rows(p, 3) == 20
    with svc_for(teacher_api) as svc:
        out = generate.synthesize(train, [], [], svc, p, Curate(), cycle=2)
    assert out.metrics["requests"] == 3 and len(out.kept) == 6 and not out.metrics["target_reached"]
    # seeds wrap into a second pass (reshuffled) once train is exhausted
    with svc_for(teacher_api) as svc:
        out = generate.synthesize(train, [], [], svc, Synth(per_cycle=100, max_requests=8), Curate(), cycle=3)
    assert [s["pass"] for s in out.seeds] == [0] * 5 + [1] * 3 and len({s["seed_id"] for s in out.seeds[:5]}) == 5
    # per_cycle 0: one round of seeds_per_cycle requests, whatever is kept
    with svc_for(teacher_api) as svc:
        out = generate.synthesize(train, [], [], svc, Synth(per_cycle=0, seeds_per_cycle=4), Curate(), cycle=4)
    assert out.metrics["requests"] == 4 and len(out.kept) == 8


def test_requests_flow_at_full_concurrency_without_rounds(teacher_api):
    """Every slot is used (rounds of seeds_per_cycle = 6 would never have 8 in flight) and only the
    stage's first call goes alone."""
    teacher_api.delay_s = 0.05
    with svc_for(teacher_api, concurrency=8) as svc:
        out = generate.synthesize(_rows(30), [], [], svc, Synth(per_cycle=120, max_requests=100), Curate(), cycle=1)
        assert len(out.kept) >= 120 and svc.stats.max_in_flight == 8
        n = len(teacher_api.spans)
        svc.map([service.Request(messages=[{"role": "user", "content": f"more {i}"}]) for i in range(16)])
    spans = sorted(teacher_api.spans)
    assert spans[0][1] <= spans[1][0], "the first call of the stage went alone (a bad key costs one call)"
    later = spans[n:]
    assert later[1][0] < later[0][1], "a later map's first call does not go alone again"


def test_same_replies_give_the_same_files_whatever_the_timing(teacher_api):
    import random

    runs = []
    for delays in (None, [random.Random(i).uniform(0, 0.05) for i in range(64)]):
        teacher_api.delays = delays or []
        with svc_for(teacher_api, concurrency=6) as svc:
            out = generate.synthesize(_rows(7), [], [], svc, Synth(per_cycle=30, max_requests=40), Curate(), cycle=1)
        runs.append((out.kept, out.rejected, out.seeds))
    assert runs[0] == runs[1]


def test_new_data_every_cycle_with_a_seed_honouring_teacher(teacher_api):
    """Three cycles from 4 seed rows (every seed repeats in every cycle), one journal across them: each
    cycle's requests are new (nothing replayed), its kept rows are new, no exact duplicates."""
    train, earlier, seen_prompts = _rows(4), [], set()
    for cycle in (1, 2, 3):
        with svc_for(teacher_api, journal="synth", cycle=cycle) as svc:
            out = generate.synthesize(train, [], earlier, svc, Synth(per_cycle=10, max_requests=30), Curate(),
                                      cycle)
        assert svc.stats.cached == 0 and svc.stats.calls == out.metrics["requests"]
        assert len(out.kept) >= 10 and out.metrics["exact_duplicate_rate"] == 0.0
        prompts = {r["prompt"] for r in out.kept}
        assert not prompts & seen_prompts and all(r["id"].startswith(f"syn-c{cycle}-") for r in out.kept)
        seen_prompts |= prompts
        earlier += out.kept
    seeds = [r["body"]["seed"] for r in teacher_api.requests]
    assert len(set(seeds)) == len(seeds), "every draw of every cycle sends its own seed"
    # a rerun of cycle 3 replays its own draws from the journal and pays nothing
    before = len(teacher_api.requests)
    with svc_for(teacher_api, journal="synth", cycle=3) as svc:
        generate.synthesize(train, [], earlier[:-len(out.kept)], svc, Synth(per_cycle=10, max_requests=30),
                            Curate(), 3)
    assert len(teacher_api.requests) == before and svc.stats.cached == out.metrics["requests"]


def test_request_picks_the_summarization_prompt(in_tmp):
    req = teacher.request_for({"id": "s", "task": "summarization", "prompt": "P", "response": "R"},
                              Synth(), structured=True, cycle=1, draw=0)
    assert "summarization examples" in req.messages[0]["content"]
    assert req.response_format["schema"]["properties"]["contents"]["maxItems"] == Synth().pairs_per_request
    req2 = teacher.request_for({"id": "c", "task": "coding", "prompt": "P", "response": "R"},
                               Synth(), structured=False, cycle=1, draw=1)
    assert "programming" in req2.messages[0]["content"] and req2.response_format == {"type": "json_object"}
    assert req.tag == "synth:c1:d0" and req.seed != req2.seed


def test_a_filter_that_removes_most_of_a_task_says_so(teacher_api):
    teacher_api.default = (200, json.dumps({"contents": [{"instruction": "hi", "response": "a b c"}]}), {})
    with svc_for(teacher_api) as svc:
        out = generate.synthesize(_rows(3), [], [], svc, Synth(per_cycle=0, seeds_per_cycle=3), Curate(), cycle=1)
    assert out.metrics["by_task"]["qa"]["removed"] == {"instruction_too_short": 3}
    assert out.metrics["warnings"] == ["qa: instruction_too_short removed 3 of 3 candidates"]


def test_finetune_reads_train_plus_synth_up_to_the_current_cycle(tmp_path):
    from duo import contracts

    (tmp_path / "synth").mkdir()
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _rows(3)))
    for c in (1, 2, 3):
        (tmp_path / "synth" / f"cycle-{c}.jsonl").write_text(
            json.dumps({"id": f"s{c}", "task": "qa", "prompt": f"sq{c}", "response": "a"}) + "\n")
    (tmp_path / "synth" / "rejected-cycle-1.jsonl").write_text("")
    assert [p.name for p in contracts.synth_files(1, 2, tmp_path / "synth")] == ["cycle-1.jsonl", "cycle-2.jsonl"]
    rows, n_synth = load_rows(train, 2, tmp_path / "synth")
    assert n_synth == 2 and [r["id"] for r in rows][-2:] == ["s1", "s2"]
    assert load_rows(train, 0, tmp_path / "synth")[1] == 0


def test_lora_schedule_follows_the_paper():
    assert lora_size(100, "auto", "auto") == (8, 16)
    assert lora_size(16_000, "auto", "auto") == (8, 16)
    assert lora_size(20_000, "auto", "auto") == (16, 32)
    assert lora_size(40_000, "auto", "auto") == (32, 64)
    assert lora_size(100, 16, "auto") == (16, 32)
    assert lora_size(100, 4, 4) == (4, 4)


def test_stage_metrics_hold_counts_and_rates_rows_go_to_files(teacher_api):
    import yaml
    from click.testing import CliRunner

    from stages import synthesize

    data = Path("data")
    data.mkdir()
    test = [{"id": "q0", "task": "qa", "prompt": "What colour is the sky?", "response": "Blue."}]
    for name, rows in (("train", _rows(6)), ("test", test)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open("params.yaml", "w") as fh:
        yaml.safe_dump({"cycle": 1, "service": {"model": "openai/t", "api_base": teacher_api.url},
                        "synth": {"per_cycle": 12, "max_requests": 20}}, fh)
    result = CliRunner().invoke(synthesize.main, [], catch_exceptions=False)
    assert result.exit_code == 0 and "12 kept of target 12" in result.output, result.output
    metrics = json.loads(open("metrics/synth.json").read())

    def scalars(obj):  # counts, rates, thresholds and warning lines: nothing that grows with the data
        if isinstance(obj, dict):
            return all(scalars(v) for v in obj.values())
        if isinstance(obj, list):
            return len(obj) <= 10 and all(isinstance(v, str) for v in obj)
        return obj is None or isinstance(obj, (int, float, str, bool))

    assert scalars(metrics) and metrics["kept"] == 12 and metrics["by_task"]["qa"]["thresholds"]["min_instruction"] == 3
    seeds = [json.loads(line) for line in open("data/synth/seeds-cycle-1.jsonl")]
    assert [s["draw"] for s in seeds] == list(range(metrics["requests"]))
    assert open("data/synth/rejected-cycle-1.jsonl").read() == ""
