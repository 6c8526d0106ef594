"""MODEL_CARD.md beside the GGUF: what the model is, what it was trained on, how well it did, and
under which licence. Written by the export stage (release metrics still pending, since evaluate runs
after export) and written again with the final metrics when duo/loop/cycle.py delivers the model.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from duo import contracts
from duo.data import records
from duo.contracts import ADAPTER, BASE, EVAL_METRICS, EXPORT_METRICS, SYNTH_DIR, TEST, TRAIN, VERDICT


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _lines(path: Path) -> int:
    try:
        with open(path, encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def _readme_license(folder: Path) -> str | None:
    """`license:` from a Hugging Face README's YAML front matter."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    front = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    found = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front.group(1), re.M) if front else None
    return found.group(1).strip() if found else None


def base_license(provenance: dict) -> str:
    """The base model's licence from its own metadata (GGUF header or README), else 'unknown'."""
    source = provenance.get("source", "")
    if provenance.get("license"):
        return provenance["license"]
    if source.startswith("bundled:"):
        from gguf import GGUFReader

        from duo import bundled

        try:
            field = GGUFReader(str(bundled.bundled_gguf(source.split(":", 1)[1]))).fields.get("general.license")
        except Exception:  # the card must not fail an export over a licence lookup
            field = None
        if field is not None:
            return str(field.contents())
    for folder in (Path(source).expanduser() if source else None, BASE):
        if folder is not None and folder.is_dir() and (found := _readme_license(folder)):
            return found
    return "unknown"


def data_sizes(cycle: int) -> dict:
    """Rows trained on: the train split, plus the synthetic rows each cycle 1..cycle added."""
    synth = {}
    for t in range(1, cycle + 1):
        synth[t] = _lines(SYNTH_DIR / f"cycle-{t}.jsonl")
    return {"train_rows": _lines(TRAIN), "test_rows": _lines(TEST), "synth_rows_per_cycle": synth,
            "total_rows": _lines(TRAIN) + sum(synth.values())}


def release_metrics(cycle: int, ev: dict | None = None, verdict: dict | None = None) -> dict | None:
    """The cycle's evaluation and gate verdict (the workspace's metrics/eval.json and metrics/cycle.json
    unless given), only if they belong to this cycle."""
    ev, verdict = ev or _json(EVAL_METRICS), verdict or _json(VERDICT)
    if not ev or ev.get("cycle") != cycle:
        return None
    out = {"verdict": verdict if verdict.get("cycle") == cycle else None, "mode": ev.get("mode")}
    for score in contracts.SCORES:
        if score in ev:
            out[score] = {"mean": ev[score].get("mean"), "n": ev[score].get("n"),
                          "coverage": contracts.coverages(ev[score])}
    if "pairwise" in ev:
        out["pairwise"] = {k: ev["pairwise"].get(k) for k in ("win", "tie", "loss")}
    pm = ev.get("pmatch", {}).get("pooled")
    if pm:
        out["pmatch"] = {score: v.get("overall") for score, v in pm.items()}
    ref = ev.get("reference") or {}
    out["reference"] = {k: ref.get(k) for k in ("rougeL", "exact_match") if k in ref}
    out["judges"] = (ev.get("judge") or {}).get("models")
    return out


def facts(cycle: int, export: dict, final: bool) -> dict:
    provenance = _json(BASE / "provenance.json")
    adapter = _json(ADAPTER / "adapter_config.json")
    trained = _json(ADAPTER / "duo_params.json")
    return {
        "cycle": cycle,
        "base": provenance,
        "license": base_license(provenance),
        "adapter": {"r": adapter.get("r"), "alpha": adapter.get("lora_alpha"),
                    "dropout": adapter.get("lora_dropout"),
                    "target_modules": sorted(adapter.get("target_modules") or []),
                    "layers": adapter.get("layers_to_transform"),
                    **{k: trained.get(k) for k in ("epochs", "lr", "batch_size", "max_length", "loss", "device",
                                                    "quantized_4bit") if k in trained},
                    **({"max_steps": trained["max_steps"]} if (trained.get("max_steps") or 0) > 0 else {})},
        "data": data_sizes(cycle),
        "export": export,
        "release": release_metrics(cycle) if final else None,
    }


def _layers(layers) -> str:
    if not layers:
        return "all"
    layers = [layers] if isinstance(layers, int) else sorted(layers)
    return f"{layers[0]}-{layers[-1]} (the top {len(layers)}; the layers below are the base model's)"


def _v(value) -> str:
    return "–" if value is None else str(value)


