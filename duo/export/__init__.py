"""Export: merge, convert, quantize, and prove the GGUF is the trained model.

Export: merge the adapter into the base, convert with llama.cpp's converter, quantize, and prove the
GGUF is the trained model before anything is installed (gguf.py converts, checks.py proves):
- read back with gguf.GGUFReader: architecture, the training chat template, BOS/EOS ids;
- llama.cpp and the HF tokenizer give the same ids on a fixed set of strings;
- greedy decoding from the f16 GGUF matches the merged PyTorch model (first 16 of 32 tokens at least);
- perplexity of the test references, f16 vs the shipped quantization;
- an adapter trained on 4-bit weights (QLoRA): perplexity and argmax agreement, 4-bit base + adapter vs
  the merged model;
- with export.lora_only, the adapter alone as a GGUF LoRA, applied to the base's f16 GGUF, decodes
  like the merged file.
"""
from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path

import click

from duo import contracts as c
from duo.llamacpp import converter
from duo.data import records
from duo.export import checks, families, gguf, release

FLOAT_TYPES = ("f32", "f16", "bf16")


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 1)


def probe(llm) -> str:
    """One chat turn through llama.cpp's own handling of the embedded template."""
    llm.reset()
    reply = llm.create_chat_completion(checks.PROBE, max_tokens=48, temperature=0.0)
    return (reply["choices"][0]["message"]["content"] or "")[:200]


