"""The finetune core: LoRA (QLoRA on a GPU) with TRL's SFTTrainer on rows rendered as prompt/completion
conversations with the base model's chat template (loss on the completion by default), the levers in
duo/train/levers.py, crash-safe checkpoints, early stopping on the validation rows."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import click

from duo import contracts
from duo.compat import training as compat
from duo.data import chat
from duo import params as params_mod
from duo import progress
from duo.data import records
from duo.train import checkpoints, distributed, frozen_layers
from duo.train import levers as train_levers

FIELDS = contracts.ROW_FIELDS
# finetune.batches -> transformers' train_sampling_strategy. rebalanced: each step is a random draw of
# batch_size rows (as random), cut into micro-batches of similar length, so less padding is computed and
# the step's summed gradient is the same.
SAMPLERS = {"rebalanced": "batch_rebalance", "random": "random", "grouped": "group_by_length"}


def lora_size(n_rows: int, r, alpha) -> tuple[int, int]:
    """The paper's schedule: <= 16k rows r=8, <= 32k r=16, larger r=32; alpha = 2r unless given."""
    if r == "auto":
        r = 8 if n_rows <= 16_000 else 16 if n_rows <= 32_000 else 32
    if alpha == "auto":
        alpha = 2 * r
    return int(r), int(alpha)


def load_rows(train_path: Path, cycle: int, synth_dir: Path = contracts.SYNTH_DIR) -> tuple[list[dict], int]:
    rows = records.read_records(train_path, FIELDS, unique="id")
    n_synth = 0
    for path in contracts.synth_files(1, cycle, synth_dir):
        extra = records.read_records(path, FIELDS, unique="id", allow_empty=True)
        n_synth += len(extra)
        rows.extend(extra)
    return rows, n_synth


def to_conversations(rows: list[dict], template: str | None = None) -> list[dict]:
    """TRL prompt/completion conversations (duo/data/chat.py): the loss falls on the final answer."""
    return [chat.conversation(r, template) for r in rows]


def _device_and_quant(p) -> tuple[str, bool]:
    import torch

    cuda = torch.cuda.is_available()
    quant = p.quantization == "4bit" or (p.quantization == "auto" and cuda)
    return ("cuda" if cuda else "cpu"), quant


