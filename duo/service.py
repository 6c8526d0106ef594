"""Every call to the service LLM (teacher and judge) goes through here, on top of litellm.

`local` (the default) serves the bundled GGUF with llama.cpp on loopback for as long as the
`Service` context is open and calls it like any OpenAI-compatible endpoint; any other value is
a litellm model string, with the key in the provider's usual environment variable.

What a call survives:
- bounded concurrency (asyncio + litellm.acompletion), requests- and tokens-per-minute limits,
  a timeout on every call;
- 408/409/429/5xx/connection errors and timeouts: retried with jittered exponential backoff that
  honours Retry-After, up to max_retries; 400 fails that request only; 401/403/404 stop the stage
  after one call (every other call would fail the same way);
- context-window overflow: policy `on_overflow` (`truncate`: cut the longest message's middle to half
  and retry once; `skip`: record the request as failed), counted either way;
- budget (`budget_usd`) and quota exhaustion: no call starts past the cap, the stage stops with exit
  code EXIT_STOPPED (75), and everything done so far is in the journal.
Successful replies are appended (fsync'd) to a journal keyed by the full request and its sample
index, so a rerun after a crash only pays for what is missing; failures are never journaled.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import click

from duo import local_llm, models

log = logging.getLogger("duo.service")
JOURNAL_DIR = Path(".duo/journal")
EXIT_STOPPED = 75  # EX_TEMPFAIL: budget or quota; rerun later, nothing done so far is lost
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
_FATAL_STATUS = {401, 403, 404}


def scrub(text: str) -> str:
    """Remove anything that looks like a credential, and the values of key variables we know."""
    for name, value in os.environ.items():
        if value and len(value) >= 8 and any(t in name.upper() for t in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
            text = text.replace(value, "***")
    return _KEY_PATTERN.sub("***", text)


class ServiceStop(click.ClickException):
    """Budget or provider quota exhausted: stop starting calls, keep everything done."""
    exit_code = EXIT_STOPPED


class ServiceFatal(click.ClickException):
    """An error every further call would repeat (bad key, no permission, unknown model)."""


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

    def token_estimate(self) -> int:
        return sum(len(str(m.get("content", ""))) for m in self.messages) // 4 + self.max_tokens


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
    calls: int = 0            # requests sent to the provider, retries included
    cached: int = 0           # answered from the journal
    failed: int = 0           # requests that ended without a reply
    retries: int = 0
    overflows: int = 0        # context-window overflows (truncated or skipped)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    max_in_flight: int = 0

    def add_cost(self, cost: float | None) -> None:
        if cost is None:
            self.cost_usd = None  # an unknown price makes the total unknown, not smaller
        elif self.cost_usd is not None:
            self.cost_usd += cost

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("calls", "cached", "failed", "retries", "overflows", "prompt_tokens",
                                             "completion_tokens", "cost_usd", "max_in_flight")}
        if out["cost_usd"] is not None:
            out["cost_usd"] = round(out["cost_usd"], 6)
        return out


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
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line torn by a crash is simply not done
        self._fh = open(self.path, "a", encoding="utf-8")
        if self._fh.tell():
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._fh.write("\n")  # end a torn line, or the next record would be glued onto it

    def add(self, key: str, reply: Reply) -> None:
        rec = {"key": key, "text": reply.text, "prompt_tokens": reply.prompt_tokens,
               "completion_tokens": reply.completion_tokens, "cost_usd": reply.cost_usd}
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done[key] = rec

    def close(self) -> None:
        self._fh.close()


class RateLimiter:
    """Sliding one-minute windows of requests and (estimated) tokens; 0 = no limit."""

    def __init__(self, rpm: int, tpm: int):
        self.rpm, self.tpm = rpm, tpm
        self.events: deque[tuple[float, int]] = deque()

    async def acquire(self, tokens: int) -> None:
        while True:
            now = time.monotonic()
            while self.events and now - self.events[0][0] >= 60.0:
                self.events.popleft()
            used = sum(t for _, t in self.events)
            if (not self.rpm or len(self.events) < self.rpm) and \
                    (not self.tpm or not self.events or used + tokens <= self.tpm):
                self.events.append((now, tokens))
                return
            await asyncio.sleep(max(0.01, 60.0 - (now - self.events[0][0])))


def _status(exc: Exception) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def _retry_after(exc: Exception) -> float | None:
    for headers in (getattr(exc, "headers", None), getattr(exc, "litellm_response_headers", None),
                    getattr(getattr(exc, "response", None), "headers", None)):
        try:
            value = headers.get("retry-after") or headers.get("Retry-After") if headers else None
        except AttributeError:
            value = None
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _is_quota(exc: Exception) -> bool:
    text = str(exc).lower()
    return _status(exc) == 429 and ("insufficient_quota" in text or "exceeded your current quota" in text)


def _truncate(messages: list) -> list:
    """Cut the middle of the longest message to half its length (head and tail carry the task)."""
    longest = max(range(len(messages)), key=lambda i: len(str(messages[i].get("content", ""))))
    text = str(messages[longest]["content"])
    keep = len(text) // 4
    out = [dict(m) for m in messages]
    out[longest]["content"] = text[:keep] + "\n[...]\n" + text[-keep:]
    return out


class Service:
    """One configured service model. Use as a context manager (starts/stops a local server)."""

    def __init__(self, spec: str, *, api_base: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, n_ctx: int = 4096, concurrency: int = 4, rpm: int = 0, tpm: int = 0,
                 budget_usd: float = 0.0, on_overflow: str = "truncate", backoff_s: float = 1.0,
                 journal: str | None = None):
        self.spec = spec
        self.api_base = api_base
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.n_ctx = n_ctx
        self.concurrency = max(1, concurrency)
        self.rpm, self.tpm = rpm, tpm
        self.budget_usd = budget_usd
        self.on_overflow = on_overflow
        self.backoff_s = backoff_s
        self.journal_name = journal
        self.is_local = spec == "local" or spec.startswith("local:")
        self.model = "openai/local" if self.is_local else spec
        self.stats = Stats()
        self.stopped: str | None = None
        self._in_flight = 0
        self._probing = False
        self._priced: bool | None = None
        self._stack = contextlib.ExitStack()
        self.journal: Journal | None = None

    @property
    def supports_schema(self) -> bool:
        """llama.cpp accepts a JSON schema inside response_format={"type": "json_object"}."""
        return self.is_local

    def __enter__(self) -> "Service":
        import litellm  # noqa: F401  (seconds to import: pay it here, not inside the first call's timeout)

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

    # -- one HTTP call ------------------------------------------------------------------------
    async def _call(self, messages: list, req: Request) -> Reply:
        import litellm

        litellm.drop_params = True  # providers without seed/response_format still answer
        litellm.suppress_debug_info = True  # its banners go to stdout and can carry request details
        # retries are ours alone (counted, journaled, Retry-After aware): none in litellm or the SDK
        kwargs = dict(req.body(self.model), messages=messages, timeout=self.timeout_s, num_retries=0, max_retries=0)
        for optional in ("seed", "response_format"):
            if kwargs[optional] is None:
                del kwargs[optional]
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.is_local:
            kwargs["api_key"] = "no-key"  # the loopback server checks none
        resp = await litellm.acompletion(**kwargs)
        text = resp.choices[0].message.content or ""
        usage = getattr(resp, "usage", None)
        if self.is_local:
            cost = 0.0
        elif self._priced is False:
            cost = None  # known to be unpriced: skip litellm's lookup (and its exception) per call
        else:
            try:
                cost = float(litellm.completion_cost(completion_response=resp))
                self._priced = True
            except Exception:  # unknown price: tokens still count, cost unknown
                cost, self._priced = None, False
        return Reply(text=text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                     completion_tokens=getattr(usage, "completion_tokens", 0) or 0, cost_usd=cost)

    def _check_budget(self) -> None:
        if self.stopped:
            raise ServiceStop(self.stopped)
        spent = self.stats.cost_usd or 0.0
        if self.budget_usd and spent >= self.budget_usd:
            self.stopped = (f"service.budget_usd={self.budget_usd} reached (spent ${spent:.4f}); work so far is "
                            f"kept in {JOURNAL_DIR}; raise the budget and rerun to continue")
            raise ServiceStop(self.stopped)

    async def _complete(self, req: Request, sem: asyncio.Semaphore, limiter: RateLimiter,
                        opened: asyncio.Event) -> Reply:
        key = req.key(self.model)
        if self.journal and key in self.journal.done:
            rec = self.journal.done[key]
            self.stats.cached += 1
            return Reply(text=rec["text"], prompt_tokens=rec["prompt_tokens"],
                         completion_tokens=rec["completion_tokens"], cost_usd=rec["cost_usd"], cached=True)
        messages, attempt, truncated = req.messages, 0, False
        # The first call of a batch goes alone: a bad key or unknown model then costs one call,
        # not `concurrency` of them.
        probe = not opened.is_set() and not self._probing
        if probe:
            self._probing = True
        elif not opened.is_set():
            await opened.wait()
        async with sem:
            while True:
                self._check_budget()
                await limiter.acquire(req.token_estimate())
                self._check_budget()
                self.stats.calls += 1
                self._in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
                try:
                    reply = await self._call(messages, req)
                except Exception as exc:
                    error = self._classify(exc)
                    if error == "overflow":
                        self.stats.overflows += 1
                        if self.on_overflow == "truncate" and not truncated:
                            messages, truncated = _truncate(messages), True
                            continue
                        reply = Reply(text=None, error="context window exceeded (skipped)")
                        break
                    if error == "retry" and attempt >= self.max_retries and _status(exc) == 429:
                        self.stopped = (f"provider still rate-limiting after {attempt} retries; work so far is "
                                        f"kept; rerun later or lower service.rpm / service.concurrency")
                        raise ServiceStop(self.stopped)
                    if error == "retry" and attempt < self.max_retries:
                        attempt += 1
                        self.stats.retries += 1
                        wait = _retry_after(exc)
                        if wait is None:
                            wait = min(60.0, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())
                        log.warning("service %s: %s, retry %d in %.1fs", self.spec, type(exc).__name__, attempt, wait)
                        await asyncio.sleep(wait)
                        continue
                    reply = Reply(text=None, error=scrub(f"{type(exc).__name__}: {exc}")[:500])
                    break
                finally:
                    self._in_flight -= 1
                break
        if probe:
            opened.set()
        if reply.error is None:
            if reply.cost_usd is None and self.budget_usd:
                self.stopped = (f"service.budget_usd is set but litellm has no price for {self.model}; "
                                f"the cap cannot be enforced (set service.budget_usd: 0 to run uncapped)")
            self.stats.prompt_tokens += reply.prompt_tokens
            self.stats.completion_tokens += reply.completion_tokens
            self.stats.add_cost(reply.cost_usd)
            if self.journal:
                self.journal.add(key, reply)
        else:
            self.stats.failed += 1
        return reply

    def _classify(self, exc: Exception) -> str:
        """'retry', 'overflow' or 'fail'; raises for errors that must stop the stage."""
        name, status = type(exc).__name__, _status(exc)
        text = str(exc).lower()
        if name == "ContextWindowExceededError" or (status == 400 and any(
                t in text for t in ("context length", "context window", "too many tokens", "exceed_context"))):
            return "overflow"
        if _is_quota(exc):
            self.stopped = f"provider quota exhausted ({scrub(str(exc))[:200]}); work so far is kept; rerun later"
            raise ServiceStop(self.stopped)
        if status in _FATAL_STATUS or name in ("AuthenticationError", "PermissionDeniedError", "NotFoundError"):
            raise ServiceFatal(f"service {self.spec}: {scrub(f'{name}: {exc}')[:400]}")
        if status in _RETRY_STATUS or name in ("Timeout", "APIConnectionError", "RateLimitError",
                                               "InternalServerError", "ServiceUnavailableError"):
            return "retry"
        return "fail"

    # -- many calls -----------------------------------------------------------------------------
    async def _amap(self, requests: list[Request], on_done) -> list[Reply | None]:
        sem, limiter = asyncio.Semaphore(self.concurrency), RateLimiter(self.rpm, self.tpm)
        opened, self._probing = asyncio.Event(), False
        out: list[Reply | None] = [None] * len(requests)

        async def one(i: int) -> None:
            out[i] = await self._complete(requests[i], sem, limiter, opened)
            if on_done:
                on_done(i, out[i])

        tasks = [asyncio.create_task(one(i)) for i in range(len(requests))]
        try:
            for fut in asyncio.as_completed(tasks):
                await fut  # the first stop/fatal error ends the batch; done work stays journaled
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return out

    def map(self, requests: Iterable[Request], on_done: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """Run requests concurrently; replies in input order. Raises ServiceStop / ServiceFatal."""
        return asyncio.run(self._amap(list(requests), on_done))  # type: ignore[return-value]

    def complete(self, req: Request) -> Reply:
        return self.map([req])[0]


def from_params(p, model_override: str | None = None, journal: str | None = None) -> Service:
    """A Service for `service.*`, or for a teacher/judge override. An override may carry its own
    endpoint as `model@http://host:port/v1`; without one it uses service.api_base only when it is
    the service model itself."""
    spec = model_override or p.model
    if not spec:
        raise click.ClickException("params.yaml: service.model is empty")
    api_base = p.api_base if spec == p.model else None
    if "@http" in spec:
        spec, _, rest = spec.partition("@")
        api_base = rest
    return Service(spec, api_base=api_base, timeout_s=p.timeout_s,
                   max_retries=p.max_retries, n_ctx=p.n_ctx, concurrency=p.concurrency, rpm=p.rpm, tpm=p.tpm,
                   budget_usd=p.budget_usd, on_overflow=p.on_overflow, journal=journal)
