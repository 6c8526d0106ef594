"""`make serve`: the student GGUF behind llama.cpp's own OpenAI-compatible server (llama-server: parallel
slots with continuous batching, /health, /metrics, an optional API key), so an application moves from
the service LLM to the student by changing only its base URL (and model name).

Serves, unless told otherwise, the deliverable (dist/student.gguf, once the gate has passed), else the
best cycle's GGUF on validation so far (duo/loop/delivery.py), else models/student.gguf. Prompts are rendered
with the chat template embedded in the GGUF, which the export stage checked is the training template.

Run: duo serve [--model PATH] [--host H] [--port P] [--parallel N]   (or: make serve)
     (env: SERVE_MODEL, SERVE_HOST, SERVE_PORT, SERVE_PARALLEL, SERVE_API_KEY)
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from duo.data import records
from duo.loop import delivery

DELIVERABLE = delivery.DELIVERABLE


def check_gguf(path: Path) -> None:
    if not path.is_file():
        hint = "run `make cycle` first" if path == delivery.default_model()[0] else "check the path"
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


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", default=None, envvar="SERVE_MODEL", type=click.Path(path_type=Path),
              help="GGUF to serve (env SERVE_MODEL); default: the deliverable, else the best cycle's on validation.")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="SERVE_HOST",
              help="Interface to listen on (env SERVE_HOST); 0.0.0.0 exposes it to the network.")
@click.option("--port", default=8000, show_default=True, envvar="SERVE_PORT", type=click.IntRange(1, 65535),
              help="Port (env SERVE_PORT).")
@click.option("--parallel", default=4, show_default=True, envvar="SERVE_PARALLEL", type=click.IntRange(1, 256),
              help="Requests decoded together, continuous batching (env SERVE_PARALLEL).")
@click.option("--alias", default="student", show_default=True, help="Model name clients ask for.")
@click.option("--n-ctx", default=4096, show_default=True, type=click.IntRange(min=64), help="Context per request.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="0 = all cores.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback host without SERVE_API_KEY.")
def main(model_path: Path | None, host: str, port: int, parallel: int, alias: str, n_ctx: int, threads: int,
         insecure: bool) -> None:
    """Serve the student GGUF with llama.cpp's OpenAI-compatible server (Ctrl-C stops it).

    SERVE_API_KEY (environment only) makes every request need `Authorization: Bearer <key>`."""
    from duo.llamacpp import llama_server

    key = os.environ.get("SERVE_API_KEY") or None
    if host not in LOOPBACK and not key and not insecure:
        raise click.ClickException(f"refusing to serve on {host} without a key: anyone on the network could use "
                                   f"it; set SERVE_API_KEY (clients send it as a Bearer token) or pass --insecure")
    chosen = None
    if model_path is None:
        model_path, chosen = delivery.default_model()
    check_gguf(model_path)
    check_port(host, port)
    cmd = llama_server.command(model_path, host=host, port=port, n_ctx=n_ctx, parallel=parallel, threads=threads,
                               alias=alias, metrics=True)
    click.echo(f"serve: {model_path} ({chosen or provenance(model_path)})")
    click.echo(f"serve: http://{host}:{port}/v1  model '{alias}', {parallel} parallel requests, "
               f"{'API key required' if key else 'no API key'}  (OpenAI API, /health, /metrics; Ctrl-C stops)")
    sys.stdout.flush()
    sys.stderr.flush()
    env = {k: v for k, v in os.environ.items() if k != "SERVE_API_KEY"}
    if key:
        env["LLAMA_API_KEY"] = key  # llama-server reads it from there; never on the command line (`ps`)
    # Replace this process: signals (Ctrl-C, a test's terminate) reach the server itself.
    os.execve(cmd[0], cmd, env)

