"""Early stopping on the validation split: training stops after `early_stopping_patience` evaluations
without a lower validation loss, and the adapter published is the best evaluation's, not the last
step's. Real TRL/PEFT training of a tiny random-init Llama."""
from __future__ import annotations

import hashlib
import json

import pytest

from tests import tiny_model
from tests.test_resume import TINY, make_project, run_inline

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return tiny_model.build(tmp_path_factory.mktemp("tiny") / "base")


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode() + state[name].detach().float().numpy().tobytes())
    return h.hexdigest()


def test_stops_at_the_rise_and_publishes_the_best_evaluation(tiny_base, tmp_path, monkeypatch):
    import yaml
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerCallback
    from trl import SFTTrainer

    root = make_project(tmp_path / "p", tiny_base)
    # validation answers contradict train's: once the model learns train's answers, validation rises
    val = [{"id": f"v{i}", "task": "qa", "prompt": f"What is {i} plus {i}?", "response": "It is zero."}
           for i in range(11, 15)]
    (root / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"].update(TINY | {"max_steps": -1, "epochs": 30.0, "lr": 0.02, "save_steps": 2,
                                      "early_stopping_patience": 2})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    seen: dict[int, str] = {}

    class Record(TrainerCallback):  # the adapter weights at every evaluation
        def on_evaluate(self, args, state, control, model=None, **kw):
            seen[state.global_step] = _digest(get_peft_model_state_dict(model))

    original = SFTTrainer.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Record())

    monkeypatch.setattr(SFTTrainer, "__init__", init)
    run_inline(root, monkeypatch)
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    curve = metrics["validation_curve"]
    best = min(curve, key=lambda e: e["loss"])
    assert metrics["stopped_early"] and metrics["best_step"] == best["step"] and metrics["validation_rows"] == 4
    assert [e["step"] for e in curve][-1] == best["step"] + 2 * 2, "stopped two evaluations after the best"
    assert metrics["steps"] == curve[-1]["step"] < 30 * 6, "epochs are a maximum"
    published = load_file(root / "models" / "adapter" / "adapter_model.safetensors")
    assert _digest(published) == seen[best["step"]] != seen[curve[-1]["step"]]


def test_without_early_stopping_validation_is_evaluated_once_an_epoch_and_where_training_ends(tiny_base, tmp_path,
                                                                                             monkeypatch):
    import yaml

    root = make_project(tmp_path / "p", tiny_base)  # 12 rows, batch 2: 6 steps an epoch
    val = [{"id": f"v{i}", "task": "qa", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}
           for i in range(11, 15)]
    (root / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"].update(TINY | {"max_steps": 9, "epochs": 2.0, "save_steps": 2, "early_stopping_patience": 0})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_inline(root, monkeypatch)
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    # not at every checkpoint (2, 4, ...): the evaluations then chose nothing and cost a sixth of training
    assert [e["step"] for e in metrics["validation_curve"]] == [6, 9], metrics["validation_curve"]
    assert metrics["steps"] == 9 and not metrics["stopped_early"]
