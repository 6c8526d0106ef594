"""`make serve`: the student GGUF behind llama.cpp's OpenAI-compatible server, so an application moves
from the service LLM to the student by changing only its base URL (and model name).

Serves models/student.gguf (the latest exported model: the one `duo status` reports on; once the gate
passes, `make cycle` copies that same file to dist/). Prompts are rendered with the chat template embedded
in the GGUF, which the export stage checked is the training template.

Run: python -m duo.serve [--model PATH] [--host H] [--port P]   (env: SERVE_MODEL, SERVE_HOST, SERVE_PORT)
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from duo import local_llm, records

DEFAULT_MODEL = Path("models/student.gguf")
DELIVERABLE = Path("dist/deliverable.json")


def check_gguf(path: Path) -> None:
    if not path.is_file():
        hint = "run `make cycle` first" if path == DEFAULT_MODEL else "check the path"
        raise click.ClickException(f"{path}: model file not found ({hint})")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise click.ClickException(f"{path}: not a GGUF file")


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}); pick another "
                                       f"with SERVE_PORT=... or --port") from None


def provenance(path: Path) -> str:
    """Whether the served file is the delivered one (gate passed), from dist/deliverable.json's sha256."""
    deliverable = records.read_json(DELIVERABLE)
    if not deliverable:
        return "no deliverable yet: the gate has not passed (see `duo status`)"
    if records.file_sha256(path) == deliverable.get("sha256"):
        return f"the deliverable of cycle {deliverable.get('cycle')} (gate passed)"
    return f"not the deliverable ({DELIVERABLE} holds cycle {deliverable.get('cycle')}'s model)"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", default=str(DEFAULT_MODEL), show_default=True, envvar="SERVE_MODEL",
              type=click.Path(path_type=Path), help="GGUF to serve (env SERVE_MODEL).")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="SERVE_HOST",
              help="Interface to listen on (env SERVE_HOST); 0.0.0.0 exposes it to the network.")
@click.option("--port", default=8000, show_default=True, envvar="SERVE_PORT", type=click.IntRange(1, 65535),
              help="Port (env SERVE_PORT).")
@click.option("--alias", default="student", show_default=True, help="Model name clients ask for.")
@click.option("--n-ctx", default=4096, show_default=True, type=click.IntRange(min=64), help="Context window.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="0 = all cores.")
def main(model_path: Path, host: str, port: int, alias: str, n_ctx: int, threads: int) -> None:
    """Serve the student GGUF with llama.cpp's OpenAI-compatible server (Ctrl-C stops it)."""
    check_gguf(model_path)
    check_port(host, port)
    cmd = local_llm.server_command(model_path, host=host, port=port, n_ctx=n_ctx, threads=threads,
                                   chat_format=local_llm.EMBEDDED, alias=alias)
    click.echo(f"serve: {model_path} ({provenance(model_path)})")
    click.echo(f"serve: http://{host}:{port}/v1  model '{alias}'  (OpenAI API; Ctrl-C stops)")
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process: signals (Ctrl-C, a test's terminate) reach the server itself.
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
