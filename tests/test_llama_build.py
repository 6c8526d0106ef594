"""The llama.cpp that setup built runs a batched prompt on this CPU (ggml's AMX kernels did not: Makefile)."""
from __future__ import annotations

from tests import llama_probe


def test_llama_cpp_evaluates_a_batched_prompt_on_this_cpu():
    assert llama_probe.failure() is None
