"""prompts/*.txt rendered with string.Template; a missing variable is an error.

Render prompts/*.txt with string.Template; a missing variable is an error, never blank text."""
from __future__ import annotations

import functools
import string
from pathlib import Path

import click

PROMPTS_DIR = Path("prompts")


def load(name: str, root: Path | None = None) -> string.Template:
    path = (root or PROMPTS_DIR) / name
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise click.ClickException(f"{path}: prompt file not found") from None
    return _read(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _read(path: Path, mtime_ns: int, size: int) -> string.Template:
    # a stage renders the same file for every request (100k teacher calls): read it once per version
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
