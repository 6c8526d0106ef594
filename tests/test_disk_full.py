"""Disk full mid-write: the previous version of every output survives, no temp file is left, and the
stage says so in one line. Two injections: a real full filesystem (a 512 KB tmpfs, when this runs as
root with mount rights) and RLIMIT_FSIZE (the kernel fails writes past N bytes with EFBIG; works
unprivileged, so it runs everywhere and reaches writers in C/Rust: safetensors, torch.save)."""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from duo.data import records
from tests import tiny_model
from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all


def rows(n: int, size: int) -> str:
    tasks = ["a", "b"]
    return "".join(json.dumps({"id": f"r{i}", "task": tasks[i % 2], "prompt": f"{i:05d}" + "p" * size, "response": "r"}) + "\n"
                   for i in range(n))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or ".old." in p.name
                  or p.name.startswith((".base.", ".finetune.", ".export.")))


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root / no CAP_SYS_ADMIN); the RLIMIT_FSIZE tests still run")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_jsonl_and_json_writers_keep_the_previous_file_on_a_full_disk(tmpfs):
    path = tmpfs / "data.jsonl"
    records.write_jsonl(path, [{"v": 1}])
    records.write_json(tmpfs / "m.json", {"v": 1})
    with pytest.raises(OSError) as err:
        records.write_jsonl(path, ({"v": "x" * 1000, "i": i} for i in range(2000)))
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        records.write_json(tmpfs / "m.json", {"v": "x" * 2_000_000})
    assert path.read_text() == '{"v": 1}\n' and json.loads((tmpfs / "m.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmpfs.iterdir()) == ["data.jsonl", "m.json"], "temp files removed"


def run_stage(cwd: Path, module: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", module], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=limit if fsize else None)


def test_prepare_on_a_full_disk_keeps_the_old_split_and_says_so(tmpfs):
    (tmpfs / "data").mkdir()
    (tmpfs / "params.yaml").write_text("{}\n")
    (tmpfs / "data" / "coverage.jsonl").write_text(rows(10, 100))
    assert run_stage(tmpfs, "stages.prepare").returncode == 0
    before = {n: (tmpfs / "data" / n).read_bytes() for n in ("train.jsonl", "test.jsonl")}
    (tmpfs / "data" / "coverage.jsonl").write_text(rows(300, 1000))  # fits; its split does not
    proc = run_stage(tmpfs, "stages.prepare")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Error: disk full (No space left on device while writing" in proc.stderr
    assert "previous versions are intact" in proc.stderr
    assert {n: (tmpfs / "data" / n).read_bytes() for n in before} == before
    assert not leftovers(tmpfs)


def test_prepare_past_the_file_size_limit_keeps_the_old_split(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "data" / "coverage.jsonl").write_text(rows(10, 100))
    assert run_stage(tmp_path, "stages.prepare").returncode == 0
    before = {n: (tmp_path / "data" / n).read_bytes() for n in ("train.jsonl", "test.jsonl")}
    (tmp_path / "data" / "coverage.jsonl").write_text(rows(400, 1000))
    proc = run_stage(tmp_path, "stages.prepare", fsize=200_000)
    assert proc.returncode == 1 and "Error: disk full (File too large while writing" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {n: (tmp_path / "data" / n).read_bytes() for n in before} == before
    assert not leftovers(tmp_path)


SAVE_MODEL = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from duo import entry
from duo import models as base
src = Path(sys.argv[1])
model, tok = AutoModelForCausalLM.from_pretrained(src), AutoTokenizer.from_pretrained(src)
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))  # the weights are ~13 MB
# the one-line disk-full message, as every stage's entry point sets it up
entry.run(lambda: base.save_base(model, tok, {"source": "new"}, Path("models/base")))
"""


def test_model_folder_written_past_the_limit_keeps_the_previous_model(tmp_path):
    """stages.base and stages.finetune publish their folders the same way (records.replace_dir)."""
    src = tiny_model.build(tmp_path / "src")
    old = tmp_path / "models" / "base"
    old.mkdir(parents=True)
    (old / "provenance.json").write_text('{"source": "old"}\n')
    (old / "model.safetensors").write_bytes(b"old weights")
    proc = subprocess.run([sys.executable, "-c", SAVE_MODEL, str(src)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Error: disk full (SafetensorError" in proc.stderr and "previous versions are intact" in proc.stderr
    assert (old / "model.safetensors").read_bytes() == b"old weights"
    assert json.loads((old / "provenance.json").read_text()) == {"source": "old"}
    assert sorted(p.name for p in old.iterdir()) == ["model.safetensors", "provenance.json"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["base"], "no temp folder left"


def test_replace_dir_swaps_in_the_new_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "b").write_text("new")
    records.replace_dir(tmp_path / "new", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_copy_file_is_atomic(tmp_path):
    (tmp_path / "src").write_bytes(b"x" * 100_000)
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "f").write_bytes(b"old")
    records.copy_file(tmp_path / "src", tmp_path / "dist" / "f")
    assert (tmp_path / "dist" / "f").read_bytes() == b"x" * 100_000
    assert [p.name for p in (tmp_path / "dist").iterdir()] == ["f"]


def test_journal_line_torn_by_a_crash_does_not_swallow_the_next_record(in_tmp):
    from duo import service

    j = service.Journal("t")
    j.add("k1", service.Reply(text="one"))
    j.close()
    with open(j.path, "a") as fh:
        fh.write('{"key": "k2", "text": "tw')  # the process died (or the disk filled) mid-line
    j = service.Journal("t")
    assert j.keys() == {"k1"}
    j.add("k3", service.Reply(text="three"))
    j.close()
    assert service.Journal("t").keys() == {"k1", "k3"}


EXPORT_UNDER_LIMIT = """
import os, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(os.environ["FSIZE_LIMIT"])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # inherited by llama.cpp's converter
from duo import entry
from stages.export import main
entry.run(main)
"""


def test_gguf_written_past_the_limit_keeps_the_previous_gguf(tmp_path):
    """export.quant f32: the merged safetensors fit under the limit, the GGUF (same weights plus the
    tokenizer) does not, so the failure hits llama.cpp's converter mid-write."""
    import shutil as sh

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model.build(tmp_path / "models" / "base")
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    adapter = tmp_path / "models" / "adapter"
    peft.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    sh.copy(base / "chat_template.jinja", adapter / "chat_template.jinja")
    (tmp_path / "params.yaml").write_text("export:\n  quant: f32\n  ppl_tokens: 0\n")  # no test split here
    old = tmp_path / "models" / "student.gguf"
    old.write_bytes(b"GGUF previous cycle")
    limit = (base / "model.safetensors").stat().st_size + 200_000
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FSIZE_LIMIT": str(limit)}
    proc = subprocess.run([sys.executable, "-c", EXPORT_UNDER_LIMIT], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "GGUF conversion" in proc.stderr and "disk full, the GGUF was not completed" in proc.stderr, \
        proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("GGUF conversion")[0]
    assert old.read_bytes() == b"GGUF previous cycle"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["adapter", "base", "student.gguf"]
