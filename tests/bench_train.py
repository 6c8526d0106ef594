"""Training throughput for `make bench`: the machine's matmul peak, duo's finetune against a plain TRL
script on the same rows, and model-FLOP utilisation.

Tokens are real tokens (no padding): for duo the chat-templated length of every row (one epoch of a
fixed subset); for the plain script the same length of every row its collator took (one epoch too,
unless the time budget stopped it).

FLOPs per row of l tokens, c of them labelled (the response), for LoRA on a frozen base (no weight
gradients for frozen weights):
  4 * N_linear * l           frozen linear layers: forward 2N, backward activation gradients 2N
  + 6 * L * d * l^2 / 2      attention scores and values, causal: forward 2 matmuls, backward 4
  + 6 * P_lora * l           LoRA A and B: forward, activation and weight gradients
  + 4 * V * d * c            LM head on the labelled positions (forward, activation gradients)
Recomputation and wasted work (padding, scoring unlabelled positions) are not counted: MFU is the
useful work per second over the measured peak.

Run: python -m tests.bench train
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN_BUDGET_S = 90.0  # the defaults run at bf16 emulation speed on CPUs without bf16 math
FORMULA = ("flops/row = 4*N_linear*l + 6*L*d*l^2/2 + 6*P_lora*l + 4*V*d*c "
           "(l tokens, c labelled; frozen base: no weight gradients); with LoRA on the top layers only, "
           "N_linear and L count those, and the frozen layers' forward (2*N_frozen*l + 2*F*d*l^2/2) "
           "is counted once per row over the run")


def matmul_peak(dtype: str, n: int = 2048, seconds: float = 3.0) -> float:
    """GFLOP/s of torch.matmul on n x n matrices, best of 1-s windows over `seconds`. Where one product
    takes over 0.2 s (bf16 without bf16 hardware falls back to a scalar kernel) n drops to 512."""
    import torch

    dt = getattr(torch, dtype)
    probe = torch.randn(256, 256, dtype=dt)
    t0 = time.perf_counter()
    torch.matmul(probe, probe)
    if (time.perf_counter() - t0) * (n / 256) ** 3 > 0.2:
        n = 512
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    torch.matmul(a, b)
    best, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            torch.matmul(a, b)
            reps += 1
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def row_flops(config, lora_params: int, l: int, c: int, adapted: int | None = None, epochs: float = 1.0) -> float:
    """FLOPs per epoch of one row. With LoRA on the top `adapted` layers only, the frozen layers below run
    forward once per row over the whole run (duo caches their output, duo/train/frozen_layers.py: their cost
    is spread over `epochs`) and nothing goes backward through them."""
    d, layers = config.hidden_size, config.num_hidden_layers
    top = layers if adapted is None else min(adapted, layers)
    kv = config.num_key_value_heads * getattr(config, "head_dim", d // config.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size  # q, o; k, v; gate, up, down
    frozen_forward = (layers - top) * (2 * per_layer * l + 2 * d * l * l / 2) / max(epochs, 1.0)
    return (4 * top * per_layer * l + 6 * top * d * l * l / 2 + 6 * lora_params * l
            + 4 * config.vocab_size * d * c + frozen_forward)


def subset(rows: list[dict], n: int) -> list[dict]:
    """n rows spread over tasks (round robin in file order), so every length class is present."""
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    out, i = [], 0
    while len(out) < min(n, len(rows)):
        for task_rows in by_task.values():
            if i < len(task_rows) and len(out) < n:
                out.append(task_rows[i])
        i += 1
    return out


def token_counts(rows: list[dict], base: Path) -> tuple[list[int], list[int]]:
    """Per row: templated length and labelled (completion) length, as TRL tokenizes them."""
    from transformers import AutoTokenizer

    from duo.train import finetune

    tok = AutoTokenizer.from_pretrained(base)
    lens, comps = [], []
    for c in finetune.to_conversations(rows):
        full = tok.apply_chat_template(c["prompt"] + c["completion"], tokenize=True, return_dict=False)
        prompt = tok.apply_chat_template(c["prompt"], tokenize=True, return_dict=False, add_generation_prompt=True)
        lens.append(len(full))
        comps.append(len(full) - len(prompt))
    return lens, comps


def plain_trl(rows: list[dict], base: Path, lora_cfg: dict, batch_size: int, work: Path, *,
              bf16: bool | None = None, budget_s: float = 0.0, model_kwargs: dict | None = None) -> dict:
    """The plain script: SFTTrainer with its defaults on the same rows and LoRA config (`bf16=False`:
    the same with autocast off). Speed counts the real (unpadded) tokens of the batches it took. With
    `budget_s`, a run still going at the budget is stopped and reports an upper bound of its speed.
    `model_kwargs` (from_pretrained's) load the model another way, e.g. 4-bit on a GPU (tests/bench_gpu.py);
    without them it is fp32 on the CPU."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from duo.train import finetune

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, **(model_kwargs or {"dtype": torch.float32}))
    extra = {} if bf16 is None else {"bf16": bf16}
    config = SFTConfig(output_dir=str(work / "plain"), per_device_train_batch_size=batch_size, num_train_epochs=1,
                       report_to="none", save_strategy="no", use_cpu=model_kwargs is None, disable_tqdm=True,
                       seed=42, **extra)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(finetune.to_conversations(rows)),
                         processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM", **lora_cfg))
    seen = {"tokens": 0, "rows": 0}
    collate = trainer.data_collator

    def counting(examples):
        seen["tokens"] += sum(len(e["input_ids"]) for e in examples)
        seen["rows"] += len(examples)
        return collate(examples)

    trainer.data_collator = counting

    def out_of_time():
        # One step can outlast the whole budget (bf16 emulation: minutes per step): stop the process and
        # report an upper bound, the tokens of every batch taken (the last one unfinished) over the time.
        import resource

        print(json.dumps({"seconds": time.monotonic() - start, "steps": trainer.state.global_step,
                          "gradient_checkpointing": config.gradient_checkpointing, "bf16": bool(config.bf16),
                          "final_loss": None, "tokens": seen["tokens"], "rows_seen": seen["rows"],
                          "stopped_by_budget": True, "upper_bound": True,
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
              flush=True)
        os._exit(0)

    timer = threading.Timer(budget_s, out_of_time) if budget_s else None
    start = time.monotonic()
    if timer:
        timer.daemon = True
        timer.start()
    result = trainer.train()
    if timer:
        timer.cancel()
    seconds = time.monotonic() - start
    return {"seconds": seconds, "steps": trainer.state.global_step, "gradient_checkpointing": config.gradient_checkpointing,
            "bf16": bool(config.bf16), "final_loss": result.training_loss, "tokens": seen["tokens"],
            "rows_seen": seen["rows"], "stopped_by_budget": False, "upper_bound": False}


def duo_train(rows: list[dict], base: Path, work: Path, overrides: dict | None = None) -> dict:
    """duo's own finetune.train with the shipped defaults (params.yaml), one epoch of `rows`."""
    import yaml

    from duo import params as params_mod
    from duo.train import finetune

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = dict(overrides or {})
    raw["finetune"]["lora"].update(overrides.pop("lora", {}))
    raw["finetune"].update({"epochs": 1.0, "max_steps": -1, **overrides})
    p = params_mod.build(params_mod.Params, raw, "", "params.yaml (bench)").finetune
    metrics = finetune.train(rows, p, base, work / "duo-adapter", log=lambda *_: None)
    return metrics


def _child(kind: str, base: str, data: str, n_rows: int, work: str, overrides: str) -> None:
    """One run in a fresh process (its own peak RSS, no warm caches from another run), in a folder of its
    own: finetune's checkpoints go to ./.duo/checkpoints, and a crashed earlier run's sealed checkpoints of
    the same rows and settings would be resumed and timed as if trained."""
    import resource
    import tempfile

    base, data, work = (str(Path(x).resolve()) for x in (base, data, work))
    Path(work).mkdir(parents=True, exist_ok=True)
    os.chdir(tempfile.mkdtemp(prefix="run-", dir=work))

    from duo.data import records
    from duo.train import finetune

    rows = subset(records.read_records(data, finetune.contracts.ROW_FIELDS, unique="id"), n_rows)
    import yaml

    lora = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]["lora"]
    r = 16 if lora["r"] == "auto" else lora["r"]
    lora_cfg = {"r": r, "lora_alpha": 2 * r if lora["alpha"] == "auto" else lora["alpha"],
                "lora_dropout": lora["dropout"], "target_modules": lora["target_modules"],
                # the same adapted layers as duo's (autograd then stops below them in both)
                "layers_to_transform": finetune.top_layers(lora.get("layers", "all"), n_layers(base))}
    if kind == "plain":
        opts = json.loads(overrides)
        out = plain_trl(rows, Path(base), lora_cfg, 8, Path(work), bf16=opts.get("bf16"),
                        budget_s=opts.get("budget_s", 0.0))
    else:
        if kind == "duo-all-positions":  # the lever off: TRL's own CPU behaviour
            from duo.train import levers as train_levers

            train_levers.score_labelled_positions_only = lambda: None
        if kind == "duo-torch-dropout":  # the lever off: torch's own dropout masks
            from duo.train import levers as train_levers

            train_levers.cheap_dropout_masks = lambda model: 0
        if kind == "duo-no-trim":  # the lever off: freed heap pages kept between micro-batches
            from duo.train import levers as train_levers

            train_levers.trim_heap_each_forward = lambda model: None
        if kind == "duo-mmap-128k":  # glibc's initial threshold, fixed: every activation mmap'd
            import functools

            from duo.train import levers as train_levers

            train_levers.return_freed_memory = functools.partial(train_levers.return_freed_memory, 128 * 1024)
        m = duo_train(rows, Path(base), Path(work), json.loads(overrides))
        out = {"seconds": m["train_seconds"], "steps": m["steps"], "mean_loss": m["train_loss"],
               "precision": m["precision"], "loss_curve": [h["loss"] for h in m["loss_curve"]]}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out), flush=True)
    # The figures are out; skip interpreter teardown, where a thread left by SFTTrainer can free tensors
    # while Python finalises and abort the process ("terminate called without an active exception", gdb:
    # THPVariable_clear -> take_gil -> pthread_exit), failing a finished run.
    os._exit(0)


