import json

from stages import synthesize
from stages.finetune import load_rows, lora_size, synth_files


def _rows(n, task="qa"):
    return [{"id": f"t{i}", "task": task, "prompt": f"question {i}", "response": f"answer {i}"} for i in range(n)]


def test_seeds_without_replacement_and_seeded_by_cycle():
    train = _rows(20)
    a = synthesize.draw_seeds(train, 8, seed=1, cycle=1)
    assert len({r["id"] for r in a}) == 8
    assert a == synthesize.draw_seeds(list(reversed(train)), 8, seed=1, cycle=1)
    assert a != synthesize.draw_seeds(train, 8, seed=1, cycle=2)
    assert len(synthesize.draw_seeds(train, 50, seed=1, cycle=1)) == 20


def test_parse_pairs_tolerates_wrappers_and_drops_bad_items():
    reply = 'Sure!\n```json\n{"contents": [{"instruction": "Q1", "response": "A1"}, {"instruction": "", ' \
            '"response": "x"}, {"instruction": "Q2"}, "junk", {"instruction": "Q3", "response": "A3"}]}\n```'
    assert [p["instruction"] for p in synthesize.parse_pairs(reply)] == ["Q1", "Q3"]
    assert synthesize.parse_pairs("no json here") == []
    assert synthesize.parse_pairs('{"items": []}') == []


def _pairs(body):
    """Two distinct pairs per request, different for every request (no near duplicates)."""
    import hashlib
    import random

    rng = random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest())
    words = [f"w{i}" for i in range(5000)]

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    return json.dumps({"contents": [{"instruction": text(12), "response": text(10)} for _ in range(2)]})


def test_volume_schedule_requests_until_the_target_of_kept_rows(in_tmp, monkeypatch):
    from duo import service
    from duo.params import Curate, Synth
    from tests.fake_provider import FakeProvider

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    train = _rows(5)
    with FakeProvider() as fake:
        fake.default = (200, _pairs, {})
        p = Synth(seeds_per_cycle=2, per_cycle=5, max_requests=20)
        with service.Service("openai/t", api_base=fake.url, journal="s") as svc:
            kept, removed, m = synthesize.synthesize(train, [], [], svc, p, Curate(), cycle=1)
        assert len(kept) == 5 and m["requests"] == 4 and len(m["seeds"]) == 4
        assert len({(s["id"], s["pass"]) for s in m["seeds"]}) == 4
        # doubling: cycle 2 wants 10, but max_requests stops it at 3 requests (6 pairs)
        p = Synth(seeds_per_cycle=2, per_cycle=5, schedule="doubling", max_requests=3)
        assert synthesize.target_rows(p, 2) == 10 and synthesize.target_rows(p, 3) == 20
        with service.Service("openai/t", api_base=fake.url) as svc:
            kept, _, m = synthesize.synthesize(train, [], [], svc, p, Curate(), cycle=2)
        assert m["requests"] == 3 and len(kept) == 6
        # seeds wrap into a second pass (reshuffled) once train is exhausted
        p = Synth(seeds_per_cycle=4, per_cycle=100, max_requests=8)
        with service.Service("openai/t", api_base=fake.url) as svc:
            _, _, m = synthesize.synthesize(train, [], [], svc, p, Curate(), cycle=3)
        assert [s["pass"] for s in m["seeds"]].count(1) == 3 and len({s["id"] for s in m["seeds"][:5]}) == 5


def test_request_picks_the_summarization_prompt(in_tmp):
    from duo.params import Synth

    req = synthesize.request_for({"id": "s", "task": "summarization", "prompt": "P", "response": "R"},
                                 Synth(), structured=True)
    assert "summarization examples" in req.messages[0]["content"]
    assert req.response_format["schema"]["properties"]["contents"]["maxItems"] == Synth().pairs_per_request
    req = synthesize.request_for({"id": "c", "task": "coding", "prompt": "P", "response": "R"},
                                 Synth(), structured=False)
    assert "programming" in req.messages[0]["content"] and req.response_format == {"type": "json_object"}


def test_finetune_reads_train_plus_synth_up_to_the_current_cycle(tmp_path):
    (tmp_path / "synth").mkdir()
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _rows(3)))
    for c in (1, 2, 3):
        (tmp_path / "synth" / f"cycle-{c}.jsonl").write_text(
            json.dumps({"id": f"s{c}", "task": "qa", "prompt": f"sq{c}", "response": "a"}) + "\n")
    assert [p.name for p in synth_files(2, tmp_path / "synth")] == ["cycle-1.jsonl", "cycle-2.jsonl"]
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
