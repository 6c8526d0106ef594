"""synthesize (cycle >= 1): the teacher writes new (instruction, response) pairs seeded from train,
curated as they land (duo/synth/generate.py; decontaminated against test and validation), until
`synth.per_cycle` kept pairs (x 2^(cycle-1) with `schedule: doubling`, split by task and label:
duo/synth/mix.py) or `synth.max_requests`. The last cycle's reserve is used first; with `synth.focus:
failures`, its validation record (data/validation/, never test) steers the seeds.

Run: python -m stages.synthesize   (reads data/{train,val,test}.jsonl, earlier data/synth/ and data/validation/;
writes data/synth/{cycle,rejected-cycle,seeds-cycle,reserve-cycle}-<t>.jsonl and metrics/synth.json)
"""
from __future__ import annotations

import click

from duo import contracts as c, entry, params as params_mod, progress, service
from duo.data import records
from duo.evaluation import validation
from duo.synth import generate


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    cycle = params.cycle
    c.SYNTH_DIR.mkdir(parents=True, exist_ok=True)
    if cycle < 1:  # cycle 0 trains on the coverage data alone (the paper's first turn)
        records.write_json(c.SYNTH_METRICS, {"cycle": cycle, "requests": 0, "kept": 0, "skipped": True})
        progress.summary("synthesize", "cycle 0, nothing to synthesize")
        return
    train = c.read_rows(c.TRAIN)
    # held out from synthesis: the judge's test split and the validation split defaults are chosen on
    val = c.read_rows(c.VAL, allow_empty=True) if c.VAL.exists() else []
    held_out = c.read_rows(c.TEST) + val
    earlier = [row for path in c.synth_files(1, cycle - 1) for row in c.read_rows(path, allow_empty=True)]
    reserve = c.read_rows(c.reserve_file(cycle - 1), allow_empty=True) if c.reserve_file(cycle - 1).exists() else []
    failed = validation.failures(cycle - 1)  # the last student on validation (never test): what to aim at
    target = generate.target_rows(params.synth, cycle)
    with service.from_params(params.service, params.synth.model, journal="synth", cycle=cycle) as svc, \
            progress.bar(target or None, "synthesize", unit="row" if target else "req") as bar:
        result = generate.synthesize(train, held_out, earlier, svc, params.synth, params.curate, cycle, bar.update,
                                     reserve=reserve, failed=failed, val=val)
    metrics = result.metrics | {"service": svc.stats.as_dict()}
    records.write_jsonl(c.reserve_file(cycle), result.reserve)
    records.write_jsonl(c.seeds_file(cycle), result.seeds)
    records.write_jsonl(c.rejected_file(cycle), result.rejected)
    records.write_jsonl(c.synth_file(cycle), result.kept)
    records.write_json(c.SYNTH_METRICS, metrics)
    warn = f"; WARNING {'; '.join(metrics['warnings'])}" if metrics["warnings"] else ""
    progress.summary("synthesize", f"{metrics['requests']} requests ({svc.stats.cached} replayed), "
                     f"{metrics['pairs_generated']} pairs, {metrics['kept']} kept of target {target} "
                     f"(removed: {metrics['removed'] or 'none'}){warn} -> {c.synth_file(cycle)}")
    if not result.kept:
        raise click.ClickException("synthesize: no usable pair survived; check the teacher (service.model / "
                                   f"synth.model), {c.rejected_file(cycle)} and {service.journal_dir()}/synth.jsonl")


if __name__ == "__main__":
    entry.run(main)
