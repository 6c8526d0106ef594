"""gate: compare the chosen statistic of metrics/eval.json with ε and write the verdict; sum the
cycle's service usage into metrics/cost.json; write the cycle's headline, metrics/summary.json (what
`dvc exp show` lists).

Run: python -m stages.gate   (reads metrics/eval.json, metrics/synth.json, metrics/train.json; writes
metrics/cycle.json, metrics/cost.json, metrics/summary.json)
"""
from __future__ import annotations

import click

from duo import contracts
from duo import params as params_mod
from duo import progress
from duo import records


def verdict(eval_metrics: dict, gate, cycle: int) -> dict:
    block = eval_metrics.get(gate.score) or {}
    if gate.statistic == "win_or_tie":
        value = None if block.get("win") is None else block["win"] + block["tie"]
    else:
        value = block.get(gate.statistic)
    if value is not None and gate.statistic != "mean":
        value = round(100 * value, 2)  # C@ζ and win rates are shares; ε is given in percent
    passed = value is not None and value >= gate.threshold
    if passed:
        nxt = "deliver: the gate passed; models/student.gguf is the deliverable"
    elif cycle + 1 >= gate.max_cycles:
        nxt = f"stop: gate.max_cycles={gate.max_cycles} reached without passing"
    else:
        nxt = f"run cycle {cycle + 1}: synthesize more data and retrain"
    return {"cycle": cycle, "score": gate.score, "statistic": gate.statistic, "value": value,
            "threshold": gate.threshold, "passed": passed, "max_cycles": gate.max_cycles, "next": nxt}


def cost(synth: dict | None, eval_metrics: dict, cycle: int) -> dict:
    """Tokens and USD per stage and for the cycle (None = a price litellm does not know)."""
    stages = {}
    if synth and synth.get("service"):
        stages["synthesize"] = synth["service"]
    for name, stats in (eval_metrics.get("judge", {}).get("calls") or {}).items():
        stages[f"evaluate:{name}"] = stats
    costs = [s.get("cost_usd") for s in stages.values()]
    return {"cycle": cycle, "stages": stages,
            "prompt_tokens": sum(s.get("prompt_tokens", 0) for s in stages.values()),
            "completion_tokens": sum(s.get("completion_tokens", 0) for s in stages.values()),
            "cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6)}


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    metrics = records.read_json("metrics/eval.json")
    if metrics is None:
        raise click.ClickException("metrics/eval.json missing: run the evaluate stage first")
    v = verdict(metrics, params.gate, params.cycle)
    spent = cost(records.read_json(contracts.SYNTH_METRICS), metrics, params.cycle)
    records.write_json("metrics/cost.json", spent)
    records.write_json("metrics/cycle.json", v)
    records.write_json(contracts.SUMMARY, contracts.summary(metrics, records.read_json("metrics/train.json"), spent,
                                                            v, params.judge.zetas))
    progress.summary("gate", f"cycle {v['cycle']}: {v['score']} {v['statistic']} = {v['value']} vs ε = "
                     f"{v['threshold']} -> {'PASSED' if v['passed'] else 'not passed'}; next: {v['next']}")


if __name__ == "__main__":
    main()
