"""Quality parity for `make bench` (section `quality`): duo's finetune with the shipped defaults against a
plain TRL `SFTTrainer` script with the same recipe (LoRA all-linear r=16 alpha=32 dropout 0.05, 4 epochs,
lr 5e-4 cosine, batch 8, loss on the response only, the precision duo picks on this machine) on the same
train rows. Each adapter is exported with every check and scored the same way on the validation split
(never test): greedy answers through llama.cpp from its own GGUF, ROUGE-L and exact match, and the
validation loss per response token computed the same way for both (the trainers' own eval losses average
per-batch means and move with the evaluation batch size). duo runs twice: with the shipped defaults (early
stopping on validation loss) and at the plain script's exact recipe (its 4 epochs), so the levers' cost
and the defaults' are told apart. 12 validation rows resolve little: one answer is 100/12 = 8.3 points of
exact match (`quality.one_answer_points`); the validation loss is the finer measure.

Runs in the bench's clone (base model and split of the shipped sample data), each side in its own
process. Run: python -m tests.bench quality
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def plain(params, rows: list[dict] | None = None) -> dict:
    """The plain script, in the working directory of a project (models/base, data/train.jsonl, val),
    scored on the validation split (or on `rows`)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from duo import contracts as c
    from duo.train import measure
    from duo.train import finetune

    p = params.finetune
    train, _ = finetune.load_rows(c.TRAIN, 0)
    val = c.read_rows(c.VAL)
    precision = finetune.autocast(p, "cpu")
    tok = AutoTokenizer.from_pretrained(c.BASE)
    model = AutoModelForCausalLM.from_pretrained(c.BASE, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix=".quality.", dir=c.BASE.parent) as tmp:
        tmp = Path(tmp)
        config = SFTConfig(output_dir=str(tmp / "plain"), per_device_train_batch_size=8, num_train_epochs=4,
                           max_steps=p.max_steps,  # -1 by default: the epochs decide, as in duo
                           learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=0.03,
                           completion_only_loss=True, max_length=1024, bf16=precision == "bf16", use_cpu=True,
                           eval_strategy="epoch", save_strategy="no", report_to="none", seed=42,
                           disable_tqdm=True)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=config, processing_class=tok, peft_config=lora,
                             train_dataset=Dataset.from_list(finetune.to_conversations(train)),
                             eval_dataset=Dataset.from_list(finetune.to_conversations(val)))
        start = time.monotonic()
        result = trainer.train()
        seconds = time.monotonic() - start
        trainer.model.save_pretrained(tmp / "adapter")
        tok.save_pretrained(tmp / "adapter")
        (tmp / "adapter" / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
        evals = [round(h["eval_loss"], 4) for h in trainer.state.log_history if "eval_loss" in h]
        scores = measure.score(params, tmp / "adapter", tmp, rows=rows)
        if rows is None:
            scores.pop("predictions")
    return {"train_seconds": round(seconds, 1), "train_loss": round(result.training_loss, 4),
            "steps": trainer.state.global_step, "validation_curve": evals,
            "best_validation_loss": min(evals, default=None), "final_validation_loss": evals[-1] if evals else None,
            "precision": precision, **scores}


def duo_side(params, equal_recipe: bool = False) -> dict:
    """duo's finetune with the shipped defaults; with `equal_recipe`, without early stopping: the plain
    script's 4 epochs, so that only duo's levers differ."""
    import dataclasses

    from duo.train import measure

    if equal_recipe:
        params = dataclasses.replace(params, finetune=dataclasses.replace(params.finetune, early_stopping_patience=0))
    return measure.measure(params)


def bench_quality(clone: Path) -> dict:
    figures: dict = {}
    for side in ("duo", "duo_equal_recipe", "plain"):
        proc = subprocess.run([sys.executable, "-m", "tests.bench_quality", side], cwd=clone, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"quality {side} failed:\n{proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        for key in ("rougeL", "exact_match", "validation_nll", "best_validation_loss", "validation_curve",
                    "train_seconds", "steps", "precision", "by_task", "n"):
            figures[f"quality.{side}_{key}"] = got.get(key)
    # the levers' cost (equal recipe vs plain) and the defaults' (early stopping included) vs plain
    for side in ("duo", "duo_equal_recipe"):
        for key, digits in (("rougeL", 2), ("exact_match", 4), ("validation_nll", 4)):
            figures[f"quality.{key}_{side}_minus_plain"] = round(
                figures[f"quality.{side}_{key}"] - figures[f"quality.plain_{key}"], digits)
    # what the validation split can resolve: one answer of n moves exact match (and up to ROUGE-L) by 100/n
    figures["quality.one_answer_points"] = round(100 / figures["quality.plain_n"], 2)
    return figures


if __name__ == "__main__":
    from duo import params as params_mod

    params = params_mod.load(sys.argv[2] if len(sys.argv) > 2 else "params.yaml")  # a second file: a dry run
    side = sys.argv[1]
    result = plain(params) if side == "plain" else duo_side(params, equal_recipe=side == "duo_equal_recipe")
    print(json.dumps(result))
