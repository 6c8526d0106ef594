"""Tiny random-weight students of the vendors' own architectures, on the vendors' real vocabularies and
their own chat templates, all offline from the pinned llama.cpp sdist (duo.llamacpp.converter extracts
models/ggml-vocab-*.gguf and models/templates/*.jinja): the HF tokenizer is rebuilt from the vocabulary
GGUF by transformers' own GGUF reader, and must give the token ids the vendor's tokenizer gave on
llama.cpp's test texts (the .inp/.out files beside each vocabulary) before anything is built on it.

Where the sdist lacks the vendor's vocabulary the student runs on the nearest real one, with the
vendor's control tokens added (`Vendor.note` says which); SentencePiece students (Gemma 2, Phi-3.5) get
a tokenizer.model written from the vocabulary, because their converters read only that."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from duo.llamacpp import converter


@dataclass(frozen=True)
class Vendor:
    label: str                 # the vendor's model this student stands for
    arch: str                  # its Hugging Face architecture
    vocab: str                 # models/ggml-vocab-<vocab>.gguf
    template: str              # models/templates/<template>.jinja
    family: str | None         # duo's template family (None: unknown, no Ollama TEMPLATE)
    bos: str | None            # special tokens as the vendor's tokenizer_config.json sets them
    eos: str
    pad: str
    added: tuple[str, ...] = ()  # the vendor's control tokens this vocabulary lacks
    tie: bool = True           # tied input/output embeddings, as the vendor's small models
    note: str = ""             # where this student differs from the vendor's own


VENDORS = {
    "llama3.2": Vendor("Llama 3.2", "LlamaForCausalLM", "llama-bpe", "meta-llama-Llama-3.2-3B-Instruct", "llama3",
                       "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    "qwen2.5": Vendor("Qwen 2.5", "Qwen2ForCausalLM", "qwen2", "Qwen-Qwen2.5-7B-Instruct", "chatml",
                      None, "<|im_end|>", "<|endoftext|>"),
    "gemma2": Vendor("Gemma 2", "Gemma2ForCausalLM", "gemma-4", "google-gemma-2-2b-it", "gemma",
                     "<bos>", "<eos>", "<pad>", ("<start_of_turn>", "<end_of_turn>"),
                     note="Gemma 2's own 256k SentencePiece vocabulary is not in the sdist: the student uses "
                          "Gemma's later 262k vocabulary (`ggml-vocab-gemma-4`) with `<start_of_turn>`/`<end_of_turn>` added"),
    "phi3.5": Vendor("Phi-3.5", "Phi3ForCausalLM", "phi-3", "microsoft-Phi-3.5-mini-instruct", "phi3",
                     "<s>", "<|endoftext|>", "<|endoftext|>", tie=False),
    "mistral-nemo": Vendor("Mistral Nemo", "MistralForCausalLM", "llama-spm", "mistralai-Mistral-Nemo-Instruct-2407",
                           "mistral", "<s>", "</s>", "</s>", ("[INST]", "[/INST]"), tie=False,
                           note="Mistral Nemo's Tekken vocabulary (131k, tiktoken) is not in the sdist: the student "
                                "uses the 32k SentencePiece vocabulary of Llama 2 / Mistral 7B (`ggml-vocab-llama-spm`) "
                                "with `[INST]`/`[/INST]` added"),
    "smollm3": Vendor("SmolLM3", "SmolLM3ForCausalLM", "llama-bpe", "HuggingFaceTB-SmolLM3-3B", None,
                      None, "<|im_end|>", "<|im_end|>", ("<|im_start|>", "<|im_end|>"),
                      note="SmolLM3 renames two of Llama 3's reserved tokens to `<|im_start|>`/`<|im_end|>`; "
                           "here they are added after Llama 3's vocabulary"),
}
SENTENCEPIECE = {"gemma-4", "phi-3", "llama-spm"}  # converters read these from tokenizer.model


def template(vendor: Vendor) -> str:
    return (converter.templates() / f"{vendor.template}.jinja").read_text(encoding="utf-8")


def vocab_samples(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test texts and the ids the vendor's own tokenizer gave them."""
    path = converter.vocab(name)
    texts = path.with_name(path.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, ids)]


