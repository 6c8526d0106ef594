"""Checks that an exported GGUF is the model that was trained: same tokenizer, same greedy output as
the merged PyTorch model, and how much quantization costs in perplexity. Run on every export.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import click

from duo.data import chat

# Strings where tokenizers tend to disagree: scripts beyond Latin, emoji (ZWJ sequences, flags,
# skin tones), code, runs of spaces/tabs/newlines, digits, and the chat template's special tokens.
TOKENIZER_SAMPLES = [
    "Hello, world!",
    "  leading and   inner   spaces\n\ttab",
    "trailing spaces   \n\n\n\nfour newlines, then\r\nCRLF and \t\t\ttabs\t \t",
    "def f(x):\n    return x**2\n\n\tif x >= 0: pass  # comment",
    '{"key": [1, 2.5e-3, null], "nested": {"a": "b\\n"}}',
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "Ünïcödé café — naïve façade, Straße, smørrebrød",
    "Привет, мир! Как дела?",
    "東京は日本の首都です。你好，世界！",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Γειά σου Κόσμε; שלום עולם",
    "🙂 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️‍🔥 🤖",
    "3.14159 1,000,000 2026-11-25 0x1F 1e10",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "",
    " ",
]

PROBE = [{"role": "user", "content": "Explain in two sentences what a GGUF file is and why it is useful."}]
GREEDY_TOKENS = 32
# f16 rounding of the merged weights can flip a near-tie late in a greedy run; a conversion that is
# wrong (weights, RoPE, template, tokenizer) diverges at once. The first 16 tokens must agree.
GREEDY_MIN_PREFIX = 16


def load(path: Path, n_ctx: int = 1024, lora: Path | None = None, threads: int = 0):
    """A llama.cpp context that keeps every position's logits (llama-cpp-python fills `scores` only
    with logits_all; perplexity needs them all anyway)."""
    import llama_cpp

    from duo.llamacpp import gpu

    kwargs = {"lora_path": str(lora)} if lora else {}
    kwargs["n_gpu_layers"] = gpu.offload_layers()
    if threads:  # else llama-cpp-python's default, half the cores: spinning threads on busy cores cost more
        kwargs |= {"n_threads": threads, "n_threads_batch": threads}
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, logits_all=True, verbose=False, seed=0,
                           **kwargs)


def tokenizer_parity(llm, hf_tokenizer) -> dict:
    """Token ids from llama.cpp and from the HF tokenizer on the fixed sample set."""
    mismatches = []
    for s in TOKENIZER_SAMPLES:
        ours = llm.tokenize(s.encode(), add_bos=False, special=True)
        theirs = hf_tokenizer.encode(s, add_special_tokens=False)
        if ours != theirs:
            mismatches.append({"text": s, "llama_cpp": ours[:40], "hf": theirs[:40]})
    return {"tokenizer_samples": len(TOKENIZER_SAMPLES), "tokenizer_mismatches": mismatches}


def prompt_ids(hf_tokenizer, messages=PROBE) -> list[int]:
    return list(hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))


def greedy_gguf(llm, ids: list[int], n: int = GREEDY_TOKENS) -> list[int]:
    """Plain argmax decoding (no sampler chain), stopping at end-of-generation like HF generate."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token == llm.token_eos():
            break
        llm.eval([token])
    return out


