"""The loop's cycles as DVC experiments: which stages are stale, which experiments exist, and what the
next `make cycle` does (duo/loop/cycle.py runs it; `duo status` and `duo estimate` only read it)."""
from __future__ import annotations

import json
import subprocess
import sys

import click

from duo import contracts
from duo.loop import gate


def _run(args: list[str], capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=capture, text=True)


def dvc(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], capture)


def stale_stages() -> list[str]:
    proc = dvc("status", "--json")
    if proc.returncode != 0:
        raise click.ClickException(f"dvc status failed:\n{proc.stderr.strip()[-2000:]}")
    text = proc.stdout.strip()
    status = json.loads(text[text.find("{"):]) if "{" in text else {}
    return sorted(status)


def exp_names() -> set[str]:
    proc = dvc("exp", "ls", "--name-only")
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()} if proc.returncode == 0 else set()


def check_git() -> None:
    if _run(["git", "rev-parse", "--verify", "HEAD"]).returncode != 0:
        raise click.ClickException("duo runs each cycle as a DVC experiment, which needs a git repository "
                                   "with at least one commit (git init && git add -A && git commit -m init)")


def next_step(t: int, verdict: dict | None, stale: list[str], max_cycles: int) -> tuple[str, str]:
    """What the next `make cycle` does (run, next, passed, uncalibrated or stopped, and in words)."""
    if stale or not verdict or verdict.get("cycle") != t:
        return "run", f"run cycle {t}" + (f" (stale: {', '.join(stale)})" if stale else "")
    action, words = gate.after(t, verdict["passed"], max_cycles, verdict.get("uncalibrated"))
    if action == "uncalibrated":
        return action, f"nothing until people back the judge: {words.removeprefix('rate: ')}"
    if action == "passed":
        return action, f"nothing: the gate passed at cycle {t}; (re)deliver the best cycle's GGUF to {contracts.DIST}/"
    return action, f"nothing: {words.removeprefix('stop: ')}" if action == "stopped" else words