def n_layers(base) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base).num_hidden_layers


def run_child(kind: str, base: Path, data: Path, n_rows: int, work: Path, overrides: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.bench_train", kind, str(base), str(data), str(n_rows),
                           str(work), json.dumps(overrides or {})], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} training failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_train(base: Path, data: Path, work: Path, n_rows: int = 24, cycle_train: dict | None = None,
                levers: bool = False) -> dict:
    """Head-to-head on `n_rows` rows (one epoch, batch 8) plus MFU; `cycle_train` is the default cycle's
    metrics/train.json when the cycle ran in this bench (its tokens/s is the figure for the full run)."""
    import torch
    from transformers import AutoConfig

    from duo.data import records
    from duo.train import finetune

    peak32, peak16 = matmul_peak("float32"), matmul_peak("bfloat16")
    rows = subset(records.read_records(data, finetune.contracts.ROW_FIELDS, unique="id"), n_rows)
    lens, comps = token_counts(rows, base)
    config = AutoConfig.from_pretrained(base)
    lora = yaml_lora()
    lora_params = lora_param_count(config, lora)
    # one epoch here: the frozen layers' forward counts in full
    flops = sum(row_flops(config, lora_params, l, c, adapted_layers(config, lora)) for l, c in zip(lens, comps))
    tokens = sum(lens)

    # TRL's defaults turn on bf16 autocast wherever torch allows it, also on CPUs without bf16 math,
    # where it is several times slower than fp32: bounded by a time budget, and measured again with
    # autocast off (the stronger plain baseline) so the speed-up does not rest on that alone.
    plain = run_child("plain", base, data, n_rows, work, {"budget_s": PLAIN_BUDGET_S})
    plain32 = run_child("plain", base, data, n_rows, work, {"bf16": False})
    duo = run_child("duo", base, data, n_rows, work)
    plain_tps, plain32_tps = plain["tokens"] / plain["seconds"], plain32["tokens"] / plain32["seconds"]
    duo_tps = tokens / duo["seconds"]
    figures = {
        "train.peak_gflops_fp32": round(peak32, 1), "train.peak_gflops_bf16": round(peak16, 1),
        "train.threads": torch.get_num_threads(),
        "train.flops_formula": FORMULA,
        "train.flops_per_token": round(flops / tokens / 1e6, 1) * 1e6,
        "train.h2h_rows": len(rows), "train.h2h_tokens": tokens, "train.h2h_labelled_tokens": sum(comps),
        "train.plain_tokens_per_s": round(plain_tps, 1),
        "train.plain_settings": (f"SFTTrainer defaults: bf16={plain['bf16']}, gradient_checkpointing="
                                 f"{plain['gradient_checkpointing']}, random batches padded to their longest row, "
                                 "LM head over every position"),
        "train.plain_rows_seen": plain["rows_seen"],
        "train.plain_stopped_by_budget_s": PLAIN_BUDGET_S if plain["stopped_by_budget"] else None,
        # stopped mid-step: tokens of every batch taken over the time, so the speed-up is a lower bound
        "train.plain_tokens_per_s_is_upper_bound": plain["upper_bound"],
        "train.speedup_vs_trl_is_lower_bound": plain["upper_bound"],
        "train.plain_mean_loss": plain["final_loss"] and round(plain["final_loss"], 4),
        "train.plain_fp32_tokens_per_s": round(plain32_tps, 1),
        "train.plain_fp32_tokens_counted": plain32["tokens"],
        "train.plain_fp32_mean_loss": round(plain32["final_loss"], 4),
        "train.h2h_duo_tokens_per_s": round(duo_tps, 1),
        "train.h2h_duo_mean_loss": duo["mean_loss"],
        "train.speedup_vs_trl": round(duo_tps / plain_tps, 2),
        "train.speedup_vs_trl_fp32": round(duo_tps / plain32_tps, 2),
        "train.precision": duo["precision"],
        "memory.peak_rss_mb.train_plain": plain["peak_rss_mb"],
        "memory.peak_rss_mb.train_plain_fp32": plain32["peak_rss_mb"],
        "memory.peak_rss_mb.train_duo": duo["peak_rss_mb"],
    }
    tps = tokens / duo["seconds"]
    if cycle_train and cycle_train.get("tokens_per_s"):
        tps = cycle_train["tokens_per_s"]
        figures["train.tokens_per_s_source"] = "the default cycle's finetune (metrics/train.json)" + (
            f", from the bench cycle of {cycle_train['from_cycle_at']}" if cycle_train.get("from_cycle_at") else "")
        figures["train.loss_curve_first_last"] = [cycle_train["loss_curve"][0]["loss"], cycle_train["final_loss"]]
    else:
        figures["train.tokens_per_s_source"] = f"the head-to-head run ({len(rows)} rows, one epoch)"
    figures["train.tokens_per_s"] = round(tps, 1)
    flops_per_s = tps * flops / tokens
    if cycle_train and cycle_train.get("tokens_per_s") and adapted_layers(config, lora) < config.num_hidden_layers:
        # the cycle's frozen layers ran forward once per row over all its epochs (cached): per token
        # of the run that is less work than in the one-epoch head-to-head
        all_lens, all_comps = token_counts(records.read_records(data, finetune.contracts.ROW_FIELDS, unique="id"), base)
        epochs = float(cycle_train.get("epochs") or 1.0)
        run_flops = sum(row_flops(config, lora_params, l, c, adapted_layers(config, lora), epochs)
                        for l, c in zip(all_lens, all_comps))
        figures["train.cycle_flops_per_token"] = round(run_flops / sum(all_lens) / 1e6, 1) * 1e6
        flops_per_s = tps * run_flops / sum(all_lens)
    # against the peak of the precision the training ran in; both are kept
    figures["train.mfu_vs_fp32_peak"] = round(flops_per_s / (peak32 * 1e9), 3)
    # without bf16 math (bf16 slower than fp32) nothing trains in bf16 and the ratio means nothing
    figures["train.mfu_vs_bf16_peak"] = round(flops_per_s / (peak16 * 1e9), 3) if peak16 > peak32 else None
    figures["train.mfu"] = figures[f"train.mfu_vs_{duo['precision']}_peak"]
    if levers:
        figures.update(bench_levers(base, data, work, n_rows, tokens, duo))
    return figures


