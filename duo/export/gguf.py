"""Merge -> convert -> quantize -> validate: the GGUF that inference, judging and users all get."""
from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click

from duo import models
from duo.compat import llama as compat_llama
from duo.llamacpp import converter
from duo.data import records


def quant_types() -> dict[str, int]:
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {name[len(prefix):].lower(): getattr(llama_cpp, name) for name in dir(llama_cpp)
            if name.startswith(prefix)}


# llama.cpp refuses these without an importance matrix (llama-imatrix over calibration text), which
# duo does not compute.
NEEDS_IMATRIX = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "q2_k_s"}
# Tensor types newer than the gguf package's reader (gguf 0.19.0 stops at Q1_0): the read-back check
# could not open the file.
UNREADABLE = {"q2_0"}


def check_quant(quant: str) -> None:
    known = quant_types()
    usable = sorted(set(known) - NEEDS_IMATRIX - UNREADABLE) + ["f32"]
    if quant in NEEDS_IMATRIX:
        raise click.ClickException(f"params.yaml: export.quant '{quant}' needs an importance matrix, which duo "
                                   f"does not compute; use one of {', '.join(usable)}")
    if quant in UNREADABLE:
        raise click.ClickException(f"params.yaml: export.quant '{quant}' is newer than the gguf package that "
                                   f"checks the export can read; use one of {', '.join(usable)}")
    if quant not in known and quant != "f32":
        raise click.ClickException(f"params.yaml: export.quant '{quant}' unknown; use one of {', '.join(usable)}")


def merge(base: Path, adapter: Path, out: Path):
    """Fold the LoRA weights into the base and save a plain HF model (with the adapter's tokenizer).
    Returns the merged model and tokenizer (the greedy check compares against them)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tokenizer.chat_template = (adapter / "chat_template.jinja").read_text(encoding="utf-8")
    tokenizer.save_pretrained(out)
    models.keep_sentencepiece(out, base)  # the adapter's folder has no tokenizer.model; the base keeps it
    if not template_writes_bos(tokenizer):
        config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        records.write_json(out / "tokenizer_config.json", config | {"add_bos_token": False})
    return model, tokenizer


def template_writes_bos(tokenizer) -> bool:
    """Training tokenizes the template's text and adds no BOS of its own. llama-server adds one when the
    GGUF says so (cutting the template's BOS text first, so a template that writes it gets the same
    token either way); for a template that does not, the GGUF must say no (convert enforces
    tokenizer_config.json's add_bos_token), or every served prompt starts with a token training never saw."""
    first = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    return bool(tokenizer.bos_token) and first.startswith(tokenizer.bos_token)


def _enforce_add_bos(hf_dir: Path, gguf_path: Path) -> None:
    """The converter takes add_bos from tokenizer.json's post-processor over tokenizer_config.json (and it
    cannot drop that post-processor's BOS: its pre-tokenizer check hashes encode()'s output, BOS included),
    so the flag tokenizer_config.json states is set in the GGUF afterwards, in place."""
    from gguf import GGUFReader

    config = hf_dir / "tokenizer_config.json"
    wanted = json.loads(config.read_text(encoding="utf-8")).get("add_bos_token") if config.exists() else None
    if not isinstance(wanted, bool):
        return
    reader = GGUFReader(str(gguf_path), "r+")
    field = reader.fields.get("tokenizer.ggml.add_bos_token")
    if field is None:
        raise click.ClickException(f"{gguf_path}: the converter wrote no tokenizer.ggml.add_bos_token")
    field.parts[field.data[0]][0] = wanted
    reader.data.flush()


def _architecture(hf_dir: Path) -> str:
    try:
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
        return ", ".join(config.get("architectures") or [config.get("model_type", "unknown")])
    except (OSError, ValueError):
        return "unknown"


def conversion_error(model: str, hf_dir: Path, log: str) -> click.ClickException:
    """Turn the converter's failure into what the user can do about it."""
    version = converter.versions()["llama_cpp_python"]
    arch = _architecture(hf_dir)
    tail = "\n".join(log.strip().splitlines()[-8:])
    cure = ("Choose a student that llama.cpp supports (student.source in params.yaml), or upgrade "
            "llama-cpp-python (pyproject.toml, constraints.txt) and rerun `make setup` if a newer "
            "llama.cpp supports it.")
    if re.search(r"Model \S+ is not supported|Architecture .* not supported", log):
        return click.ClickException(
            f"cannot export {model}: its architecture {arch} is not supported by llama.cpp's converter "
            f"(llama-cpp-python {version}). {cure}")
    if "pre-tokenizer was not recognized" in log:
        return click.ClickException(
            f"cannot export {model} ({arch}): its tokenizer's pre-tokenizer is unknown to llama.cpp's "
            f"converter (llama-cpp-python {version}), so llama.cpp would split text differently from "
            f"training. {cure}")
    if re.search(r"No space left|File too large|Disk quota|requested and \d+ written", log):
        return click.ClickException(f"GGUF conversion of {model} failed: disk full, the GGUF was not completed; "
                                    f"the previous models/student.gguf is untouched.\n{tail}")
    return click.ClickException(f"GGUF conversion of {model} ({hf_dir}) failed:\n{tail}")


def _run_converter(cmd: list[str], model: str, hf_dir: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise conversion_error(model, hf_dir, (proc.stderr or "") + (proc.stdout or ""))


def convert(hf_dir: Path, out: Path, outtype: str = "f16", model: str | None = None,
            metadata: dict | None = None) -> None:
    """Run llama.cpp's own convert_hf_to_gguf.py (same version as the runtime); `metadata` (general.*
    keys) goes into the header."""
    cmd = [sys.executable, str(converter.converter()), str(hf_dir), "--outfile", str(out),
           "--outtype", outtype]
    if metadata:
        override = out.with_name(out.name + ".metadata.json")
        records.write_json(override, metadata)
        cmd += ["--metadata", str(override)]
    _run_converter(cmd, model or str(hf_dir), hf_dir)
    _enforce_add_bos(hf_dir, out)


def convert_lora(adapter: Path, base: Path, out: Path, outtype: str = "f32", model: str | None = None) -> None:
    """The adapter alone as a GGUF LoRA (llama.cpp's convert_lora_to_gguf.py); f32 because it is small
    and applied on top of the base's own weights at load time."""
    cmd = [sys.executable, str(converter.lora_converter()), str(adapter), "--base", str(base),
           "--outfile", str(out), "--outtype", outtype]
    _run_converter(cmd, model or str(adapter), base)


def quantize(src: Path, dst: Path, quant: str, threads: int = 0) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_types()[quant]
    params.nthread = threads or (os.cpu_count() or 1)
    with compat_llama.llama_log_captured() as log:  # one line per tensor otherwise
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        tail = "".join(log)[-1500:].strip()
        raise click.ClickException(
            f"llama.cpp failed to quantize {src} to {quant} (code {rc}):\n{tail}\nSome types need "
            f"tensor rows divisible by their block size (this model's may not be): try q8_0, q4_k_m or q4_0")


def read_metadata(path: Path) -> dict:
    """Architecture, chat template and special tokens as written in the GGUF header."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except ValueError as err:  # a tensor type this gguf package does not know yet
        raise click.ClickException(f"cannot read back {path} with gguf {importlib.metadata.version('gguf')}: "
                                   f"{err}; choose another export.quant") from None

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
        "name": field("general.name"),
        "version": field("general.version"),
        "license": field("general.license"),
        "description": field("general.description"),
        "base_model": field("general.base_model.0.name"),
        "tensors": len(reader.tensors),
    }
