"""finetune.processes: 2 data-parallel processes (accelerate launch, gloo on CPU) train the tiny model to
the loss curve of 1 process: the global batch stays batch_size, each process takes half of every step.
Checkpoints are sealed once per step by the main process, validation runs, one adapter is published."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests import tiny_model
from tests.conftest import ROOT
from tests.test_resume import TINY, make_project

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

# Per-step losses agree to float32 reduction order (a batch of 4 rows vs two of 2 summed over gloo)
RTOL = 1e-3


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return tiny_model.build(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def bundled_base(tmp_path_factory):
    """The default student (the bundled SmolLM2 GGUF made trainable by the base stage), in the dtype
    this CPU trains in (bf16 where it has bf16 instructions)."""
    root = tmp_path_factory.mktemp("bundled")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "stages.base"], cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "models" / "base"


def run(root, processes: int, dropout: float = 0.0, batches: str = "random") -> tuple[subprocess.CompletedProcess, dict]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    # dropout off: what each step sees must not depend on the process count (both samplers draw each
    # step's rows from one seeded order and only split them across processes)
    params["finetune"].update(TINY | {"processes": processes, "batch_size": 4, "max_steps": 4, "save_steps": 2,
                                      "batches": batches, "early_stopping_patience": 0})
    params["finetune"]["lora"]["dropout"] = dropout
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    val = [{"id": f"v{i}", "task": "qa", "prompt": f"What is {i} times two?", "response": f"{2 * i}."} for i in range(4)]
    (root / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "stages.finetune"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, json.loads((root / "metrics" / "train.json").read_text())


@pytest.mark.parametrize("batches", ["random", "rebalanced"])
def test_two_processes_train_the_curve_of_one(tiny_base, tmp_path, batches):
    _, one = run(make_project(tmp_path / "one", tiny_base), 1, batches=batches)
    proc, two = run(make_project(tmp_path / "two", tiny_base), 2, batches=batches)

    assert one["processes"] == 1 and two["processes"] == 2 and two["steps"] == one["steps"] == 4
    assert "2 processes under accelerate launch (DDP, CPU (gloo))" in proc.stdout
    assert proc.stdout.count("finetune: 12 rows, LoRA") == 1, "one voice: only the main process logs"
    assert [e["step"] for e in two["loss_curve"]] == [e["step"] for e in one["loss_curve"]]
    for a, b in zip(one["loss_curve"], two["loss_curve"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=RTOL), (one["loss_curve"], two["loss_curve"])
    for a, b in zip(one["validation_curve"], two["validation_curve"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=RTOL), (one["validation_curve"], two["validation_curve"])
    adapter = tmp_path / "two" / "models" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "duo_params.json").read_text())["processes"] == 2
    assert not (tmp_path / "two" / ".duo" / "checkpoints").exists() or not any(
        (tmp_path / "two" / ".duo" / "checkpoints").iterdir()), "checkpoints cleaned after publishing"


def test_the_default_student_trains_in_two_processes(bundled_base, tmp_path):
    """The real default model with its default LoRA dropout (duo's mask dropout): whatever its parameters
    and buffers hold, DDP's first broadcast carries them (an int16 buffer stopped gloo: "Invalid scalar
    type"). Without dropout, 2 processes train the model of 1: under bf16 autocast (on a CPU with bf16)
    the validation losses agree to 2% and the adapters to 5% of their largest weight (measured on an AMD
    EPYC: 0.7% and 2.4%); the logged training loss of a step is the mean of each process's token mean,
    4% off the single-process token mean on the step whose halves differ most in length."""
    from safetensors.torch import load_file

    _, dropped = run(make_project(tmp_path / "dropout", bundled_base), 2, dropout=0.05)
    assert dropped["processes"] == 2 and dropped["steps"] == 4
    assert all(math.isfinite(e["loss"]) for e in dropped["loss_curve"])
    _, one = run(make_project(tmp_path / "one", bundled_base), 1)
    _, two = run(make_project(tmp_path / "two", bundled_base), 2)
    bf16 = two.get("precision") == "bf16"
    for a, b in zip(one["validation_curve"], two["validation_curve"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2 if bf16 else RTOL)
    for a, b in zip(one["loss_curve"], two["loss_curve"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-2 if bf16 else RTOL)
    w1, w2 = (load_file(tmp_path / n / "models" / "adapter" / "adapter_model.safetensors") for n in ("one", "two"))
    largest = max(w.abs().max().item() for w in w1.values())
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= (0.05 if bf16 else 1e-3) * largest


def test_batch_that_processes_cannot_share_is_refused(tmp_path):
    from duo import params as params_mod

    path = tmp_path / "params.yaml"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["finetune"].update({"processes": 3, "batch_size": 8})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(params_mod.ParamsError, match=r"finetune.*multiple of processes \(3\)"):
        params_mod.load(path)
