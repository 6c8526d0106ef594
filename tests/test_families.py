"""Every common chat-template family end to end: a tiny random-weight model of the family's architecture
where llama.cpp's converter builds it offline from the bundled SmolLM2 tokenizer (llama, mistral; Gemma
and Phi-3 convert from a SentencePiece model and Qwen2 needs Qwen's own vocabulary, so their templates
and special tokens ride on a llama architecture; a qwen2 model with a foreign vocabulary is refused by
name, last test), with the bundled tokenizer plus the family's special tokens and chat template; trained a few steps, exported with
every check, read back, served by llama-server: the served prompt equals transformers' rendering token
for token, and the Modelfile is the family's."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from duo import local_llm, records
from duo.export import families

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
         "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}"
         "{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' "
         "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + "
         "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
           "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}"
           "{% endif %}{% for message in loop_messages %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + (first if loop.first else '') + message['content'] + ' [/INST]' }}"
           "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}")
PHI3 = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

# family: (architecture, template, special tokens, bos, eos)
CASES = {
    "chatml": ("llama", CHATML, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>"),
    "llama3": ("llama", LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>"),
    "gemma": ("llama", GEMMA, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>"),
    "mistral": ("mistral", MISTRAL, ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>"),
    "phi3": ("llama", PHI3, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"], None, "<|end|>"),
}
MESSAGES = [[{"role": "user", "content": "What is two plus two?"}],
            [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}]]


def build(family: str, out: Path, arch: str | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, Qwen2Config

    from duo import models

    default_arch, template, specials, bos, eos = CASES[family]
    arch = arch or default_arch
    gguf = models.bundled_gguf("smollm2")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.bos_token, tok.eos_token, tok.pad_token = bos, eos, eos
    tok.chat_template = template
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    config = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return out


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("family", list(CASES))
def test_family_end_to_end(family, tmp_path, monkeypatch):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from duo import export, llama_server
    from duo.export import gguf as gguf_mod
    from duo.params import Export, Finetune, Lora
    from duo.train import finetune

    monkeypatch.chdir(tmp_path)
    base = build(family, tmp_path / "base")
    rows = [{"id": f"r{i}", "task": "qa", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}
            for i in range(8)]
    records.write_jsonl(tmp_path / "refs.jsonl", rows[:3])
    p = Finetune(max_steps=2, batch_size=2, max_length=64, save_steps=0, threads=1, epochs=1.0,
                 lora=Lora(r=4, alpha=8, target_modules="all-linear"))
    finetune.train(rows, p, base, tmp_path / "adapter")
    metrics, failures = export.build(Export(quant="q8_0", ppl_tokens=128), f"tiny {family}", tmp_path / "out",
                                     base=base, adapter=tmp_path / "adapter", references=tmp_path / "refs.jsonl")
    assert not failures, failures
    gguf_file = tmp_path / "out" / "student.gguf"

    # read back: the training template and the tokenizer's BOS/EOS
    tok = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    meta = gguf_mod.read_metadata(gguf_file)
    assert meta["chat_template"] == CASES[family][1] == tok.chat_template
    assert meta["eos_token_id"] == tok.eos_token_id
    assert metrics["chat_template_matches"] and metrics["special_tokens_match"]
    assert GGUFReader(gguf_file).fields["general.architecture"] is not None

    # the Modelfile of the family, stops from the tokenizer's end token and the family's turn end
    text, warning = families.modelfile("student.gguf", tok.chat_template, metrics["end_tokens"])
    assert warning is None and families.detect(tok.chat_template).name == family
    assert f'PARAMETER stop "{families.detect(tok.chat_template).turn_end}"' in text and 'TEMPLATE """' in text

    # served: llama-server renders and tokenizes exactly what training rendered
    port = local_llm.free_port()
    cmd = llama_server.command(gguf_file, host="127.0.0.1", port=port, n_ctx=512, parallel=2, threads=1)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not local_llm._ready(f"http://127.0.0.1:{port}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, "llama-server did not start"
            time.sleep(0.2)
        base_url = f"http://127.0.0.1:{port}"
        for messages in MESSAGES:
            training = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            served = _post(base_url + "/apply-template", {"messages": messages})["prompt"]
            assert served == training, (served, training)
            ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
            tokens = _post(base_url + "/tokenize", {"content": served, "add_special": False,
                                                    "parse_special": True})["tokens"]
            assert tokens == list(ids), "token for token"
            reply = _post(base_url + "/v1/chat/completions", {"messages": messages, "max_tokens": 2})
            assert reply["usage"]["prompt_tokens"] == len(ids), "no second BOS"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_unknown_family_gets_a_modelfile_without_template_and_a_warning():
    text, warning = families.modelfile("student.gguf", "{{ messages[0]['content'] }}", ["</s>"])
    assert "TEMPLATE" not in text and 'PARAMETER stop "</s>"' in text and "no TEMPLATE" in warning


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused(tmp_path):
    """transformers gives a qwen2 model Qwen's own pre-tokenizer whatever tokenizer.json says; with
    SmolLM's vocabulary that pairing is unknown to llama.cpp (it knows Qwen's with Qwen's 151k
    vocabulary, which cannot be had offline), so the export refuses it by name instead of shipping a
    GGUF that splits text differently from training."""
    import click

    from duo.export import gguf as gguf_mod

    base = build("chatml", tmp_path / "base", arch="qwen2")
    with pytest.raises(click.ClickException, match=r"Qwen2ForCausalLM\): its tokenizer's pre-tokenizer is unknown"):
        gguf_mod.convert(base, tmp_path / "out.gguf", "f16", "tiny qwen2")
