"""export: merge, convert, quantize and check (duo/export/), then install models/student.gguf with an
Ollama Modelfile and a model card. Runs every cycle: what is judged ships. A failed check fails the
stage and installs nothing (numbers in metrics/export.json).

Run: python -m stages.export   (reads models/base, models/adapter, data/; writes models/student.gguf,
models/Modelfile, models/MODEL_CARD.md, models/lora/, metrics/export.json)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import click

from duo import entry
from duo import contracts as c
from duo import export
from duo.report import model_card
from duo import params as params_mod
from duo import progress
from duo.data import records
from duo.export import gguf, release


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.export
    gguf.check_quant(p.quant)
    for need in (c.BASE / "config.json", c.ADAPTER / "adapter_config.json") + ((c.TEST,) if p.ppl_tokens else ()):
        if not need.exists():
            raise click.ClickException(f"{need} missing: run the base, prepare and finetune stages first")
    c.GGUF.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export.", dir=c.GGUF.parent) as tmp, \
            progress.Steps("export", ["merge", "convert", "quantize", "checks", "lora"]) as step:
        metrics, failures = export.build(p, export.model_label(), Path(tmp),
                                         log=lambda msg: step(msg.removeprefix("export: ")),
                                         metadata=release.metadata(params.cycle, c.BASE, c.ADAPTER))
        if failures:
            records.write_json(c.EXPORT_METRICS, metrics | {"failures": failures})
            raise click.ClickException("export checks failed; the new GGUF was not installed (numbers in "
                                       f"{c.EXPORT_METRICS}):\n- " + "\n- ".join(failures))
        export.install(Path(tmp), p.lora_only)
    template = (c.ADAPTER / "chat_template.jinja").read_text(encoding="utf-8")
    metrics["template_family"] = export.write_modelfile(c.MODELFILE, c.GGUF.name, template, metrics["end_tokens"])
    records.write_json(c.EXPORT_METRICS, metrics)
    model_card.write(c.CARD, params.cycle, metrics)
    ppl, greedy = metrics["perplexity"] or {}, metrics["greedy"]
    forced = greedy.get("teacher_forced")
    agree = f" (split at a near-tie; on PyTorch's path it agrees, {forced['near_ties']} near-ties)" if forced else ""
    progress.summary("export", f"{c.GGUF} ({metrics['size_mb']} MB, {p.quant}); greedy match "
                     f"{greedy['common_prefix']}/{greedy['tokens']} tokens{agree}; perplexity "
                     f"{', '.join(f'{k} {v}' for k, v in ppl.items() if k not in ('tokens', 'rows'))}; "
                     f"probe reply: {metrics['probe_reply'][:60]!r}")


if __name__ == "__main__":
    entry.run(main)
