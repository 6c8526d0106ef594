"""The llama_cpp backend: K responses per prompt from the exported GGUF (what ships), `infer.parallel`
sequences decoded together (duo/inference/batch.py)."""
from __future__ import annotations

from pathlib import Path

from duo.llamacpp import local_llm
from duo.data import chat

TEMPLATE_RESERVE = 32  # tokens the chat template adds around a prompt


class LlamaCppBackend:
    def __init__(self, path: Path, p):
        import llama_cpp

        self.p = p
        self.truncated: set[int] = set()  # hashes of prompts cut to fit (each counted once, not K times)
        self.llm = llama_cpp.Llama(str(path), n_ctx=p.n_ctx, verbose=False, seed=p.seed,
                                   **local_llm.load_kwargs(p.threads, p.n_gpu_layers))

    @property
    def template(self) -> str | None:
        """The chat template inside the GGUF (the training one)."""
        return self.llm.metadata.get("tokenizer.chat_template")

    def fit(self, messages: list[dict]) -> list[dict]:
        """Policy for a conversation longer than the context: keep the head and tail of its longest
        message, cut the middle, so that max_tokens still fit; counted as `truncated_prompts` in
        metrics/infer.json. The result as the chat template takes it (duo/data/chat.py)."""
        sizes = [len(self.llm.tokenize(m["content"].encode(), add_bos=False, special=False)) for m in messages]
        budget = self.p.n_ctx - self.p.max_tokens - TEMPLATE_RESERVE * len(messages)
        if budget < 16:
            budget = self.p.n_ctx // 2
        if sum(sizes) > budget:
            self.truncated.add(hash(repr(messages)))
            longest = max(range(len(messages)), key=sizes.__getitem__)
            tokens = self.llm.tokenize(messages[longest]["content"].encode(), add_bos=False, special=False)
            half = max(8, (budget - (sum(sizes) - sizes[longest])) // 2 - 4)  # room for the marker
            head = self.llm.detokenize(tokens[:half]).decode("utf-8", errors="ignore")
            tail = self.llm.detokenize(tokens[len(tokens) - half:]).decode("utf-8", errors="ignore")
            messages = [dict(m) for m in messages]
            messages[longest]["content"] = f"{head}\n[...]\n{tail}"
        return chat.for_template(messages, self.template)

    def generate(self, messages: list[dict], seed: int) -> tuple[str, int, str]:
        # The K samples of one prompt run back to back, so llama.cpp reuses the prompt's KV cache.
        out = self.llm.create_chat_completion(self.fit(messages), max_tokens=self.p.max_tokens,
                                              temperature=self.p.temperature, top_p=self.p.top_p, seed=seed)
        choice = out["choices"][0]
        return choice["message"]["content"] or "", out["usage"]["completion_tokens"], choice["finish_reason"]

    def generate_all(self, conversations: list[list[dict]], seeds: list[list[int]]):
        """Every sample of every conversation through one continuously batched context (`infer.parallel`
        sequences at once); yields (prompt index, sample index, text, tokens, finish reason)."""
        from duo.inference import batch as llama_batch

        jobs = []
        for messages, prompt_seeds in zip(conversations, seeds):
            text = local_llm.render_chat(self.llm, self.fit(messages))
            # no BOS of our own: the template writes it where the model has one (as create_chat_completion does)
            jobs.append((self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True), prompt_seeds))
        gen = llama_batch.BatchedGenerator(self.llm, self.p.parallel, max(len(t) for t, _ in jobs), self.p.max_tokens)
        try:
            for i, j, sample in gen.generate(jobs, self.p.temperature, self.p.top_p):
                yield i, j, sample.text, sample.tokens, sample.finish_reason
        finally:
            gen.close()
