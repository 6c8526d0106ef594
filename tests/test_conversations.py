"""Conversations end to end: a task whose instruction lives only in the system prompt, for a ChatML, a
Llama 3 and a Gemma template (Gemma's own kind, which merges the system prompt itself, and the strict kind,
which refuses one: llama.cpp's server merges it, and duo/data/chat.py does the same for training). A tiny model
of each learns the task (its loss falls), is exported with every check, and `duo serve` renders an OpenAI
request carrying that system message into exactly the training prompt, token for token; inference reads
the same prompt from the GGUF."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from duo.llamacpp import llama_server, local_llm
from duo.data import chat, records
from tests.test_chat import GEMMA_STRICT
from tests.hand_templates import build

pytestmark = pytest.mark.integration  # real training, llama.cpp and servers: make test-all

SYSTEM = "Say whether the colour the user names is warm or cool. Answer with that one word only."
COLOURS = {"red": "warm", "blue": "cool", "orange": "warm", "green": "cool", "yellow": "warm", "teal": "cool",
           "pink": "warm", "navy": "cool"}


def rows() -> list[dict]:
    out = [{"id": f"c-{en}", "task": "colours", "messages": [{"role": "system", "content": SYSTEM},
                                                           {"role": "user", "content": en}], "response": fr}
           for en, fr in COLOURS.items()]
    # and one with history: the earlier turns are part of the prompt
    out.append({"id": "c-history", "task": "colours", "response": "cool",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "red"},
                             {"role": "assistant", "content": "warm"}, {"role": "user", "content": "green"}]})
    return [chat.with_prompt(r) for r in out]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma", "gemma-strict"])
def test_system_prompt_task_trains_and_serves_token_for_token(family, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from duo import export, inference
    from duo.params import Export, Finetune, Infer, Lora
    from duo.train import finetune

    monkeypatch.chdir(tmp_path)
    base = build("gemma" if family == "gemma-strict" else family, tmp_path / "base")
    if family == "gemma-strict":
        tok = AutoTokenizer.from_pretrained(base)
        tok.chat_template = GEMMA_STRICT
        tok.save_pretrained(base)
        (base / "chat_template.jinja").write_text(GEMMA_STRICT, encoding="utf-8")
    # At the default init (std 0.02) the tied 49k-token head of a 64-wide model cannot move its output far
    # from uniform whatever a LoRA does; larger embeddings give it room to learn.
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(12.0)
    model.save_pretrained(base)
    data = rows()
    records.write_jsonl(tmp_path / "refs.jsonl", data[:4])

    # the student learns it: loss on the final answer, the system prompt in the context
    p = Finetune(max_steps=48, batch_size=3, lr=3e-2, max_length=128, save_steps=0, threads=2, epochs=50.0,
                 validation_ratio=0.0, lora=Lora(r=16, alpha=32, target_modules="all-linear"))
    metrics = finetune.train(data, p, base, tmp_path / "adapter")
    curve = [point["loss"] for point in metrics["loss_curve"]]
    chance = math.log(len(AutoTokenizer.from_pretrained(base)))
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first - 3.0 and last < chance - 2.5, f"the loss did not fall well below chance ({chance:.2f}): {curve}"
    built, failures = export.build(Export(quant="q8_0", ppl_tokens=256), f"tiny {family}", tmp_path / "out",
                                   base=base, adapter=tmp_path / "adapter", references=tmp_path / "refs.jsonl")
    assert not failures, failures
    gguf = tmp_path / "out" / "student.gguf"
    tok = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    assert chat.has_system_role(tok.chat_template) is (family != "gemma-strict")

    # what training saw: the prompt part of the example finetune gave the trainer (duo/data/chat.py)
    def training_ids(row: dict) -> list[int]:
        example = chat.tokenized(tok, row)
        prompt = example["input_ids"][:example["completion_mask"].index(1)]
        rendered = tok.apply_chat_template(finetune.to_conversations([row], tok.chat_template)[0]["prompt"],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
        assert prompt == list(rendered), "the prompt trained on is the rendered prompt, whole"
        return prompt

    # inference reads the same prompt from the GGUF
    backend = inference.backend("llama_cpp", gguf, Infer(k=1, n_ctx=256, max_tokens=8, threads=2))
    for row in data:
        rendered = local_llm.render_chat(backend.llm, backend.fit(chat.messages(row)))
        assert backend.llm.tokenize(rendered.encode(), add_bos=False, special=True) == training_ids(row)
    preds, _ = inference.run(data[:2], backend, Infer(k=1, n_ctx=256, max_tokens=8, threads=2), 0)
    assert preds[0]["messages"] == data[0]["messages"], "predictions carry the context to the judge"
    del backend

    # `duo serve`: an OpenAI request with that system message, as the app sends it
    port = llama_server.free_port()
    env = {**os.environ, "SERVE_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "duo.cli", "serve", "--model", str(gguf), "--threads", "2",
                             "--n-ctx", "512", "--parallel", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900  # a hang guard: the event is the health check
        while not llama_server._ready(f"http://127.0.0.1:{port}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, "duo serve did not start"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        for row in data:
            served = _post(url + "/apply-template", {"messages": row["messages"]})["prompt"]
            tokens = _post(url + "/tokenize", {"content": served, "add_special": False, "parse_special": True})["tokens"]
            assert tokens == training_ids(row), "token for token"
            reply = _post(url + "/v1/chat/completions", {"messages": row["messages"], "max_tokens": 2})
            assert reply["usage"]["prompt_tokens"] == len(tokens), "no second BOS"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
