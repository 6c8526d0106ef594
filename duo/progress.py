"""Progress bars on a terminal, one summary line per stage everywhere.

Progress bars and stage summaries, one rule everywhere: a bar (with rate and ETA) only when stderr is
a terminal and `CI` is unset; logs, CI and pipes get one summary line per stage and nothing else."""
from __future__ import annotations

import os
import sys
import time

import click

_START = time.monotonic()  # stages import this module first thing: about when the stage started


def enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs):
    """A tqdm bar on stderr, disabled (every call a no-op) under CI or when stderr is not a TTY."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), **kwargs)


class Steps:
    """A bar over a stage's named steps (merge, convert, ...): the step now running shows beside it.

        with progress.Steps("export", ["merge", "convert"]) as step:
            step("merge"); ...; step("convert"); ...
    """

    def __init__(self, desc: str, names: list[str]):
        self.names, self._bar, self._started = names, bar(len(names), desc, unit="step"), False

    def __call__(self, name: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self._bar.update(self._bar.total - self._bar.n)  # steps skipped (no quantize for f16) count as done
        self._bar.close()


def seconds() -> float:
    return time.monotonic() - _START


def summary(stage: str, text: str) -> None:
    """The stage's one line: `stage: what it did, N s` (wall time since the stage started)."""
    click.echo(f"{stage}: {text}, {seconds():.0f} s")
