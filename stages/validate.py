"""validate: the cycle's student, from the GGUF that ships, answers the validation split greedily
(never test) and each row is scored by the metric its task calls for (duo/evaluation/validation.py).
Kept per cycle in data/validation/: synthesis aims at what the last student got wrong, the gate reports
regressions against the best earlier cycle, and the best cycle's GGUF is what gets delivered.

Run: python -m stages.validate   (reads models/student.gguf, models/MODEL_CARD.md, data/{train,val}.jsonl; writes
data/validation/cycle-<t>.{jsonl,json} and metrics/validation.json)
"""
from __future__ import annotations

import click

from duo import entry
from duo import contracts as c
from duo import params as params_mod
from duo import inference, progress
from duo.data import records
from duo.evaluation import validation


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    val = c.read_rows(c.VAL, allow_empty=True) if c.VAL.exists() else []
    if not val:
        records.write_json(c.VALIDATION_METRICS, {"cycle": params.cycle, "skipped": True})
        progress.summary("validate", "no validation rows (finetune.validation_ratio and validation_min_rows are 0)")
        return
    preds = inference.greedy(c.GGUF, val, params.infer, params.cycle)
    rows, summary = validation.score(preds, c.read_rows(c.TRAIN))
    # how delivery finds this cycle's files in DVC's cache later, should it be the best one
    summary |= {"cycle": params.cycle, "gguf_md5": records.file_sha256(c.GGUF, "md5"),
                "card_md5": records.file_sha256(c.CARD, "md5") if c.CARD.exists() else None}
    records.write_jsonl(c.validation_file(params.cycle), rows)
    records.write_json(c.validation_summary(params.cycle), summary)
    standing = validation.standing(params.cycle)
    records.write_json(c.VALIDATION_METRICS, summary | {"standing": standing})
    worse = standing["regression"]
    said = (f"; REGRESSION from cycle {worse['from_cycle']}: {worse['difference']:+} (95% {worse['ci95']})"
            if worse else "")
    progress.summary("validate", f"task score {summary['task_score']} (95% {summary['ci95']}) on {len(rows)} rows; "
                     f"best cycle {standing['best_cycle']}{said}")


if __name__ == "__main__":
    entry.run(main)
