"""llama-cpp-python internals batched inference relies on (see duo/compat/__init__.py)."""
from __future__ import annotations

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
