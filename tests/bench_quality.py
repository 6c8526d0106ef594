"""Quality parity for `make bench` (section `quality`): duo's finetune with the shipped defaults against a
plain TRL `SFTTrainer` script with the same recipe (LoRA all-linear r=16 alpha=32 dropout 0.05, 4 epochs,
lr 5e-4 cosine, batch 8, loss on the response only, the precision duo picks on this machine) on the same
train rows. Each adapter is exported with every check and scored the same way on the validation split
(never test): greedy answers through llama.cpp from its own GGUF, ROUGE-L and exact match; validation
loss from the trainer. duo stops early on validation loss; the plain script runs its 4 epochs.

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


def plain(params) -> dict:
    """The plain script, in the working directory of a project (models/base, data/train.jsonl, val)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from duo import contracts as c
    from duo import measure
    from duo.train import finetune

    p = params.finetune
    rows, _ = finetune.load_rows(c.TRAIN, 0)
    val = c.read_rows(c.VAL)
    bf16 = p.precision == "bf16" or (p.precision == "auto" and finetune._bf16_fast("cpu"))
    tok = AutoTokenizer.from_pretrained(c.BASE)
    model = AutoModelForCausalLM.from_pretrained(c.BASE, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix=".quality.", dir=c.BASE.parent) as tmp:
        tmp = Path(tmp)
        config = SFTConfig(output_dir=str(tmp / "plain"), per_device_train_batch_size=8, num_train_epochs=4,
                           max_steps=p.max_steps,  # -1 by default: the epochs decide, as in duo
                           learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=0.03,
                           completion_only_loss=True, max_length=1024, bf16=bf16, use_cpu=True,
                           eval_strategy="epoch", save_strategy="no", report_to="none", seed=42,
                           disable_tqdm=True)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=config, processing_class=tok, peft_config=lora,
                             train_dataset=Dataset.from_list(finetune.to_conversations(rows)),
                             eval_dataset=Dataset.from_list(finetune.to_conversations(val)))
        start = time.monotonic()
        result = trainer.train()
        seconds = time.monotonic() - start
        trainer.model.save_pretrained(tmp / "adapter")
        tok.save_pretrained(tmp / "adapter")
        (tmp / "adapter" / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
        evals = [round(h["eval_loss"], 4) for h in trainer.state.log_history if "eval_loss" in h]
        scores = measure.score(params, tmp / "adapter", tmp)
    return {"train_seconds": round(seconds, 1), "train_loss": round(result.training_loss, 4),
            "steps": trainer.state.global_step, "validation_curve": evals,
            "best_validation_loss": min(evals, default=None), "final_validation_loss": evals[-1] if evals else None,
            "precision": "bf16" if bf16 else "fp32", **scores}


def duo_side(params) -> dict:
    from duo import measure

    return measure.measure(params)


def bench_quality(clone: Path) -> dict:
    figures: dict = {}
    for side in ("duo", "plain"):
        proc = subprocess.run([sys.executable, "-m", "tests.bench_quality", side], cwd=clone, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"quality {side} failed:\n{proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        for key in ("rougeL", "exact_match", "best_validation_loss", "train_seconds", "steps", "precision",
                    "by_task", "n"):
            figures[f"quality.{side}_{key}"] = got.get(key)
    figures["quality.rougeL_duo_minus_plain"] = round(figures["quality.duo_rougeL"] - figures["quality.plain_rougeL"], 2)
    figures["quality.exact_match_duo_minus_plain"] = round(
        figures["quality.duo_exact_match"] - figures["quality.plain_exact_match"], 4)
    return figures


if __name__ == "__main__":
    from duo import params as params_mod

    params = params_mod.load(sys.argv[2] if len(sys.argv) > 2 else "params.yaml")  # a second file: a dry run
    result = duo_side(params) if sys.argv[1] == "duo" else plain(params)
    print(json.dumps(result))