def render(f: dict) -> str:
    base, ex, ad, data = f["base"], f["export"], f["adapter"], f["data"]
    lc = ex.get("llama_cpp") or {}
    name = base.get("source", "unknown")
    lines = [
        "# duo student model",
        "",
        f"A LoRA fine-tune of **{name}** ({_v(base.get('architecture'))}, "
        f"{_v(round(base['parameters'] / 1e6, 1) if base.get('parameters') else None)}M parameters), "
        f"merged and exported as a GGUF for llama.cpp by duo (cycle {f['cycle']}).",
        "",
        "## Base model",
        f"- source: `{name}`" + (f" (PyPI package {base['package']} {base.get('package_version')}, "
                                 f"file {base.get('file')})" if base.get("package") else ""),
        f"- licence: {f['license']}",
        "",
        "## Adapter (LoRA)",
        f"- r = {_v(ad.get('r'))}, alpha = {_v(ad.get('alpha'))}, dropout = {_v(ad.get('dropout'))}",
        f"- target modules: {', '.join(ad.get('target_modules') or []) or '–'}",
        f"- decoder layers adapted: {_layers(ad.get('layers'))}",
    ]
    extra = {k: v for k, v in ad.items() if k not in ("r", "alpha", "dropout", "target_modules", "layers")}
    if extra:
        lines.append("- training: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    lines += ["", "## Data", f"- train split: {data['train_rows']} rows; test split: {data['test_rows']} rows"]
    if data["synth_rows_per_cycle"]:
        per = ", ".join(f"cycle {t}: {n}" for t, n in data["synth_rows_per_cycle"].items())
        lines.append(f"- synthetic rows per cycle: {per}")
    else:
        lines.append("- synthetic rows: none (cycle 0 trains on the train split only)")
    lines.append(f"- trained on {data['total_rows']} rows in all")
    ppl = ex.get("perplexity") or {}
    greedy = ex.get("greedy") or {}
    lines += ["", "## Export", f"- quantization: {_v(ex.get('quant'))} ({_v(ex.get('size_mb'))} MB), "
              f"architecture `{_v(ex.get('architecture'))}`",
              f"- GGUF header: name `{_v(ex.get('name'))}`, version `{_v(ex.get('version'))}`, licence "
              f"`{_v(ex.get('license'))}`; {_v(ex.get('description'))}",
              f"- llama.cpp: llama-cpp-python {_v(lc.get('llama_cpp_python'))}, llama.cpp commit "
              f"{_v(lc.get('llama_cpp_commit'))}"]
    if ppl:
        lines.append("- perplexity on the test references: " + ", ".join(
            f"{k} {v}" for k, v in ppl.items() if k not in ("tokens", "rows", "increase_pct")) +
            (f" (+{ppl['increase_pct']}% from quantization)" if ppl.get("increase_pct") is not None else "") +
            f", over {_v(ppl.get('tokens'))} response tokens")
    if greedy:
        lines.append(f"- greedy decoding matches the merged PyTorch model for {greedy.get('common_prefix')} of "
                     f"{greedy.get('tokens')} tokens; tokenizer: {len(ex.get('tokenizer_mismatches') or [])} "
                     f"mismatches on {_v(ex.get('tokenizer_samples'))} test strings")
    lora = ex.get("lora")
    if lora:
        lines.append(f"- LoRA-only GGUF: `{lora.get('file')}` ({lora.get('size_mb')} MB), to apply on a GGUF of the "
                     f"base; greedy output on the base f16 GGUF matches the merged file for "
                     f"{lora.get('common_prefix')} of {lora.get('tokens')} tokens")
    lines += release_lines(f["release"])
    lines += ["", "## Use", "```", "llama-cli -m student.gguf -cnv", "ollama create student -f Modelfile", "```", ""]
    return "\n".join(lines)


RELEASE = "## Metrics at release"


def release_lines(rel: dict | None) -> list[str]:
    lines = ["", RELEASE]
    if not rel:
        lines.append("Pending: evaluate runs after export; duo fills this in when it delivers the model "
                     "(dist/MODEL_CARD.md).")
    else:
        v = rel.get("verdict") or {}
        if v:
            lines.append(f"- gate: {v.get('score')} {v.get('statistic')} = {v.get('value')} vs ε = "
                         f"{v.get('threshold')} -> {'passed' if v.get('passed') else 'not passed'}")
        for score in contracts.SCORES:
            if score in rel:
                s = rel[score]
                cs = ", ".join(f"C@{z} = {_v(v)}" for z, v in s["coverage"].items())
                lines.append(f"- {score}: V = {_v(s['mean'])}, {cs} (n = {_v(s['n'])})")
        if rel.get("pairwise"):
            lines.append("- pairwise vs reference: " + ", ".join(f"{k} {v}" for k, v in rel["pairwise"].items()))
        if rel.get("pmatch"):
            lines.append("- P-Match: " + ", ".join(f"{k} {v}" for k, v in rel["pmatch"].items()))
        if rel.get("reference"):
            lines.append("- reference metrics: " + ", ".join(f"{k} {v}" for k, v in rel["reference"].items()))
        if rel.get("judges"):
            lines.append(f"- judged by: {', '.join(rel['judges'])}")
    return lines


def with_release(card: str, rel: dict | None, note: str = "") -> str:
    """An exported card with its release section filled in (the rest of the card as export wrote it)."""
    head, _, rest = card.partition("\n" + RELEASE)
    tail = rest[rest.find("\n## ", 1):] if "\n## " in rest[1:] else "\n"
    lines = (release_lines(rel) if rel or not note else ["", RELEASE]) + ([f"- {note}"] if note else [])
    return head + "\n".join(lines) + tail


def write(path: Path, cycle: int, export: dict | None = None, final: bool = False) -> str:
    """Render the card from the files on disk (export metrics from metrics/export.json unless given)."""
    text = render(facts(cycle, export if export is not None else _json(EXPORT_METRICS), final))
    records.write_text(path, text)
    return text
