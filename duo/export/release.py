"""What the shipped GGUF says about itself in its header (the converter's --metadata): name, licence,
base model, the cycle and a hash of the finetune params that made it, so a file found on a disk tells
where it came from (`duo status`, the model card and any GGUF reader show it)."""
from __future__ import annotations

from pathlib import Path

from duo.data import records
from duo.report import model_card


def metadata(cycle: int, base: Path, adapter: Path) -> dict:
    provenance = records.read_json(base / "provenance.json") or {}
    source = provenance.get("source", str(base))
    params = adapter / "duo_params.json"
    digest = records.file_sha256(params)[:12] if params.exists() else "unknown"
    return {
        "general.name": f"duo student of {source}",
        "general.version": f"cycle-{cycle}",
        "general.license": model_card.base_license(provenance),
        "general.description": f"LoRA fine-tune of {source} by duo (LlamaDuo), cycle {cycle}, "
                               f"finetune params sha256 {digest}",
        "general.base_models": [{"name": source}],
        "general.tags": ["duo", "llamaduo"],
    }


def write_card(hf_dir: Path, metadata: dict) -> None:
    """The converter takes general.license only from a model card's YAML front matter (its --metadata
    file has no licence key): a README.md in the merged model's folder carries it."""
    if metadata.get("general.license"):
        records.write_text(hf_dir / "README.md", f"---\nlicense: {metadata['general.license']}\n---\n")
