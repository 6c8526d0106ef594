"""The `duo` command through click's CliRunner: help, `duo status` (real `dvc status` in a fresh copy of the
project), `duo chat` against the bundled 135M GGUF, and bad input as clean one-line errors."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from duo import bundled
from duo.llamacpp import local_llm
from duo.data import records
from duo.loop import experiments
from duo.cli import main
from tests.conftest import copy_project


def invoke(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_help_lists_the_commands():
    result = invoke("-h")
    assert result.exit_code == 0
    commands = ("cycle", "converge", "serve", "report", "bench", "status", "chat", "import", "curate", "measure",
                "record", "review")
    for command in commands:
        assert f"  {command} " in result.output, command
        assert invoke(command, "-h").exit_code == 0, command


def test_importing_duo_changes_nothing_in_the_process():
    """No import-time side effects: environment, excepthook and umask are an entry point's business."""
    import os
    import subprocess
    import sys

    from duo import entry

    script = ("import os, sys; env = dict(os.environ); hook = sys.excepthook; mask = os.umask(0o027); "
              "import duo, duo.data.records, duo.service, duo.cli, duo.params; "
              "assert dict(os.environ) == env and sys.excepthook is hook and os.umask(0o027) == 0o027")
    env = {k: v for k, v in os.environ.items() if k not in entry.OFFLINE}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_next_step_follows_the_cycle_rules():
    failed = {"cycle": 1, "passed": False}
    assert experiments.next_step(1, None, [], 3)[0] == "run"
    assert experiments.next_step(1, failed, ["gate"], 3) == ("run", "run cycle 1 (stale: gate)")
    assert experiments.next_step(2, failed, [], 3)[0] == "run"            # cycle bumped by hand: run it
    assert experiments.next_step(1, failed, [], 3)[0] == "next"
    assert experiments.next_step(2, {"cycle": 2, "passed": False}, [], 3)[0] == "stopped"
    assert experiments.next_step(1, {"cycle": 1, "passed": True}, [], 3)[0] == "passed"


@pytest.fixture
def project(tmp_path, monkeypatch):
    repo = copy_project(tmp_path)
    monkeypatch.chdir(repo)
    return repo


def test_status_in_a_fresh_clone(project):
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert "verdict     none yet: no cycle has finished" in result.output
    assert "next        make cycle: run cycle 0 (stale: " in result.output
    info = json.loads(invoke("status", "--json").output)
    assert info["verdict"] is None and info["experiments"] == [] and info["deliverable"] is None
    assert {"base", "prepare", "finetune", "gate"} <= set(info["stale"])
    assert info["next"]["action"] == "run"


def test_status_reports_metrics_verdict_and_deliverable(project):
    records.write_json("metrics/cycle.json", {"cycle": 0, "score": "precision", "statistic": "mean",
                                              "value": 41.5, "threshold": 70, "passed": False})
    records.write_json("metrics/train.json", {"cycle": 0, "rows": 116, "steps": 60, "train_loss": 1.234,
                                              "train_seconds": 300.0})
    records.write_json("metrics/eval.json", {"cycle": 0, "mode": "single",
                                             "similarity": {"mean": 38.2, "c70": 0.1},
                                             "precision": {"mean": 41.5, "c70": 0.2}, "reference": {"rougeL": 33.3},
                                             "judge": {"judge_errors": 2, "samples": 28},
                                             "calibration": {"ratings": 12, "panel": {
                                                 "n": 12, "spearman": {"value": 0.71, "n": 12, "ci95": [0.3, 0.9]},
                                                 "kappa_c70": {"value": 0.5, "n": 12, "ci95": None}}}})
    records.write_json("dist/deliverable.json", {"cycle": 0, "sha256": "ab" * 32, "file": "student.gguf"})
    out = invoke("status").output
    assert ("calibration panel: 12 rated responses scored, Spearman ρ +0.71 [+0.30, +0.90], κ@70 +0.50 (n 12)"
            in out), out
    assert "verdict     cycle 0: precision mean = 41.5 vs ε = 70 -> not passed" in out
    assert "finetune    cycle 0: 116 rows, 60 steps, loss 1.234, 300.0 s" in out
    assert "precision V=41.5 C@70=0.2, ROUGE-L 33.3, 2/28 judge errors" in out
    assert "deliverable dist/student.gguf (cycle 0, sha256 abababababab)" in out


