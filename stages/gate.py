"""gate: does the cycle's statistic clear ε with the stated confidence (bootstrap over the test prompts'
judgments), where does the cycle stand against earlier ones on validation (regression, best cycle), what
next (duo/loop/gate.py); the cycle's service usage into metrics/cost.json; the cycle's headline,
metrics/summary.json (what `dvc exp show` lists).

Run: python -m stages.gate   (reads metrics/eval.json, data/judgments.jsonl, metrics/validation.json,
metrics/synth.json, metrics/train.json; writes metrics/cycle.json, metrics/cost.json, metrics/summary.json)
"""
from __future__ import annotations

import click

from duo import entry
from duo import contracts as c
from duo.loop import gate
from duo import params as params_mod
from duo import progress
from duo.data import records


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    metrics = records.read_json(c.EVAL_METRICS)
    if metrics is None:
        raise click.ClickException(f"{c.EVAL_METRICS} missing: run the evaluate stage first")
    judgments = records.read_records(c.JUDGMENTS, {"prompt_id": str}, allow_empty=True)
    standing = (records.read_json(c.VALIDATION_METRICS, default=None) or {}).get("standing")
    v = gate.verdict(metrics, params.gate, params.cycle, judgments, standing)
    spent = gate.cost(records.read_json(c.SYNTH_METRICS), metrics, params.cycle)
    records.write_json(c.COST, spent)
    records.write_json(c.VERDICT, v)
    records.write_json(c.SUMMARY, c.summary(metrics, records.read_json(c.TRAIN_METRICS), spent, v, params.judge.zetas))
    progress.summary("gate", gate.sentence(v))


if __name__ == "__main__":
    entry.run(main)
