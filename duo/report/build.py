"""make report: what the loop has done so far, for a reader who does not read code.

Writes reports/cycle-<t>.html (self-contained: inline CSS and PNG images, opens offline) and its
Markdown twin reports/cycle-<t>.md (images as files in reports/cycle-<t>/). Everything comes from
the files the stages wrote (metrics/*.json, data/judgments.jsonl, data/predictions.jsonl), people's
ratings (data/ratings.jsonl) and, for
the curves across cycles, from the DVC experiments (`dvc exp show --json`); nothing is recomputed
from models. Rendering: duo/report/render.py (HTML, Markdown) and duo/report/charts.py; the cost
model: duo/report/breakeven.py.

Run: duo report [--params params.yaml] [--out reports]   (or: make report)
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import click

from duo import contracts
from duo.data import records
from duo.evaluation import calibration, ratings
from duo.report import breakeven
from duo import params as params_mod
from duo.contracts import SCORES

# what the report reads of each cycle: report key -> metrics file
METRICS = {k: v for k, v in contracts.METRICS.items() if k != "summary"}


def _read(root: Path, rel: str):
    return records.read_json(root / rel)  # None when missing; a corrupt file names itself


def _jsonl(root: Path, rel: str) -> list[dict]:
    path = root / rel
    if not path.exists():
        return []
    return [obj for _, obj in records.iter_jsonl(path)]


# ---- across cycles: the DVC experiments ----------------------------------------------------------

def parse_exp_show(blob: list) -> list[dict]:
    """Finished experiments from `dvc exp show --json`: name, cycle, timestamp, commit and headline."""
    out = []
    for baseline in blob or []:
        for exp in baseline.get("experiments") or []:
            if exp.get("executor"):  # running or queued: its metrics are not final
                continue
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                metrics = {Path(path).stem: (v or {}).get("data") for path, v in (data.get("metrics") or {}).items()}
                cycle = (((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}).get("cycle")
                if isinstance(cycle, int) and metrics.get("summary"):
                    out.append({"name": rev.get("name") or exp.get("name"), "cycle": cycle,
                                "timestamp": data.get("timestamp") or "", "source": "experiment",
                                "rev": data.get("rev") or rev.get("rev"), "summary": metrics["summary"]})
    return out


def _from_commit(root: Path, rev: str, rel: str):
    """A detailed metrics file as the experiment's commit holds it (dvc.yaml declares only the headline
    as metrics; the others are plain outputs, committed with each experiment)."""
    proc = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        return None


def experiments(root: Path) -> tuple[list[dict], str | None]:
    """(experiments, None) or ([], why there are none)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"], cwd=root,
                          capture_output=True, text=True)
    text = proc.stdout.strip()
    if proc.returncode != 0 or not text.startswith("["):
        return [], "no DVC experiments could be read (not a DVC/git repository yet?)"
    found = []
    for exp in parse_exp_show(json.loads(text)):
        exp |= {k: _from_commit(root, exp["rev"], str(path)) for k, path in METRICS.items()}
        if exp.get("eval"):
            found.append(exp)
    return found, None if found else "no finished DVC experiments yet"


def series(exps: list[dict], current: dict) -> list[dict]:
    """One entry per cycle, the latest run of each; the workspace's own metrics win for its cycle."""
    latest: dict[int, dict] = {}
    for e in sorted(exps, key=lambda e: e["timestamp"]):
        latest[e["cycle"]] = e
    if current.get("eval"):
        latest[current["cycle"]] = current
    return [latest[c] for c in sorted(latest)]


# ---- per-sample scores and examples -------------------------------------------------------------

def samples(judgments: list[dict], predictions: list[dict]) -> list[dict]:
    """One row per student response: its text beside the reference and its scores averaged over the
    valid judge samples (judge errors excluded, as from every mean; counted)."""
    by_key = defaultdict(list)
    for j in judgments:
        if j.get("subject", "student") == "student":
            by_key[(j["prompt_id"], j["sample_idx"])].append(j)
    rows = []
    for pred in predictions:
        js = by_key.get((pred["prompt_id"], pred["sample_idx"]), [])
        valid = [j for j in js if j.get("error") is None and j.get("similarity") is not None]
        row = {k: pred.get(k) for k in ("prompt_id", "sample_idx", "task", "prompt", "reference", "response")}
        row["judgments"], row["errors"] = len(js), len(js) - len(valid)
        for s in SCORES:
            row[s] = round(sum(j[s] for j in valid) / len(valid), 2) if valid else None
        rows.append(row)
    return rows


def best_and_worst(rows: list[dict], score: str, n: int) -> tuple[list[dict], list[dict]]:
    scored = sorted((r for r in rows if r.get(score) is not None),
                    key=lambda r: (-r[score], r["prompt_id"], r["sample_idx"]))
    best = scored[:n]
    rest = scored[len(best):]
    return best, list(reversed(rest))[:n]


