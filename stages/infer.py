"""infer: K responses per test prompt from the exported GGUF through llama.cpp (what is judged is
what ships), `infer.parallel` sequences decoded together (duo/llama_batch.py); `infer.backend:
transformers` runs base + adapter in PyTorch instead (GPU users).

Run: python -m stages.infer   (reads models/student.gguf, data/test.jsonl; writes
data/predictions.jsonl, metrics/infer.json)
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import click

from duo import local_llm
from duo import params as params_mod
from duo import progress
from duo import records

GGUF = Path("models/student.gguf")
TEMPLATE_RESERVE = 32  # tokens the chat template adds around a prompt
FIELDS = records.ROW_FIELDS


def sample_seed(seed: int, prompt_id: str, sample_idx: int) -> int:
    """A per-(prompt, sample) seed: stable across runs and independent of row order."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class LlamaCppBackend:
    def __init__(self, path: Path, p):
        import llama_cpp

        self.p = p
        self.truncated: set[int] = set()  # hashes of prompts cut to fit (each counted once, not K times)
        self.llm = llama_cpp.Llama(str(path), n_ctx=p.n_ctx, verbose=False, seed=p.seed,
                                   **local_llm.thread_kwargs(p.threads))

    def fit(self, prompt: str) -> str:
        """Policy for a prompt longer than the context: keep its head and tail, cut the middle, so
        that max_tokens still fit; counted as `truncated_prompts` in metrics/infer.json."""
        tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=False)
        budget = self.p.n_ctx - self.p.max_tokens - TEMPLATE_RESERVE
        if budget < 16:
            budget = self.p.n_ctx // 2
        if len(tokens) <= budget:
            return prompt
        self.truncated.add(hash(prompt))
        half = budget // 2 - 4  # room for the marker
        head = self.llm.detokenize(tokens[:half]).decode("utf-8", errors="ignore")
        tail = self.llm.detokenize(tokens[len(tokens) - half:]).decode("utf-8", errors="ignore")
        return f"{head}\n[...]\n{tail}"

    def generate(self, prompt: str, seed: int) -> tuple[str, int, str]:
        prompt = self.fit(prompt)
        # The K samples of one prompt run back to back, so llama.cpp reuses the prompt's KV cache.
        out = self.llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=self.p.max_tokens,
                                              temperature=self.p.temperature, top_p=self.p.top_p, seed=seed)
        choice = out["choices"][0]
        return choice["message"]["content"] or "", out["usage"]["completion_tokens"], choice["finish_reason"]

    def generate_all(self, prompts: list[str], seeds: list[list[int]]):
        """Every sample of every prompt through one continuously batched context (`infer.parallel`
        sequences at once); yields (prompt index, sample index, text, tokens, finish reason)."""
        from duo import llama_batch

        jobs = []
        for prompt, prompt_seeds in zip(prompts, seeds):
            text = local_llm.render_chat(self.llm, [{"role": "user", "content": self.fit(prompt)}])
            jobs.append((self.llm.tokenize(text.encode("utf-8"), special=True), prompt_seeds))
        gen = llama_batch.BatchedGenerator(self.llm, self.p.parallel, max(len(t) for t, _ in jobs), self.p.max_tokens)
        try:
            for i, j, sample in gen.generate(jobs, self.p.temperature, self.p.top_p):
                yield i, j, sample.text, sample.tokens, sample.finish_reason
        finally:
            gen.close()


