"""Judge-free measurement of finetune settings on the held-out split: train on data/train.jsonl,
export the GGUF exactly as the pipeline does, answer each test prompt greedily through llama.cpp, and
report ROUGE-L and exact match per task. Used to choose the finetune defaults (README, "Defaults").

Run: python -m duo.measure --set finetune.epochs=4 --set finetune.lora.r=16 [--out metrics/measure.jsonl]
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import yaml

from duo import gguf
from duo import local_llm
from duo import params as params_mod
from duo import records


def _apply(raw: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)


@click.command()
@click.option("--set", "sets", multiple=True, help="dotted.key=value override of params.yaml")
@click.option("--out", default="metrics/measure.jsonl", show_default=True, help="appended, one line per run")
@click.option("--max-tokens", default=160, show_default=True)
def main(sets: tuple[str, ...], out: str, max_tokens: int) -> None:
    import llama_cpp

    from stages import evaluate, finetune

    raw = yaml.safe_load(Path("params.yaml").read_text())
    for assignment in sets:
        _apply(raw, assignment)
    params = params_mod.build(params_mod.Params, raw, "", "params.yaml + --set")
    rows, _ = finetune.load_rows(Path("data/train.jsonl"), 0)
    test = records.read_records("data/test.jsonl", finetune.FIELDS, unique="id")
    with tempfile.TemporaryDirectory(prefix=".measure.", dir="models") as tmp:
        tmp = Path(tmp)
        start = time.monotonic()
        train = finetune.train(rows, params.finetune, finetune.BASE, tmp / "adapter")
        gguf.merge(finetune.BASE, tmp / "adapter", tmp / "merged")
        gguf.convert(tmp / "merged", tmp / "f16.gguf", "f16")
        gguf.quantize(tmp / "f16.gguf", tmp / "q.gguf", params.export.quant)
        llm = llama_cpp.Llama(str(tmp / "q.gguf"), n_ctx=2048, verbose=False, seed=0, **local_llm.thread_kwargs(0))
        preds = []
        for row in test:
            reply = llm.create_chat_completion([{"role": "user", "content": row["prompt"]}],
                                               max_tokens=max_tokens, temperature=0.0)
            preds.append({"task": row["task"], "reference": row["response"],
                          "response": reply["choices"][0]["message"]["content"] or ""})
    result = {"set": list(sets), "train_seconds": train["train_seconds"], "tokens_per_s": train["tokens_per_s"],
              "train_loss": train["train_loss"], "steps": train["steps"],
              "wall_seconds": round(time.monotonic() - start, 1), **evaluate.reference_metrics(preds)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(result) + "\n")
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
