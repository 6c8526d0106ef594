"""llama.cpp's own HTTP server, `llama-server`, built from the llama.cpp sources of the pinned
llama-cpp-python (the same llama.cpp as the runtime and the converter).

It gives every local server duo starts (the local teacher and judge, `make serve`) what the
single-request Python server lacks: N parallel slots decoded together (continuous batching), each
slot keeping its last prompt's KV cells so requests that share a prefix (the judge rubric) evaluate it
once per slot, JSON-schema constrained output, `/health`, `/metrics` and `--api-key`. Here: its command
line, and a server on loopback for as long as a stage needs it (`serve`); duo/llamacpp/builds.py
compiles it.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import click

from duo.llamacpp import builds, local_llm

LOG_DIR = Path(".duo/logs")


def command(model: Path, *, host: str, port: int, n_ctx: int, parallel: int, threads: int = 0,
            alias: str | None = None, metrics: bool = False) -> list[str]:
    """llama-server's command line: `parallel` slots of `n_ctx` cells each in one unified KV cache, the
    GGUF's own chat template (the training template, checked at export). An API key goes in the
    environment (LLAMA_API_KEY), never on the command line where `ps` shows it."""
    n = local_llm.threads_for(threads)
    cmd = [str(builds.binary()), "--model", str(model), "--host", host, "--port", str(port),
           "--ctx-size", str(n_ctx * parallel), "--parallel", str(parallel), "--kv-unified", "--cont-batching",
           "--jinja", "--threads", str(n), "--threads-batch", str(n), "--no-webui"]
    if builds.flavour() == "cuda":  # every layer on the GPU, as llama-cpp-python loads do (duo/llamacpp/gpu.py)
        cmd += ["--n-gpu-layers", "999"]
    if alias:
        cmd += ["--alias", alias]
    if metrics:
        cmd += ["--metrics"]
    return cmd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve(model: Path, *, n_ctx: int = 4096, parallel: int = 1, threads: int = 0, port: int | None = None,
          host: str = "127.0.0.1", startup_timeout_s: float = 180.0, log_name: str = "server"):
    """Yield the base URL (`http://host:port/v1`) of a llama-server for `model` with `parallel` slots of
    `n_ctx` cells each (command below); always stopped after."""
    port = port or free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{log_name}.log"
    cmd = command(model, host=host, port=port, n_ctx=n_ctx, parallel=parallel, threads=threads)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    base = f"http://{host}:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _ready(f"http://{host}:{port}/health"):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise click.ClickException(f"llama.cpp server for {model} exited ({proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"llama.cpp server for {model} not ready after {startup_timeout_s:.0f} s")
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
