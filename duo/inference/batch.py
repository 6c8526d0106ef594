"""Many sequences decoded together in one llama.cpp context (continuous batching), for infer.

llama-cpp-python's high-level API decodes one sequence at a time. On a small model one decoding step
is bound by reading the weights and by per-call overhead, not by arithmetic, so S sequences in one
batch cost little more than one (make bench: `infer.levers`). Each prompt is evaluated once and its
KV cells are shared by its K samples (a unified KV cache: `llama_memory_seq_cp` copies no data); a
sequence that ends frees its slot for the next waiting sample at once, so short answers (a one-word
label) do not wait for long ones. Each sample has its own sampler chain, built like llama-cpp-python's
`create_chat_completion` (top-k 40, typical 1, top-p, min-p 0.05, temperature, seeded draw), so what
it draws depends on its seed, not on its neighbours. The logits themselves may differ in the last bits
with the batch's shape (llama.cpp picks kernels by batch size), as they do between llama-cpp-python's
own prefix-cached and uncached calls.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Sample:
    text: str
    tokens: int
    finish_reason: str  # "stop" at an end-of-generation token, "length" at max_tokens


@dataclass
class _Seq:
    job: int
    sample: int
    n_prompt: int
    sampler: object
    tokens: list[int] = field(default_factory=list)


class BatchedGenerator:
    """A second llama.cpp context on `llm`'s model with `slots` sequences and room for the prompts and
    continuations in flight; `generate` runs every (prompt, seeds) job through it."""

    def __init__(self, llm, slots: int, max_prompt_tokens: int, max_tokens: int, *, top_k: int = 40,
                 min_p: float = 0.05, typical_p: float = 1.0):
        import llama_cpp

        from duo.compat import llama as compat

        internals, model = compat.llama_internals(), compat.llama_model(llm)
        self.lib, self.internals, self.llm = llama_cpp, internals, llm
        self.slots, self.max_tokens, self.max_prompt = slots, max_tokens, max_prompt_tokens
        self.top_k, self.min_p, self.typical_p = top_k, min_p, typical_p
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_seq_max = slots
        # one KV cache for all sequences, so the samples of a prompt share its cells (one stream per
        # sequence copies them, and measured 1.4x slower at 16 sequences)
        params.kv_unified = True
        # room for the longest prompt plus a full continuation per slot: admission below never overflows
        self.capacity = max_prompt_tokens + slots * max_tokens
        params.n_ctx = self.capacity
        self.n_batch = max(slots, params.n_batch)
        params.n_batch = self.n_batch
        self._stack = contextlib.ExitStack()
        self.ctx = self._stack.enter_context(contextlib.closing(
            internals.LlamaContext(model=model, params=params, verbose=False)))
        self.batch = self._stack.enter_context(contextlib.closing(
            internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=slots, verbose=False)))
        self.vocab = llama_cpp.llama_model_get_vocab(model.model)

    def close(self) -> None:
        self._stack.close()

    def _sampler(self, seed: int, temperature: float, top_p: float):
        s = self.internals.LlamaSampler()
        if temperature == 0.0:
            s.add_greedy()
        else:
            s.add_top_k(self.top_k)
            s.add_typical(self.typical_p, 1)
            s.add_top_p(top_p, 1)
            s.add_min_p(self.min_p, 1)
            s.add_temp(temperature)
            s.add_dist(seed)
        return s

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits)."""
        b = self.batch.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        rc = self.lib.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (KV cache of {self.capacity} cells full?)")

    def _cells(self, n_prompt: int, n_samples: int) -> int:
        """KV cells a prompt and its samples may occupy: the prompt once, a full continuation each."""
        return n_prompt + n_samples * self.max_tokens

    def generate(self, jobs: list[tuple[list[int], list[int]]], temperature: float,
                 top_p: float) -> Iterator[tuple[int, int, Sample]]:
        """jobs: (prompt tokens, one seed per sample). Yields (job, sample, Sample) as samples end."""
        for tokens, _ in jobs:
            if len(tokens) > self.max_prompt:
                raise ValueError(f"prompt of {len(tokens)} tokens over the {self.max_prompt} planned")
        self.lib.llama_memory_clear(self.ctx.memory, True)
        self._free = list(range(self.slots))
        self._running: dict[int, _Seq] = {}
        self._reserved: dict[int, int] = {}  # job -> KV cells its running samples may occupy
        self._left: dict[int, int] = {}      # job -> samples still running
        queue = [(j, s) for j, (_, seeds) in enumerate(jobs) for s in range(len(seeds))]
        pos = 0
        try:
            while pos < len(queue) or self._running:
                # admit the next prompt's samples while slots and cells allow
                while pos < len(queue) and self._free:
                    job = queue[pos][0]
                    tokens, seeds = jobs[job]
                    samples = [s for j, s in queue[pos:pos + len(seeds)] if j == job][:len(self._free)]
                    cells = self._cells(len(tokens), len(samples))
                    if sum(self._reserved.values()) + cells > self.capacity:
                        break
                    self._reserved[job] = self._reserved.get(job, 0) + cells
                    self._left[job] = self._left.get(job, 0) + len(samples)
                    pos += len(samples)
                    yield from self._start(job, tokens, [seeds[s] for s in samples], samples, temperature, top_p, jobs)
                if self._running:
                    step = list(self._running)
                    self._decode([(self._running[s].tokens[-1], self._running[s].n_prompt + len(self._running[s].tokens) - 1,
                                   s, True) for s in step])
                    for i, slot in enumerate(step):
                        yield from self._draw(slot, i, jobs)
        finally:
            for seq in self._running.values():
                seq.sampler.close()

    def _start(self, job, tokens, seeds, samples, temperature, top_p, jobs):
        """Evaluate the prompt once on the first slot, share its cells with the others, draw first tokens."""
        slots = [self._free.pop(0) for _ in samples]
        first = slots[0]
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            self._decode([(t, start + i, first, start + i == len(tokens) - 1) for i, t in enumerate(chunk)])
        for slot in slots[1:]:
            self.lib.llama_memory_seq_cp(self.ctx.memory, first, slot, -1, -1)
        last = (len(tokens) - 1) % self.n_batch
        for slot, seed, sample in zip(slots, seeds, samples):
            self._running[slot] = _Seq(job, sample, len(tokens), self._sampler(seed, temperature, top_p))
        # all draw from the prompt's logits before the next decode overwrites them
        for slot in slots:
            yield from self._draw(slot, last, jobs)

    def _draw(self, slot, logit_idx, jobs):
        """Draw the slot's next token; a finished sample frees its slot and cells and is yielded."""
        seq = self._running[slot]
        token = seq.sampler.sample(self.ctx, logit_idx)
        if self.lib.llama_vocab_is_eog(self.vocab, token):
            done = "stop"
        else:
            seq.tokens.append(token)
            done = "length" if len(seq.tokens) >= self.max_tokens else None
        if done is None:
            return
        del self._running[slot]
        seq.sampler.close()
        self.lib.llama_memory_seq_rm(self.ctx.memory, slot, -1, -1)
        self._free.append(slot)
        self._left[seq.job] -= 1
        if not self._left[seq.job]:
            del self._reserved[seq.job], self._left[seq.job]
        text = self.llm.detokenize(seq.tokens, prev_tokens=jobs[seq.job][0]).decode("utf-8", errors="ignore")
        yield seq.job, seq.sample, Sample(text, len(seq.tokens), done)
