"""dvc.yaml declares exactly what each stage reads: editing one prompt file, one params key or one
stage module makes real `dvc status` flag exactly the stages that read it. The lock comes from
`dvc commit` over placeholder outputs, so no model runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

def _outs() -> list[str]:
    """Every output dvc.yaml declares, as a placeholder file (a folder output gets one file inside)."""
    stages = yaml.safe_load((Path(__file__).resolve().parent.parent / "dvc.yaml").read_text())["stages"]
    paths = [next(iter(out)) if isinstance(out, dict) else out
             for stage in stages.values() for kind in ("outs", "metrics", "plots") for out in stage.get(kind, [])]
    return [path if Path(path).suffix else f"{path}/placeholder" for path in paths]


OUTS = _outs()

EDITS = [  # (what is edited, stages that must be flagged)
    ("prompts/judge.txt", {"evaluate"}),
    ("prompts/judge_pairwise.txt", {"evaluate"}),
    ("prompts/synth.txt", {"synthesize"}),
    ("prompts/synth_summarization.txt", {"synthesize"}),
    ("data/coverage.jsonl", {"prepare"}),
    ("data/ratings.jsonl", {"evaluate"}),  # new ratings: the calibration block, then the gate, again
    ("duo/evaluation/calibration.py", {"evaluate"}),
    ("stages/infer.py", {"infer"}),
    ("duo/export/gguf.py", {"export"}),
    ("duo/export/checks.py", {"export"}),
    ("duo/train/checkpoints.py", {"finetune"}),
    ("duo/train/frozen_layers.py", {"finetune"}),
    ("duo/synth/curate.py", {"synthesize", "finetune"}),  # finetune checks earlier synthetic rows again
    ("duo/data/text.py", {"prepare", "synthesize", "finetune"}),
    ("duo/service/journal.py", {"synthesize", "evaluate"}),
    ("duo/service/budget.py", {"synthesize", "evaluate"}),
    ("duo/replies.py", {"synthesize", "evaluate"}),
    ("duo/evaluation/scores.py", {"evaluate"}),
    ("duo/progress.py", {"base", "prepare", "synthesize", "finetune", "export", "validate", "infer", "evaluate", "plots",
                          "gate"}),
    ("stages/plots.py", {"plots"}),
    ("params:student.source", {"base"}),
    ("params:coverage.seed", {"prepare"}),
    ("params:finetune.validation_ratio", {"prepare", "finetune"}),
    ("params:curate.shingle", {"synthesize"}),
    ("params:curate.decontam_ngram", {"synthesize", "finetune"}),
    ("params:synth.temperature", {"synthesize"}),
    ("params:synth.model", {"synthesize", "evaluate"}),  # the teacher also answers for P-Match
    ("params:service.timeout_s", {"synthesize", "evaluate"}),
    ("params:finetune.lr", {"finetune"}),
    ("params:finetune.lora.r", {"finetune"}),
    ("params:export.quant", {"export"}),
    ("params:infer.k", {"infer"}),
    ("params:infer.max_tokens", {"validate", "infer", "evaluate"}),
    ("params:judge.m", {"evaluate"}),
    ("params:judge.zetas", {"evaluate", "gate"}),
    ("params:gate.threshold", {"gate"}),
    ("params:gate.min_ratings", {"gate"}),
    ("params:cycle", {"synthesize", "finetune", "export", "validate", "infer", "evaluate", "gate"}),
]


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def stale(repo: Path) -> set[str]:
    out = dvc(repo, "status", "--json")
    return set(json.loads(out[out.find("{"):])) if "{" in out else set()


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    repo = copy_project(tmp_path_factory.mktemp("inval"))
    for rel in OUTS:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(f"placeholder {rel}\n")
    dvc(repo, "commit", "--force")
    assert (repo / "dvc.lock").exists() and stale(repo) == set()
    return repo


def _edit_param(path: Path, dotted: str) -> None:
    data = yaml.safe_load(path.read_text())
    *parents, key = dotted.split(".")
    node = data
    for name in parents:
        node = node[name]
    value = node[key]
    if isinstance(value, list):
        node[key] = value + [90]
    else:
        node[key] = ({None: "openai/other", "q8_0": "q4_k_m", "bundled:smollm2": "/elsewhere"}.get(value, value)
                     if not isinstance(value, (int, float)) or isinstance(value, bool) else value + 1)
    assert node[key] != value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("target, expected", EDITS, ids=[e[0] for e in EDITS])
def test_one_edit_flags_exactly_its_stages(locked, target, expected):
    if target.startswith("params:"):
        path = locked / "params.yaml"
    else:
        path = locked / target
    before = path.read_bytes()
    try:
        if target.startswith("params:"):
            _edit_param(path, target.split(":", 1)[1])
        else:
            path.write_bytes(before + b"\n" if target.endswith(".py") else before.rstrip(b"\n") + b" edited\n")
        assert stale(locked) == expected
    finally:
        path.write_bytes(before)


def test_restoring_the_bytes_makes_everything_current_again(locked):
    assert stale(locked) == set()