def bench_levers(base: Path, data: Path, work: Path, n_rows: int, tokens: int, default: dict) -> dict:
    """Each lever switched off alone (or on, for those off by default), same rows: before/after."""
    out = {"train.levers.default_tokens_per_s": round(tokens / default["seconds"], 1),
           "train.levers.default_losses": default["loss_curve"]}
    for name, overrides in {"fp32": {"precision": "fp32"}, "padding_free": {"padding_free": True},
                            "micro_batch_8": {"micro_batch_size": 8},
                            "group_by_length": {"batches": "grouped"},
                            "gradient_checkpointing": {"gradient_checkpointing": True},
                            # LoRA on every layer: backward runs through the whole model
                            "lora_layers_all": {"lora": {"layers": "all"}},
                            # not a free lever: it drops LoRA dropout (a regulariser); measured for the README
                            "lora_dropout_0": {"lora": {"dropout": 0.0}}}.items():
        run = run_child("duo", base, data, n_rows, work, overrides)
        out[f"train.levers.{name}_tokens_per_s"] = round(tokens / run["seconds"], 1)
        out[f"train.levers.{name}_losses"] = run["loss_curve"]
    # the frozen-layer cache pays from the second epoch on: two epochs with it and without
    for name, overrides in {"two_epochs": {"epochs": 2.0},
                            "two_epochs_frozen_cache_off": {"epochs": 2.0, "frozen_cache_mb": 0}}.items():
        run = run_child("duo", base, data, n_rows, work, overrides)
        out[f"train.levers.{name}_tokens_per_s"] = round(2 * tokens / run["seconds"], 1)
        out[f"train.levers.{name}_losses"] = run["loss_curve"]
    run = run_child("duo-all-positions", base, data, n_rows, work)
    out["train.levers.lm_head_all_positions_tokens_per_s"] = round(tokens / run["seconds"], 1)
    out["train.levers.lm_head_all_positions_losses"] = run["loss_curve"]
    run = run_child("duo-mmap-128k", base, data, n_rows, work)
    out["train.levers.mmap_threshold_128k_tokens_per_s"] = round(tokens / run["seconds"], 1)
    out["train.levers.mmap_threshold_128k_peak_rss_mb"] = run["peak_rss_mb"]
    out["train.levers.default_peak_rss_mb"] = default.get("peak_rss_mb")
    run = run_child("duo-no-trim", base, data, n_rows, work)
    out["train.levers.no_heap_trim_tokens_per_s"] = round(tokens / run["seconds"], 1)
    out["train.levers.no_heap_trim_peak_rss_mb"] = run["peak_rss_mb"]
    run = run_child("duo-torch-dropout", base, data, n_rows, work)
    out["train.levers.torch_dropout_masks_tokens_per_s"] = round(tokens / run["seconds"], 1)
    out["train.levers.torch_dropout_masks_losses"] = run["loss_curve"]
    return out


def yaml_lora() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]["lora"]


def lora_param_count(config, lora: dict) -> int:
    d = config.hidden_size
    kv = config.num_key_value_heads * getattr(config, "head_dim", d // config.num_attention_heads)
    shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
              "gate_proj": (d, config.intermediate_size), "up_proj": (d, config.intermediate_size),
              "down_proj": (config.intermediate_size, d)}
    r = 16 if lora["r"] == "auto" else int(lora["r"])
    modules = lora["target_modules"]
    modules = list(shapes) if modules in ("all-linear", ["all-linear"]) else modules
    return adapted_layers(config, lora) * sum(r * sum(shapes[m]) for m in modules if m in shapes)


def adapted_layers(config, lora: dict) -> int:
    layers = lora.get("layers", "all")
    return config.num_hidden_layers if layers == "all" else min(int(layers), config.num_hidden_layers)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
