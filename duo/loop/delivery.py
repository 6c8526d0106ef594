"""The deliverable: when the gate passes, the GGUF of the *best* cycle so far (the highest validation task
score; duo/evaluation/validation.py), not simply the last one, with its Modelfile and model card, in
dist/; and the model `make serve` serves by default (the deliverable, else the best cycle's GGUF).

An earlier cycle's GGUF is found in DVC's cache by the md5 the validate stage recorded (every cycle's
models/student.gguf went into the cache when its experiment ran)."""
from __future__ import annotations

from pathlib import Path

import click

from duo import contracts
from duo.data import records
from duo.report import model_card

DELIVERABLE = contracts.DIST / "deliverable.json"


def cached(md5: str | None) -> Path | None:
    """The file DVC's cache holds under `md5`, or the workspace's GGUF when it has that md5; else None."""
    if not md5:
        return None
    if contracts.GGUF.exists() and records.file_sha256(contracts.GGUF, "md5") == md5:
        return contracts.GGUF
    try:
        from dvc.repo import Repo

        with Repo() as repo:
            path = Path(repo.cache.local.oid_to_path(md5))
    except Exception:  # not a DVC repository, or no cache: nothing to find
        return None
    return path if path.is_file() else None


def _best(standing: dict | None, fallback: int) -> tuple[int, str | None, str | None]:
    """(cycle, GGUF md5, card md5) of the best cycle on validation."""
    if not standing:
        return fallback, None, None
    best = standing["best_cycle"]
    return best, (standing.get("gguf_md5") or {}).get(str(best)), (standing.get("card_md5") or {}).get(str(best))


def _release_of(cycle: int, gguf_md5: str) -> tuple[dict | None, str]:
    """An earlier cycle's evaluation and verdict, from the experiment whose validation record names this GGUF."""
    from duo.report import build as report

    exps, _ = report.experiments(Path("."))
    for exp in sorted(exps, key=lambda e: e["timestamp"], reverse=True):
        if exp["cycle"] == cycle and (exp.get("validation") or {}).get("gguf_md5") == gguf_md5:
            return model_card.release_metrics(cycle, exp.get("eval"), exp.get("verdict")), f"experiment {exp['name']}"
    return None, "its experiment was not found"


def deliver(verdict: dict) -> Path:
    """Copy the best cycle's GGUF, Modelfile and card to dist/ with deliverable.json (sha256, cycles, verdict)."""
    cycle = verdict["cycle"]
    best, gguf_md5, card_md5 = _best(verdict.get("validation"), cycle)
    contracts.DIST.mkdir(exist_ok=True)
    target = contracts.DIST / "student.gguf"
    if best == cycle or not gguf_md5:
        records.copy_file(contracts.GGUF, target)
        # the card written at export could not know the evaluation (it runs later): rewrite it with the
        # final metrics; models/MODEL_CARD.md stays as DVC recorded it
        model_card.write(contracts.DIST / "MODEL_CARD.md", cycle, final=True)
    else:
        source = cached(gguf_md5)
        if source is None:
            raise click.ClickException(f"cycle {best} is the best on validation, but its GGUF (md5 {gguf_md5}) is not "
                                       f"in DVC's cache: `dvc pull` (or `dvc exp apply cycle-{best}`) and rerun")
        records.copy_file(source, target)
        card = cached(card_md5)
        rel, where = _release_of(best, gguf_md5)
        note = (f"delivered as the best cycle on validation when the gate passed at cycle {cycle} "
                f"(metrics of cycle {best}: {where}; `dvc exp show` lists every cycle)")
        text = card.read_text(encoding="utf-8") if card else model_card.write(contracts.DIST / "MODEL_CARD.md", best)
        records.write_text(contracts.DIST / "MODEL_CARD.md", model_card.with_release(text, rel, note))
    records.copy_file(contracts.MODELFILE, contracts.DIST / "Modelfile")
    record = {"cycle": best, "gate_cycle": cycle, "gate": verdict, "sha256": records.file_sha256(target),
              "file": target.name}
    lora = contracts.LORA_FILE
    if best == cycle and lora.exists():
        records.copy_file(lora, contracts.DIST / "adapter.gguf")
        record["lora"] = {"file": "adapter.gguf", "sha256": records.file_sha256(lora)}
    else:
        (contracts.DIST / "adapter.gguf").unlink(missing_ok=True)
    records.write_json(DELIVERABLE, record)
    return target


def default_model() -> tuple[Path, str]:
    """What `make serve` serves unless told: (path, why)."""
    delivered = records.read_json(DELIVERABLE)
    if delivered and (contracts.DIST / "student.gguf").exists():
        return contracts.DIST / "student.gguf", f"the deliverable (cycle {delivered.get('cycle')}, gate passed)"
    standing = (records.read_json(contracts.VALIDATION_METRICS) or {}).get("standing")
    best, md5, _ = _best(standing, -1)
    path = cached(md5)
    if path is not None:
        return path, f"cycle {best}, the best on validation so far (no deliverable yet: the gate has not passed)"
    return contracts.GGUF, "the latest exported model (no deliverable yet, no validation record)"
