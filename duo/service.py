"""Every call to the service LLM (teacher and judge) goes through here, on top of litellm.

`local` (the default) serves the bundled GGUF with llama.cpp on loopback for as long as the
`Service` context is open and calls it like any OpenAI-compatible endpoint; any other value is
a litellm model string, with the key in the provider's usual environment variable.

Successful replies are appended to a journal keyed by the full request and its sample index, so a
rerun after a crash only pays for what is missing; failures are never journaled as results.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import click

from duo import local_llm, models

log = logging.getLogger("duo.service")
JOURNAL_DIR = Path(".duo/journal")
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
_TRANSIENT = ("RateLimitError", "Timeout", "APIConnectionError", "InternalServerError",
              "ServiceUnavailableError", "APIError", "BadGatewayError")


def scrub(text: str) -> str:
    """Remove anything that looks like a credential, and the values of key variables we know."""
    for name, value in os.environ.items():
        if value and len(value) >= 8 and any(t in name.upper() for t in ("KEY", "TOKEN", "SECRET")):
            text = text.replace(value, "***")
    return _KEY_PATTERN.sub("***", text)


@dataclass
class Request:
    messages: list
    sample_idx: int = 0
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int | None = None
    response_format: dict | None = None
    attempt: int = 0  # a re-ask after an unusable reply is a different request

    def body(self, model: str) -> dict:
        return {"model": model, "messages": self.messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.seed, "response_format": self.response_format}

    def key(self, model: str) -> str:
        blob = json.dumps({"body": self.body(model), "sample_idx": self.sample_idx, "attempt": self.attempt},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Reply:
    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    cached: bool = False


@dataclass
class Stats:
    calls: int = 0
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, reply: Reply, retries: int) -> None:
        with self.lock:
            self.retries += retries
            if reply.cached:
                self.cached += 1
                return
            self.calls += 1
            self.failed += reply.error is not None
            self.prompt_tokens += reply.prompt_tokens
            self.completion_tokens += reply.completion_tokens
            if reply.cost_usd is None and reply.error is None:
                self.cost_usd = None  # an unknown price makes the total unknown, not smaller
            elif self.cost_usd is not None and reply.cost_usd is not None:
                self.cost_usd += reply.cost_usd

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("calls", "cached", "failed", "retries", "prompt_tokens",
                                              "completion_tokens", "cost_usd")}


class Journal:
    """Append-only JSONL of successful replies; lives under .duo/, outside every DVC output."""

    def __init__(self, name: str):
        JOURNAL_DIR.mkdir(parents=True, exist_ok=True)
        self.path = JOURNAL_DIR / f"{name}.jsonl"
        self.done: dict[str, dict] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.done[rec["key"]] = rec
                    except (json.JSONDecodeError, KeyError):
                        continue  # a line torn by a crash is simply not done
        self._fh = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def add(self, key: str, reply: Reply) -> None:
        rec = {"key": key, "text": reply.text, "prompt_tokens": reply.prompt_tokens,
               "completion_tokens": reply.completion_tokens, "cost_usd": reply.cost_usd}
        with self._lock:
            self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.done[key] = rec

    def close(self) -> None:
        self._fh.close()


class Service:
    """One configured service model. Use as a context manager (starts/stops a local server)."""

    def __init__(self, spec: str, *, api_base: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, n_ctx: int = 4096, concurrency: int = 1, journal: str | None = None):
        self.spec = spec
        self.api_base = api_base
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.n_ctx = n_ctx
        self.concurrency = concurrency
        self.journal_name = journal
        self.is_local = spec == "local" or spec.startswith("local:")
        self.model = "openai/local" if self.is_local else spec
        self.stats = Stats()
        self._stack = contextlib.ExitStack()
        self.journal: Journal | None = None

    @property
    def supports_schema(self) -> bool:
        """llama.cpp accepts a JSON schema inside response_format={"type": "json_object"}."""
        return self.is_local

    def __enter__(self) -> "Service":
        if self.is_local:
            gguf = models.resolve_gguf(self.spec)
            self.api_base = self._stack.enter_context(
                local_llm.serve(gguf, n_ctx=self.n_ctx, log_name=f"service-{os.getpid()}"))
        if self.journal_name:
            self.journal = Journal(self.journal_name)
            self._stack.callback(self.journal.close)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # -- one call ---------------------------------------------------------------------------
    def _call(self, req: Request) -> Reply:
        import litellm

        litellm.drop_params = True  # providers without seed/response_format still answer
        litellm.suppress_debug_info = True  # its banners go to stdout and can carry request details
        kwargs = dict(req.body(self.model), timeout=self.timeout_s, num_retries=0)
        if kwargs["seed"] is None:
            del kwargs["seed"]
        if kwargs["response_format"] is None:
            del kwargs["response_format"]
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.is_local:
            kwargs["api_key"] = "no-key"  # the loopback server checks none
        resp = litellm.completion(**kwargs)
        text = resp.choices[0].message.content or ""
        usage = getattr(resp, "usage", None)
        try:
            cost = float(litellm.completion_cost(completion_response=resp)) if not self.is_local else 0.0
        except Exception:  # unknown price: tokens still count, cost unknown
            cost = None
        return Reply(text=text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                     completion_tokens=getattr(usage, "completion_tokens", 0) or 0, cost_usd=cost)

    def complete(self, req: Request) -> Reply:
        key = req.key(self.model)
        if self.journal and key in self.journal.done:
            rec = self.journal.done[key]
            reply = Reply(text=rec["text"], prompt_tokens=rec["prompt_tokens"],
                          completion_tokens=rec["completion_tokens"], cost_usd=rec["cost_usd"], cached=True)
            self.stats.add(reply, 0)
            return reply
        attempt = 0
        while True:
            try:
                reply = self._call(req)
                break
            except Exception as exc:  # classify by litellm's exception class names
                name = type(exc).__name__
                transient = name in _TRANSIENT or "Timeout" in name
                if not transient or attempt >= self.max_retries:
                    reply = Reply(text=None, error=scrub(f"{name}: {exc}")[:500])
                    break
                attempt += 1
                delay = min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random())
                log.warning("service %s: %s, retry %d in %.1fs", self.spec, name, attempt, delay)
                time.sleep(delay)
        self.stats.add(reply, attempt)
        if reply.error is None and self.journal:
            self.journal.add(key, reply)
        return reply

    def map(self, requests: Iterable[Request], on_done: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """Run requests with bounded concurrency; results in input order."""
        requests = list(requests)
        out: list[Reply | None] = [None] * len(requests)

        def run(i: int) -> None:
            out[i] = self.complete(requests[i])
            if on_done:
                on_done(i, out[i])

        if self.concurrency <= 1:
            for i in range(len(requests)):
                run(i)
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                list(pool.map(run, range(len(requests))))
        return out  # type: ignore[return-value]


def from_params(service_params, model_override: str | None = None, journal: str | None = None) -> Service:
    p = service_params
    spec = model_override or p.model
    if not spec:
        raise click.ClickException("params.yaml: service.model is empty")
    return Service(spec, api_base=p.api_base if not model_override else None, timeout_s=p.timeout_s,
                   max_retries=p.max_retries, n_ctx=p.n_ctx, journal=journal)
