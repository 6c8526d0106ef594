"""infer.backend: transformers (the GPU users' path), on a tiny real model with a LoRA adapter: batched
sampling (`generate_all`) covers every (prompt, sample) once, is reproducible, and with greedy decoding
equals one-at-a-time `generate` despite left padding."""
from __future__ import annotations

import dataclasses

import pytest

from duo.params import Infer
from duo import inference as infer
from tests import tiny_model

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

PROMPTS = ["Say yes.", "Classify this review as positive or negative: the film was long and dull.",
           "Write a headline for: the city council voted to repair the old bridge next spring.", "Hi"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("tf")
    base = tiny_model.build(root / "models" / "base")
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    lora.save_pretrained(root / "models" / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "models" / "adapter")
    return root


def _backend(project, monkeypatch, **kw):
    monkeypatch.chdir(project)
    p = dataclasses.replace(Infer(), backend="transformers", max_tokens=8, **kw)
    return infer.TransformersBackend(infer.contracts.GGUF, p), p


def _run(backend, p):
    test = [{"id": f"p{i}", "task": "t", "prompt": text, "response": "r"} for i, text in enumerate(PROMPTS)]
    rows, metrics = infer.run(test, backend, p, cycle=0)
    return rows, metrics


def test_batched_sampling_covers_every_sample_once_and_is_reproducible(project, monkeypatch):
    backend, p = _backend(project, monkeypatch, k=3, parallel=6)
    rows, metrics = _run(backend, p)
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [(f"p{i}", j) for i in range(4) for j in range(3)]
    assert all(1 <= r["tokens"] <= 8 for r in rows)
    assert all(r["finish_reason"] == ("length" if r["tokens"] == 8 else "stop") for r in rows)
    assert metrics["completion_tokens"] == sum(r["tokens"] for r in rows)
    again, _ = _run(backend, p)
    assert [r["response"] for r in again] == [r["response"] for r in rows]
    # samples of one prompt differ (temperature 0.7 over a random model's flat distribution)
    assert len({r["response"] for r in rows if r["prompt_id"] == "p1"}) > 1


def test_greedy_batched_equals_one_at_a_time(project, monkeypatch):
    batched, p = _backend(project, monkeypatch, k=2, parallel=8, temperature=0.0)
    single, p1 = _backend(project, monkeypatch, k=2, parallel=1, temperature=0.0)
    rows, _ = _run(batched, p)
    ones, _ = _run(single, p1)
    assert [(r["response"], r["tokens"], r["finish_reason"]) for r in rows] == \
        [(r["response"], r["tokens"], r["finish_reason"]) for r in ones]


def test_a_response_ends_at_its_first_end_of_sequence(project, monkeypatch):
    import torch

    backend, _ = _backend(project, monkeypatch)
    eos, word = backend.tok.eos_token_id, backend.tok.encode("yes", add_special_tokens=False)
    text, n, finish = backend._result(torch.tensor(word + [eos, eos, eos]))
    assert (text, n, finish) == ("yes", len(word) + 1, "stop")
    assert backend._result(torch.tensor(word))[1:] == (len(word), "length")
