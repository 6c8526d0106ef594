"""gate: compare the chosen statistic of metrics/eval.json with ε and write the verdict (duo/gate.py); sum
the cycle's service usage into metrics/cost.json; write the cycle's headline, metrics/summary.json (what
`dvc exp show` lists).

Run: python -m stages.gate   (reads metrics/eval.json, metrics/synth.json, metrics/train.json; writes
metrics/cycle.json, metrics/cost.json, metrics/summary.json)
"""
from __future__ import annotations

import click

from duo import entry
from duo import contracts as c
from duo import gate
from duo import params as params_mod
from duo import progress, records


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    metrics = records.read_json(c.EVAL_METRICS)
    if metrics is None:
        raise click.ClickException(f"{c.EVAL_METRICS} missing: run the evaluate stage first")
    v = gate.verdict(metrics, params.gate, params.cycle)
    spent = gate.cost(records.read_json(c.SYNTH_METRICS), metrics, params.cycle)
    records.write_json(c.COST, spent)
    records.write_json(c.VERDICT, v)
    records.write_json(c.SUMMARY, c.summary(metrics, records.read_json(c.TRAIN_METRICS), spent, v, params.judge.zetas))
    progress.summary("gate", f"cycle {v['cycle']}: {v['score']} {v['statistic']} = {v['value']} vs ε = "
                     f"{v['threshold']} -> {'PASSED' if v['passed'] else 'not passed'}; next: {v['next']}")


if __name__ == "__main__":
    entry.run(main)
