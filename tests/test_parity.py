"""Parity at equal recipe: duo's finetune (micro-batches, the LM head on labelled positions only, the heap
trim, its own LoRA naming and checkpoints) trains exactly like a plain TRL `SFTTrainer` script with the
same recipe and the same data order: the same loss at every step and the same validation loss. What the
levers may change is speed, never the result. Real TRL/PEFT training of a tiny random-init Llama."""
from __future__ import annotations

import pytest

from tests import tiny_model

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

ROWS = [{"id": f"r{i}", "task": "qa" if i % 2 else "sum",
         "prompt": f"What is {i} plus {i}?" if i % 2 else f"Shorten: the number {i} is followed by {i + 1}.",
         "response": f"{2 * i}." if i % 2 else f"{i} then {i + 1}" + " and so on" * (i % 3)}
        for i in range(16)]
VAL = ROWS[:4]
RECIPE = {"batch_size": 8, "lr": 5e-3, "epochs": 2.0, "max_length": 64}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return tiny_model.build(tmp_path_factory.mktemp("tiny") / "base")


def _duo(base, out, monkeypatch, tmp_path, precision, dropout=0.0):
    from duo import params as params_mod
    from duo.train import finetune

    monkeypatch.chdir(tmp_path)  # checkpoints go under .duo/ of the working directory
    raw = {"finetune": RECIPE | {"max_steps": -1, "micro_batch_size": 4, "batches": "random", "threads": 1,
                                 "save_steps": 0, "early_stopping_patience": 0, "precision": precision,
                                 "lora": {"r": 4, "alpha": 8, "dropout": dropout, "target_modules": "all-linear"}}}
    p = params_mod.build(params_mod.Params, raw, "", "test").finetune
    metrics = finetune.train(ROWS, p, base, out, val=VAL)
    return [c["loss"] for c in metrics["loss_curve"]], metrics["validation_curve"][-1]["loss"]


def _plain(base, tmp_path, precision, dropout=0.0):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from duo.train import finetune

    torch.set_num_threads(1)
    config = SFTConfig(output_dir=str(tmp_path / "plain"), per_device_train_batch_size=RECIPE["batch_size"],
                       num_train_epochs=RECIPE["epochs"], learning_rate=RECIPE["lr"], lr_scheduler_type="cosine",
                       warmup_steps=0.03, completion_only_loss=True, max_length=RECIPE["max_length"], bf16=precision == "bf16",
                       use_cpu=True, eval_strategy="epoch", save_strategy="no", report_to="none", seed=42,
                       logging_steps=1, disable_tqdm=True)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), args=config,
                         processing_class=AutoTokenizer.from_pretrained(base), peft_config=lora,
                         train_dataset=Dataset.from_list(finetune.to_conversations(ROWS)),
                         eval_dataset=Dataset.from_list(finetune.to_conversations(VAL)))
    trainer.train()
    history = trainer.state.log_history
    return ([round(h["loss"], 4) for h in history if "loss" in h],
            [round(h["eval_loss"], 4) for h in history if "eval_loss" in h][-1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_duo_trains_like_the_plain_trl_script(tiny_base, tmp_path, monkeypatch, precision):
    from duo.train import finetune

    if precision == "bf16" and not finetune.bf16_fast("cpu"):
        pytest.skip("bf16 autocast on a CPU without bf16 math takes minutes a step (AVX2 has no bf16 kernels)")
    duo_losses, duo_val = _duo(tiny_base, tmp_path / "adapter", monkeypatch, tmp_path, precision)
    plain_losses, plain_val = _plain(tiny_base, tmp_path, precision)
    assert len(duo_losses) == len(plain_losses) == 4  # 16 rows, batch 8, 2 epochs
    assert duo_losses[-1] < duo_losses[0] - 0.05  # it learnt something: equal curves of a dead run prove nothing
    assert duo_losses == pytest.approx(plain_losses, rel=2e-3)
    assert duo_val == pytest.approx(plain_val, rel=2e-3)
    if precision == "fp32":
        # the quality bench's shared validation loss: with all 4 rows in one evaluation batch the
        # Trainer's eval loss is the same per-token mean
        from duo.train import measure

        assert measure.validation_nll(tmp_path / "adapter", VAL) == pytest.approx(duo_val, rel=2e-3)


def test_with_dropout_the_lever_changes_the_draw_not_the_training(tiny_base, tmp_path, monkeypatch):
    """With LoRA dropout on, duo draws its masks 16 bits per element (duo/train/levers.py) where torch
    draws 32: the same drop rate (tests/test_train_levers.py), other masks. Step 1 is equal (LoRA's B
    starts at zero, so no mask matters yet); after it the curves part, as two seeds' would (here by
    ~4e-4 of the loss by step 4), and the validation loss ends within 1%: the lever changes which units
    drop, not how the adapter trains."""
    duo_losses, duo_val = _duo(tiny_base, tmp_path / "adapter", monkeypatch, tmp_path, "fp32", dropout=0.1)
    plain_losses, plain_val = _plain(tiny_base, tmp_path, "fp32", dropout=0.1)
    assert duo_losses[-1] < duo_losses[0] - 0.05 and plain_losses[-1] < plain_losses[0] - 0.05
    assert duo_losses[0] == plain_losses[0]
    assert duo_losses != plain_losses, "other masks: the curves part after step 1"
    assert duo_losses == pytest.approx(plain_losses, rel=1e-2)
    assert duo_val == pytest.approx(plain_val, rel=1e-2)
