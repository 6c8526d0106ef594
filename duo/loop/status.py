"""`duo status`: where the loop stands, from params.yaml, metrics/*.json, `dvc status` and `dvc exp ls`."""
from __future__ import annotations

from pathlib import Path

import click

from duo import contracts
from duo.loop import delivery, experiments, gate
from duo import params as params_mod
from duo.data import records
from duo.evaluation import calibration




def _pick(d: dict | None, *keys):
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def collect(params_path: str | Path = "params.yaml") -> dict:
    params = params_mod.load(params_path)
    t, gate = params.cycle, params.gate
    verdict = records.read_json(contracts.VERDICT)
    metrics = {name: records.read_json(contracts.METRICS[name])
               for name in ("synth", "train", "export", "validation", "infer", "eval", "cost")}
    try:
        stale, stale_error = experiments.stale_stages(), None
    except click.ClickException as exc:
        stale, stale_error = None, exc.message.strip().splitlines()[-1]
    action, what = experiments.next_step(t, verdict, stale or [], gate.max_cycles)
    if stale is None:
        what += " (unsure: dvc status failed)"
    return {
        "cycle": t,
        "gate": {"score": gate.score, "statistic": gate.statistic, "threshold": gate.threshold,
                 "max_cycles": gate.max_cycles, "min_ratings": gate.min_ratings, "min_agreement": gate.min_agreement},
        "verdict": verdict,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "stale": stale,
        "stale_error": stale_error,
        "next": {"action": action, "description": what},
        "experiments": sorted(experiments.exp_names()),
        "deliverable": records.read_json(delivery.DELIVERABLE),
    }


def _metrics_lines(m: dict) -> list[str]:
    lines = []
    if synth := m.get("synth"):
        if synth.get("skipped"):
            lines.append(f"synthesize  cycle {synth.get('cycle')}: nothing (cycle 0)")
        else:
            lines.append(f"synthesize  cycle {synth.get('cycle')}: {synth.get('requests')} requests, "
                         f"{synth.get('kept')} pairs kept")
    if train := m.get("train"):
        lines.append(f"finetune    cycle {train.get('cycle')}: {train.get('rows')} rows, {train.get('steps')} steps, "
                     f"loss {train.get('train_loss')}, {train.get('train_seconds')} s")
    if export := m.get("export"):
        lines.append(f"export      {export.get('quant')}, {export.get('size_mb')} MB, {export.get('name')} "
                     f"{export.get('version')} (licence {export.get('license')})")
    if (val := m.get("validation")) and not val.get("skipped"):
        standing = val.get("standing") or {}
        worse = standing.get("regression")
        lines.append(f"validate    cycle {val.get('cycle')}: task score {val.get('task_score')} (95% {val.get('ci95')}), "
                     f"best cycle {standing.get('best_cycle')}" + (
                         f"; REGRESSION from cycle {worse['from_cycle']} ({worse['difference']:+}, 95% {worse['ci95']})"
                         if worse else ""))
    if infer := m.get("infer"):
        lines.append(f"infer       cycle {infer.get('cycle')}: {infer.get('responses')} responses, "
                     f"{infer.get('tokens_per_s')} tokens/s")
    if ev := m.get("eval"):
        judge = ev.get("judge") or {}
        errors = f"{judge.get('judge_errors')}/{judge.get('samples')} judge errors"
        rouge = _pick(ev, "reference", "rougeL")
        if ev.get("mode") == "pairwise":
            pw = ev.get("pairwise") or {}
            scores = f"pairwise win {pw.get('win')} tie {pw.get('tie')} loss {pw.get('loss')}"
        else:
            scores = ", ".join(f"{s} V={_pick(ev, s, 'mean')} " + " ".join(
                f"C@{z}={v}" for z, v in contracts.coverages(ev.get(s) or {}).items()) for s in contracts.SCORES)
        lines.append(f"evaluate    cycle {ev.get('cycle')}: {scores}, ROUGE-L {rouge}, {errors}")
        if ev.get("mode") != "pairwise":  # people's ratings vs the judge (duo review, Ratings tab)
            lines += [f"calibration {line}" for line in calibration.describe(ev.get("calibration"))]
    if cost := m.get("cost"):
        usd = "unknown (unpriced model)" if cost.get("cost_usd") is None else f"${cost['cost_usd']}"
        lines.append(f"cost        cycle {cost.get('cycle')}: {cost.get('prompt_tokens', 0) + cost.get('completion_tokens', 0)}"
                     f" tokens, {usd}")
    return lines


def render(s: dict) -> str:
    g = s["gate"]
    out = [f"cycle       {s['cycle']} (params.yaml); gate: {g['score']} {g['statistic']} >= {g['threshold']}, "
           f"at most {g['max_cycles']} cycles" + (f"; judge checked on >= {g['min_ratings']} ratings, Spearman ρ >= "
                                                   f"{g['min_agreement']:g}" if g.get("min_ratings") else "")]
    v = s["verdict"]
    if v:
        out.append(f"verdict     {gate.sentence(v)}")
    else:
        out.append("verdict     none yet: no cycle has finished (metrics/cycle.json is missing)")
    out += _metrics_lines(s["metrics"])
    if s["stale"] is None:
        out.append(f"stale       unknown: {s['stale_error']}")
    else:
        out.append(f"stale       {', '.join(s['stale']) or 'nothing'} (dvc status)")
    out.append(f"next        make cycle: {s['next']['description']}")
    out.append(f"experiments {', '.join(s['experiments']) or 'none yet'}")
    d = s["deliverable"]
    out.append(f"deliverable {contracts.DIST / d['file']} (cycle {d.get('cycle')}, sha256 {d.get('sha256', '')[:12]})"
               if d else "deliverable none yet (the gate has not passed)")
    return "\n".join(out)
