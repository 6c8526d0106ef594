"""Loading a GGUF with llama-cpp-python: thread counts, GPU layers, and the chat prompt a GGUF renders."""
from __future__ import annotations

from duo import machine
from duo.llamacpp import gpu

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
    layer on the GPU where the installed llama.cpp has one (duo/llamacpp/gpu.py)."""
    n = threads_for(threads)
    return {"n_threads": n, "n_threads_batch": n, "n_gpu_layers": gpu.offload_layers(gpu_layers)}


def render_chat(llm, messages: list[dict]) -> str:
    """The prompt llama-cpp-python builds for `chat_format=EMBEDDED` (same formatter, same arguments as
    llama_cpp.Llama sets up), for length checks and for testing it against the training rendering."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from duo.compat import llama as compat

    model = compat.llama_model(llm)
    eos, bos = (model.token_get_text(t) if t != -1 else "" for t in (llm.token_eos(), llm.token_bos()))
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    return formatter(messages=messages).prompt
