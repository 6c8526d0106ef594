"""Hostile inputs not covered by test_records/test_prepare/test_params: a 50 MB record, 100k rows in
bounded memory, a BOM/CRLF file through prepare, prompts longer than the model context."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from duo import contracts
from duo.data import records
from duo.data import splits
from stages import prepare
from tests.conftest import ROOT

FIELDS = contracts.ROW_FIELDS


def row(i: int, task: str = "qa", size: int = 10) -> dict:
    return {"id": f"r{i:06d}", "task": task, "prompt": f"question {i} " + "x" * size, "response": f"answer {i}"}


def project(tmp_path: Path, monkeypatch, coverage: bytes, params: dict | None = None) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "coverage.jsonl").write_bytes(coverage)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or {}))
    return tmp_path


def test_a_50mb_record_is_read_whole_or_refused_by_the_cap_naming_file_and_line(tmp_path, monkeypatch):
    big = row(1, size=50 * 2**20)
    lines = [json.dumps(row(0)), json.dumps(big), json.dumps(row(2)), json.dumps(row(3))]
    project(tmp_path, monkeypatch, ("\n".join(lines) + "\n").encode())
    # The reader itself has no limit unless asked: the record comes back intact.
    got = records.read_records("data/coverage.jsonl", FIELDS)
    assert len(got) == 4 and got[1]["prompt"] == big["prompt"]
    # prepare applies coverage.max_record_bytes (1 MB by default) before anything else runs.
    result = CliRunner().invoke(prepare.main, [])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"data/coverage.jsonl:2: record is {len(lines[1].encode()):,} bytes, over " \
           f"coverage.max_record_bytes = 1,000,000" in result.output
    assert not (tmp_path / "data" / "train.jsonl").exists()


def test_bom_and_crlf_file_goes_through_prepare_unchanged(tmp_path, monkeypatch):
    rows = [row(i, task=t) for i, t in enumerate(["a", "a", "b", "b", "a", "b"])]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    project(tmp_path, monkeypatch, b"\xef\xbb\xbf" + text.encode())
    result = CliRunner().invoke(prepare.main, [])
    assert result.exit_code == 0, result.output
    out = [r for n in ("train", "val", "test") for r in records.read_records(f"data/{n}.jsonl", FIELDS, allow_empty=True)]
    assert sorted(out, key=lambda r: r["id"]) == rows
    assert b"\r" not in Path("data/train.jsonl").read_bytes()
    # Same split as splitting the rows themselves (the streaming path keeps the order).
    train, val, test = splits.split(rows, 0.8, 42, 0.1)
    assert records.read_records("data/test.jsonl", FIELDS) == test
    assert records.read_records("data/val.jsonl", FIELDS, allow_empty=True) == val


def test_prepare_output_is_byte_identical_across_runs(tmp_path, monkeypatch):
    coverage = "".join(json.dumps(row(i, task="abc"[i % 3])) + "\n" for i in range(60)).encode()
    project(tmp_path, monkeypatch, coverage)
    assert CliRunner().invoke(prepare.main, []).exit_code == 0
    first = [Path(f"data/{n}.jsonl").read_bytes() for n in ("train", "val", "test")]
    assert CliRunner().invoke(prepare.main, []).exit_code == 0
    assert [Path(f"data/{n}.jsonl").read_bytes() for n in ("train", "val", "test")] == first


# Peak RSS from /proc (VmHWM): ru_maxrss survives exec on Linux, so a child of a big pytest process
# would report the parent's peak.
MEASURE = """
from click.testing import CliRunner
from stages import prepare
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
before = kb("VmRSS")
result = CliRunner().invoke(prepare.main, [], catch_exceptions=False)
assert result.exit_code == 0, result.output
print(before, kb("VmHWM"))
"""


def test_100k_rows_are_split_in_bounded_memory(tmp_path):
    rows_n, task_n = 100_000, 4
    with open(tmp_path / "coverage.jsonl", "w") as fh:
        for i in range(rows_n):
            fh.write(json.dumps(row(i, task=f"t{i % task_n}", size=400)) + "\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "coverage.jsonl").rename(tmp_path / "data" / "coverage.jsonl")
    (tmp_path / "params.yaml").write_text("{}\n")
    size_kb = (tmp_path / "data" / "coverage.jsonl").stat().st_size / 1024
    proc = subprocess.run([sys.executable, "-c", MEASURE], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = map(int, proc.stdout.split()[-2:])
    growth_kb = after - before
    print(f"100k rows, {size_kb / 1024:.0f} MB file: peak RSS growth {growth_kb / 1024:.0f} MB")
    # Reading the rows as dicts costs ~2.4x the file (113 MB here); the streaming split holds (id, task,
    # offset) per row only (~0.9x for these 480-byte rows, and the same absolute amount for longer ones).
    assert growth_kb < 1.2 * size_kb, (growth_kb, size_kb)
    assert sum(1 for _ in open(tmp_path / "data" / "train.jsonl")) == 72_000  # 80k, a tenth of it validation
    assert sum(1 for _ in open(tmp_path / "data" / "val.jsonl")) == 8_000


def test_finetune_refuses_bad_data_before_loading_any_model(tmp_path, monkeypatch):
    from stages import finetune

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps(row(1)) + "\n" + json.dumps(row(1)) + "\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    result = CliRunner().invoke(finetune.main, [])
    assert result.exit_code == 1 and "data/train.jsonl:2: duplicate id 'r000001'" in result.output
    # There is no models/base here either: the data was checked first, before any model was looked at.
    assert "holds no model" not in result.output


def test_infer_cuts_prompts_longer_than_the_context_and_counts_them():
    from duo import bundled
    from duo.params import Infer
    from duo import inference as infer

    p = Infer(k=2, max_tokens=8, n_ctx=256, temperature=0.0, threads=1)
    backend = infer.LlamaCppBackend(bundled.bundled_gguf("smollm2"), p)
    long_prompt = "Summarize: " + "the quick brown fox jumps over the lazy dog. " * 200 + "END-MARK"
    test = [{"id": "long", "task": "summarization", "prompt": long_prompt, "response": "r"},
            {"id": "short", "task": "qa", "prompt": "What is 2 + 2?", "response": "4"}]
    rows, metrics = infer.run(test, backend, p, cycle=0)
    assert len(rows) == 4 and all(r["tokens"] > 0 for r in rows)
    assert metrics["truncated_prompts"] == 1
    fitted = backend.fit([{"role": "user", "content": long_prompt}])[0]["content"]
    assert fitted.startswith("Summarize:") and fitted.rstrip().endswith("END-MARK") and "[...]" in fitted
    assert len(backend.llm.tokenize(fitted.encode(), add_bos=False)) <= p.n_ctx - p.max_tokens


def test_synthesize_writes_byte_identical_files_when_called_again(in_tmp, monkeypatch):
    """Fixed seeds: a second synthesis from scratch (journal removed, so the provider is asked again)
    sends the same requests and writes the same bytes."""
    import hashlib
    import random

    from stages import synthesize
    from tests.fake_provider import FakeProvider

    def pairs(body):
        rng = random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest())
        text = lambda n: " ".join(f"w{rng.randrange(5000)}" for _ in range(n))  # noqa: E731
        return json.dumps({"contents": [{"instruction": text(12), "response": text(10)} for _ in range(2)]})

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    (in_tmp / "data").mkdir()
    for name, n in (("train", 8), ("test", 2)):
        (in_tmp / "data" / f"{name}.jsonl").write_text(
            "".join(json.dumps(row(i, task="qa", size=20) | {"id": f"{name}{i}"}) + "\n" for i in range(n)))
    outputs = []
    with FakeProvider() as fake:
        fake.default = (200, pairs, {})
        (in_tmp / "params.yaml").write_text(yaml.safe_dump({
            "cycle": 1, "service": {"model": "openai/fake", "api_base": fake.url},
            "synth": {"seeds_per_cycle": 3, "per_cycle": 4, "max_requests": 6}}))
        for _ in range(2):
            shutil.rmtree(in_tmp / ".duo", ignore_errors=True)
            shutil.rmtree(in_tmp / "data" / "synth", ignore_errors=True)
            result = CliRunner().invoke(synthesize.main, [])
            assert result.exit_code == 0, result.output
            outputs.append({p.name: p.read_bytes() for p in sorted((in_tmp / "data" / "synth").iterdir())})
        calls = len(fake.requests)
    assert outputs[0] == outputs[1] and outputs[0]["cycle-1.jsonl"]
    assert calls % 2 == 0 and calls >= 4, "the provider was asked again, not replayed from the journal"
