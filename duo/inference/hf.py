"""The transformers backend: base + adapter merged in PyTorch (GPU users; what is judged is then not
the GGUF that ships)."""
from __future__ import annotations

from pathlib import Path

from duo import contracts
from duo.data import chat


class TransformersBackend:
    """Base + adapter merged in PyTorch: bf16 on a GPU with bf16 math, else fp32. With `infer.parallel`
    > 1, `generate_all` samples the K responses of several prompts in one `generate` call."""

    def __init__(self, _path: Path, p):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.p, self.torch = p, torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained(contracts.ADAPTER)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(contracts.BASE, dtype=dtype)
        self.model = PeftModel.from_pretrained(model, contracts.ADAPTER).merge_and_unload().to(self.device).eval()

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

    def generate(self, messages: list[dict], seed: int) -> tuple[str, int, str]:
        torch = self.torch
        enc = self.tok.apply_chat_template(chat.for_template(messages, self.tok.chat_template), add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True).to(self.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**enc, **self._sampling())
        return self._result(out[0][enc["input_ids"].shape[1]:])

    def generate_all(self, prompts: list[list[dict]], seeds: list[list[int]]):
        """`infer.parallel` // K prompts per `generate` call, each with its K samples, left-padded. One
        seed per call (the first sample's): torch samples a batch from one generator, so a response
        depends on its batch, which is fixed by the prompts' order and `infer.parallel`."""
        torch, k = self.torch, self.p.k
        draws = k if self.p.temperature > 0 else 1  # greedy: the K samples are one answer
        per_call = max(1, self.p.parallel // k)
        self.tok.padding_side = "left"
        for start in range(0, len(prompts), per_call):
            chunk = range(start, min(start + per_call, len(prompts)))
            texts = [self.tok.apply_chat_template(chat.for_template(prompts[i], self.tok.chat_template),
                                                  add_generation_prompt=True, tokenize=False) for i in chunk]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(seeds[start][0])
            with torch.no_grad():
                out = self.model.generate(**enc, num_return_sequences=draws, **self._sampling())
            for row, new in enumerate(out[:, enc["input_ids"].shape[1]:]):
                result = self._result(new)
                for j in range(row % draws, k, draws):
                    yield (chunk[row // draws], j, *result)
