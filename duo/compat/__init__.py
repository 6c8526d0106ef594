"""Every use of another library's internals, each with a check.

Every place duo relies on another library's internals rather than its documented API, listed here.

Each entry names the internal, what duo uses it for and where, and a check that it is still there and
still behaves as relied on; tests/test_compat.py runs every check, so a pinned upgrade that moves one
fails loudly there instead of quietly in a stage. Code reaches these internals only through the
accessors of this package, one module per concern (training.py: TRL, transformers, PEFT; llama.py:
llama-cpp-python; service.py: litellm), so a stage depends only on the ones it uses.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

MODULES = ("training", "llama", "service")


@dataclass(frozen=True)
class Internal:
    name: str      # library.module.attribute
    used_for: str
    where: str
    check: Callable[[], None]  # raises AssertionError/AttributeError/ImportError when it no longer holds


INTERNALS: list[Internal] = []


def register(name: str, used_for: str, where: str):
    def wrap(check):
        INTERNALS.append(Internal(name, used_for, where, check))
        return check
    return wrap


def every_internal() -> list[Internal]:
    """All entries (importing each module registers its own)."""
    for name in MODULES:
        importlib.import_module(f"duo.compat.{name}")
    return list(INTERNALS)
