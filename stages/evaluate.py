"""evaluate: the service LLM judges each (prompt, response, reference) M times (duo/evaluation/):
similarity and precision 1-100 (V, C@ζ, bootstrap intervals, per task and judge, P-Match against the
teacher's own answers) or pairwise win rates; ROUGE-L and exact match beside; the judges' agreement with
people's ratings (data/ratings.jsonl, `duo review`). An unparseable reply is a judge error, excluded from
every mean, counted; above judge.max_error_rate the stage fails.

Run: python -m stages.evaluate   (reads data/predictions.jsonl, data/test.jsonl, data/ratings.jsonl; writes
data/judgments.jsonl, data/teacher.jsonl, metrics/eval.json)
"""
from __future__ import annotations

import click

from duo import entry
from duo import contracts as c
from duo import params as params_mod
from duo import progress
from duo.data import records
from duo.evaluation import panel, ratings


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    preds = records.read_records(c.PREDICTIONS, c.PREDICTION_FIELDS)
    metrics, judgments, teacher = panel.evaluate(preds, c.read_rows(c.TEST), params, ratings.read(c.RATINGS))
    records.write_jsonl(c.JUDGMENTS, judgments)
    records.write_jsonl(c.TEACHER, teacher)
    records.write_json(c.EVAL_METRICS, metrics)
    progress.summary("evaluate", panel.headline(metrics))
    rate, limit = metrics["judge"]["error_rate"], params.judge.max_error_rate
    if rate > limit:
        raise click.ClickException(f"judge error rate {rate:.1%} is above judge.max_error_rate {limit:.0%}: the judge "
                                   f"is not answering in the expected JSON; see the raw replies in {c.JUDGMENTS}")


if __name__ == "__main__":
    entry.run(main)