class TransformersBackend:
    """Base + adapter merged in PyTorch: bf16 on a GPU with bf16 math, else fp32. With `infer.parallel`
    > 1, `generate_all` samples the K responses of several prompts in one `generate` call."""

    def __init__(self, _path: Path, p):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.p, self.torch = p, torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained("models/adapter")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained("models/base", dtype=dtype)
        self.model = PeftModel.from_pretrained(model, "models/adapter").merge_and_unload().to(self.device).eval()

    def _sampling(self) -> dict:
        p = self.p
        sampling = {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p} if p.temperature > 0 else {
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"max_new_tokens": p.max_tokens, "pad_token_id": self.tok.pad_token_id, **sampling}

    def _result(self, new) -> tuple[str, int, str]:
        """Generated ids up to and including the first end of sequence (a batch pads after it)."""
        ids = new.tolist()
        eos = self.tok.eos_token_id
        n = ids.index(eos) + 1 if eos in ids else len(ids)
        return self.tok.decode(ids[:n], skip_special_tokens=True), n, "stop" if eos in ids else "length"

    def generate(self, prompt: str, seed: int) -> tuple[str, int, str]:
        torch = self.torch
        enc = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True).to(self.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**enc, **self._sampling())
        return self._result(out[0][enc["input_ids"].shape[1]:])

    def generate_all(self, prompts: list[str], seeds: list[list[int]]):
        """`infer.parallel` // K prompts per `generate` call, each with its K samples, left-padded. One
        seed per call (the first sample's): torch samples a batch from one generator, so a response
        depends on its batch, which is fixed by the prompts' order and `infer.parallel`."""
        torch, k = self.torch, self.p.k
        draws = k if self.p.temperature > 0 else 1  # greedy: the K samples are one answer
        per_call = max(1, self.p.parallel // k)
        self.tok.padding_side = "left"
        for start in range(0, len(prompts), per_call):
            chunk = range(start, min(start + per_call, len(prompts)))
            texts = [self.tok.apply_chat_template([{"role": "user", "content": prompts[i]}],
                                                  add_generation_prompt=True, tokenize=False) for i in chunk]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(seeds[start][0])
            with torch.no_grad():
                out = self.model.generate(**enc, num_return_sequences=draws, **self._sampling())
            for row, new in enumerate(out[:, enc["input_ids"].shape[1]:]):
                result = self._result(new)
                for j in range(row % draws, k, draws):
                    yield (chunk[row // draws], j, *result)


def _samples(test: list[dict], backend, p):
    """(prompt index, sample index, text, tokens, finish reason) in the order they finish."""
    seeds = [[sample_seed(p.seed, row["id"], j) for j in range(p.k)] for row in test]
    if p.parallel > 1 and hasattr(backend, "generate_all"):
        yield from backend.generate_all([row["prompt"] for row in test], seeds)
        return
    for i, row in enumerate(test):
        for j in range(p.k):
            yield (i, j, *backend.generate(row["prompt"], seeds[i][j]))


def run(test: list[dict], backend, p, cycle: int) -> tuple[list[dict], dict]:
    done, tokens, stopped = {}, 0, 0
    start = time.monotonic()
    bar = progress.bar(len(test) * p.k, "infer", unit="resp")
    for i, j, text, n, finish in _samples(test, backend, p):
        row = test[i]
        tokens += n
        stopped += finish == "stop"
        done[i, j] = {"prompt_id": row["id"], "sample_idx": j, "task": row["task"], "prompt": row["prompt"],
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


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    params = params_mod.load(params_path)
    p = params.infer
    test = records.read_records("data/test.jsonl", FIELDS, unique="id")
    if p.backend == "llama_cpp" and not GGUF.exists():
        raise click.ClickException(f"{GGUF} missing: run the export stage first")
    backend = (LlamaCppBackend if p.backend == "llama_cpp" else TransformersBackend)(GGUF, p)
    rows, metrics = run(test, backend, p, params.cycle)
    records.write_jsonl("data/predictions.jsonl", rows)
    records.write_json("metrics/infer.json", {"cycle": params.cycle, "backend": p.backend, "k": p.k,
                                              "parallel": p.parallel, **metrics})
    progress.summary("infer", f"{metrics['responses']} responses ({p.k} per prompt), {metrics['tokens_per_s']} tokens/s")


if __name__ == "__main__":
    main()
