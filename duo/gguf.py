"""Merge -> convert -> quantize -> validate: the GGUF that inference, judging and users all get."""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import click

from duo import llamacpp_tools


def quant_types() -> dict[str, int]:
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {name[len(prefix):].lower(): getattr(llama_cpp, name) for name in dir(llama_cpp)
            if name.startswith(prefix)}


def check_quant(quant: str) -> None:
    known = quant_types()
    if quant not in known and quant != "f32":
        raise click.ClickException(f"params.yaml: export.quant '{quant}' unknown; use one of f32, "
                                   f"{', '.join(sorted(known))}")


def merge(base: Path, adapter: Path, out: Path) -> None:
    """Fold the LoRA weights into the base and save a plain HF model (with the adapter's tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tokenizer.chat_template = (adapter / "chat_template.jinja").read_text(encoding="utf-8")
    tokenizer.save_pretrained(out)


def convert(hf_dir: Path, out: Path, outtype: str = "f16") -> None:
    """Run llama.cpp's own convert_hf_to_gguf.py (same version as the runtime)."""
    cmd = [sys.executable, str(llamacpp_tools.converter()), str(hf_dir), "--outfile", str(out),
           "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        hint = ""
        if "pre-tokenizer" in tail or "BPE pre-tokenizer" in tail:
            hint = "\n(llama.cpp does not know this tokenizer: the model family is not supported by its converter)"
        if "not supported" in tail and "Model" in tail:
            hint = "\n(llama.cpp's converter does not support this architecture)"
        if re.search(r"No space left|File too large|Disk quota|requested and \d+ written", tail):
            hint = "\n(disk full: the GGUF was not completed; the previous models/student.gguf is untouched)"
        raise click.ClickException(f"GGUF conversion of {hf_dir} failed:\n{tail}{hint}")


def quantize(src: Path, dst: Path, quant: str, threads: int = 0) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_types()[quant]
    params.nthread = threads or (os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise click.ClickException(f"llama.cpp failed to quantize {src} to {quant} (code {rc})")


def read_metadata(path: Path) -> dict:
    """Architecture, chat template and special tokens as written in the GGUF header."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name):
        f = reader.fields.get(name)
        if f is None:
            return None
        value = f.contents()
        return value

    arch = field("general.architecture")
    return {
        "architecture": arch,
        "chat_template": field("tokenizer.chat_template"),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "file_type": field("general.file_type"),
        "tensors": len(reader.tensors),
    }


def ollama_modelfile(gguf_name: str, chat_template: str, stops: list[str]) -> str:
    """An Ollama Modelfile; the Go template is written for ChatML (the embedded default's format)."""
    if "<|im_start|>" not in chat_template:
        raise click.ClickException("the chat template is not ChatML; duo writes Ollama templates for "
                                   "ChatML models only")
    default_system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", chat_template, re.S)
    lines = [f"FROM ./{gguf_name}", 'TEMPLATE """{{- if .System }}<|im_start|>system',
             "{{ .System }}<|im_end|>", "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
             "{{ .Content }}<|im_end|>", "{{ end }}<|im_start|>assistant", '"""']
    if default_system:
        lines.append(f'SYSTEM """{default_system.group(1)}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
