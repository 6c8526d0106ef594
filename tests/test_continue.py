"""finetune.init: previous — cycle t continues from the adapter cycle t-1 left (the paper's eq. 1); with
`base`, or when that adapter is missing, of another cycle or of another shape, it trains fresh LoRA
weights and says why. Real TRL/PEFT training of a tiny random-init Llama."""
from __future__ import annotations

import pytest
import yaml

from tests import tiny_model
from tests.test_resume import make_project, outcome, run_inline

pytestmark = pytest.mark.integration  # real training


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return tiny_model.build(tmp_path_factory.mktemp("tiny") / "base")


def _set(root, cycle: int, **finetune):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"].update(finetune)
    params["cycle"] = cycle
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_previous_continues_from_the_last_cycles_adapter(tiny_base, tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", tiny_base)
    _set(root, init="previous", cycle=0, save_steps=0)
    said = run_inline(root, monkeypatch)
    assert "training from the base model" in said, "cycle 0 has nothing to continue from"
    first, weights0 = outcome(root)
    assert first["init"] == "base"

    # lr ~0 at cycle 1: nothing moves, so the adapter published is the one it started from
    _set(root, init="previous", cycle=1, lr=1e-12, save_steps=0)
    said = run_inline(root, monkeypatch)
    metrics, weights1 = outcome(root)
    assert "from cycle 0's adapter" in said and metrics["init"] == "previous"
    assert max(float((weights1[k] - weights0[k]).abs().max()) for k in weights0) < 1e-9

    # init: base trains fresh LoRA weights (B starts at zero: far from cycle 0's trained B)
    _set(root, init="base", cycle=2, lr=1e-12, save_steps=0)
    run_inline(root, monkeypatch)
    metrics, fresh = outcome(root)
    assert metrics["init"] == "base" and max(float((fresh[k] - weights0[k]).abs().max()) for k in weights0) > 1e-4
    assert all(float(v.abs().max()) < 1e-9 for k, v in fresh.items() if "lora_B" in k), "B starts at zero"

    # previous, but the adapter there is cycle 2's, not cycle 4-1's: fresh weights, and the reason said
    _set(root, init="previous", cycle=4, save_steps=0)
    said = run_inline(root, monkeypatch)
    assert "is cycle 2's adapter, not cycle 3's" in said and outcome(root)[0]["init"] == "base"
