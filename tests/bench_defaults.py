"""How the finetune defaults are chosen (`make bench SECTION=defaults`, asked for by name: hours on 2
cores): each candidate setting trained with several seeds on the development data's train split and
scored on its validation split only (never test): greedy answers of the model being trained, at every
evaluation (each epoch), by the task score (exact match for short-answer tasks, ROUGE-L otherwise,
averaged per task then over tasks; duo/evaluation/reference.py), beside the validation loss. Reports mean
± sd over seeds per setting, and what early stopping on the validation loss would have kept.

Runs are appended to .bench/defaults/runs.jsonl and skipped when already there (a killed sweep resumes);
each run's summary (with the machine it ran on) is also kept in metrics/bench.json `defaults.runs`, from
which a fresh checkout restores the runs file: a sweep takes hours and spans sessions and machines.
Run: python -m tests.bench defaults   (DUO_DEFAULTS="epochs2 epochs4" DUO_SEEDS="1 2 3" narrow it)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests import devdata

WORK = devdata.ROOT / ".bench" / "defaults"
RUNS = WORK / "runs.jsonl"
# candidate settings: dotted finetune keys over the shipped params
SETTINGS = {
    "epochs4": {"epochs": 4.0, "early_stopping_patience": 0},
    "epochs3": {"epochs": 3.0, "early_stopping_patience": 0},
    "epochs2": {"epochs": 2.0, "early_stopping_patience": 0},
    "lr2e-4": {"epochs": 4.0, "lr": 2e-4, "early_stopping_patience": 0},
}
SEEDS = (1, 2, 3)
DEFAULT = "epochs4"  # the shipped setting the others are compared with


def greedy_answers(model, tokenizer, rows: list[dict], max_new_tokens: int = 64, batch: int = 8) -> list[str]:
    """The model's greedy answer to each row's prompt (chat template, left-padded batches)."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                           tokenize=False) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(texts[i]))
    answers: dict[int, str] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
            for i, ids in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
                answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return [answers[i] for i in range(len(rows))]


