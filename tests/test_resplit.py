"""After a re-split (coverage.seed, train_ratio, new rows), earlier cycles' synthetic rows are checked
again against the test and validation rows as split now: the ones that overlap them are left out of
training and counted in metrics/train.json."""
from __future__ import annotations

import json

import pytest

from duo.synth import curate

TEST = [{"id": "t1", "task": "qa", "prompt": "Which river flows through the old town of Heidelberg in Germany?",
         "response": "The Neckar river flows through the old town of Heidelberg, joining the Rhine at Mannheim."}]
VAL = [{"id": "v1", "task": "qa", "prompt": "What colour do you get when you mix blue and yellow paint together?",
        "response": "Mixing blue and yellow paint gives green."}]
SYNTH = [  # cycle 1's kept pairs, curated against the test split of their day
    {"id": "syn-c1-d0-0", "task": "qa", "prompt": "which river flows through the OLD town of Heidelberg in Germany",
     "response": "It is the Neckar.", "seed_id": "r1", "cycle": 1},                       # a held-out prompt now
    {"id": "syn-c1-d0-1", "task": "qa", "prompt": "Name a river in Germany.",
     "response": "For instance the Neckar river flows through the old town of Heidelberg, joining the Rhine at "
                 "Mannheim, as many visitors know.", "seed_id": "r1", "cycle": 1},  # 13 words of a test answer
    {"id": "syn-c1-d1-0", "task": "qa", "prompt": "What do you get when you mix red and white paint?",
     "response": "Pink.", "seed_id": "r2", "cycle": 1},                                   # clean
    {"id": "syn-c1-d1-1", "task": "qa", "prompt": "What colour do you get when you mix blue and yellow paint together?",
     "response": "Green, of course.", "seed_id": "r2", "cycle": 1},                       # a validation prompt now
]


def test_earlier_synthetic_rows_that_overlap_the_new_held_out_rows_are_left_out():
    kept, removed = curate.decontaminate(SYNTH, TEST + VAL, 13)
    assert [r["id"] for r in kept] == ["syn-c1-d1-0"]
    assert removed == {"test_prompt": 2, "test_ngram_overlap": 1}
    kept, removed = curate.decontaminate(SYNTH, [], 13)
    assert kept == SYNTH and not removed, "nothing held out, nothing left out"


@pytest.mark.integration
def test_finetune_counts_the_contaminated_rows_in_train_json(tmp_path, monkeypatch):
    """The finetune stage on a tiny real model after a re-split moved rows into test and validation."""
    import yaml

    from tests import tiny_model
    from tests.test_resume import make_project, run_inline

    root = make_project(tmp_path / "p", tiny_model.build(tmp_path / "base"))
    (root / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEST))
    (root / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in VAL))
    (root / "data" / "synth").mkdir()
    (root / "data" / "synth" / "cycle-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SYNTH))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["cycle"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run_inline(root, monkeypatch)
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    assert metrics["synth_rows"] == 1 and metrics["train_rows"] == 12
    assert metrics["synth_contaminated"] == 3
    assert metrics["synth_contaminated_by"] == {"test_ngram_overlap": 1, "test_prompt": 2}
    assert "3 left out: overlap test/validation" in output
