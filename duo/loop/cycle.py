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
import time

import click

from duo import contracts
from duo.loop import delivery, estimate, experiments, gate
from duo import params as params_mod
from duo.data import records

VERDICT = contracts.VERDICT


def run_cycle(t: int) -> None:
    click.echo(estimate.line(t))  # what the cycle's service calls will cost, before the first is paid
    names = experiments.exp_names()
    name, n = f"cycle-{t}", 2
    while name in names:  # a rerun of the same cycle (inputs changed) gets its own row
        name, n = f"cycle-{t}-run{n}", n + 1
    click.echo(f"cycle: running cycle {t} as experiment '{name}'")
    start, started = time.monotonic(), time.time()
    proc = experiments.dvc("exp", "run", "-n", name, "-S", f"cycle={t}", capture=False)
    if proc.returncode != 0:
        from duo import service  # litellm is a slow import: only when a stage failed

        stopped = _stopped_since(started, service.journal.stop_note())
        if stopped:
            raise service.ServiceStop(f"cycle {t} stopped: {stopped} (exit {service.EXIT_STOPPED}; paid replies "
                                      f"are journaled: `make cycle` again after raising the budget replays them)")
        raise click.ClickException(f"cycle {t} failed (dvc exp run exit {proc.returncode}); fix the error "
                                   f"above and run `make cycle` again: finished stages are not redone")
    click.echo(f"cycle: cycle {t} finished in {time.monotonic() - start:.0f} s")


def _stopped_since(start: float, note) -> str | None:
    """A stage's budget or quota stop during this run (its note, service/errors.py), else None."""
    try:
        found = json.loads(note.read_text())
    except (OSError, ValueError):
        return None
    return found.get("message") if found.get("time", 0) >= start else None


def say(verdict: dict) -> None:
    click.echo(f"verdict: {gate.sentence(verdict)}")


def turn() -> str:
    """One turn; returns 'ran', 'passed' or 'stopped'."""
    params = params_mod.load()
    experiments.check_git()
    t = params.cycle
    verdict = records.read_json(VERDICT)
    stale = experiments.stale_stages()
    action, _ = experiments.next_step(t, verdict, stale, params.gate.max_cycles)
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