def vocab_tokenizer(name: str):
    """The vocabulary GGUF as a transformers fast tokenizer, with only the GGUF's own tokens."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import gguf_tokenizer_mapping as m

    architecture, spec, config = m.get_gguf_tokenizer(str(converter.vocab(name)))
    # llama.cpp's Llama 2 vocabulary carries no architecture hint; it splits like Phi-3 (a prefix-space
    # normalizer, which transformers' GGUF reader picks by architecture), as llama.cpp's test ids show.
    builder = m.select_tokenizer_builder("phi3" if name == "llama-spm" else architecture, spec["tokenizer_type"])
    backend = m.set_split_regex(m.add_gguf_special_tokens(builder(spec), spec), spec).backend_tokenizer
    state = json.loads(backend.to_str())
    # transformers' GPT-2 class adds its own <|endoftext|>; the vendor's vocabulary has no such extra token
    state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < len(spec["tokens"])]
    tokenizer = Tokenizer.from_str(json.dumps(state))
    if spec.get("pre_tokenizer_type") == "llama-bpe":
        # As Meta's tokenizer.json (which SmolLM3 reuses): words in the vocabulary stay whole, and encode()
        # adds <|begin_of_text|> (llama.cpp's converter recognises Llama 3's split by that very output)
        tokenizer.model.ignore_merges = True
        bos = spec["tokens"][128000]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, 128000)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def tokenizer(vendor: Vendor):
    from tokenizers import AddedToken

    tok = vocab_tokenizer(vendor.vocab)
    if vendor.added:
        tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                              for t in vendor.added]})
    tok.bos_token, tok.eos_token, tok.pad_token = vendor.bos, vendor.eos, vendor.pad
    tok.chat_template = template(vendor)
    return tok


# SentencePiece's model file is a protobuf (sentencepiece_model.proto); the sentencepiece wheel reads it
# in C++ without the protobuf package, which duo does not depend on, so the few fields needed are written here.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(number << 3) + _varint(int(value))
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def write_sentencepiece(name: str, path: Path, added: tuple[str, ...] = ()) -> None:
    """tokenizer.model for a SentencePiece vocabulary GGUF: its pieces, scores and types (GGUF's token
    types are SentencePiece's) then `added` as control pieces, a BPE model with byte fallback, and the
    vocabulary's prefix-space rule."""
    from gguf import GGUFReader

    fields = GGUFReader(converter.vocab(name)).fields
    value = lambda key, default=None: fields[key].contents() if key in fields else default  # noqa: E731
    tokens, scores, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores"), value("tokenizer.ggml.token_type")
    if value("tokenizer.ggml.model") == "gemma4":
        # Gemma's vocabulary stores runs of spaces as spaces (SentencePiece: U+2581), and its merge order
        # is the order of the tokens, not of their scores (as transformers' GGUF reader rebuilds it).
        tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
        scores = [-float(i) for i in range(len(tokens))]
    ids = {k: value(f"tokenizer.ggml.{k}_token_id") for k in ("unknown", "bos", "eos", "padding")}
    # SentencePiece allows one unknown piece: older converters typed their [PAD] fillers unknown too
    types = [2 if i == ids["unknown"] else 5 if ty == 2 else ty for i, ty in enumerate(types)]
    rows = [*zip(tokens, scores, types), *((t, 0.0, 3) for t in added)]
    pieces = b"".join(_field(1, _field(1, t) + _field(2, float(s)) + _field(3, int(ty))) for t, s, ty in rows)
    trainer = _field(3, 2) + _field(35, True)  # model_type BPE, byte_fallback
    for number, key in ((40, "unknown"), (41, "bos"), (42, "eos"), (43, "padding")):
        if ids[key] is not None:
            trainer += _field(number, ids[key])
    prefix = bool(value("tokenizer.ggml.add_space_prefix", True))
    normalizer = _field(1, "identity") + _field(3, prefix) + _field(4, False) + _field(5, True)
    path.write_bytes(pieces + _field(2, trainer) + _field(3, normalizer))


def build(key: str, out: Path, layers: int = 2) -> Path:
    """A Hugging Face model folder: random weights of the vendor's architecture, its tokenizer and template."""
    import torch
    import transformers

    vendor = VENDORS[key]
    tok = tokenizer(vendor)
    config_cls = getattr(transformers, vendor.arch.replace("ForCausalLM", "Config"))
    ids = {f"{k}_token_id": tok.convert_tokens_to_ids(t) if t else None
           for k, t in (("bos", vendor.bos), ("eos", vendor.eos), ("pad", vendor.pad))}
    extra = {"head_dim": 16, "query_pre_attn_scalar": 16} if vendor.arch == "Gemma2ForCausalLM" else {}
    config = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        tie_word_embeddings=vendor.tie, **ids, **extra)
    config.architectures = [vendor.arch]
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if vendor.vocab in SENTENCEPIECE:
        write_sentencepiece(vendor.vocab, out / "tokenizer.model", vendor.added)
    (out / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
    return out
