"""plots: the cycle's curves as flat JSON lists, the shape `dvc plots show` and `dvc plots diff`
read (the `plots:` section of dvc.yaml points at them; `make report` draws the same data).

- metrics/plots/loss.json: training loss per step (from metrics/train.json);
- metrics/plots/scores.json: one row per valid student judgment (similarity, precision), for the
  histograms; judge errors are left out, as they are from every mean;
- metrics/plots/tasks.json: V per task and score, and ROUGE-L (from metrics/eval.json).

Run: python -m stages.plots   (reads metrics/train.json, metrics/eval.json, data/judgments.jsonl)
"""
from __future__ import annotations


import click

from duo import entry
from duo import contracts as c
from duo.data import records

OUT = c.PLOTS_DIR


def loss_rows(train: dict) -> list[dict]:
    return [{"step": p["step"], "loss": p["loss"]} for p in train.get("loss_curve") or []]


def score_rows(judgments: list[dict]) -> list[dict]:
    """Valid single-mode judgments of the student (pairwise rows and the teacher's are not scores)."""
    return [{"prompt_id": j["prompt_id"], "sample_idx": j["sample_idx"], "judge_idx": j["judge_idx"],
             "similarity": j["similarity"], "precision": j["precision"]}
            for j in judgments if j.get("subject", "student") == "student" and j.get("error") is None
            and j.get("similarity") is not None]


def task_rows(eval_metrics: dict) -> list[dict]:
    reference = eval_metrics.get("reference", {}).get("by_task", {})
    tasks = sorted(set(reference) | set(eval_metrics.get("precision", {}).get("by_task", {})))
    return [{"task": t,
             "similarity": eval_metrics.get("similarity", {}).get("by_task", {}).get(t, {}).get("mean"),
             "precision": eval_metrics.get("precision", {}).get("by_task", {}).get(t, {}).get("mean"),
             "rougeL": reference.get(t, {}).get("rougeL")} for t in tasks]


@click.command()
def main() -> None:
    train = records.read_json(c.TRAIN_METRICS)
    eval_metrics = records.read_json(c.EVAL_METRICS)
    if train is None or eval_metrics is None:
        raise click.ClickException(f"{c.TRAIN_METRICS} or {c.EVAL_METRICS} missing: run finetune and evaluate first")
    judgments = records.read_records(c.JUDGMENTS, {"prompt_id": str}, allow_empty=True)
    records.write_json(OUT / "loss.json", loss_rows(train))
    records.write_json(OUT / "scores.json", score_rows(judgments))
    records.write_json(OUT / "tasks.json", task_rows(eval_metrics))
    click.echo(f"plots: {len(loss_rows(train))} loss points, {len(score_rows(judgments))} scored samples -> {OUT}")


if __name__ == "__main__":
    entry.run(main)
