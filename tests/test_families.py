"""Real students, offline: for each vendor in tests/vendor_students.py (Llama 3.2, Qwen 2.5, Gemma 2,
Phi-3.5, Mistral Nemo, SmolLM3) a tiny random-weight model of the vendor's own architecture, on the
vendor's real vocabulary and its own chat template, goes through base -> finetune -> export -> infer ->
serve -> chat. The tokenizer gives the vendor's own ids on llama.cpp's test texts, in transformers and
in the exported GGUF; the prompt llama-server renders equals apply_chat_template token for token (with
and without a system prompt, single- and multi-turn; a template without a system role gets it folded
into the first user turn, as llama.cpp folds it); the end-of-turn token ends generation; the Modelfile
is the family's (tests/test_ollama_templates.py proves its Go template)."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from duo.llamacpp import llama_server
from duo.data import records
from duo.export import families
from tests import vendor_students
from tests.vendor_students import VENDORS

pytestmark = pytest.mark.integration  # real training, llama.cpp and llama-server: make test-all

GGUF_ARCH = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Gemma2ForCausalLM": "gemma2",
             "Phi3ForCausalLM": "phi3", "MistralForCausalLM": "llama", "SmolLM3ForCausalLM": "smollm3"}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "task": "qa", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}
            for i in range(n)]


@pytest.mark.parametrize("key", list(VENDORS))
def test_vendor_student_end_to_end(key, tmp_path, monkeypatch):
    import llama_cpp
    from transformers import AutoTokenizer

    from duo import export, inference, models
    from duo.cli import main as duo_cli
    from duo.export import gguf as gguf_mod
    from duo.params import Export, Finetune, Infer, Lora
    from duo.train import finetune

    vendor = VENDORS[key]
    monkeypatch.chdir(tmp_path)
    samples = vendor_students.vocab_samples(vendor.vocab)

    # base: the base stage's core on the vendor-shaped folder
    model, tokenizer, provenance = models.load_source(str(vendor_students.build(key, tmp_path / "source")), False)
    assert provenance["architecture"] == vendor.arch
    models.save_base(model, tokenizer, provenance, tmp_path / "base")
    del model
    tok = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert [tok.encode(text, add_special_tokens=False) for text, _ in samples] == [ids for _, ids in samples]

    # finetune, export with every check
    rows = _rows(8)
    records.write_jsonl(tmp_path / "refs.jsonl", rows[:3])
    p = Finetune(max_steps=2, batch_size=2, max_length=512, save_steps=0, threads=1, epochs=1.0,
                 lora=Lora(r=4, alpha=8, target_modules="all-linear"))
    finetune.train(rows, p, tmp_path / "base", tmp_path / "adapter")
    # f32: a random-weight model's next-token logits are nearly tied, and f16 rounding flips such ties (the
    # greedy check); quantization is not what these students test (tests/test_export.py covers it)
    metrics, failures = export.build(Export(quant="f32", ppl_tokens=512), f"tiny {vendor.label}", tmp_path / "out",
                                     base=tmp_path / "base", adapter=tmp_path / "adapter", references=tmp_path / "refs.jsonl")
    assert not failures, failures
    gguf_file = tmp_path / "out" / "student.gguf"
    template = vendor_students.template(vendor)
    meta = gguf_mod.read_metadata(gguf_file)
    assert meta["architecture"] == GGUF_ARCH[vendor.arch] and meta["chat_template"] == template
    vocab_only = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    add_bos = len(vocab_only.tokenize(b"x", add_bos=True)) == 2  # as llama.cpp reads the GGUF (or its default)
    try:  # llama.cpp splits text as the vendor's tokenizer does
        assert [vocab_only.tokenize(t.encode(), add_bos=False, special=False) for t, _ in samples] == \
            [ids for _, ids in samples]
    finally:
        vocab_only.close()

    # the Modelfile: the family's template, or none and a warning
    text, warning = families.modelfile("student.gguf", template, metrics["end_tokens"])
    match = families.detect(template, eos_token=vendor.eos)
    assert match.name == vendor.family
    assert ('TEMPLATE """' in text) == (warning is None) == (vendor.family is not None)
    stop = match.family.turn_end if match.family else vendor.eos
    assert f'PARAMETER stop "{stop}"' in text

    # infer: the infer stage's backend on the shipped GGUF
    ip = Infer(k=1, max_tokens=4, n_ctx=512, threads=1, parallel=1, temperature=0.0)
    predictions, stats = inference.run(rows[:2], inference.backend("llama_cpp", gguf_file, ip), ip, cycle=0)
    assert len(predictions) == 2 and stats["completion_tokens"] > 0

    # serve: llama-server renders and tokenizes exactly what training renders
    with llama_server.serve(gguf_file, n_ctx=1024, parallel=1, threads=1, log_name=f"vendor-{key}") as url:
        server = url.removesuffix("/v1")
        for messages in families.PROBES:
            conversation = families.served(template, messages)
            if conversation != messages:  # a template without a system role refuses one in training too
                with pytest.raises(Exception, match="(?i)system"):
                    tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            training = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            served = _post(server + "/apply-template", {"messages": messages})["prompt"]
            # a GGUF that adds BOS itself gets the template's BOS text cut (it comes back as the token)
            assert served == (training.removeprefix(tok.bos_token or "") if add_bos else training), (served, training)
            ids = list(tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=False))
            tokens = _post(server + "/tokenize", {"content": served, "add_special": True, "parse_special": True})["tokens"]
            assert tokens == ids, "token for token"
            reply = _post(url + "/chat/completions", {"messages": messages, "max_tokens": 2})
            assert reply["usage"]["prompt_tokens"] == len(ids), "the prompt as trained, no BOS added twice"
        # the end of a turn ends generation (llama.cpp's end-of-generation set); any other token does not
        probe = {"messages": families.PROBES[0], "max_tokens": 3, "temperature": 0.0}
        for end in dict.fromkeys([stop, vendor.eos]):
            end_id = tok.convert_tokens_to_ids(end)
            reply = _post(url + "/chat/completions", probe | {"logit_bias": [[end_id, 100.0]]})
            assert reply["choices"][0]["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] <= 1, end
        plain = tok.encode("Blue", add_special_tokens=False)[0]
        reply = _post(url + "/chat/completions", probe | {"logit_bias": [[plain, 100.0]]})
        assert reply["choices"][0]["finish_reason"] == "length"

    # chat: `duo chat` on the GGUF, with a system prompt
    result = CliRunner().invoke(duo_cli, ["chat", "--model", str(gguf_file), "--system", families.SYSTEM,
                                          "--max-tokens", "3", "--n-ctx", "512", "--threads", "1", "Name a colour."])
    assert result.exit_code == 0, result.output


def test_unknown_family_gets_a_modelfile_without_template_and_a_warning():
    text, warning = families.modelfile("student.gguf", "{{ messages[0]['content'] }}", ["</s>"])
    assert "TEMPLATE" not in text and 'PARAMETER stop "</s>"' in text and "no TEMPLATE" in warning


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused(tmp_path: Path):
    """transformers gives a qwen2 model Qwen's own pre-tokenizer whatever tokenizer.json says; with
    SmolLM's vocabulary that pairing is unknown to llama.cpp (it knows Qwen's with Qwen's own
    vocabulary), so the export refuses it by name instead of shipping a GGUF that splits text
    differently from training."""
    import click
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from duo import bundled
    from duo.export import gguf as gguf_mod

    gguf = bundled.bundled_gguf("smollm2")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base", safe_serialization=True)
    tok.save_pretrained(tmp_path / "base")
    with pytest.raises(click.ClickException, match=r"Qwen2ForCausalLM\): its tokenizer's pre-tokenizer is unknown"):
        gguf_mod.convert(tmp_path / "base", tmp_path / "out.gguf", "f16", "tiny qwen2")
