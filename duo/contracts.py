"""Artifact paths, row fields, derived seeds and headline metrics, owned here.

The contract between stages: where every artifact lives, the row fields each file holds, how derived
seeds are made, the headline metrics. A path spelled anywhere else is a bug waiting to drift."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

# data
TRAIN = Path("data/train.jsonl")
VAL = Path("data/val.jsonl")    # carved from train: early stopping and choosing defaults look here
TEST = Path("data/test.jsonl")  # the judge's: read only by infer and evaluate
SYNTH_DIR = Path("data/synth")
PREDICTIONS = Path("data/predictions.jsonl")
JUDGMENTS = Path("data/judgments.jsonl")
TEACHER = Path("data/teacher.jsonl")  # the teacher's own answers to the test prompts (P-Match)
VALIDATION_DIR = Path("data/validation")  # every cycle's greedy validation answers and scores, kept
RATINGS = Path("data/ratings.jsonl")  # people's ratings of judged test responses (duo review), kept across cycles
# models
BASE = Path("models/base")
ADAPTER = Path("models/adapter")
GGUF = Path("models/student.gguf")
MODELFILE = Path("models/Modelfile")
CARD = Path("models/MODEL_CARD.md")
LORA_DIR = Path("models/lora")
LORA_FILE = LORA_DIR / "adapter.gguf"
DIST = Path("dist")  # the deliverable, once the gate passes
# metrics: the detailed files are plain outputs; the headline is the one dvc.yaml declares as metrics
SYNTH_METRICS = Path("metrics/synth.json")
TRAIN_METRICS = Path("metrics/train.json")
EXPORT_METRICS = Path("metrics/export.json")
BENCH = Path("metrics/bench.json")  # make bench; the report reads the measured serve rate from it
INFER_METRICS = Path("metrics/infer.json")
EVAL_METRICS = Path("metrics/eval.json")
VALIDATION_METRICS = Path("metrics/validation.json")
VERDICT = Path("metrics/cycle.json")
COST = Path("metrics/cost.json")
SUMMARY = Path("metrics/summary.json")  # one short row per cycle in `dvc exp show`
PLOTS_DIR = Path("metrics/plots")
METRICS = {"synth": SYNTH_METRICS, "train": TRAIN_METRICS, "export": EXPORT_METRICS, "infer": INFER_METRICS,
           "validation": VALIDATION_METRICS, "eval": EVAL_METRICS, "verdict": VERDICT, "cost": COST, "summary": SUMMARY}
SCORES = ("similarity", "precision")  # what a single-mode judge rates, 1-100
SCORE_ABBREV = {"similarity": "sim", "precision": "prec"}
# row schemas (extra keys are kept): train/val/test/synth rows (prepare gives every row its `prompt`, the
# final user turn), coverage rows (`prompt` or `messages`: duo/data/chat.py checks the conversation), predictions
ROW_FIELDS = {"id": str, "task": str, "prompt": str, "response": str}
COVERAGE_FIELDS = {"id": str, "task": str, "response": str}
PREDICTION_FIELDS = {"prompt_id": str, "sample_idx": int, "task": str, "prompt": str, "reference": str,
                     "response": str}


def read_rows(path: Path, *, allow_empty: bool = False) -> list[dict]:
    """A file of rows (train, val, test, synth), ids unique, checked line by line."""
    from duo.data import records

    return records.read_records(path, ROW_FIELDS, unique="id", allow_empty=allow_empty)


def zeta_keys(zetas: list[int]) -> list[str]:
    """The C@ζ keys of metrics/eval.json for judge.zetas: c50, c70, ..."""
    return [f"c{z}" for z in zetas]


def coverages(block: dict) -> dict[int, float | None]:
    """{ζ: C@ζ} of one score block of metrics/eval.json, for whatever ζ it was computed with."""
    return {int(k[1:]): v for k, v in block.items() if k[:1] == "c" and k[1:].isdigit()}
_CYCLE_FILE = re.compile(r"^cycle-(\d+)\.jsonl$")


def synth_file(cycle: int, synth_dir: Path = SYNTH_DIR) -> Path:
    """Kept pairs of a cycle: what finetune trains on."""
    return synth_dir / f"cycle-{cycle}.jsonl"


def rejected_file(cycle: int, synth_dir: Path = SYNTH_DIR) -> Path:
    """Removed candidates of a cycle, each with its reason and the id it duplicates."""
    return synth_dir / f"rejected-cycle-{cycle}.jsonl"


def reserve_file(cycle: int, synth_dir: Path = SYNTH_DIR) -> Path:
    """Pairs kept by curation but over their label's quota after cycle `cycle`: paid for, used later."""
    return synth_dir / f"reserve-cycle-{cycle}.jsonl"


def seeds_file(cycle: int, synth_dir: Path = SYNTH_DIR) -> Path:
    """The train row each teacher request of a cycle was seeded with."""
    return synth_dir / f"seeds-cycle-{cycle}.jsonl"


def validation_file(cycle: int, folder: Path = VALIDATION_DIR) -> Path:
    """A cycle's validation rows: its student's greedy answer and score per row."""
    return folder / f"cycle-{cycle}.jsonl"


def validation_summary(cycle: int, folder: Path = VALIDATION_DIR) -> Path:
    """A cycle's validation task score (overall, per task, interval) and its GGUF's md5."""
    return folder / f"cycle-{cycle}.json"


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
    """A cycle's headline in flat, short keys: gate value and its lower bound, the validation task score,
    V and C@ζ per score (ζ from judge.zetas, C as a share), ROUGE-L, exact match, service cost, training
    seconds, and (once people rated) how many ratings the judge was checked on, with its Spearman ρ."""
    out = {"cycle": verdict["cycle"], "gate": verdict["value"], "gate_low": verdict.get("lower"),
           "passed": verdict["passed"], "val": (verdict.get("validation") or {}).get("task_score")}
    for score, short in SCORE_ABBREV.items():
        block = eval_metrics.get(score) or {}
        out[f"{short}_V"] = block.get("mean")
        for z, key in zip(zetas, zeta_keys(zetas)):
            out[f"{short}_C{z}"] = block.get(key)
    if eval_metrics.get("pairwise"):
        out["win"] = eval_metrics["pairwise"].get("win")
    ref = eval_metrics.get("reference") or {}
    panel = (eval_metrics.get("calibration") or {}).get("panel") or {}
    out |= {"rougeL": ref.get("rougeL"), "em": ref.get("exact_match"), "cost_usd": cost.get("cost_usd"),
            "train_s": (train or {}).get("train_seconds")}
    if panel.get("n"):  # only where people rated: the row stays short for everyone else
        out |= {"rated": panel["n"], "judge_rho": (panel.get("spearman") or {}).get("value")}
    return out