def build(p, model_name: str, work: Path, log=click.echo, *, base: Path = c.BASE, adapter: Path = c.ADAPTER,
          references: Path = c.TEST, metadata: dict | None = None) -> tuple[dict, list[str]]:
    """Build and check everything in `work` from `base` + `adapter` (perplexity on the rows of
    `references`; `metadata`: general.* keys for the header); return (metrics, failed checks). Nothing
    is moved into models/ here."""
    seconds: dict[str, float] = {}
    start = time.monotonic()
    quant = p.quant
    base_type = quant if quant in FLOAT_TYPES else "f16"
    template = (adapter / "chat_template.jinja").read_text(encoding="utf-8")
    failures: list[str] = []

    log("export: merging adapter into base")
    (model, tokenizer), seconds["merge"] = checks.timed(gguf.merge, base, adapter, work / "merged")
    if metadata:
        release.write_card(work / "merged", metadata)
    log("export: converting with llama.cpp's convert_hf_to_gguf.py")
    reference = work / f"model-{base_type}.gguf"
    _, seconds["convert"] = checks.timed(gguf.convert, work / "merged", reference, base_type, model_name, metadata)
    final = work / "student.gguf"
    if quant == base_type:
        shutil.copyfile(reference, final)
    else:
        log(f"export: quantizing to {quant}")
        _, seconds["quantize"] = checks.timed(gguf.quantize, reference, final, quant)

    # 1. The header says what we trained.
    meta, seconds["read_back"] = checks.timed(gguf.read_metadata, final)
    expected = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    template_ok = meta["chat_template"] == template
    special_ok = all(meta[k] == v for k, v in expected.items() if v is not None)
    if not meta["architecture"]:
        failures.append("the GGUF has no general.architecture")
    if not template_ok:
        failures.append("the GGUF's chat template differs from the one used in training")
    if not special_ok:
        failures.append(f"BOS/EOS in the GGUF ({meta['bos_token_id']}/{meta['eos_token_id']}) differ from the "
                        f"tokenizer's ({expected['bos_token_id']}/{expected['eos_token_id']})")

    # 2. Same token ids as the HF tokenizer, on the file that ships.
    log("export: checking tokenizer, greedy decoding and perplexity")
    shipped = checks.load(final)
    parity, seconds["tokenizer"] = checks.timed(checks.tokenizer_parity, shipped, tokenizer)
    if parity["tokenizer_mismatches"]:
        failures.append(f"llama.cpp and the HF tokenizer disagree on "
                        f"{[m['text'] for m in parity['tokenizer_mismatches']]}")
    reply, seconds["probe"] = checks.timed(probe, shipped)

    # 3. Greedy decoding from the unquantized GGUF equals the merged PyTorch model's.
    ref_llm = checks.load(reference)
    greedy, seconds["greedy"] = checks.timed(checks.greedy_check, ref_llm, model, tokenizer)
    if not greedy["passed"]:
        failures.append(f"greedy decoding from the {base_type} GGUF diverges from the merged PyTorch model after "
                        f"{greedy['common_prefix']} tokens (need {checks.GREEDY_MIN_PREFIX}): "
                        f"GGUF {greedy['gguf_text']!r} vs PyTorch {greedy['pytorch_text']!r}")

    # 4. What quantization costs, in perplexity of the test references.
    perplexity = qlora = None
    if p.ppl_tokens:
        rows = c.read_rows(references)
        sequences = checks.ppl_sequences(rows, tokenizer, p.ppl_tokens, max_len=512)
        # 4b. An adapter trained on 4-bit weights, folded into the full-precision base
        if (records.read_json(adapter / "duo_params.json") or {}).get("quantized_4bit"):
            log("export: measuring the QLoRA merge (4-bit base + adapter vs merged)")
            qlora, seconds["qlora_merge"] = checks.timed(checks.qlora_merge, base, adapter, model, sequences)
        ref_ppl, seconds[f"ppl_{base_type}"] = checks.timed(checks.perplexity, ref_llm, sequences)
        perplexity = {base_type: ref_ppl["ppl"], "tokens": ref_ppl["tokens"], "rows": ref_ppl["rows"]}
        if quant != base_type:
            q_ppl, seconds[f"ppl_{quant}"] = checks.timed(checks.perplexity, shipped, sequences)
            perplexity[quant] = q_ppl["ppl"]
            perplexity["increase_pct"] = round(100 * (q_ppl["ppl"] / ref_ppl["ppl"] - 1), 2)
    del shipped, ref_llm, model
    gc.collect()

    # 5. The adapter alone, applied by llama.cpp on the base's own GGUF.
    lora = None
    if p.lora_only:
        log("export: writing the LoRA GGUF and checking it on the base")
        t0 = time.monotonic()
        gguf.convert(base, work / "base-f16.gguf", "f16", model_name)
        gguf.convert_lora(adapter, base, work / "adapter.gguf", "f32", model_name)
        with_lora = checks.load(work / "base-f16.gguf", lora=work / "adapter.gguf")
        lora_tokens = checks.greedy_gguf(with_lora, checks.prompt_ids(tokenizer))
        del with_lora
        lora = checks.compare_greedy(lora_tokens, greedy["gguf_ids"]) | {
            "file": str(c.LORA_FILE), "size_mb": _mb(work / "adapter.gguf"), "base": f"{base} converted to f16",
            "compared_with": f"merged {base_type} GGUF"}
        seconds["lora"] = round(time.monotonic() - t0, 2)
        if not lora["passed"]:
            failures.append(f"the LoRA GGUF on the base decodes differently from the merged file after "
                            f"{lora['common_prefix']} tokens")

    end_tokens = [t for t in (tokenizer.eos_token, getattr(tokenizer, "eot_token", None)) if t]
    metrics = {
        "quant": quant, "end_tokens": end_tokens, "size_mb": _mb(final), "sizes_mb": {base_type: _mb(reference), quant: _mb(final)},
        **{k: v for k, v in meta.items() if k != "chat_template"},
        "chat_template_matches": template_ok, "special_tokens_match": special_ok,
        **parity, "greedy": greedy, "perplexity": perplexity, "qlora_merge": qlora, "lora": lora, "probe_reply": reply,
        "llama_cpp": converter.versions(),
        "check_seconds": seconds, "seconds": round(time.monotonic() - start, 1),
    }
    return metrics, failures


def write_modelfile(path: Path, gguf_name: str, chat_template: str, end_tokens: list[str], log=click.echo) -> str | None:
    """The Ollama Modelfile for the template's family; returns the family's name (None: unknown, warned)."""
    text, warning = families.modelfile(gguf_name, chat_template, end_tokens)
    if warning:
        log(f"export: warning: {warning}")
    records.write_text(path, text)
    return families.detect(chat_template, eos_token=end_tokens[0] if end_tokens else "</s>").name


def install(work: Path, lora: bool) -> None:
    """Move the checked files into models/ (each an atomic rename on the same filesystem)."""
    os.replace(work / "student.gguf", c.GGUF)
    c.LORA_DIR.mkdir(parents=True, exist_ok=True)
    if lora:
        os.replace(work / "adapter.gguf", c.LORA_FILE)
    else:
        c.LORA_FILE.unlink(missing_ok=True)


def model_label() -> str:
    provenance = records.read_json(c.BASE / "provenance.json") or {}
    return f"student.source '{provenance.get('source', c.BASE)}'"
