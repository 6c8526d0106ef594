"""Crash-safe finetuning: a run killed mid-training resumes from its newest *complete* checkpoint and
ends where an uninterrupted run ends (same losses, same adapter bytes on CPU); damaged or unfinished
checkpoints are skipped with a warning. Real TRL/PEFT training of a tiny random-init Llama."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from duo.train import checkpoints
from tests import tiny_model
from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

TINY = {"max_steps": 6, "batch_size": 2, "max_length": 64, "save_steps": 2, "threads": 1, "epochs": 1.0,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}}

# Run stages.finetune, SIGKILLing itself inside the Trainer's save of step KILL_AT, after the RNG
# state of that checkpoint was written and before it was sealed: the worst moment for a crash.
KILLER = """
import os, signal, sys
from transformers import Trainer
original = Trainer._save_rng_state
def save_rng_state(self, output_dir):
    original(self, output_dir)
    if self.state.global_step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
Trainer._save_rng_state = save_rng_state
from stages.finetune import main
main()
"""


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return tiny_model.build(tmp_path_factory.mktemp("tiny") / "base")


def make_project(root: Path, base: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["finetune"].update(TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(base, root / "models" / "base")
    rows = [{"id": f"r{i}", "task": "qa", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}
            for i in range(11)]
    # One row longer than finetune.max_length: truncated, and counted.
    rows.append({"id": "long", "task": "qa", "prompt": "Repeat: " + "alpha beta " * 60, "response": "No."})
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run_inline(root: Path, monkeypatch) -> str:
    from stages import finetune

    monkeypatch.chdir(root)
    result = CliRunner().invoke(finetune.main, [])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def outcome(root: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    metrics = json.loads((root / "metrics" / "train.json").read_text())
    return metrics, load_file(root / "models" / "adapter" / "adapter_model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def straight(tiny_base, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        root = make_project(tmp_path_factory.mktemp("straight"), tiny_base)
        out = run_inline(root, mp)
    finally:
        mp.undo()
    assert "resuming" not in out
    assert not list((root / ".duo" / "checkpoints").iterdir()), "checkpoints removed after success"
    return outcome(root)


def test_two_uninterrupted_runs_are_identical(straight, tiny_base, tmp_path, monkeypatch):
    metrics, adapter = outcome_of_new_run(tmp_path, tiny_base, monkeypatch)
    assert metrics["loss_curve"] == straight[0]["loss_curve"] and metrics["train_loss"] == straight[0]["train_loss"]
    assert max_diff(adapter, straight[1]) == 0.0, "bit-identical on CPU with fixed seeds and one thread"
    assert metrics["truncated_rows"] == 1


def outcome_of_new_run(root, base, monkeypatch):
    make_project(root, base)
    run_inline(root, monkeypatch)
    return outcome(root)


def test_killed_run_resumes_from_newest_complete_checkpoint(straight, tiny_base, tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", tiny_base)
    env = {**os.environ, "KILL_AT": "6", "CI": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLER], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert not (root / "models" / "adapter").exists() and not (root / "metrics" / "train.json").exists()
    [run] = list((root / ".duo" / "checkpoints").iterdir())
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert all(checkpoints.verify(p) is None for p in run.glob("checkpoint-*"))
    assert [p.name for p in run.glob(".staging-*/checkpoint-6")], "the save of step 6 was cut off mid-way"
    intact = tmp_path / "intact"
    shutil.copytree(run, intact)

    # 1. The newest checkpoint's adapter is truncated, and a newer folder has no marker: both are
    #    skipped with a warning; the run resumes from step 2 and still ends where the straight run ended.
    adapter = run / "checkpoint-4" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    shutil.copytree(run / "checkpoint-2", run / "checkpoint-5")
    (run / "checkpoint-5" / checkpoints.MARKER).unlink()
    out = run_inline(root, monkeypatch)
    assert "skipping" in out and "checkpoint-5: no COMPLETE marker" in out
    assert "checkpoint-4: adapter_model.safetensors is" in out and "(truncated?)" in out
    assert f"resuming from {run / 'checkpoint-2'}".replace(str(root) + "/", "") in out
    metrics, weights = outcome(root)
    assert metrics["loss_curve"] == straight[0]["loss_curve"] and metrics["final_loss"] == straight[0]["final_loss"]
    assert abs(metrics["train_loss"] - straight[0]["train_loss"]) <= 2e-4  # mean of the 4-digit logged losses
    diff_from_2 = max_diff(weights, straight[1])
    assert diff_from_2 <= 1e-6, diff_from_2
    assert not run.exists(), "checkpoints removed after the adapter was published"

    # 2. With checkpoint 4 intact, the rerun resumes from it (the leftover staging folder is removed).
    shutil.rmtree(root / "models" / "adapter")
    (root / "metrics" / "train.json").unlink()
    shutil.copytree(intact, run)
    out = run_inline(root, monkeypatch)
    assert "resuming from" in out and "checkpoint-4 (step 4)" in out and "skipping" not in out
    metrics, weights = outcome(root)
    assert metrics["loss_curve"] == straight[0]["loss_curve"] and metrics["final_loss"] == straight[0]["final_loss"]
    diff_from_4 = max_diff(weights, straight[1])
    assert diff_from_4 <= 1e-6, diff_from_4
    print(f"resume max abs adapter diff: from step 2 {diff_from_2}, from step 4 {diff_from_4}")


def test_run_key_changes_with_what_decides_the_run(tiny_base):
    rows = [{"id": "a", "prompt": "p", "response": "r", "task": "t"}]
    p = {"lr": 1e-4, "save_steps": 2, "threads": 0, "lora": {"r": 4}}
    key = checkpoints.run_key(rows, p, tiny_base)
    assert key == checkpoints.run_key([dict(rows[0])], dict(p), tiny_base)
    assert key == checkpoints.run_key(rows, p | {"save_steps": 50, "threads": 2}, tiny_base), "how often, not what"
    assert key != checkpoints.run_key(rows, p | {"lr": 2e-4}, tiny_base)
    assert key != checkpoints.run_key(rows, p | {"lora": {"r": 8}}, tiny_base)
    assert key != checkpoints.run_key([rows[0] | {"response": "R"}], p, tiny_base)
    assert key != checkpoints.run_key(rows + rows, p, tiny_base)


def test_verify_names_what_is_wrong(tmp_path):
    ck = tmp_path / "checkpoint-3"
    ck.mkdir()
    (ck / "optimizer.pt").write_bytes(b"x" * 100)
    assert "no COMPLETE marker" in checkpoints.verify(ck)
    checkpoints.seal(ck, 3)
    assert checkpoints.verify(ck) is None
    (ck / "optimizer.pt").write_bytes(b"y" * 100)
    assert "checksum" in checkpoints.verify(ck)
    (ck / "optimizer.pt").unlink()
    assert "optimizer.pt is missing" in checkpoints.verify(ck)
    (ck / checkpoints.MARKER).write_text("{trunc")
    assert "unreadable" in checkpoints.verify(ck)
