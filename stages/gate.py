"""gate: compare the chosen statistic of metrics/eval.json with ε and write the verdict.

Run: python -m stages.gate   (reads metrics/eval.json; writes metrics/cycle.json)
"""
from __future__ import annotations

import click

from duo import params as params_mod
from duo import records


def verdict(eval_metrics: dict, gate, cycle: int) -> dict:
    block = eval_metrics.get(gate.score) or {}
    value = block.get(gate.statistic)
    if value is not None and gate.statistic != "mean":
        value = round(100 * value, 2)  # C@ζ is a share; ε is given in percent
    passed = value is not None and value >= gate.threshold
    if passed:
        nxt = "deliver: the gate passed; models/student.gguf is the deliverable"
    elif cycle + 1 >= gate.max_cycles:
        nxt = f"stop: gate.max_cycles={gate.max_cycles} reached without passing"
    else:
        nxt = f"run cycle {cycle + 1}: synthesize more data and retrain"
    return {"cycle": cycle, "score": gate.score, "statistic": gate.statistic, "value": value,
            "threshold": gate.threshold, "passed": passed, "max_cycles": gate.max_cycles, "next": nxt}


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    metrics = records.read_json("metrics/eval.json")
    if metrics is None:
        raise click.ClickException("metrics/eval.json missing: run the evaluate stage first")
    v = verdict(metrics, params.gate, params.cycle)
    records.write_json("metrics/cycle.json", v)
    click.echo(f"gate: cycle {v['cycle']}: {v['score']} {v['statistic']} = {v['value']} vs ε = "
               f"{v['threshold']} -> {'PASSED' if v['passed'] else 'not passed'}; next: {v['next']}")


if __name__ == "__main__":
    main()