def run_one(project: Path, name: str, seed: int) -> dict:
    """One training of setting `name` with `seed` in `project`; the validation curve with task scores."""
    import dataclasses

    from transformers import AutoTokenizer, TrainerCallback

    from duo import contracts as c
    from duo import params as params_mod
    from duo.evaluation import reference
    from duo.train import finetune

    project = project.resolve()  # the adapter is written under it after the chdir
    os.chdir(project)
    params = params_mod.load()
    p = dataclasses.replace(params.finetune, seed=seed, save_steps=0, **SETTINGS[name])
    rows, _ = finetune.load_rows(c.TRAIN, 0)
    val = c.read_rows(c.VAL)
    metrics = reference.task_metrics(rows)
    tokenizer = AutoTokenizer.from_pretrained(c.BASE)
    points: list[dict] = []
    scoring = [0.0]

    class Score(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
            start = time.monotonic()
            answers = greedy_answers(model, tokenizer, val)
            preds = [{"prompt_id": r["id"], "task": r["task"], "reference": r["response"], "response": a}
                     for r, a in zip(val, answers)]
            scores = reference.prompt_scores(preds, metrics_by_task)
            points.append({"step": state.global_step, "epoch": round(state.epoch or 0, 2),
                           "eval_loss": round((metrics or {}).get("eval_loss", float("nan")), 4),
                           **reference.task_score(scores)})
            scoring[0] += time.monotonic() - start

    metrics_by_task = metrics
    out = project / "models" / f"adapter-{name}-{seed}"
    result = finetune.train(rows, p, c.BASE, out, val=val, callbacks=[Score()])
    return {"setting": name, "seed": seed, "rows": len(rows), "validation_rows": len(val), "steps": result["steps"],
            "train_seconds": round(result["train_seconds"] - scoring[0], 1), "curve": points,
            "final": points[-1] if points else None}


def finished(runs: list[dict]) -> list[dict]:
    """The runs that reached an evaluation, compact."""
    return [compact(r) for r in runs if r.get("final") or "curve" not in r]


def compact(run: dict) -> dict:
    """What a run leaves in metrics/bench.json: its final score per task, train seconds, machine, and what
    early stopping on the validation loss (patience 1 and 2 evaluations) would have kept. A record
    already compact passes unchanged."""
    if "curve" not in run:
        return run
    final = run["final"]
    return {"setting": run["setting"], "seed": run["seed"], "task_score": final["task_score"],
            "by_task": {t: v["score"] for t, v in final["by_task"].items()},
            "train_seconds": run["train_seconds"], "machine": run.get("machine"),
            **{f"early_stopping_patience{p}": _early_stop(run["curve"], p)["task_score"] for p in (1, 2)}}


def summarise(runs: list[dict]) -> dict:
    """Per setting: final task score (and per task) mean ± sd over seeds, and the machines they ran on."""
    out = {}
    for name in SETTINGS:
        mine = [r for r in finished(runs) if r["setting"] == name]
        if not mine:
            continue
        finals = [r["task_score"] for r in mine]
        entry = {"seeds": [r["seed"] for r in mine], "task_score": finals,
                 "mean": round(statistics.mean(finals), 2),
                 "sd": round(statistics.stdev(finals), 2) if len(finals) > 1 else None,
                 "train_seconds_mean": round(statistics.mean(r["train_seconds"] for r in mine), 1),
                 "cpus": sorted({(r.get("machine") or {}).get("cpu") or "unknown" for r in mine})}
        tasks = sorted(mine[0]["by_task"])
        entry["by_task_mean"] = {t: round(statistics.mean(r["by_task"][t] for r in mine), 2) for t in tasks}
        for patience in (1, 2):
            entry[f"early_stopping_patience{patience}_mean"] = round(
                statistics.mean(r[f"early_stopping_patience{patience}"] for r in mine), 2)
        out[name] = entry
    for name, entry in out.items():
        if name != DEFAULT and DEFAULT in out:
            entry[f"minus_{DEFAULT}"] = _paired(out[name], out[DEFAULT])
    return out


def _paired(a: dict, b: dict) -> dict:
    """Setting a minus setting b seed by seed (same seed, same data order): the spread between seeds is
    shared noise, so the per-seed difference is what a setting changes."""
    by_seed = dict(zip(b["seeds"], b["task_score"]))
    diffs = [round(x - by_seed[s], 2) for s, x in zip(a["seeds"], a["task_score"]) if s in by_seed]
    return {"seeds": [s for s in a["seeds"] if s in by_seed], "diffs": diffs,
            "mean": round(statistics.mean(diffs), 2) if diffs else None,
            "sd": round(statistics.stdev(diffs), 2) if len(diffs) > 1 else None}


def _early_stop(curve: list[dict], patience: int) -> dict:
    """The evaluation early stopping on the validation loss keeps: the best loss seen before `patience`
    evaluations in a row failed to improve on it."""
    best, waited = curve[0], 0
    for point in curve[1:]:
        if point["eval_loss"] < best["eval_loss"]:
            best, waited = point, 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best


def bench_defaults() -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    project = WORK / "project"
    if not (project / "data" / "val.jsonl").exists():
        devdata.project(project)
    names = os.environ.get("DUO_DEFAULTS", " ".join(SETTINGS)).split()
    seeds = [int(s) for s in os.environ.get("DUO_SEEDS", " ".join(map(str, SEEDS))).split()]
    done = {(r["setting"], r["seed"]) for r in _runs()}
    from tests.bench import machine

    info = machine()
    for name in names:
        for seed in seeds:
            if (name, seed) in done:
                continue
            print(f"defaults: {name} seed {seed}", flush=True)
            proc = subprocess.run([sys.executable, "-m", "tests.bench_defaults", str(project), name, str(seed)],
                                  cwd=devdata.ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"defaults {name} seed {seed} failed:\n{proc.stderr[-3000:]}")
            record = {**json.loads(proc.stdout.strip().splitlines()[-1]), "machine": info}
            with open(RUNS, "a") as fh:
                fh.write(json.dumps(record) + "\n")
    runs = _runs()
    return {"defaults.by_setting": summarise(runs), "defaults.runs": finished(runs),
            "defaults.note": "validation split of the development data only; task score = mean over tasks of "
            "exact match (short answers) or ROUGE-L; each run names its machine"}


def _runs() -> list[dict]:
    from tests.bench import OUT  # metrics/bench.json; tests.bench is heavy for the training child

    if not RUNS.exists():
        kept = json.loads(OUT.read_text()).get("defaults.runs", []) if OUT.exists() else []
        RUNS.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    print(json.dumps(run_one(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
