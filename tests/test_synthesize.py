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


def test_exact_dedup_against_seen_and_test_and_itself():
    seen = [{"prompt": "What is 2+2?", "response": "4"}]
    test_prompts = {synthesize.normalise("Capital of France?")}
    new = [
        {"id": "n1", "prompt": "what is 2 + 2", "response": "four"},  # same instruction as train
        {"id": "n2", "prompt": "capital of FRANCE", "response": "Paris"},  # a test prompt
        {"id": "n3", "prompt": "Name a prime.", "response": "7"},
        {"id": "n4", "prompt": "name a prime", "response": "7."},  # duplicate of n3
    ]
    kept, removed = synthesize.dedup(new, {synthesize.normalise(s["prompt"]) for s in seen},
                                     set(), test_prompts)
    assert [r["id"] for r in kept] == ["n3"]
    assert removed == {"exact_duplicate": 2, "test_prompt": 1}


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
