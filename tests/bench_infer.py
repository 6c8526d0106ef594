"""Inference throughput for `make bench`: duo's infer stage (llama.cpp on the exported GGUF, K samples
per prompt, `infer.parallel` sequences batched; also measured with one at a time) against naive
per-prompt Hugging Face `generate` (base + adapter merged, fp32, one sample at a time), on the same
test prompts, same K, max_tokens, temperature and top_p. Tokens are generated tokens, each side counting
its own (sampled lengths differ); prompt processing counts in both.

`infer.engines`: the same samples through llama-server's slots (`infer.parallel` slots, every sample a
request with its own seed, `infer.parallel` requests in flight: how the local teacher, judge and
`duo serve` decode) against the infer stage's one batched context (duo/inference/batch.py, where the K
samples of a prompt share its KV cells): which of the two engines infer should keep.

Run: python -m tests.bench infer
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from duo.llamacpp import local_llm

ROOT = Path(__file__).resolve().parent.parent


def _child(kind: str, clone: str, n_prompts: int) -> None:
    import resource

    from duo import params as params_mod
    from duo.data import records
    from duo import inference as infer

    os.chdir(clone)
    params = params_mod.load("params.yaml")
    p = params.infer
    test = records.read_records("data/test.jsonl", infer.contracts.ROW_FIELDS, unique="id")
    by_task: dict[str, list[dict]] = {}
    for row in test:
        by_task.setdefault(row["task"], []).append(row)
    prompts = [rows[i] for i in range(len(test)) for rows in by_task.values() if i < len(rows)][:n_prompts]
    if kind in ("duo-sequential", "hf"):  # one sequence at a time: the batching lever off / naive generate
        p.parallel = 1
    if kind == "server":
        seconds, tokens, n = _through_server(prompts, p)
        print(json.dumps({"seconds": seconds, "tokens": tokens, "responses": n, "threads": local_llm.threads_for(p.threads),
                          "peak_rss_mb": None}))
        return
    if kind.startswith("duo"):
        backend = infer.LlamaCppBackend(infer.contracts.GGUF, p)
    else:
        backend = infer.TransformersBackend(infer.contracts.GGUF, p)  # merged base + adapter, per-prompt generate
    start = time.monotonic()
    rows, metrics = infer.run(prompts, backend, p, params.cycle)
    seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "tokens": metrics["completion_tokens"], "responses": len(rows),
                      "threads": __import__("torch").get_num_threads() if kind == "hf" else local_llm.threads_for(p.threads),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def _through_server(prompts: list[dict], p) -> tuple[float, int, int]:
    """Every sample as one chat request to llama-server (`p.parallel` slots, as many in flight)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from duo import contracts
    from duo.data import chat
    from duo.llamacpp import llama_server

    def ask(base: str, row: dict, j: int) -> int:
        body = {"messages": chat.messages(row), "max_tokens": p.max_tokens, "temperature": p.temperature,
                "top_p": p.top_p, "seed": contracts.derived_seed(p.seed, row["id"], j)}
        req = urllib.request.Request(f"{base}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())["usage"]["completion_tokens"]

    with llama_server.serve(contracts.GGUF, n_ctx=p.n_ctx, parallel=p.parallel, threads=p.threads,
                            log_name="bench-infer") as base:
        jobs = [(row, j) for row in prompts for j in range(p.k)]  # a prompt's samples back to back, as infer orders them
        start = time.monotonic()
        with ThreadPoolExecutor(p.parallel) as pool:
            tokens = sum(pool.map(lambda job: ask(base, *job), jobs))
        return time.monotonic() - start, tokens, len(jobs)


def _run(kind: str, clone: Path, n_prompts: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.bench_infer", kind, str(clone), str(n_prompts)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} inference failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_infer(clone: Path, n_prompts: int = 4, cycle_infer: dict | None = None) -> dict:
    """`clone` holds models/base, models/adapter, models/student.gguf and data/test.jsonl."""
    duo = _run("duo", clone, n_prompts)
    seq = _run("duo-sequential", clone, n_prompts)
    hf = _run("hf", clone, n_prompts)
    server = _run("server", clone, n_prompts)
    server_tps = server["tokens"] / server["seconds"]
    duo_tps, hf_tps = duo["tokens"] / duo["seconds"], hf["tokens"] / hf["seconds"]
    seq_tps = seq["tokens"] / seq["seconds"]
    figures = {
        "infer.levers.parallel_tokens_per_s": round(duo_tps, 1),
        "infer.levers.sequential_tokens_per_s": round(seq_tps, 1),
        "infer.levers.parallel_speedup": round(duo_tps / seq_tps, 2),
        "infer.h2h_prompts": n_prompts, "infer.h2h_responses": duo["responses"],
        "infer.h2h_duo_tokens_per_s": round(duo_tps, 1), "infer.h2h_duo_tokens": duo["tokens"],
        "infer.hf_tokens_per_s": round(hf_tps, 1), "infer.hf_tokens": hf["tokens"],
        "infer.speedup_vs_hf": round(duo_tps / hf_tps, 2),
        "memory.peak_rss_mb.infer_hf": hf["peak_rss_mb"],
        "infer.engines": {"batched_context_tokens_per_s": round(duo_tps, 1),
                          "server_slots_tokens_per_s": round(server_tps, 1), "server_tokens": server["tokens"],
                          "batched_over_server": round(duo_tps / server_tps, 2)},
    }
    if cycle_infer and cycle_infer.get("tokens_per_s"):
        figures["infer.tokens_per_s"] = cycle_infer["tokens_per_s"]
        figures["infer.tokens_per_s_source"] = (f"the default cycle's infer stage ({cycle_infer['responses']} "
                                                f"responses, {cycle_infer['completion_tokens']} tokens)" + (
            f", from the bench cycle of {cycle_infer['from_cycle_at']}" if cycle_infer.get("from_cycle_at") else ""))
    else:
        figures["infer.tokens_per_s"] = round(duo_tps, 1)
        figures["infer.tokens_per_s_source"] = f"the head-to-head run ({duo['responses']} responses)"
    return figures


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
