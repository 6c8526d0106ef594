"""Test tiers: unit tests (default), the end-to-end pipeline (default, minutes), `slow` (make test-all).
Every test runs in its own tmp dir so no state leaks into the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session):
    # A llama.cpp that dies on this CPU would kill pytest itself at the first test that loads a GGUF.
    from tests import llama_probe

    problem = llama_probe.failure()
    if problem:
        pytest.exit(problem, returncode=1)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """cwd = an empty tmp dir holding the project's prompts/ (stages read relative paths)."""
    shutil.copytree(ROOT / "prompts", tmp_path / "prompts")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_project(dest: Path) -> Path:
    """A fresh copy of the tracked files (as a clone would have), as its own git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if rel == "dvc.lock" or (rel.startswith("metrics/") and rel.endswith(".json")):
            continue  # results of a cycle run in this checkout are not part of a clone
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # The converter is fetched by `make setup` into an ignored folder; share it.
    tools = ROOT / "tools"
    if tools.exists():
        shutil.copytree(tools, dest / "tools", symlinks=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    return dest


# pytest is an entry point too: the offline defaults every duo entry point sets (no network, no telemetry)
from duo import entry  # noqa: E402

entry.environment()
