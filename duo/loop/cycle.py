"""The `make cycle` driver: one turn of the LlamaDuo loop per call, as one DVC experiment.

- the current cycle has not run (or its inputs changed): run it;
- it ran and the gate passed: say so, deliver the GGUF, do nothing else;
- it ran, the gate failed and cycles remain: bump `cycle` and run the next one;
- it ran and gate.max_cycles is reached: say so and stop;
- it ran, the statistic cleared ε but too few people's ratings back the judge (gate.min_ratings,
  gate.min_agreement): say so and stop until they are given (the new ratings make evaluate stale).

Run: duo cycle | duo converge   (make cycle, make converge)
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import click

from duo import contracts
from duo.loop import delivery, estimate, gate
from duo import params as params_mod
from duo.data import records

VERDICT = contracts.VERDICT


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


def _check_git() -> None:
    if _run(["git", "rev-parse", "--verify", "HEAD"]).returncode != 0:
        raise click.ClickException("duo runs each cycle as a DVC experiment, which needs a git repository "
                                   "with at least one commit (git init && git add -A && git commit -m init)")


def run_cycle(t: int) -> None:
    click.echo(estimate.line(t))  # what the cycle's service calls will cost, before the first is paid
    names = exp_names()
    name, n = f"cycle-{t}", 2
    while name in names:  # a rerun of the same cycle (inputs changed) gets its own row
        name, n = f"cycle-{t}-run{n}", n + 1
    click.echo(f"cycle: running cycle {t} as experiment '{name}'")
    start = time.monotonic()
    proc = dvc("exp", "run", "-n", name, "-S", f"cycle={t}", capture=False)
    if proc.returncode != 0:
        raise click.ClickException(f"cycle {t} failed (dvc exp run exit {proc.returncode}); fix the error "
                                   f"above and run `make cycle` again: finished stages are not redone")
    click.echo(f"cycle: cycle {t} finished in {time.monotonic() - start:.0f} s")


def say(verdict: dict) -> None:
    click.echo(f"verdict: {gate.sentence(verdict)}")


def next_step(t: int, verdict: dict | None, stale: list[str], max_cycles: int) -> tuple[str, str]:
    """What the next `make cycle` does: (run | next | passed | uncalibrated | stopped, in words); `duo status` shows it."""
    if stale or not verdict or verdict.get("cycle") != t:
        return "run", f"run cycle {t}" + (f" (stale: {', '.join(stale)})" if stale else "")
    action, words = gate.after(t, verdict["passed"], max_cycles, verdict.get("uncalibrated"))
    if action == "uncalibrated":
        return action, f"nothing until people back the judge: {words.removeprefix('rate: ')}"
    if action == "passed":
        return action, f"nothing: the gate passed at cycle {t}; (re)deliver the best cycle's GGUF to {contracts.DIST}/"
    return action, f"nothing: {words.removeprefix('stop: ')}" if action == "stopped" else words


def turn() -> str:
    """One turn; returns 'ran', 'passed' or 'stopped'."""
    params = params_mod.load()
    _check_git()
    t = params.cycle
    verdict = records.read_json(VERDICT)
    stale = stale_stages()
    action, _ = next_step(t, verdict, stale, params.gate.max_cycles)
    if action == "run":
        if stale:
            click.echo(f"cycle: cycle {t} has stale stages: {', '.join(stale)}")
        run_cycle(t)
    elif action == "passed":
        say(verdict)
        click.echo(f"cycle: nothing to do; the deliverable is {delivery.deliver(verdict)}")
        return "passed"
    elif action == "uncalibrated":
        say(verdict)
        click.echo("cycle: nothing to do until the judge is calibrated: rate test responses in `duo review` "
                   "(Ratings tab), then run `make cycle` again")
        return "stopped"
    elif action == "stopped":
        say(verdict)
        click.echo(f"cycle: nothing to do; gate.max_cycles={params.gate.max_cycles} reached")
        return "stopped"
    else:
        run_cycle(t + 1)
    verdict = records.read_json(VERDICT)
    say(verdict)
    if verdict["passed"]:
        click.echo(f"cycle: the gate passed; the deliverable is {delivery.deliver(verdict)}")
    return "ran"


def converge() -> None:
    """Turns until the gate passes or gate.max_cycles."""
    while turn() == "ran":
        pass
