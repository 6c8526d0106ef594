"""Does this environment's llama.cpp survive a batched prompt on this CPU? Run in a child process, because
a build with instructions the CPU refuses (ggml's AMX kernels, see the Makefile) dies with SIGILL.
tests/conftest.py runs it before any test: a dead llama.cpp would otherwise kill pytest itself."""
from __future__ import annotations

import subprocess
import sys

CHILD = """
import math, sys
import llama_cpp
from duo import bundled
# Q4_1 weights and a prompt of ~300 tokens in one batch: the path the judge and infer take
llm = llama_cpp.Llama(str(bundled.bundled_gguf()), n_ctx=512, n_batch=512, verbose=False)
tokens = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 30).encode())
llm.eval(tokens)
assert all(math.isfinite(x) for x in llm.scores[len(tokens) - 1][:100]), "non-finite logits"
print(len(tokens))
"""


def failure() -> str | None:
    """None when llama.cpp evaluated the batch; else what went wrong, with llama.cpp's CPU feature line."""
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    info = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
                          capture_output=True, text=True).stdout.strip()
    how = "SIGILL (illegal instruction)" if proc.returncode in (-4, 132) else f"exit {proc.returncode}"
    return (f"llama.cpp died evaluating a batched prompt: {how}. Its build: {info}. `make setup` builds it "
            f"without ggml's AMX kernels (duo/llamacpp/builds.py; remove .venv/.duo-llama-* to reinstall it). {proc.stderr.strip()[-1500:]}")


if __name__ == "__main__":
    sys.exit(failure())
