"""export: merge the adapter into the base, convert with llama.cpp's converter, quantize, validate,
and write models/student.gguf with an Ollama Modelfile. Runs every cycle: what is judged ships.

Run: python -m stages.export   (reads models/base, models/adapter; writes models/student.gguf,
models/Modelfile, metrics/export.json)
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import click

from duo import gguf
from duo import params as params_mod
from duo import progress
from duo import records

BASE, ADAPTER = Path("models/base"), Path("models/adapter")
OUT, MODELFILE = Path("models/student.gguf"), Path("models/Modelfile")
PROBE = [{"role": "user", "content": "Reply with one short sentence: what is a GGUF file?"}]


def smoke_test(path: Path) -> dict:
    """Load with llama.cpp, chat once with the embedded template, and compare tokenizers."""
    import llama_cpp
    from transformers import AutoTokenizer

    llm = llama_cpp.Llama(str(path), n_ctx=512, verbose=False, seed=0)
    start = time.monotonic()
    reply = llm.create_chat_completion(PROBE, max_tokens=48, temperature=0.0)
    text = reply["choices"][0]["message"]["content"] or ""
    hf = AutoTokenizer.from_pretrained(ADAPTER)
    samples = ["Hello, world!", "  leading and   inner   spaces\n\ttab", "def f(x):\n    return x**2",
               "Ünïcödé café — 東京 🙂", "<|im_start|>user\nhi<|im_end|>"]
    mismatches = [s for s in samples
                  if llm.tokenize(s.encode(), add_bos=False, special=True) != hf.encode(s, add_special_tokens=False)]
    return {"probe_reply": text[:200], "probe_seconds": round(time.monotonic() - start, 2),
            "tokenizer_samples": len(samples), "tokenizer_mismatches": mismatches}


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    quant = params.export.quant
    gguf.check_quant(quant)
    for need in (BASE / "config.json", ADAPTER / "adapter_config.json"):
        if not need.exists():
            raise click.ClickException(f"{need} missing: run the base and finetune stages first")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".export.", dir=OUT.parent) as tmp, \
            progress.Steps("export", ["merge", "convert", "quantize", "validate"]) as step:
        tmp = Path(tmp)
        step("merge adapter into base")
        gguf.merge(BASE, ADAPTER, tmp / "merged")
        step("convert (llama.cpp convert_hf_to_gguf.py)")
        base_type = quant if quant in ("f32", "f16", "bf16") else "f16"
        gguf.convert(tmp / "merged", tmp / f"model-{base_type}.gguf", base_type)
        final = tmp / "student.gguf"
        if quant == base_type:
            (tmp / f"model-{base_type}.gguf").rename(final)
        else:
            step(f"quantize to {quant}")
            gguf.quantize(tmp / f"model-{base_type}.gguf", final, quant)
        step("validate")
        meta = gguf.read_metadata(final)
        template = (ADAPTER / "chat_template.jinja").read_text(encoding="utf-8")
        if meta["chat_template"] != template:
            raise click.ClickException("the GGUF's chat template differs from the one used in training")
        check = smoke_test(final)
        if check["tokenizer_mismatches"]:
            raise click.ClickException(f"llama.cpp and the HF tokenizer disagree on: {check['tokenizer_mismatches']}")
        os.replace(final, OUT)
    records.write_text(MODELFILE, gguf.ollama_modelfile(OUT.name, template, ["<|im_end|>", "<|im_start|>"]))
    metrics = {"quant": quant, "size_mb": round(OUT.stat().st_size / 2**20, 1),
               "seconds": round(time.monotonic() - start, 1),
               **{k: v for k, v in meta.items() if k != "chat_template"},
               "chat_template_matches": True, **check}
    records.write_json("metrics/export.json", metrics)
    progress.summary("export", f"{OUT} ({metrics['size_mb']} MB, {quant}); probe reply: {check['probe_reply'][:80]!r}")


if __name__ == "__main__":
    main()
