"""Where every artifact lives and how derived seeds are made: the contract between stages. A path
spelled anywhere else is a bug waiting to drift."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

TRAIN = Path("data/train.jsonl")
VAL = Path("data/val.jsonl")    # carved from train: early stopping and choosing defaults look here
TEST = Path("data/test.jsonl")  # the judge's: read only by infer and evaluate
SYNTH_DIR = Path("data/synth")
SYNTH_METRICS = Path("metrics/synth.json")
# The one file dvc.yaml declares as metrics: the headline of a cycle, one row of `dvc exp show`.
# The detailed files (synth, train, export, infer, eval, cycle, cost) are plain outputs beside it.
SUMMARY = Path("metrics/summary.json")
SCORE_ABBREV = {"similarity": "sim", "precision": "prec"}
_CYCLE_FILE = re.compile(r"^cycle-(\d+)\.jsonl$")


def synth_file(cycle: int, synth_dir: Path = SYNTH_DIR) -> Path:
    """Kept pairs of a cycle: what finetune trains on."""
    return synth_dir / f"cycle-{cycle}.jsonl"


def rejected_file(cycle: int, synth_dir: Path = SYNTH_DIR) -> Path:
    """Removed candidates of a cycle, each with its reason and the id it duplicates."""
    return synth_dir / f"rejected-cycle-{cycle}.jsonl"


def seeds_file(cycle: int, synth_dir: Path = SYNTH_DIR) -> Path:
    """The train row each teacher request of a cycle was seeded with."""
    return synth_dir / f"seeds-cycle-{cycle}.jsonl"


def synth_files(first: int, last: int, synth_dir: Path = SYNTH_DIR) -> list[Path]:
    """Kept-pair files of cycles first..last, in cycle order (files of other cycles, e.g. left over after
    a cycle was reset, do not count)."""
    found = {}
    for path in synth_dir.glob("cycle-*.jsonl") if synth_dir.exists() else []:
        m = _CYCLE_FILE.match(path.name)
        if m and first <= int(m.group(1)) <= last:
            found[int(m.group(1))] = path
    return [found[t] for t in sorted(found)]


def derived_seed(seed: int, *parts) -> int:
    """A 31-bit seed for one unit of work (a draw, a sample, a judge call) from the run's seed: stable
    across processes and Python versions, unlike hash()."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


LOSS_CURVE_POINTS = 200  # metrics/train.json stays small however long the run


def evenly(points: list, n: int = LOSS_CURVE_POINTS) -> list:
    """At most n of the points, evenly spaced, the first and the last always kept."""
    if len(points) <= n:
        return list(points)
    return [points[round(i * (len(points) - 1) / (n - 1))] for i in range(n)]


def summary(eval_metrics: dict, train: dict | None, cost: dict, verdict: dict, zetas: list[int]) -> dict:
    """A cycle's headline in flat, short keys: gate value, V and C@ζ per score (ζ from judge.zetas, C as
    a share), ROUGE-L, exact match, service cost, training seconds."""
    out = {"cycle": verdict["cycle"], "gate": verdict["value"], "passed": verdict["passed"]}
    for score, short in SCORE_ABBREV.items():
        block = eval_metrics.get(score) or {}
        out[f"{short}_V"] = block.get("mean")
        for z in zetas:
            out[f"{short}_C{z}"] = block.get(f"c{z}")
    if eval_metrics.get("pairwise"):
        out["win"] = eval_metrics["pairwise"].get("win")
    ref = eval_metrics.get("reference") or {}
    out |= {"rougeL": ref.get("rougeL"), "em": ref.get("exact_match"), "cost_usd": cost.get("cost_usd"),
            "train_s": (train or {}).get("train_seconds")}
    return out