def greedy_hf(model, hf_tokenizer, ids: list[int], n: int = GREEDY_TOKENS) -> tuple[list[int], list]:
    """Greedy tokens from the PyTorch model, with each step's logits (to judge a divergence)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=hf_tokenizer.pad_token_id
                             if hf_tokenizer.pad_token_id is not None else hf_tokenizer.eos_token_id)
    return out.sequences[0, len(ids):].tolist(), [s[0] for s in out.scores]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_greedy(ours: list[int], ref: list[int], ref_logits: list | None = None) -> dict:
    prefix = common_prefix(ours, ref)
    identical = ours == ref
    result = {"tokens": len(ref), "common_prefix": prefix, "identical": identical}
    if not identical and ref_logits is not None and prefix < len(ref_logits):
        # How close the PyTorch model itself was to choosing the GGUF's token at the split point.
        step = ref_logits[prefix]
        if prefix < len(ours):
            result["margin_at_divergence"] = round(float(step[ref[prefix]] - step[ours[prefix]]), 4)
    need = min(GREEDY_MIN_PREFIX, len(ref), len(ours))
    result["passed"] = identical or prefix >= need
    return result


# A free-running greedy run that splits at a near-tie (measured: a 0.0004-logit margin after 5 tokens of
# a real fine-tune) proves nothing either way; the GGUF is then judged on PyTorch's own path instead.
NEAR_TIE = 0.1


def teacher_forced(llm, ids: list[int], ref: list[int], ref_logits: list) -> dict:
    """On the PyTorch greedy path, whether the GGUF picks the same next token at every position, a pick
    that PyTorch itself scores within NEAR_TIE of its own choice counting as agreement."""
    import numpy as np

    llm.reset()
    llm.eval(ids + ref[:-1])
    base = len(ids) - 1
    wrong, ties = [], 0
    for i, token in enumerate(ref):
        pick = int(np.argmax(llm.scores[base + i]))
        if pick == token:
            continue
        margin = float(ref_logits[i][token] - ref_logits[i][pick])
        if margin < NEAR_TIE:
            ties += 1
        else:
            wrong.append({"position": i, "margin": round(margin, 4)})
    return {"positions": len(ref), "near_ties": ties, "disagreements": wrong[:5], "passed": not wrong}


def greedy_check(f16_llm, model, hf_tokenizer) -> dict:
    ids = prompt_ids(hf_tokenizer)
    ref, logits = greedy_hf(model, hf_tokenizer, ids)
    ours = greedy_gguf(f16_llm, ids)
    result = compare_greedy(ours, ref, logits)
    if not result["passed"] and result.get("margin_at_divergence", NEAR_TIE) < NEAR_TIE:
        result["teacher_forced"] = teacher_forced(f16_llm, ids, ref, logits)
        result["passed"] = result["teacher_forced"]["passed"]
    return result | {"gguf_text": hf_tokenizer.decode(ours)[:200], "pytorch_text": hf_tokenizer.decode(ref)[:200],
                     "gguf_ids": ours, "pytorch_ids": ref}


def ppl_sequences(rows: list[dict], hf_tokenizer, max_tokens: int, max_len: int) -> list[tuple[list[int], int]]:
    """(ids, start of the response) for test rows in chat format, up to `max_tokens` tokens in all.
    Prompt and response both cost a forward pass but only the response is scored, so rows with the
    shortest prompts go first (ties in file order): more scored tokens for the same time."""
    candidates = []
    for row in rows:
        user = chat.for_template(chat.messages(row), hf_tokenizer.chat_template)
        head = prompt_ids(hf_tokenizer, user)
        full = list(hf_tokenizer.apply_chat_template(user + [{"role": "assistant", "content": row["response"]}],
                                                     tokenize=True, return_dict=False))
        # The response starts where the conversation's tokens stop matching the prompt's: text after
        # the generation prompt (Llama 3's "\n\n") may merge with the boundary into another token.
        start = next((i for i, (a, b) in enumerate(zip(head, full)) if a != b), min(len(head), len(full)))
        if start < len(head) - 2 or start >= max_len - 1 or start >= len(full):
            continue  # a template that rewrites the prompt once answered, or a prompt longer than the window
        candidates.append((full[:max_len], start))
    out, total = [], 0
    for full, start in sorted(candidates, key=lambda c: c[1]):
        room = max_tokens - total
        if room <= start + 1:
            break
        out.append((full[:room], start))
        total += len(full[:room])
    if candidates and not out:
        shortest = min(c[1] for c in candidates)
        raise click.ClickException(f"params.yaml: export.ppl_tokens {max_tokens} is below the shortest test prompt "
                                   f"in chat format ({shortest} tokens) plus one reply token; raise it, or set "
                                   f"0 to skip the perplexity check")
    return out


def perplexity(llm, sequences: list[tuple[list[int], int]]) -> dict:
    """exp(mean NLL) of the response tokens given the prompt, from llama.cpp's logits."""
    import numpy as np

    nll, count = 0.0, 0
    for ids, start in sequences:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[start - 1:len(ids) - 1], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        logz = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        targets = np.asarray(ids[start:])
        nll += float((logz - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    if not count:
        raise click.ClickException("perplexity check: no test row fits the context window")
    return {"ppl": round(math.exp(nll / count), 4), "tokens": count, "rows": len(sequences)}


def hf_scores(model, sequences: list[tuple[list[int], int]]):
    """(summed NLL, scored tokens, argmax per scored position) of the response tokens, from PyTorch."""
    import torch

    nll, count, argmax = 0.0, 0, []
    with torch.no_grad():
        for ids, start in sequences:
            logits = model(torch.tensor([ids], device=model.device)).logits[0, start - 1:len(ids) - 1].float()
            target = torch.tensor(ids[start:], device=logits.device)
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += len(ids) - start
            argmax += logits.argmax(-1).tolist()
    return nll, count, argmax


def qlora_merge(base: Path, adapter: Path, merged, sequences: list[tuple[list[int], int]]) -> dict:
    """What folding an adapter trained on NF4 weights into the full-precision base changes: the adapter
    learnt to correct the 4-bit rounding of the weights it sat on, which the merged model no longer has.
    Perplexity of the response tokens and teacher-forced argmax agreement, 4-bit base + adapter vs merged."""
    import math

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    quantized = AutoModelForCausalLM.from_pretrained(base, dtype=compute, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute),
        **({"device_map": {"": 0}} if torch.cuda.is_available() else {}))
    trained = PeftModel.from_pretrained(quantized, adapter).eval()
    nll_q, count, argmax_q = hf_scores(trained, sequences)
    del trained, quantized
    nll_m, _, argmax_m = hf_scores(merged.eval(), sequences)
    agree = sum(a == b for a, b in zip(argmax_q, argmax_m))
    return {"tokens": count, "ppl_4bit_adapter": round(math.exp(nll_q / max(count, 1)), 4),
            "ppl_merged": round(math.exp(nll_m / max(count, 1)), 4),
            "argmax_agreement": round(agree / max(count, 1), 4)}


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, round(time.monotonic() - start, 2)
