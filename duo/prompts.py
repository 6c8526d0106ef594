"""Render prompts/*.txt with string.Template; a missing variable is an error, never blank text."""
from __future__ import annotations

import string
from pathlib import Path

import click

PROMPTS_DIR = Path("prompts")


def load(name: str, root: Path | None = None) -> string.Template:
    path = (root or PROMPTS_DIR) / name
    if not path.exists():
        raise click.ClickException(f"{path}: prompt file not found")
    return string.Template(path.read_text(encoding="utf-8"))


def placeholders(template: string.Template) -> set[str]:
    return {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)
            if m.group("named") or m.group("braced")}


def render(name: str, root: Path | None = None, **values: str) -> str:
    template = load(name, root)
    missing = placeholders(template) - values.keys()
    if missing:
        raise click.ClickException(f"prompts/{name}: no value for ${', $'.join(sorted(missing))}")
    # substitute() never re-scans substituted text, so `$` inside user data stays literal.
    return template.substitute(values)
