"""Typed params sections. Every key of params.yaml is declared here; an unknown or mistyped key
fails at start with its dotted name, before any model loads."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import click
import yaml


class ParamsError(click.ClickException):
    pass


@dataclass
class Student:
    source: str = "bundled:smollm2"
    allow_hub: bool = False


@dataclass
class Coverage:
    path: str = "data/coverage.jsonl"
    train_ratio: float = 0.8
    seed: int = 42
    max_record_bytes: int = 1_000_000

    def check(self):
        if not 0.0 < self.train_ratio < 1.0:
            raise ValueError("train_ratio must be between 0 and 1 (exclusive)")
        if self.max_record_bytes < 1:
            raise ValueError("max_record_bytes must be >= 1")


@dataclass
class Service:
    model: str = "local"
    api_base: Optional[str] = None
    timeout_s: float = 120.0
    max_retries: int = 3
    n_ctx: int = 4096
    concurrency: int = 4
    rpm: int = 0
    tpm: int = 0
    budget_usd: float = 0.0
    budget_total_usd: float = 0.0
    on_overflow: Literal["truncate", "skip"] = "truncate"
    batch: bool = False
    batch_poll_s: float = 30.0

    def check(self):
        if self.concurrency < 1 or self.rpm < 0 or self.tpm < 0 or self.timeout_s <= 0:
            raise ValueError("concurrency >= 1; rpm, tpm >= 0; timeout_s > 0")
        if self.budget_usd < 0 or self.budget_total_usd < 0:
            raise ValueError("budget_usd and budget_total_usd must be >= 0 (0 = no cap)")
        if self.batch_poll_s <= 0:
            raise ValueError("batch_poll_s must be > 0")
        if self.batch and (self.model == "local" or self.model.startswith("local:")):
            raise ValueError("batch: the local llama.cpp server has no batch API; set batch: false")


@dataclass
class Synth:
    model: Optional[str] = None
    seeds_per_cycle: int = 6
    pairs_per_request: int = 3
    temperature: float = 0.8
    max_tokens: int = 1024
    seed: int = 42
    per_cycle: int = 12
    schedule: Literal["fixed", "doubling"] = "fixed"
    max_requests: int = 30

    def check(self):
        if self.seeds_per_cycle < 1 or self.pairs_per_request < 1 or self.max_requests < 1 or self.per_cycle < 0:
            raise ValueError("seeds_per_cycle, pairs_per_request, max_requests >= 1 and per_cycle >= 0")


@dataclass
class Curate:
    shingle: int = 3
    num_perm: int = 128
    lsh_threshold: float = 0.5
    rouge_l_max: float = 0.7
    decontam_ngram: int = 13
    min_instruction_tokens: Union[int, Literal["auto"]] = "auto"
    max_instruction_tokens: Union[int, Literal["auto"]] = "auto"
    min_response_tokens: Union[int, Literal["auto"]] = "auto"
    max_response_tokens: Union[int, Literal["auto"]] = "auto"
    min_passage_words: Union[int, Literal["auto"]] = "auto"
    min_compression_ratio: float = 0.25
    language: Optional[str] = None

    def check(self):
        if self.shingle < 1 or self.num_perm < 16 or self.decontam_ngram < 1:
            raise ValueError("shingle >= 1, num_perm >= 16, decontam_ngram >= 1")
        for name in ("min_instruction_tokens", "max_instruction_tokens", "min_response_tokens",
                     "max_response_tokens", "min_passage_words"):
            if getattr(self, name) != "auto" and getattr(self, name) < 0:
                raise ValueError(f"{name} must be 'auto' or >= 0")
        if not (0 < self.lsh_threshold <= 1 and 0 < self.rouge_l_max <= 1):
            raise ValueError("lsh_threshold and rouge_l_max must be in (0, 1]")


@dataclass
class Lora:
    r: Union[int, Literal["auto"]] = "auto"
    alpha: Union[int, Literal["auto"]] = "auto"
    dropout: float = 0.05
    target_modules: Union[str, list] = "all-linear"
    layers: Union[int, Literal["all"]] = "all"

    def check(self):
        if self.layers != "all" and self.layers < 1:
            raise ValueError("layers must be 'all' or the number of top decoder layers to adapt (>= 1)")


@dataclass
class Finetune:
    epochs: float = 4.0
    max_steps: int = -1
    lr: float = 5e-4
    batch_size: int = 8
    micro_batch_size: Union[int, Literal["auto"]] = "auto"
    grad_accum: int = 1
    max_length: int = 1024
    loss: Literal["completion", "sequence"] = "completion"
    quantization: Literal["auto", "none", "4bit"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    group_by_length: bool = True
    padding_free: bool = False
    gradient_checkpointing: bool = False
    frozen_cache_mb: int = 1024
    threads: int = 0
    seed: int = 42
    save_steps: int = 10
    validation_ratio: float = 0.1
    early_stopping_patience: int = 1
    lora: Lora = field(default_factory=Lora)

    def check(self):
        if self.micro_batch_size != "auto" and (
                self.micro_batch_size < 1 or self.batch_size % min(self.micro_batch_size, self.batch_size)):
            raise ValueError("micro_batch_size must divide batch_size")
        if self.frozen_cache_mb < 0:
            raise ValueError("frozen_cache_mb must be >= 0 (0 = off)")
        if not 0.0 <= self.validation_ratio < 1.0:
            raise ValueError("validation_ratio must be in [0, 1) (0 = no validation split, no early stopping)")
        if self.early_stopping_patience < 0:
            raise ValueError("early_stopping_patience must be >= 0 (0 = off)")


@dataclass
class Export:
    quant: str = "q8_0"
    lora_only: bool = False
    ppl_tokens: int = 512

    def check(self):
        if self.ppl_tokens < 0:
            raise ValueError("ppl_tokens must be >= 0 (0 = skip the perplexity check)")


@dataclass
class Infer:
    backend: Literal["llama_cpp", "transformers"] = "llama_cpp"
    k: int = 4
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 42
    n_ctx: int = 2048
    threads: int = 0
    parallel: int = 16

    def check(self):
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if not 1 <= self.parallel <= 256:  # llama.cpp's LLAMA_MAX_SEQ
            raise ValueError("parallel must be between 1 and 256")


@dataclass
class Judge:
    models: Optional[list] = None
    mode: Literal["single", "pairwise"] = "single"
    m: int = 1
    temperature: float = 0.7
    max_tokens: int = 96
    zetas: list = field(default_factory=lambda: [50, 70])
    max_parse_retries: int = 1
    max_error_rate: float = 0.25
    pmatch: bool = True
    seed: int = 42

    def check(self):
        if self.m < 1:
            raise ValueError("m must be >= 1")
        if self.models is not None and (not self.models or not all(isinstance(x, str) and x for x in self.models)):
            raise ValueError("models must be null or a non-empty list of model strings")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError("max_error_rate must be between 0 and 1")


@dataclass
class Gate:
    score: Literal["similarity", "precision", "pairwise"] = "precision"
    statistic: str = "mean"
    threshold: float = 70.0
    max_cycles: int = 3

    def check(self):
        if self.score == "pairwise":
            if self.statistic not in ("win", "win_or_tie"):
                raise ValueError("with score 'pairwise', statistic must be 'win' or 'win_or_tie'")
        elif self.statistic != "mean" and not (self.statistic.startswith("c") and self.statistic[1:].isdigit()):
            raise ValueError("statistic must be 'mean' or c<zeta> such as c70")


@dataclass
class Report:
    daily_tokens_in: int = 1_000_000
    daily_tokens_out: int = 250_000
    price_model: Optional[str] = None
    hardware_usd: float = 1500.0
    hardware_watts: float = 150.0
    usd_per_kwh: float = 0.20
    examples: int = 3

    def check(self):
        if min(self.daily_tokens_in, self.daily_tokens_out, self.hardware_usd, self.hardware_watts,
               self.usd_per_kwh, self.examples) < 0:
            raise ValueError("daily tokens, hardware_usd, hardware_watts, usd_per_kwh and examples must be >= 0")


@dataclass
class Params:
    cycle: int = 0
    student: Student = field(default_factory=Student)
    coverage: Coverage = field(default_factory=Coverage)
    service: Service = field(default_factory=Service)
    synth: Synth = field(default_factory=Synth)
    curate: Curate = field(default_factory=Curate)
    finetune: Finetune = field(default_factory=Finetune)
    export: Export = field(default_factory=Export)
    infer: Infer = field(default_factory=Infer)
    judge: Judge = field(default_factory=Judge)
    gate: Gate = field(default_factory=Gate)
    report: Report = field(default_factory=Report)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (list, dict, str, bool):
        return isinstance(value, hint)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def build(cls, data: Any, where: str, source: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{where}.{key}" if where else str(key)
            near = difflib.get_close_matches(str(key), names, n=1)
            tip = f" (did you mean '{near[0]}'?)" if near else ""
            raise ParamsError(f"{source}: unknown key '{dotted}'{tip}")
    values = {}
    for name in names:
        if name not in data:
            continue
        dotted = f"{where}.{name}" if where else name
        hint, value = hints[name], data[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, value, dotted, source)
            continue
        if not _type_ok(value, hint):
            raise ParamsError(f"{source}: '{dotted}' must be {_describe(hint)}, got {value!r}")
        if hint is float:
            value = float(value)
        values[name] = value
    obj = cls(**values)
    if hasattr(obj, "check"):
        try:
            obj.check()
        except ValueError as exc:
            raise ParamsError(f"{source}: '{where}': {exc}") from None
    return obj


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: invalid YAML: {exc}") from None
    return build(Params, data or {}, "", str(path))


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
