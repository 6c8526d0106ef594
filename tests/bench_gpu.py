"""GPU figures (the QLoRA path), for a machine with a CUDA GPU; the CPU bench never runs this.

  1. the GPU's bf16 and fp32 (TF32 off) matmul peaks (8192^3 products, CUDA events);
  2. duo's finetune with the shipped defaults (`quantization: auto` = 4-bit NF4 QLoRA on CUDA, bf16
     compute) on the whole train split for `finetune.epochs`, as a default cycle's finetune runs: tokens/s,
     MFU against the bf16 peak, peak GPU memory, the loss curve; the same with `quantization: none` (bf16
     LoRA on full-precision weights);
  3. head-to-head, one epoch of the same rows: a plain TRL `SFTTrainer` script with its defaults on the
     same 4-bit model and LoRA config against duo's finetune;
  4. levers, one epoch each: micro-batch 4 (the CPU choice), padding-free, no 4-bit quantization (bf16
     LoRA on full-precision weights);
  5. infer with `infer.backend: transformers` on the QLoRA adapter (merged into the bf16 base): naive
     one-sample-at-a-time `generate` against batched sampling (`infer.parallel`), same 12 prompts (mixed
     tasks, model warmed up first); then the whole test split, its predictions written for judge-free
     scoring (ROUGE-L) on any machine.

Needs models/base (python -m stages.base) and the split (python -m stages.prepare). Writes
metrics/bench_gpu.json and data/predictions_gpu.jsonl.

Run: python -m tests.bench_gpu [peak] [train] [h2h] [levers] [infer]   (no argument: all)
"""
from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

from tests import bench_train

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "models" / "base"
OUT = ROOT / "metrics" / "bench_gpu.json"
PREDICTIONS = ROOT / "data" / "predictions_gpu.jsonl"


def peak_tflops(dtype, n: int = 8192, reps: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype, device="cuda"), torch.randn(n, n, dtype=dtype, device="cuda")
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def _params(**finetune):
    import yaml

    from duo import params as params_mod

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["finetune"].update(finetune)
    return params_mod.build(params_mod.Params, raw, "", "params.yaml (bench_gpu)")


