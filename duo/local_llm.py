"""Local llama.cpp: thread counts, the chat prompt a GGUF renders, and llama-server on loopback for as
long as a stage needs it."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import click

from duo import machine

LOG_DIR = Path(".duo/logs")
# llama-cpp-python's name for the Jinja chat template embedded in the GGUF (the training template,
# checked equal by the export stage). Without it, a template that looks like ChatML may be swapped for
# llama-cpp-python's own hard-coded ChatML, which drops the template's default system prompt.
EMBEDDED = "chat_template.default"


def threads_for(threads: int) -> int:
    """`threads: 0` means all cores. llama-cpp-python's own default generates on half of them (one of
    two here), which decodes ~1.5x slower (make bench); the output is the same (tests)."""
    return threads or machine.cores()


def load_kwargs(threads: int, gpu_layers="auto") -> dict:
    """llama_cpp.Llama arguments: the same thread count for prompt batches and for decoding, and every
    layer on the GPU where the installed llama.cpp has one (duo/gpu.py)."""
    from duo import gpu

    n = threads_for(threads)
    return {"n_threads": n, "n_threads_batch": n, "n_gpu_layers": gpu.offload_layers(gpu_layers)}


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


def render_chat(llm, messages: list[dict]) -> str:
    """The prompt llama-cpp-python builds for `chat_format=EMBEDDED` (same formatter, same arguments as
    llama_cpp.Llama sets up), for length checks and for testing it against the training rendering."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from duo.compat import llama as compat

    model = compat.llama_model(llm)
    eos, bos = (model.token_get_text(t) if t != -1 else "" for t in (llm.token_eos(), llm.token_bos()))
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    return formatter(messages=messages).prompt


@contextlib.contextmanager
def serve(model: Path, *, n_ctx: int = 4096, parallel: int = 1, threads: int = 0, port: int | None = None,
          host: str = "127.0.0.1", startup_timeout_s: float = 180.0, log_name: str = "server"):
    """Yield the base URL (`http://host:port/v1`) of a llama-server for `model` with `parallel` slots of
    `n_ctx` cells each (duo/llama_server.py); always stopped after."""
    from duo import llama_server

    port = port or free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{log_name}.log"
    cmd = llama_server.command(model, host=host, port=port, n_ctx=n_ctx, parallel=parallel, threads=threads)
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