def test_status_bad_places_are_clean_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("status")
    assert result.exit_code == 1 and "params.yaml: not found (run from the project root)" in result.output
    (tmp_path / "params.yaml").write_text("cycle: 0\ngate:\n  treshold: 5\n")
    result = invoke("status")
    assert result.exit_code == 1 and "treshold" in result.output and "Traceback" not in result.output
    (tmp_path / "params.yaml").write_text("cycle: 0\n")
    result = invoke("status")  # not a DVC project: says so instead of failing
    assert result.exit_code == 0, result.output
    assert "stale       unknown:" in result.output and "(unsure: dvc status failed)" in result.output


@pytest.fixture(scope="module")
def gguf():
    return bundled.bundled_gguf()


@pytest.fixture(scope="module")
def direct_reply(gguf):
    """Replies of llama-cpp-python itself, loaded the way `duo chat` says it loads the model."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, verbose=False, chat_format=local_llm.EMBEDDED)

    def reply(messages, max_tokens):
        out = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0)
        return out["choices"][0]["message"]["content"]

    yield reply
    llm.close()


def test_chat_one_shot_and_conversation(gguf, direct_reply):
    opts = ["--model", gguf, "--max-tokens", 8, "--temperature", 0]
    hello = [{"role": "user", "content": "Hello"}]
    result = invoke("chat", *opts, "Hello")
    assert result.exit_code == 0, result.output
    assert result.output == direct_reply(hello, 8) + "\n"
    # A conversation: the second message carries the first turn; /reset forgets it; /exit ends.
    result = invoke("chat", *opts, input="Hello\nAnd you?\n/reset\nHello\n/exit\nnever sent\n")
    assert result.exit_code == 0, result.output
    first = direct_reply(hello, 8)
    second = direct_reply(hello + [{"role": "assistant", "content": first},
                                         {"role": "user", "content": "And you?"}], 8)
    assert result.output == f"{first}\n{second}\n{first}\n"
    result = invoke("chat", *opts, "--system", "Answer in one word.", "Hello")
    assert result.output == direct_reply([{"role": "system", "content": "Answer in one word."}] + hello,
                                         8) + "\n"


def test_chat_bad_input(tmp_path, monkeypatch, gguf):
    monkeypatch.chdir(tmp_path)
    result = invoke("chat", "hi")
    assert result.exit_code == 1
    assert "models/student.gguf: model file not found (run `make cycle` first)" in result.output
    (tmp_path / "fake.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    result = invoke("chat", "--model", "fake.gguf", "hi")
    assert result.exit_code == 1 and "fake.gguf: llama.cpp cannot load it" in result.output
    assert "Traceback" not in result.output
    assert invoke("chat", "--model", gguf, "  ").exit_code == 1
    assert invoke("chat", "--model", gguf, "--max-tokens", 0, "hi").exit_code == 2
    result = invoke("chat", "--model", gguf, "--n-ctx", 256, "word " * 400)
    assert result.exit_code == 1 and "tokens; the context window (--n-ctx) is 256" in result.output


class _Terminal:
    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def test_progress_bars_only_on_a_terminal_outside_ci(monkeypatch, capsys):
    from duo import progress

    monkeypatch.delenv("CI", raising=False)
    assert not progress.enabled()  # pytest's captured stderr is no terminal
    assert progress.bar(3, "x").disable
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert progress.enabled() and not progress.bar(3, "x").disable
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled()
    progress.summary("stage", "did things")
    assert re.fullmatch(r"stage: did things, \d+ s\n", capsys.readouterr().out)
