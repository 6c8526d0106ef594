"""`make serve` under load for `make bench`: 1, 4 and 8 concurrent clients, each sending 8 requests of
32 generated tokens (ignore_eos, so every request costs the same) to the real server `make serve` runs,
on the latest exported student (models/student.gguf, else the bundled base GGUF of the same size).
Figures: generated tokens/s over all clients, p50/p99 request latency, errors; the 8-client rate over
the 1-client rate. The report's break-even uses serve.tokens_per_s_8 (what the server sustains).

Run: python -m tests.bench serve
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Write a short note about the sea.", "Describe a walk in the park.", "Explain what a map is.",
           "Tell me about autumn leaves.", "Summarize: the train was late and it rained all day.",
           "Classify the sentiment: the soup was cold.", "List three uses of a spoon.", "Why do cats purr?"]


def model_file() -> Path:
    from duo import bundled

    student = ROOT / "models" / "student.gguf"
    return student if student.exists() else bundled.bundled_gguf()


def _clients(base: str, n: int, per_client: int = 8, tokens: int = 32) -> dict:
    import openai

    client = openai.OpenAI(base_url=base, api_key="bench", max_retries=0, timeout=300)
    latencies, generated, errors = [], [], 0

    def one(i: int) -> None:
        nonlocal errors
        for k in range(per_client):
            start = time.monotonic()
            try:
                reply = client.chat.completions.create(
                    model="student", messages=[{"role": "user", "content": PROMPTS[(i + k) % len(PROMPTS)]}],
                    max_tokens=tokens, temperature=0.7, seed=i * 100 + k, extra_body={"ignore_eos": True})
                generated.append(reply.usage.completion_tokens)
                latencies.append(time.monotonic() - start)
            except Exception:  # counted, never hidden
                errors += 1

    start = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    wall = time.monotonic() - start
    latencies.sort()
    return {"tokens_per_s": round(sum(generated) / wall, 1), "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
            "requests": len(latencies), "errors": errors}


def bench_serve(parallel: int = 8) -> dict:
    from duo.llamacpp import llama_server

    gguf = model_file()
    port = llama_server.free_port()
    env = {**os.environ, "SERVE_PORT": str(port), "SERVE_MODEL": str(gguf), "SERVE_PARALLEL": str(parallel),
           "SERVE_API_KEY": "bench"}
    proc = subprocess.Popen([sys.executable, "-m", "duo.cli", "serve"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not llama_server._ready(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("duo.app.serve did not start")
            time.sleep(0.3)
        base = f"http://127.0.0.1:{port}/v1"
        _clients(base, 1, per_client=2)  # warm-up
        figures = {"serve.model": gguf.name, "serve.parallel": parallel}
        for n in (1, 4, 8):
            for key, value in _clients(base, n).items():
                figures[f"serve.{key}_{n}"] = value
        figures["serve.speedup_8_vs_1"] = round(figures["serve.tokens_per_s_8"] / figures["serve.tokens_per_s_1"], 2)
        return figures
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    import json

    print(json.dumps(bench_serve(), indent=1))
