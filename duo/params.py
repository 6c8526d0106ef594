"""Typed params sections: the one parser of params.yaml, and its defaults.

Typed params sections: the only parser of params.yaml, whose values are also the defaults here (a test
keeps the two equal). An unknown or mistyped key, a number out of its range, or two sections that
contradict each other fail at start with the dotted key, before any model loads."""
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


def num(default, lo=None, hi=None, *, above: bool = False):
    """A numeric key with its range: lo <= value (lo < value with `above`) and value <= hi."""
    return field(default=default, metadata={"range": (lo, hi, above)})


def _in_range(value, bounds) -> str | None:
    lo, hi, above = bounds
    if lo is not None and (value <= lo if above else value < lo):
        return f"> {lo}" if above else f">= {lo}"
    if hi is not None and value > hi:
        return f"<= {hi}"
    return None


@dataclass
class Student:
    source: str = "bundled:smollm2"
    allow_hub: bool = False


@dataclass
class Coverage:
    path: str = "data/coverage.jsonl"
    train_ratio: float = num(0.8, 0.0, 1.0, above=True)
    seed: int = 42
    max_record_bytes: int = num(1_000_000, 1)

    def check(self):
        if self.train_ratio >= 1.0:
            raise ValueError("train_ratio must be < 1 (the rest is the test split)")


@dataclass
class Service:
    model: str = "local"
    api_base: Optional[str] = None
    timeout_s: float = num(120.0, 0.0, above=True)
    max_retries: int = num(3, 0)
    n_ctx: int = num(4096, 256)
    concurrency: int = num(4, 1, 1024)
    rpm: int = num(0, 0)
    tpm: int = num(0, 0)
    budget_usd: float = num(0.0, 0.0)
    budget_total_usd: float = num(0.0, 0.0)
    on_overflow: Literal["truncate", "skip"] = "truncate"
    batch: bool = False
    batch_poll_s: float = num(30.0, 0.0, above=True)

    def check(self):
        if self.batch and (self.model == "local" or self.model.startswith("local:")):
            raise ValueError("batch: the local llama.cpp server has no batch API; set batch: false")


@dataclass
class Synth:
    model: Optional[str] = None
    seeds_per_cycle: int = num(6, 1)
    pairs_per_request: int = num(3, 1, 100)
    temperature: float = num(0.8, 0.0, 2.0)
    max_tokens: int = num(1024, 16)
    seed: int = 42
    per_cycle: int = num(12, 0)
    schedule: Literal["fixed", "doubling"] = "fixed"
    max_requests: int = num(30, 1)
    answer_shares: Literal["train", "balanced"] = "train"
    focus: Literal["uniform", "failures"] = "uniform"


AutoInt = Union[int, Literal["auto"]]


@dataclass
class Curate:
    shingle: int = num(3, 1, 16)
    num_perm: int = num(128, 16, 1024)
    lsh_threshold: float = num(0.5, 0.0, 1.0, above=True)
    rouge_l_max: float = num(0.7, 0.0, 1.0, above=True)
    decontam_ngram: int = num(13, 1)
    min_instruction_tokens: AutoInt = num("auto", 0)
    max_instruction_tokens: AutoInt = num("auto", 1)
    min_response_tokens: AutoInt = num("auto", 0)
    max_response_tokens: AutoInt = num("auto", 1)
    min_passage_words: AutoInt = num("auto", 0)
    min_compression_ratio: float = num(0.25, 0.0, 1.0)
    language: Optional[str] = None


@dataclass
class Lora:
    r: AutoInt = num(16, 1, 1024)
    alpha: AutoInt = num("auto", 1)
    dropout: float = num(0.05, 0.0, 0.9)
    target_modules: Union[str, list] = "all-linear"
    layers: Union[int, Literal["all"]] = num("all", 1)


@dataclass
class Finetune:
    epochs: float = num(4.0, 0.0, above=True)
    max_steps: int = num(-1, -1)
    lr: float = num(5e-4, 0.0, 1.0, above=True)
    batch_size: int = num(8, 1)
    micro_batch_size: AutoInt = num("auto", 1)
    grad_accum: int = num(1, 1)
    max_length: int = num(1024, 16)
    loss: Literal["completion", "sequence"] = "completion"
    quantization: Literal["auto", "none", "4bit"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batches: Literal["rebalanced", "random", "grouped"] = "rebalanced"
    padding_free: bool = False
    gradient_checkpointing: bool = False
    frozen_cache_mb: int = num(1024, 0)
    threads: int = num(0, 0)
    seed: int = 42
    save_steps: int = num(10, 0)
    validation_ratio: float = num(0.1, 0.0, 0.9)
    validation_min_rows: int = num(20, 0)
    early_stopping_patience: int = num(0, 0)
    init: Literal["base", "previous"] = "base"
    processes: int = num(1, 1, 1024)
    accelerate_config: Optional[str] = None
    lora: Lora = field(default_factory=Lora)

    def check(self):
        if self.micro_batch_size != "auto" and self.batch_size % min(self.micro_batch_size, self.batch_size):
            raise ValueError("micro_batch_size must divide batch_size")
        if self.max_steps == 0:
            raise ValueError("max_steps must be -1 (epochs decide) or >= 1")
        if self.batch_size % self.processes:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of processes ({self.processes}): "
                             f"each process takes an equal share of every step")


@dataclass
class Export:
    quant: str = "q8_0"
    lora_only: bool = False
    ppl_tokens: int = num(512, 0)