def score_values(judgments: list[dict], score: str) -> list[float]:
    """Valid student judge samples: the population V and C@ζ are computed over."""
    return [j[score] for j in judgments if j.get("subject", "student") == "student" and j.get("error") is None
            and j.get(score) is not None]


def calibration_points(rated: dict[str, dict], judgments: list[dict], predictions: list[dict]) -> list[tuple]:
    """(person's score, judge panel's precision) of each response rated 1-100 that this cycle's
    judgments scored (the points behind the calibration block's ρ)."""
    keys = {(p["prompt_id"], p["sample_idx"]): ratings.key(p) for p in predictions}
    panel = calibration.pooled(calibration.judge_scores(judgments, keys))
    return sorted((r["score"], round(panel[k], 2)) for k, r in rated.items() if r.get("score") is not None and k in panel)


# ---- cost ---------------------------------------------------------------------------------------

def cost_so_far(cycles: list[dict]) -> dict:
    """Per cycle and in total; a cycle whose cost litellm could not price makes the total a lower bound."""
    per_cycle = [{"cycle": c["cycle"], "cost_usd": (c.get("cost") or {}).get("cost_usd"),
                  "prompt_tokens": (c.get("cost") or {}).get("prompt_tokens"),
                  "completion_tokens": (c.get("cost") or {}).get("completion_tokens"),
                  "known": bool(c.get("cost")) and (c["cost"].get("cost_usd") is not None)} for c in cycles]
    known = [c["cost_usd"] for c in per_cycle if c["known"]]
    return {"per_cycle": per_cycle, "known_usd": round(sum(known), 6) if known else None,
            "complete": all(c["known"] for c in per_cycle) and bool(per_cycle)}


# ---- the whole report ---------------------------------------------------------------------------

def build(root: Path, params, now: dt.datetime | None = None, exps: list[dict] | None = None,
          exps_note: str | None = None) -> dict:
    """Everything the report shows, as plain data (the renderers only format it)."""
    root = Path(root)
    current = {"name": "current workspace", "cycle": params.cycle, "source": "workspace",
               **{k: _read(root, str(path)) for k, path in METRICS.items()}}
    if exps is None:
        exps, exps_note = experiments(root)
    cycles = series(exps, current)
    judgments = _jsonl(root, str(contracts.JUDGMENTS))
    predictions = _jsonl(root, str(contracts.PREDICTIONS))
    rows = samples(judgments, predictions)
    points = calibration_points(ratings.read(root / contracts.RATINGS), judgments, predictions)
    gate_score = params.gate.score if params.gate.score in SCORES else "precision"
    best, worst = best_and_worst(rows, gate_score, params.report.examples)
    cost = cost_so_far(cycles)
    price_model = params.report.price_model or params.service.model
    rate, rate_source = breakeven.local_rate(_read(root, str(contracts.BENCH)), current.get("infer"))
    be = breakeven.compute(params.report, breakeven.token_prices(price_model), rate, cost["known_usd"], price_model,
                           rate_source)
    return {
        "project": root.resolve().name, "cycle": params.cycle,
        "generated": (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        "service_model": params.service.model, "zetas": list(params.judge.zetas), "gate_params": params.gate,
        **{k: current.get(k) for k in METRICS},
        "cycles": cycles, "cycles_note": exps_note,
        "scores": {s: score_values(judgments, s) for s in SCORES},
        "gate_score": gate_score, "best": best, "worst": worst, "samples": len(rows), "calibration_points": points,
        "cost_so_far": cost, "breakeven": be, "breakeven_sentence": breakeven.sentence(be),
    }


def write(data: dict, out_dir: Path) -> tuple[Path, Path]:
    """reports/cycle-<t>.html, reports/cycle-<t>.md and its images, each written atomically."""
    from duo.report import charts as report_charts, render as report_render

    out_dir = Path(out_dir)
    stem = f"cycle-{data['cycle']}"
    images = report_charts.charts(data)
    for name, png in images.items():
        records.write_bytes(out_dir / stem / f"{name}.png", png)
    html_path, md_path = out_dir / f"{stem}.html", out_dir / f"{stem}.md"
    records.write_text(html_path, report_render.html(data, images))
    records.write_text(md_path, report_render.markdown(data, {n: f"{stem}/{n}.png" for n in images}))
    return html_path, md_path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})  # also when run on its own
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(path_type=Path))
def main(params_path: str, out_dir: Path) -> None:
    """Write reports/cycle-<t>.html and .md for the current cycle of params.yaml."""
    params = params_mod.load(params_path)
    root = Path(params_path).resolve().parent
    if _read(root, str(contracts.EVAL_METRICS)) is None:
        raise click.ClickException(f"{root / contracts.EVAL_METRICS}: not found: run a cycle first (make cycle)")
    data = build(root, params)
    html_path, md_path = write(data, out_dir if out_dir.is_absolute() else root / out_dir)
    click.echo(f"report: {html_path} and {md_path}")
    click.echo(f"report: {data['breakeven_sentence']}")

