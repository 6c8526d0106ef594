"""infer: K responses per test prompt from the exported GGUF through llama.cpp (what is judged is what
ships; duo/inference/), or base + adapter in PyTorch with `infer.backend: transformers`.

Run: python -m stages.infer   (reads models/student.gguf, data/test.jsonl; writes data/predictions.jsonl,
metrics/infer.json)
"""
from __future__ import annotations

import click

from duo import entry
from duo import contracts as c
from duo import inference
from duo import params as params_mod
from duo import progress
from duo.data import records


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.infer
    test = c.read_rows(c.TEST)
    if p.backend == "llama_cpp" and not c.GGUF.exists():
        raise click.ClickException(f"{c.GGUF} missing: run the export stage first")
    rows, metrics = inference.run(test, inference.backend(p.backend, c.GGUF, p), p, params.cycle)
    records.write_jsonl(c.PREDICTIONS, rows)
    records.write_json(c.INFER_METRICS, {"cycle": params.cycle, "backend": p.backend, "k": p.k,
                                         "parallel": p.parallel, **metrics})
    progress.summary("infer", f"{metrics['responses']} responses ({p.k} per prompt), {metrics['tokens_per_s']} tokens/s")


if __name__ == "__main__":
    entry.run(main)
