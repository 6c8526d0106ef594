"""Judge-free measurement of finetune settings on the validation split (never the test split, which
belongs to the judge): train on data/train.jsonl, export and check the GGUF exactly as the pipeline
does, answer each validation prompt greedily through llama.cpp, report ROUGE-L and exact match per
task. What the finetune defaults are chosen with (docs/benchmarks.md).

Run: duo measure --set finetune.lora.target_modules=all-linear [--out metrics/measure.jsonl]
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import yaml

from duo.data import chat
from duo import contracts as c
from duo import export
from duo import params as params_mod
from duo.evaluation import reference
from duo.train import finetune


def validation_nll(adapter: Path, rows: list[dict]) -> float:
    """Mean negative log-likelihood per response token of `rows` under base + `adapter` (fp32, one row at a
    time). The same number whoever trained the adapter: the Trainer's eval loss averages per-batch means,
    so it moves with the evaluation batch size when rows differ in length."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for example in (chat.tokenized(tokenizer, row) for row in rows):
            full = example["input_ids"]
            prompt = full[:example["completion_mask"].index(1)]
            ids = torch.tensor([full])
            labels = ids.clone()
            labels[0, :len(prompt)] = -100
            n = int((labels[0, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    return round(total / count, 4)


def score(params, adapter: Path, work: Path, max_tokens: int = 160, rows: list[dict] | None = None) -> dict:
    """Export `adapter` exactly as the pipeline does (every check) and answer each validation prompt (or
    each of `rows`) greedily from the GGUF: ROUGE-L, exact match and the task score, overall and per
    task, the loss per response token, and the predictions themselves."""
    import dataclasses

    from duo import inference

    val = c.read_rows(c.VAL) if rows is None else rows
    nll = validation_nll(adapter, val)
    built, failures = export.build(params.export, export.model_label(), work / "export", adapter=adapter,
                                   references=c.VAL)
    if failures:
        raise click.ClickException("export checks failed:\n- " + "\n- ".join(failures))
    preds = inference.greedy(work / "export" / "student.gguf", val,
                             dataclasses.replace(params.infer, max_tokens=max_tokens), 0)
    return {"validation_nll": nll, **reference.reference_metrics(preds), "predictions": preds}


def measure(params, max_tokens: int = 160) -> dict:
    """Train, export (all checks), answer the validation prompts greedily; figures of the run."""
    rows, _ = finetune.load_rows(c.TRAIN, 0)
    val = c.read_rows(c.VAL)
    c.BASE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".measure.", dir=c.BASE.parent) as tmp:
        tmp = Path(tmp)
        start = time.monotonic()
        train = finetune.train(rows, params.finetune, c.BASE, tmp / "adapter", val=val)
        scores = score(params, tmp / "adapter", tmp, max_tokens)
        scores.pop("predictions")
    return {"train_seconds": train["train_seconds"], "tokens_per_s": train["tokens_per_s"],
            "train_loss": train["train_loss"], "steps": train["steps"], "epochs": train["epochs"],
            "best_validation_loss": train["best_validation_loss"], "best_step": train["best_step"],
            "validation_curve": train["validation_curve"], "stopped_early": train["stopped_early"],
            "precision": train["precision"], "wall_seconds": round(time.monotonic() - start, 1), **scores}


@click.command("measure")
@click.option("--set", "sets", multiple=True, help="dotted.key=value override of params.yaml")
@click.option("--out", default="metrics/measure.jsonl", show_default=True, help="appended, one line per run")
@click.option("--max-tokens", default=160, show_default=True)
def main(sets: tuple[str, ...], out: str, max_tokens: int) -> None:
    """Train and score one finetune setting on the validation split (judge-free)."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    for assignment in sets:
        params_mod.assign(raw, assignment)
    params = params_mod.checked(params_mod.build(params_mod.Params, raw, "", "params.yaml + --set"), "--set")
    result = {"set": list(sets), **measure(params, max_tokens)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(result) + "\n")
    click.echo(json.dumps(result))
