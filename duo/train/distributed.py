"""More than one training process: the finetune stage re-runs itself under `accelerate launch` (DDP; gloo
on CPU, NCCL on GPUs; FSDP or DeepSpeed ZeRO through an accelerate config file), and inside a worker,
who writes what. The global batch stays finetune.batch_size: each of N processes takes batch_size / N
rows of every step, so the loss curve does not depend on N (tests/test_distributed.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True inside a process `accelerate launch` (torchrun) started."""
    return "LOCAL_RANK" in os.environ


def launch(module: str, args: list[str], processes: int, config: str | None, threads: int = 0) -> None:
    """Run `python -m module args` as `processes` data-parallel workers; returns when all are done, raises
    if one failed (its traceback went to the log). accelerate's multi-GPU launcher is torchrun; on a CPU
    the Trainer's `use_cpu` makes the group gloo. Each CPU worker gets its share of the cores."""
    import torch

    from duo import machine

    cpu = not torch.cuda.is_available()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--main_process_port", "0"]
    if config:
        if not Path(config).is_file():
            raise click.ClickException(f"params.yaml: finetune.accelerate_config: {config} does not exist")
        cmd += ["--config_file", config]
    else:
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    each = threads or (max(1, machine.cores() // processes) if cpu else 4)
    env = {**os.environ, "OMP_NUM_THREADS": str(each)}
    where = f"config {config}" if config else "DDP, " + ("CPU (gloo)" if cpu else "GPUs (NCCL)")
    click.echo(f"finetune: {processes} processes under accelerate launch ({where}), {each} threads each")
    proc = subprocess.run([*cmd, "-m", module, *args], env=env)
    if proc.returncode != 0:
        raise click.ClickException(f"finetune: a training process failed (exit {proc.returncode}); its error is above")