@dataclass
class Infer:
    backend: Literal["llama_cpp", "transformers"] = "llama_cpp"
    k: int = num(4, 1, 64)
    max_tokens: int = num(256, 1)
    temperature: float = num(0.7, 0.0, 2.0)
    top_p: float = num(0.9, 0.0, 1.0, above=True)
    seed: int = 42
    n_ctx: int = num(2048, 64)
    threads: int = num(0, 0)
    parallel: int = num(16, 1, 256)  # llama.cpp's LLAMA_MAX_SEQ
    n_gpu_layers: AutoInt = num("auto", -1)

    def check(self):
        if self.max_tokens >= self.n_ctx:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be below n_ctx ({self.n_ctx}): no room for a prompt")


@dataclass
class Judge:
    models: Optional[list] = None
    mode: Literal["single", "pairwise"] = "single"
    m: int = num(1, 1, 100)
    temperature: float = num(0.7, 0.0, 2.0)
    max_tokens: int = num(96, 8)
    zetas: list = field(default_factory=lambda: [50, 70])
    max_parse_retries: int = num(1, 0, 10)
    max_error_rate: float = num(0.25, 0.0, 1.0)
    pmatch: bool = True
    seed: int = 42

    def check(self):
        if self.models is not None and (not self.models or not all(isinstance(x, str) and x for x in self.models)):
            raise ValueError("models must be null or a non-empty list of model strings")
        if not self.zetas or not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 100
                                     for z in self.zetas):
            raise ValueError(f"zetas must be a non-empty list of whole scores 1-100, got {self.zetas!r}")


@dataclass
class Gate:
    score: Literal["similarity", "precision", "pairwise"] = "precision"
    statistic: str = "mean"
    threshold: float = num(70.0, 0.0)
    confidence: float = num(0.9, 0.0, 1.0)
    max_cycles: int = num(3, 1)
    min_ratings: int = num(0, 0)
    min_agreement: float = num(0.5, -1.0, 1.0)

    def check(self):
        if self.score == "pairwise":
            if self.statistic not in ("win", "win_or_tie"):
                raise ValueError("with score 'pairwise', statistic must be 'win' or 'win_or_tie'")
        elif self.statistic != "mean" and not (self.statistic.startswith("c") and self.statistic[1:].isdigit()):
            raise ValueError("statistic must be 'mean' or c<zeta> such as c70")
        if 0 < self.confidence < 0.5 or self.confidence >= 1:
            raise ValueError(f"confidence must be 0 (the point value decides) or in [0.5, 1), got {self.confidence}")


@dataclass
class Report:
    daily_tokens_in: int = num(1_000_000, 0)
    daily_tokens_out: int = num(250_000, 0)
    price_model: Optional[str] = None
    hardware_usd: float = num(1500.0, 0.0)
    hardware_watts: float = num(150.0, 0.0)
    usd_per_kwh: float = num(0.20, 0.0)
    examples: int = num(3, 0)


@dataclass
class Params:
    cycle: int = num(0, 0)
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

    def checks(self):
        """Sections that contradict each other: (dotted key, reason)."""
        if self.gate.score == "pairwise" and self.judge.mode != "pairwise":
            yield "gate.score", "'pairwise' needs judge.mode: pairwise (single mode produces no win rates)"
        if self.gate.score != "pairwise" and self.judge.mode == "pairwise":
            yield "gate.score", f"'{self.gate.score}' is not produced by judge.mode: pairwise (use score: pairwise)"
        if self.gate.statistic.startswith("c") and self.gate.statistic[1:].isdigit() and \
                int(self.gate.statistic[1:]) not in self.judge.zetas:
            yield "gate.statistic", (f"'{self.gate.statistic}' names ζ = {self.gate.statistic[1:]}, which judge.zetas "
                                     f"{self.judge.zetas} does not compute: the gate could never pass")
        if self.gate.min_ratings and self.judge.mode == "pairwise":
            yield "gate.min_ratings", ("calibration compares people's 1-100 ratings with single-mode judge scores; "
                                       "judge.mode: pairwise has none (set gate.min_ratings: 0)")
        if self.gate.statistic != "mean" and not self.gate.statistic.startswith("c") and self.gate.threshold > 100:
            yield "gate.threshold", "win rates are percentages: a threshold over 100 can never pass"


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            dotted = f"{where}.{key}" if where else str(key)
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            tip = f" (did you mean '{near[0]}'?)" if near else ""
            raise ParamsError(f"{source}: unknown key '{dotted}'{tip}")
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        dotted = f"{where}.{name}" if where else name
        hint, value = hints[name], data[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, value, dotted, source)
            continue
        if not _type_ok(value, hint):
            raise ParamsError(f"{source}: '{dotted}' must be {_describe(hint)}, got {value!r}")
        bounds = f.metadata.get("range")
        if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
            wrong = _in_range(value, bounds)
            if wrong:
                raise ParamsError(f"{source}: '{dotted}' must be {wrong}, got {value!r}")
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


def assign(raw: dict, assignment: str) -> None:
    """`finetune.lora.r=8` into a raw params mapping (the value read as YAML), as `dvc exp run -S` does."""
    key, _, value = assignment.partition("=")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: invalid YAML: {exc}") from None
    return checked(build(Params, data or {}, "", str(path)), str(path))


def checked(params: Params, source: str) -> Params:
    for key, reason in params.checks():
        raise ParamsError(f"{source}: '{key}': {reason}")
    return params


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
