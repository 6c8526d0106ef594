"""finetune: LoRA (QLoRA on a GPU) on train ∪ every synthetic file so far (duo/train/finetune.py), with
the validation split for early stopping. Synthetic rows that overlap test or validation as split now
(a re-split can move rows there) are left out and counted (`synth_contaminated` in metrics/train.json).

Run: python -m stages.finetune   (reads models/base, data/{train,val,test}.jsonl, data/synth/; writes
models/adapter/ and metrics/train.json)
"""
from __future__ import annotations

import click

from duo import entry
from duo import contracts as c
from duo import params as params_mod
from duo import progress
from duo.data import records
from duo.synth import curate
from duo.train import distributed, finetune


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.finetune
    if p.processes > 1 and not distributed.launched():  # this main again, once per process
        distributed.launch("stages.finetune", ["--params", params_path], p.processes, p.accelerate_config, p.threads)
        return
    rows, n_synth = finetune.load_rows(c.TRAIN, params.cycle)  # train rows, then the synthetic ones
    val = c.read_rows(c.VAL, allow_empty=True) if c.VAL.exists() else []
    test = c.read_rows(c.TEST, allow_empty=True) if c.TEST.exists() else []
    synth, contaminated = curate.decontaminate(rows[len(rows) - n_synth:], test + val, params.curate.decontam_ngram,
                                               train=rows[:len(rows) - n_synth])
    rows, n_synth = rows[:len(rows) - n_synth] + synth, len(synth)
    if not c.BASE.joinpath("config.json").exists():
        raise click.ClickException(f"{c.BASE} holds no model: run the base stage first (dvc repro base)")
    init, said = finetune.previous_adapter(c.ADAPTER, params.cycle, p)
    click.echo(f"finetune: training {said}")
    metrics = finetune.train(rows, p, c.BASE, c.ADAPTER, val=val, init=init, cycle=params.cycle)
    if not distributed.is_main():
        return
    metrics |= {"cycle": params.cycle, "train_rows": len(rows) - n_synth, "synth_rows": n_synth,
                "synth_contaminated": sum(contaminated.values()),
                "synth_contaminated_by": dict(sorted(contaminated.items()))}
    records.write_json(c.TRAIN_METRICS, metrics)
    left = f", {sum(contaminated.values())} left out: overlap test/validation" if contaminated else ""
    progress.summary("finetune", f"{len(rows)} rows ({n_synth} synthetic{left}), {metrics['steps']} steps, loss "
                     f"{metrics['train_loss']}, {metrics['tokens_per_s']} tokens/s -> {c.ADAPTER}")


if __name__ == "__main__":
    entry.run(main)