def bf16_fast(device: str) -> bool:
    """bf16 autocast pays where the hardware has bf16 math: recent GPUs, or CPUs with AVX512-BF16/AMX."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast(p, device: str) -> str:
    """The precision training computes in: bf16, fp16 or fp32 (finetune.precision, auto resolved)."""
    if p.precision == "fp16":
        return "fp16"
    return "bf16" if p.precision == "bf16" or (p.precision == "auto" and bf16_fast(device)) else "fp32"


def top_layers(layers, n_layers: int) -> list[int] | None:
    """Indices of the top `layers` decoder layers (None = all). Below the lowest adapted layer nothing
    needs a gradient, so autograd stops there: backward skips the frozen bottom of the model."""
    if layers == "all" or layers >= n_layers:
        return None
    return list(range(n_layers - layers, n_layers))


def linear_names(model) -> list[str]:
    """The decoder layers' linear modules by name (q_proj, ..., down_proj): what "all-linear" means, spelled
    out, since PEFT takes `layers_to_transform` only with explicit names."""
    import torch

    layers = model.model.layers
    return sorted({name.rsplit(".", 1)[-1] for name, m in layers.named_modules() if isinstance(m, torch.nn.Linear)})


def micro_batch(p, device: str, processes: int = 1) -> int:
    """Rows per forward/backward in each process. auto: the process's whole share of the batch on a GPU
    (measured 1.44x faster for QLoRA on an H200, memory is plentiful), at most 4 rows on a CPU
    (micro-batch 8 was 25% slower there: bigger activations fall out of cache)."""
    share = p.batch_size // processes
    size = p.micro_batch_size
    if size == "auto":
        size = share if device == "cuda" else 4
    size = min(size, share)
    while share % size:  # a share that 4 (or the given size) does not divide
        size -= 1
    return size


def _quiet(*_args, **_kwargs) -> None:
    """The log of a worker other than the first: one voice per run."""


def _publish(model, tokenizer, resolved: dict, out: Path) -> None:
    """The adapter, its tokenizer, chat template and resolved params, swapped into `out` whole."""
    work = Path(tempfile.mkdtemp(prefix=".finetune.", dir=out.parent))
    try:
        model.save_pretrained(work / "adapter")
        tokenizer.save_pretrained(work / "adapter")
        (work / "adapter" / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
        records.write_json(work / "adapter" / "duo_params.json", resolved)
        records.replace_dir(work / "adapter", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def previous_adapter(folder: Path, cycle: int, p) -> tuple[Path | None, str]:
    """With `finetune.init: previous`, the adapter the previous cycle left in `folder` (the paper's eq. 1:
    cycle t continues from cycle t-1's model), if it is there and has the adapter's current shape;
    else None. The reason, in words, either way."""
    if p.init != "previous" or cycle < 1:
        return None, "from the base model"
    made = records.read_json(folder / "duo_params.json", default=None)
    if not made or not (folder / "adapter_model.safetensors").exists():
        return None, f"from the base model (finetune.init: previous, but {folder} holds no adapter)"
    if made.get("cycle") != cycle - 1:
        return None, (f"from the base model (finetune.init: previous, but {folder} is cycle "
                      f"{made.get('cycle')}'s adapter, not cycle {cycle - 1}'s)")
    if made.get("lora") != params_mod.as_dict(p.lora):
        return None, "from the base model (finetune.init: previous, but finetune.lora changed since that adapter)"
    return folder, f"from cycle {cycle - 1}'s adapter (finetune.init: previous)"


def train(rows: list[dict], p, base: Path, out: Path, *, val: list[dict] = (), log=click.echo,
          callbacks: list = (), init: Path | None = None, cycle: int = 0) -> dict:
    """Train a LoRA adapter on `rows`, from fresh LoRA weights or those of the adapter in `init`; write it
    (with chat template and resolved params) to `out`. With validation rows, their loss is measured every
    checkpoint (every epoch without checkpoints); with early_stopping_patience, training stops after that
    many evaluations without a lower loss and the best evaluation's adapter is the one written."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    if p.threads:
        torch.set_num_threads(p.threads)
    world = distributed.world_size()
    if not distributed.is_main():
        log = _quiet
    device, quant = _device_and_quant(p)
    if p.precision == "fp16" and device != "cuda":
        raise click.ClickException("params.yaml: finetune.precision: fp16 autocast needs a CUDA GPU (it is for GPUs "
                                   "without bf16, such as T4 and V100); use auto or fp32 on a CPU")
    r, alpha = lora_size(len(rows), p.lora.r, p.lora.alpha)
    micro = micro_batch(p, device, world)
    precision = autocast(p, device)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model_kwargs = {"dtype": torch.float32}
    if quant:
        compute = torch.bfloat16 if device == "cuda" else torch.float32
        model_kwargs = {"dtype": compute, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)}
        if device == "cuda":
            model_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(base, **model_kwargs)

    # Count what the model will see, with the same template TRL applies, before training.
    # The conversations as the served student sees them, tokenized here (duo/data/chat.py), counted before training.
    examples = [chat.tokenized(tokenizer, r) for r in rows]
    lengths = [len(e["input_ids"]) for e in examples]
    truncated = sum(n > p.max_length for n in lengths)
    dataset = Dataset.from_list(examples)
    padding_free = train_levers.use_padding_free(p.padding_free, lengths, p.max_length)
    train_levers.score_labelled_positions_only()
    train_levers.return_freed_memory()

    adapted = top_layers(p.lora.layers, model.config.num_hidden_layers)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=p.lora.dropout,
                      target_modules=linear_names(model) if adapted and p.lora.target_modules == "all-linear"
                      else p.lora.target_modules, task_type="CAUSAL_LM", layers_to_transform=adapted)
    start_from = {"init_adapter": records.file_sha256(init / "adapter_model.safetensors")} if init else {}
    ckpt = checkpoints.Checkpoints.for_run(list(rows) + list(val), params_mod.as_dict(p) | start_from, base,
                                           p.save_steps, log=log)
    early = bool(val) and p.early_stopping_patience > 0
    evaluation = {}
    if val:
        # validation loss at every checkpoint where early stopping picks the best one from them; else once an
        # epoch, for the curve in metrics only (every 10 steps cost 17% of a finetune on 260 rows)
        by_steps = early and p.save_steps > 0
        evaluation = {"eval_strategy": "steps" if by_steps else "epoch", "per_device_eval_batch_size": micro,
                      "load_best_model_at_end": by_steps, "metric_for_best_model": "eval_loss",
                      "greater_is_better": False, "restore_callback_states_from_checkpoint": True}
        if by_steps:
            evaluation["eval_steps"] = p.save_steps
    config = SFTConfig(
        **ckpt.trainer_args(),  # .duo/checkpoints/<key>/, every finetune.save_steps, sealed
        **evaluation,
        num_train_epochs=p.epochs,
        max_steps=p.max_steps,
        learning_rate=p.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        # micro-batches of micro_batch_size rows in each of `world` processes accumulate to batch_size
        # rows per step; the loss is normalised by the step's labelled tokens over all processes
        # (num_items_in_batch), so the step is the same whatever the split
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=p.grad_accum * (p.batch_size // world // micro),
        ddp_find_unused_parameters=False if world > 1 else None,
        # padding-free cannot truncate (TRL); it is on only when no row needs it
        max_length=None if padding_free else p.max_length,
        padding_free=padding_free,
        completion_only_loss=p.loss == "completion",
        train_sampling_strategy=SAMPLERS[p.batches],
        logging_steps=1,
        report_to="none",
        seed=p.seed,
        data_seed=p.seed,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        # TRL turns checkpointing on by default; at 135M on CPU memory is plentiful and recomputing
        # activations costs ~30% of the step. TRL's flag is a deprecated alias in transformers (a warning
        # every run): None unless asked.
        gradient_checkpointing=True if p.gradient_checkpointing else None,
        activation_checkpointing=p.gradient_checkpointing,
        disable_tqdm=not progress.enabled(),
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, eval_dataset=Dataset.from_list([chat.tokenized(tokenizer, r) for r in val]) if val else None,
                         callbacks=([EarlyStoppingCallback(p.early_stopping_patience)] if early else []) + list(callbacks))
    trainer.remove_callback(PrinterCallback)  # a dict per step is noise in a log; the curve is in train.json
    mode = "4-bit QLoRA" if quant else f"{precision} autocast" if precision != "fp32" else "fp32"
    log(f"finetune: {len(rows)} rows, LoRA r={r} alpha={alpha}, {mode} on {device}"
        f"{f' x {world} processes' if world > 1 else ''}, loss on "
        f"{'response only' if p.loss == 'completion' else 'whole sequence'}")
    if init:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        # the previous cycle's LoRA weights in place of fresh ones; the optimizer and schedule start anew
        set_peft_model_state_dict(trainer.model, load_file(init / "adapter_model.safetensors"))
    ckpt.attach(trainer)
    compat.seed_rebalanced_batches(trainer)
    train_levers.cheap_dropout_masks(trainer.model)
    train_levers.trim_heap_each_forward(trainer.model)
    cache = None
    if p.frozen_cache_mb and not p.gradient_checkpointing and p.lora.layers != "all" and world > 1:
        log("finetune: the frozen-layer cache is off with more than one process (each would hold its own copy)")
    elif p.frozen_cache_mb and not p.gradient_checkpointing:
        cache = frozen_layers.install(trainer.model, p.lora.layers, p.frozen_cache_mb * 2**20)
    start = time.monotonic()
    resume = ckpt.latest()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        cache_stats = cache.stats() if cache else None
        if cache:
            cache.remove()
    seconds = time.monotonic() - start

    if distributed.is_main():
        resolved = params_mod.as_dict(p) | {"cycle": cycle, "init": "previous" if init else "base",
                                            "lora_r": r, "lora_alpha": alpha, "device": device, "processes": world,
                                            "quantized_4bit": quant, "rows": len(rows), "micro_batch_size": micro}
        _publish(trainer.model, tokenizer, resolved, out)
        ckpt.clean()
    history = [h for h in trainer.state.log_history if "loss" in h]
    evals = [{"step": h["step"], "loss": round(h["eval_loss"], 4)} for h in trainer.state.log_history
             if "eval_loss" in h]
    seen_tokens = sum(min(n, p.max_length) for n in lengths) * (
        trainer.state.global_step * p.batch_size * p.grad_accum / max(1, len(rows)))
    return {
        "rows": len(rows),
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        # After a resume, Trainer's training_loss averages only the steps it ran; the log has them all.
        "train_loss": round(result.training_loss if resume is None or not history
                            else sum(h["loss"] for h in history) / len(history), 4),
        "final_loss": round(history[-1]["loss"], 4) if history else None,
        "loss_curve": contracts.evenly([{"step": h["step"], "loss": round(h["loss"], 4)} for h in history]),
        "validation_rows": len(val),
        "validation_curve": contracts.evenly(evals),
        "best_validation_loss": min((e["loss"] for e in evals), default=None),
        "best_step": trainer.state.best_global_step if early else None,
        "stopped_early": bool(early and trainer.state.global_step < trainer.state.max_steps),
        "tokens": int(seen_tokens),
        "tokens_per_s": round(seen_tokens / seconds, 1) if seconds else None,
        "train_seconds": round(seconds, 1),
        "truncated_rows": truncated,
        "lora_r": r,
        "lora_alpha": alpha,
        "device": device,
        "quantized_4bit": quant,
        "micro_batch_size": micro,
        "processes": world,
        "precision": precision,
        "padding_free": padding_free,
        "lora_layers": p.lora.layers,
        "init": "previous" if init else "base",
        "frozen_cache": cache_stats,
    }
