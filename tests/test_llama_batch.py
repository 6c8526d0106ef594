"""Continuous batching for infer (duo/inference/batch.py) on the bundled 135M GGUF, real llama.cpp."""
from __future__ import annotations

import pytest

from duo import bundled
from duo.llamacpp import local_llm
from duo import inference as infer

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

PROMPTS = ["Name one colour of the sky.", "Write a short poem about rain in the city at night.",
           "Classify the sentiment of: 'I loved it.' Reply with one word.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def llm():
    from llama_cpp import Llama

    return Llama(str(bundled.bundled_gguf()), n_ctx=1024, verbose=False, seed=42, **local_llm.load_kwargs(0))


def _tokens(llm, prompt):
    return llm.tokenize(local_llm.render_chat(llm, [{"role": "user", "content": prompt}]).encode(), special=True)


def test_one_slot_reproduces_llama_cpp_python_exactly(llm):
    # one sequence at a time, the same batch shapes as llama-cpp-python: same sampler chain and seed,
    # so the same text, token count and finish reason as create_chat_completion
    from duo.inference import batch as llama_batch

    gen = llama_batch.BatchedGenerator(llm, 1, 256, 40)
    try:
        for prompt in PROMPTS[:2]:
            for seed in (3, 4):
                llm.reset()  # no prefix reuse from the previous call: its single-token re-eval shifts the last bits
                want = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=40,
                                                  temperature=0.7, top_p=0.9, seed=seed)
                (_, _, got), = gen.generate([(_tokens(llm, prompt), [seed])], 0.7, 0.9)
                assert (got.text, got.tokens, got.finish_reason) == (
                    want["choices"][0]["message"]["content"], want["usage"]["completion_tokens"],
                    want["choices"][0]["finish_reason"])
    finally:
        gen.close()


def test_many_sequences_refill_slots_stay_deterministic_and_honour_limits(llm):
    from duo.inference import batch as llama_batch

    # 4 prompts x 3 samples through 5 slots: prompts are admitted in parts and slots are refilled
    jobs = [(_tokens(llm, p), [100 * i + j for j in range(3)]) for i, p in enumerate(PROMPTS)]
    gen = llama_batch.BatchedGenerator(llm, 5, max(len(t) for t, _ in jobs), 24)
    try:
        first = {(i, j): s for i, j, s in gen.generate(jobs, 0.9, 0.95)}
        again = {(i, j): s for i, j, s in gen.generate(jobs, 0.9, 0.95)}
    finally:
        gen.close()
    assert sorted(first) == [(i, j) for i in range(4) for j in range(3)]
    assert first == again
    for s in first.values():
        assert 0 <= s.tokens <= 24
        assert (s.finish_reason == "length") == (s.tokens == 24)
    # each sample draws with its own seed: the samples of the open-ended prompt differ
    assert len({first[1, j].text for j in range(3)}) > 1


def test_infer_run_orders_rows_and_counts_the_same_with_and_without_batching(llm):
    class P:
        k, max_tokens, temperature, top_p, seed, n_ctx, parallel = 2, 16, 0.7, 0.9, 42, 1024, 6

    backend = infer.LlamaCppBackend.__new__(infer.LlamaCppBackend)
    backend.p, backend.truncated, backend.llm = P, set(), llm
    test = [{"id": f"p{i}", "task": "t", "prompt": p, "response": "r"} for i, p in enumerate(PROMPTS)]
    rows, metrics = infer.run(test, backend, P, cycle=0)
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [(f"p{i}", j) for i in range(4) for j in range(2)]
    assert metrics["responses"] == 8 and metrics["completion_tokens"] == sum(r["tokens"] for r in rows)
    P.parallel = 1
    seq_rows, _ = infer.run(test, backend, P, cycle=0)
    assert [(r["prompt_id"], r["sample_idx"]) for r in seq_rows] == [(r["prompt_id"], r["sample_idx"]) for r in rows]
    assert all(r["tokens"] <= 16 for r in seq_rows + rows)
