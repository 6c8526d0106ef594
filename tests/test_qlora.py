"""QLoRA on the CPU (bitsandbytes 0.50 has CPU 4-bit kernels): `finetune.quantization: 4bit` trains the
tiny model on NF4 weights, export merges the adapter into the full-precision base, passes every check and
reports what the merge changed (4-bit base + adapter vs merged). fp16 asks for a GPU."""
from __future__ import annotations

import math

import click
import pytest

from duo.data import records
from tests import tiny_model

ROWS = [{"id": f"r{i}", "task": "qa", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}
        for i in range(8)]


@pytest.mark.integration  # real training
def test_qlora_trains_on_4bit_weights_and_the_merge_is_measured(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from duo import export
    from duo.params import Export, Finetune, Lora
    from duo.train import finetune

    monkeypatch.chdir(tmp_path)
    base = tiny_model.build(tmp_path / "base")
    p = Finetune(max_steps=3, batch_size=4, max_length=64, save_steps=0, threads=1, lr=0.01, quantization="4bit",
                 lora=Lora(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    metrics = finetune.train(ROWS, p, base, tmp_path / "adapter")
    assert metrics["quantized_4bit"] and metrics["device"] == "cpu" and metrics["steps"] == 3
    assert records.read_json(tmp_path / "adapter" / "duo_params.json")["quantized_4bit"]

    records.write_jsonl(tmp_path / "refs.jsonl", ROWS[:4])
    out, failures = export.build(Export(quant="q8_0", ppl_tokens=256), "tiny qlora", tmp_path / "out", base=base,
                                 adapter=tmp_path / "adapter", references=tmp_path / "refs.jsonl", log=lambda *_: None)
    assert not failures, failures
    merge = out["qlora_merge"]
    assert merge["tokens"] > 0 and 0.0 <= merge["argmax_agreement"] <= 1.0
    assert math.isfinite(merge["ppl_4bit_adapter"]) and math.isfinite(merge["ppl_merged"])
    # random weights: NF4 rounding moves logits, but most argmaxes of a 64-wide model survive
    assert merge["argmax_agreement"] >= 0.5, merge


def test_fp16_needs_a_gpu(tmp_path):
    import torch

    from duo.params import Finetune
    from duo.train import finetune

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is allowed")
    with pytest.raises(click.ClickException, match="finetune.precision: fp16 .* needs a CUDA GPU"):  # before any load
        finetune.train(ROWS, Finetune(max_steps=1, precision="fp16", save_steps=0), tmp_path / "no-model", tmp_path / "a")
