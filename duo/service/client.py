"""One configured service model (teacher or judge) and every call made to it, on top of litellm.

Calls run on an event loop in a background thread for as long as the `Service` is open, so a stage
can keep requests flowing while it works on the replies (`submit` returns a future at once). What a
call survives:
- bounded concurrency and requests-/tokens-per-minute limits, a timeout on every call;
- 408/409/429/5xx/connection errors and timeouts: retried with jittered exponential backoff that
  honours Retry-After, up to max_retries; 400 fails that request only; 401/403/404 stop the stage
  after one call: the first call of a Service goes alone, so a bad key costs one call, not N;
- context-window overflow: `on_overflow` (`truncate`: cut the longest message's middle to half and
  retry once; `skip`: record the request as failed), counted either way;
- budgets and quota: a call reserves its worst-case price before it is sent and starts only if this
  cycle's spend plus every reservation stays within `budget_usd` and the migration's within
  `budget_total_usd` (duo/service/budget.py: one ledger of every journal and every call in flight,
  teacher and judges, reruns, other processes and experiments); a call that does not fit waits for
  this Service's calls in flight to settle, and when none is left the stage stops with exit code
  EXIT_STOPPED (75), everything paid so far journaled.
Successful replies are journaled (duo/service/journal.py) under a key of the full request, its
sample index and its tag, so a rerun only pays for what is missing; failures are never journaled.
With `batch`, requests go through the provider's batch API instead (duo/service/batch.py).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
from collections import deque
from typing import Callable, Iterable

import click

from duo import bundled
from duo.llamacpp import llama_server
from duo.service import call_loop, errors
from duo.service.budget import Allowance
from duo.service.calls import Reply, Request, Stats
from duo.service.errors import ServiceFatal, ServiceStop
from duo.service.journal import Journal
from duo.service.limits import RateLimiter

log = logging.getLogger("duo.service")
BATCH_PROVIDERS = ("openai", "azure", "hosted_vllm")  # litellm's OpenAI-style /v1/files + /v1/batches


class Service:
    """Use as a context manager: it starts the call loop (and, for `local`, a llama.cpp server)."""

    def __init__(self, spec: str, *, api_base: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, n_ctx: int = 4096, concurrency: int = 4, rpm: int = 0, tpm: int = 0,
                 budget_usd: float = 0.0, budget_total_usd: float = 0.0, on_overflow: str = "truncate",
                 backoff_s: float = 1.0, journal: str | None = None, cycle: int = 0, batch: bool = False,
                 batch_poll_s: float = 30.0, batch_max: int = 50_000):
        self.spec = spec
        self.api_base = api_base
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.n_ctx = n_ctx
        self.concurrency = max(1, concurrency)
        self.budget_usd, self.budget_total_usd = budget_usd, budget_total_usd
        self.on_overflow = on_overflow
        self.backoff_s = backoff_s
        self.journal_name = journal
        self.cycle = cycle
        self.batched = batch
        self.batch_poll_s, self.batch_max = batch_poll_s, batch_max
        self.is_local = spec == "local" or spec.startswith("local:")
        self.model = "openai/local" if self.is_local else spec
        # the local server costs nothing: no reservation, no cap (its calls never cross one)
        self.purse: Allowance | None = None
        self.stats = Stats()
        self.stopped: str | None = None
        self.journal: Journal | None = None
        self._limiter = RateLimiter(rpm, tpm)
        self._in_flight = 0
        self._probing = False
        self._fatal: BaseException | None = None
        self._priced: bool | None = None
        self._buffer: list[tuple[Request, concurrent.futures.Future]] = []
        self._futures: set[concurrent.futures.Future] = set()
        self._stack = contextlib.ExitStack()

    @property
    def supports_schema(self) -> bool:
        """llama.cpp accepts a JSON schema inside response_format={"type": "json_object"}."""
        return self.is_local

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else "openai"

    def __enter__(self) -> "Service":
        import litellm  # noqa: F401  (seconds to import: pay it here, not inside the first call's timeout)

        if self.batched and (self.is_local or self.provider not in BATCH_PROVIDERS):
            raise click.ClickException(f"service.batch: {self.spec} has no batch API duo can use (litellm's "
                                       f"OpenAI-style batches: {', '.join(BATCH_PROVIDERS)}); set service.batch: false")
        if self.is_local:
            gguf = bundled.resolve_gguf(self.spec)
            self.api_base = self._stack.enter_context(
                llama_server.serve(gguf, n_ctx=self.n_ctx, parallel=self.concurrency, log_name=f"service-{os.getpid()}"))
        if (self.budget_usd or self.budget_total_usd) and not self.is_local:
            self.journal_name = self.journal_name or "service"  # the ledger is the journals: spend must land in one
            self.purse = Allowance(self.model, self.cycle, self.budget_usd, self.budget_total_usd)
            self._stack.callback(self.purse.budget.save)
        if self.journal_name:
            self.journal = Journal(self.journal_name)
            self._stack.callback(self.journal.close)
        self._sem, self._opened = asyncio.Semaphore(self.concurrency), asyncio.Event()
        if self.purse:
            self.purse.freed = asyncio.Event()  # bound to the call loop on first use
        self._loop = self._stack.enter_context(call_loop.running(self.cancel_all))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # -- submitting ------------------------------------------------------------------------------
    def submit(self, req: Request) -> concurrent.futures.Future:
        """Start one request (with `batch`: queue it for the next `flush`); the future holds its Reply
        or raises ServiceStop / ServiceFatal."""
        if self.batched:
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._buffer.append((req, fut))
            if len(self._buffer) >= self.batch_max:
                self.flush()
        else:
            fut = asyncio.run_coroutine_threadsafe(self._complete(req), self._loop)
        self._futures.add(fut)
        fut.add_done_callback(self._futures.discard)
        return fut

    def flush(self) -> None:
        """Send what `submit` queued as one provider batch job (no-op without `batch`)."""
        if not self._buffer:
            return
        from duo.service import batch

        items, self._buffer = self._buffer, []
        job = asyncio.run_coroutine_threadsafe(batch.run(self, items), self._loop)

        def settle(done: concurrent.futures.Future) -> None:
            exc = None if done.cancelled() else done.exception()
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc or ServiceStop("provider batch was cancelled"))

        job.add_done_callback(settle)
        self._futures.add(job)
        job.add_done_callback(self._futures.discard)

    def cancel_all(self) -> None:
        """Abandon every unfinished request (after a stop or fatal error; done work stays journaled)."""
        self._buffer = []
        for fut in list(self._futures):
            fut.cancel()

    def map(self, requests: Iterable[Request], on_done: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """Replies in input order; requests flow continuously with a bounded number committed ahead
        (the whole list as batch jobs with `batch`). Raises ServiceStop / ServiceFatal."""
        requests = list(requests)
        window = self.batch_max if self.batched else max(64, 4 * self.concurrency)
        out: list[Reply] = []
        pending: deque = deque()
        nxt = 0
        try:
            while len(out) < len(requests):
                if not pending or not self.batched:
                    while nxt < len(requests) and len(pending) < window:
                        pending.append(self.submit(requests[nxt]))
                        nxt += 1
                    self.flush()
                out.append(pending.popleft().result())
                if on_done:
                    on_done(len(out) - 1, out[-1])
        except BaseException:
            self.cancel_all()
            raise
        return out

    def complete(self, req: Request) -> Reply:
        return self.map([req])[0]

    # -- one request ------------------------------------------------------------------------------
    def replay(self, req: Request) -> Reply | None:
        """The journaled reply of this request, counted in the stats, or None."""
        rec = self.journal.get(req.key(self.model)) if self.journal else None
        if rec is None:
            return None
        reply = Reply(text=rec["text"], prompt_tokens=rec["prompt_tokens"], completion_tokens=rec["completion_tokens"],
                      cost_usd=rec["cost_usd"], cached=True, cycle=rec.get("cycle"))
        self.stats.cached += 1
        if reply.cycle == self.cycle:
            self.stats.add(reply, fresh=False)  # paid earlier in this cycle: this stage's work, not paid again
        else:
            self.stats.reused += 1
        return reply

    def unpriced(self) -> str:
        self.stopped = (f"service.budget_usd / budget_total_usd is set but litellm has no price for "
                        f"{self.model}: the cap cannot be enforced (set both to 0 to run uncapped)")
        return self.stopped

    async def _reserve(self, req: Request) -> int | None:
        """Hold the request's worst case (Allowance.reserve); a stop when it cannot fit."""
        if self.stopped:
            raise ServiceStop(self.stopped)
        if not self.purse:
            return None
        usd = self.purse.worst_cases([req])
        if usd is None:
            raise ServiceStop(self.unpriced())
        rid = await self.purse.reserve(usd[0], lambda: self.stopped)
        if isinstance(rid, str):
            self.stopped = self.stopped or rid
            raise ServiceStop(self.stopped)
        return rid

    def record(self, key: str, reply: Reply, rid: int | None = None) -> None:
        """Book a fresh reply: stats, journal (fsync'd before anyone uses it; the journals are the
        ledger), then drop its reservation: the real price replaces the worst case."""
        if reply.error is not None:
            self.stats.failed += 1
            return
        reply.cycle = self.cycle
        if reply.cost_usd is None and self.purse:
            self.stopped = (f"service.budget_usd / budget_total_usd is set but litellm has no price for "
                            f"{self.model}'s reply: the cap cannot be enforced (set both to 0 to run uncapped)")
        self.stats.add(reply, fresh=True)
        with self.purse.budget.locked() if self.purse else contextlib.nullcontext():
            if self.journal:
                self.journal.add(key, reply, self.cycle)
            if self.purse:
                self.purse.release(rid)

    async def _await_probe(self) -> bool:
        """The first call of a Service goes alone: a bad key or unknown model then costs one call, not
        `concurrency` of them. True when this call is that probe."""
        if self._opened.is_set():
            if self._fatal:
                raise self._fatal
            return False
        if not self._probing:
            self._probing = True
            return True
        await self._opened.wait()
        if self._fatal:
            raise self._fatal
        return False

    async def _complete(self, req: Request) -> Reply:
        cached = self.replay(req)
        if cached:
            return cached
        probe = await self._await_probe()
        try:
            async with self._sem:
                rid = await self._reserve(req)
                try:
                    reply = await self._attempts(req)
                    self.record(req.key(self.model), reply, rid)
                finally:
                    if self.purse:
                        self.purse.release(rid)  # a failure or cancellation frees what it held
        except (ServiceStop, ServiceFatal) as exc:
            if probe:
                self._fatal = exc
            raise
        finally:
            if probe:
                self._opened.set()
        return reply

    async def _attempts(self, req: Request) -> Reply:
        messages, attempt, truncated = req.messages, 0, False
        while True:
            if self.stopped:
                raise ServiceStop(self.stopped)
            await self._limiter.acquire(req.token_estimate())
            if self.stopped:
                raise ServiceStop(self.stopped)
            self.stats.calls += 1
            self._in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            try:
                return await self._call(messages, req)
            except (asyncio.CancelledError, ServiceStop, ServiceFatal):
                raise
            except Exception as exc:
                kind = errors.classify(exc, self.spec)
                if kind == "overflow":
                    self.stats.overflows += 1
                    if self.on_overflow == "truncate" and not truncated:
                        messages, truncated = errors.truncate(messages), True
                        continue
                    return Reply(text=None, error="context window exceeded (skipped)")
                if kind == "retry" and attempt >= self.max_retries and errors.status(exc) == 429:
                    self.stopped = (f"provider still rate-limiting after {attempt} retries; work so far is "
                                    f"kept; rerun later or lower service.rpm / service.concurrency")
                    raise ServiceStop(self.stopped) from None
                if kind == "retry" and attempt < self.max_retries:
                    attempt += 1
                    self.stats.retries += 1
                    wait = errors.retry_after(exc)
                    if wait is None:
                        wait = min(60.0, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())
                    log.warning("service %s: %s, retry %d in %.1fs", self.spec, type(exc).__name__, attempt, wait)
                    await asyncio.sleep(wait)
                    continue
                return Reply(text=None, error=errors.scrub(f"{type(exc).__name__}: {exc}")[:500])
            finally:
                self._in_flight -= 1

    def call_kwargs(self, req: Request, messages: list | None = None) -> dict:
        """litellm arguments of one request (also the body of a batch line)."""
        kwargs = dict(req.body(self.model), messages=messages or req.messages)
        for optional in ("seed", "response_format"):
            if kwargs[optional] is None:
                del kwargs[optional]
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.is_local:
            kwargs["api_key"] = "no-key"  # the loopback server checks none
        return kwargs

    async def _call(self, messages: list, req: Request) -> Reply:
        import litellm

        litellm.drop_params = True  # providers without seed/response_format still answer
        litellm.suppress_debug_info = True  # its banners go to stdout and can carry request details
        # retries are ours alone (counted, journaled, Retry-After aware): none in litellm or the SDK
        resp = await litellm.acompletion(**self.call_kwargs(req, messages), timeout=self.timeout_s,
                                         num_retries=0, max_retries=0)
        return self.reply_of(resp)

    def reply_of(self, resp, price: bool = True) -> Reply:
        """A litellm ModelResponse as a Reply, priced from litellm's bundled table (None: unknown)."""
        import litellm

        from duo.compat import service as compat

        text = resp.choices[0].message.content or ""
        usage = getattr(resp, "usage", None)
        priced = compat.litellm_response_cost(resp)
        if self.is_local or not price:
            cost = 0.0
        elif priced is not None:
            cost = priced  # litellm priced it already, on its way out
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


def from_params(p, model_override: str | None = None, journal: str | None = None, cycle: int = 0) -> Service:
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
    return Service(spec, api_base=api_base, timeout_s=p.timeout_s, max_retries=p.max_retries, n_ctx=p.n_ctx,
                   concurrency=p.concurrency, rpm=p.rpm, tpm=p.tpm, budget_usd=p.budget_usd,
                   budget_total_usd=p.budget_total_usd, on_overflow=p.on_overflow, journal=journal, cycle=cycle,
                   batch=p.batch, batch_poll_s=p.batch_poll_s)
