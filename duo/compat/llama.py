"""llama-cpp-python internals batched inference and the export rely on (see duo/compat/__init__.py)."""
from __future__ import annotations

import contextlib

from duo.compat import register


# ---- llama-cpp-python ----------------------------------------------------------------------------
def llama_internals():
    """llama-cpp-python's wrappers of llama.cpp's context, batch and sampler (batched decoding)."""
    from llama_cpp import _internals

    return _internals


def llama_model(llm):
    """The loaded model behind a llama_cpp.Llama (its C handle and token texts)."""
    return llm._model


@register("llama_cpp._internals (LlamaContext, LlamaBatch, LlamaSampler) and Llama._model",
          "continuous batching of K samples per prompt in one context; special tokens' texts",
          "duo/inference/batch.py, duo/llamacpp/local_llm.py: render_chat")
def _check_llama_internals():
    import inspect

    import llama_cpp

    internals = llama_internals()
    for name, params in (("LlamaContext", ["model", "params", "verbose"]),
                         ("LlamaBatch", ["n_tokens", "embd", "n_seq_max", "verbose"])):
        got = list(inspect.signature(getattr(internals, name)).parameters)
        assert all(p in got for p in params), (name, got)
    sampler = internals.LlamaSampler
    for method in ("add_greedy", "add_top_k", "add_typical", "add_top_p", "add_min_p", "add_temp", "add_dist",
                   "sample", "close"):
        assert callable(getattr(sampler, method)), method
    assert "_model" in inspect.getsource(llama_cpp.Llama.__init__)
    assert callable(getattr(internals.LlamaModel, "token_get_text"))


@contextlib.contextmanager
def llama_log_captured():
    """llama.cpp's own log collected, not printed, while inside (yields the list of its pieces), then
    llama-cpp-python's callback back in place. Its library calls (quantize) log every tensor before any
    Llama() set a level, and llama-cpp-python's level table predates ggml's (errors map to DEBUG), so a
    level cannot keep the errors and drop the rest; the caller shows the captured tail when a call fails."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    pieces: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        pieces.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield pieces
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


@register("llama_cpp._logger.llama_log_callback (the callback llama-cpp-python installs at import)",
          "quantize's 272 per-tensor lines kept out of the export log (captured; shown when it fails)",
          "duo/export/gguf.py: quantize")
def _check_llama_logger():
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    assert isinstance(_logger.llama_log_callback, llama_cpp.llama_log_callback)
    with llama_log_captured() as pieces:
        llama_cpp.llama_model_quantize(b"/nonexistent.gguf", b"/nonexistent-out.gguf",
                                       ctypes.byref(llama_cpp.llama_model_quantize_default_params()))
    assert pieces, "llama.cpp logged nothing through the captured callback"
