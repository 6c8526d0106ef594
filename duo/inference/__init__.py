"""Batch inference: K responses per test prompt from one backend registry.

Batch inference: K responses per test prompt from one of the backends below (one registry), in the
order they finish, reassembled by (prompt, sample)."""
from __future__ import annotations

import time
from pathlib import Path

from duo import contracts, progress
from duo.data import chat
from duo.inference.hf import TransformersBackend
from duo.inference.llama_cpp import LlamaCppBackend

# infer.backend -> class(model path, infer params); heavy imports (llama_cpp, torch) happen in __init__
BACKENDS = {"llama_cpp": LlamaCppBackend, "transformers": TransformersBackend}


def backend(name: str, path: Path, p):
    return BACKENDS[name](path, p)


def _samples(test: list[dict], backend, p):
    """(prompt index, sample index, text, tokens, finish reason) in the order they finish."""
    seeds = [[contracts.derived_seed(p.seed, row["id"], j) for j in range(p.k)] for row in test]
    if p.parallel > 1 and hasattr(backend, "generate_all"):
        yield from backend.generate_all([chat.messages(row) for row in test], seeds)
        return
    for i, row in enumerate(test):
        for j in range(p.k):
            yield (i, j, *backend.generate(chat.messages(row), seeds[i][j]))


def run(test: list[dict], backend, p, cycle: int) -> tuple[list[dict], dict]:
    done, tokens, stopped = {}, 0, 0
    start = time.monotonic()
    bar = progress.bar(len(test) * p.k, "infer", unit="resp")
    for i, j, text, n, finish in _samples(test, backend, p):
        row = test[i]
        tokens += n
        stopped += finish == "stop"
        done[i, j] = {"prompt_id": row["id"], "sample_idx": j, "task": row["task"], "prompt": row["prompt"], **chat.context_of(row),
                      "reference": row["response"], "response": text, "cycle": cycle,
                      "tokens": n, "finish_reason": finish}
        bar.update(1)
    bar.close()
    rows = [done[key] for key in sorted(done)]
    seconds = time.monotonic() - start
    return rows, {"responses": len(rows), "completion_tokens": tokens, "seconds": round(seconds, 1),
                  "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
                  "stopped_share": round(stopped / len(rows), 4) if rows else None,
                  "truncated_prompts": len(getattr(backend, "truncated", ()))}


def greedy(gguf: Path, rows: list[dict], p, cycle: int) -> list[dict]:
    """One greedy answer per row from the GGUF through llama.cpp (prediction rows, as `run` makes them)."""
    import dataclasses

    one = dataclasses.replace(p, k=1, temperature=0.0)
    preds, _ = run(rows, backend("llama_cpp", gguf, one), one, cycle)
    return preds