def _train(rows, work: Path, **finetune) -> dict:
    import torch

    from duo.train import finetune as stage

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    m = stage.train(rows, _params(**finetune).finetune, BASE, work, log=print)
    m["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return m


def _plain(rows, work: Path) -> dict:
    """The plain QLoRA script: SFTTrainer defaults, the 4-bit model loaded as duo loads it."""
    import torch
    from transformers import BitsAndBytesConfig

    from duo.train import finetune as stage

    p = _params().finetune
    r, alpha = stage.lora_size(len(rows), p.lora.r, p.lora.alpha)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    out = bench_train.plain_trl(
        rows, BASE, {"r": r, "lora_alpha": alpha, "lora_dropout": p.lora.dropout,
                     "target_modules": p.lora.target_modules,
                     "layers_to_transform": stage.top_layers(p.lora.layers, bench_train.n_layers(BASE))}, p.batch_size, work,
        model_kwargs={"dtype": torch.bfloat16, "quantization_config": quant, "device_map": {"": 0}})
    return out | {"mean_loss": round(out["final_loss"], 4),
                  "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)}


def _infer(test, parallel: int) -> tuple[list[dict], dict]:
    import torch

    from duo import inference as infer

    p = dataclasses.replace(_params().infer, backend="transformers", parallel=parallel)
    backend = infer.TransformersBackend(infer.contracts.GGUF, p)
    backend.generate("Hello", 0)  # CUDA context, kernels and allocator warm before the clock starts
    torch.cuda.synchronize()
    rows, metrics = infer.run(test, backend, p, cycle=0)
    del backend
    torch.cuda.empty_cache()
    return rows, metrics


SECTIONS = ("peak", "train", "h2h", "levers", "infer")


def main() -> None:
    import sys

    import torch

    from duo.data import records
    from duo.train import finetune as stage
    from duo import inference as infer

    sections = sys.argv[1:] or list(SECTIONS)
    if set(sections) - set(SECTIONS):
        raise SystemExit(f"unknown section(s) {sorted(set(sections) - set(SECTIONS))}; choose from {SECTIONS}")
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU (this machine has none)")
    if not (BASE / "config.json").exists():
        raise SystemExit("models/base missing: run `python -m stages.base` first")
    figures: dict = json.loads(OUT.read_text()) if OUT.exists() else {}
    figures |= {"gpu.name": torch.cuda.get_device_name(0), "gpu.torch": torch.__version__,
                "gpu.cuda": torch.version.cuda, "gpu.python": platform.python_version()}

    def save():
        records.write_json(OUT, figures)

    if "peak" in sections or "gpu.peak_tflops_bf16" not in figures:
        figures["gpu.peak_tflops_bf16"] = round(peak_tflops(torch.bfloat16), 1)
        torch.backends.cuda.matmul.allow_tf32 = False
        figures["gpu.peak_tflops_fp32"] = round(peak_tflops(torch.float32), 1)
        save()

    rows = records.read_records(ROOT / "data" / "train.jsonl", stage.contracts.ROW_FIELDS, unique="id")
    lens, comps = bench_train.token_counts(rows, BASE)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(BASE)
    lora = bench_train.yaml_lora()
    lora_params, adapted = bench_train.lora_param_count(config, lora), bench_train.adapted_layers(config, lora)
    figures["gpu.train.rows"], figures["gpu.train.tokens_per_epoch"] = len(rows), sum(lens)
    work = ROOT / ".bench" / "gpu"
    work.mkdir(parents=True, exist_ok=True)

    def mfu(tokens_per_s, epochs=1.0):
        # frozen layers below the adapted ones run forward once per row over the run (cached)
        flops = sum(bench_train.row_flops(config, lora_params, n, c, adapted, epochs) for n, c in zip(lens, comps))
        return round(tokens_per_s * flops / sum(lens) / (figures["gpu.peak_tflops_bf16"] * 1e12), 5)

    if {"h2h", "levers"} & set(sections):
        # the first run in a process pays for CUDA/cuBLAS set-up and Triton compiles (measured: 2.1x slower)
        _train(rows[:16], work / "warm-up", max_steps=2)

    if "train" in sections:
        for name, overrides in {"qlora": {}, "lora_bf16": {"quantization": "none"}}.items():
            m = _train(rows, work / name if name != "qlora" else ROOT / "models" / "adapter", **overrides)
            figures |= {f"gpu.train.{name}.{k}": m[k] for k in ("tokens_per_s", "train_seconds", "steps", "epochs",
                                                                 "tokens", "precision", "quantized_4bit", "peak_gpu_mb")}
            figures[f"gpu.train.{name}.loss_first_last"] = [m["loss_curve"][0]["loss"], m["final_loss"]]
            figures[f"gpu.train.{name}.mfu_vs_bf16_peak"] = mfu(m["tokens_per_s"], m["epochs"])
            save()

    if "h2h" in sections:
        plain = _plain(rows, work)
        duo = _train(rows, work / "h2h", epochs=1.0)
        plain_tps, duo_tps = plain["tokens"] / plain["seconds"], duo["tokens_per_s"]
        figures |= {"gpu.train.h2h_rows": len(rows), "gpu.train.plain_tokens_per_s": round(plain_tps, 1),
                    "gpu.train.plain_tokens": plain["tokens"], "gpu.train.plain_mean_loss": plain["mean_loss"],
                    "gpu.train.plain_settings": f"SFTTrainer defaults on the same 4-bit model: bf16={plain['bf16']}, "
                                                f"gradient_checkpointing={plain['gradient_checkpointing']}",
                    "gpu.train.plain_peak_gpu_mb": plain["peak_gpu_mb"],
                    "gpu.train.h2h_duo_tokens_per_s": duo_tps, "gpu.train.h2h_duo_mean_loss": duo["train_loss"],
                    "gpu.train.h2h_duo_peak_gpu_mb": duo["peak_gpu_mb"],
                    "gpu.train.speedup_vs_trl": round(duo_tps / plain_tps, 2)}
        save()

    if "levers" in sections:  # one epoch each, the QLoRA default changed in one setting
        for name, overrides in {"default": {}, "micro_batch_4": {"micro_batch_size": 4},
                                "padding_free": {"padding_free": True},
                                "no_quantization": {"quantization": "none"},
                                "no_quantization_micro_batch_4": {"quantization": "none", "micro_batch_size": 4}}.items():
            m = _train(rows, work / "lever", epochs=1.0, **overrides)
            figures[f"gpu.train.levers.{name}_tokens_per_s"] = m["tokens_per_s"]
            figures[f"gpu.train.levers.{name}_mean_loss"] = m["train_loss"]
            figures[f"gpu.train.levers.{name}_peak_gpu_mb"] = m["peak_gpu_mb"]
            save()

    if "infer" in sections:
        test = records.read_records(ROOT / "data" / "test.jsonl", infer.contracts.ROW_FIELDS, unique="id")
        few = bench_train.subset(test, 12)  # round robin over tasks: short and long answers
        for parallel in (1, 16, 48):
            _, m = _infer(few, parallel)
            figures[f"gpu.infer.parallel_{parallel}_tokens_per_s"] = m["tokens_per_s"]
            figures[f"gpu.infer.parallel_{parallel}_tokens"] = m["completion_tokens"]
            save()
        figures["gpu.infer.h2h_prompts"] = len(few)
        figures["gpu.infer.speedup_vs_hf"] = round(figures["gpu.infer.parallel_16_tokens_per_s"]
                                                   / figures["gpu.infer.parallel_1_tokens_per_s"], 2)
        rows_out, m = _infer(test, 128)
        records.write_jsonl(PREDICTIONS, rows_out)
        figures |= {"gpu.infer.full_responses": m["responses"], "gpu.infer.full_tokens_per_s": m["tokens_per_s"],
                    "gpu.infer.full_seconds": m["seconds"], "gpu.infer.full_parallel": 128}
        save()
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
