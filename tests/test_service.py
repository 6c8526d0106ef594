"""The service layer against a real loopback HTTP server speaking the OpenAI API."""
import time

import pytest

from duo import service
from tests.fake_provider import FakeProvider

CANARY = "sk-canary-1234567890abcdef"


@pytest.fixture
def provider(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with FakeProvider() as fake:
        yield fake


def make(provider, model="openai/fake-model", **kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout_s", 10)
    kw.setdefault("backoff_s", 0.01)
    return service.Service(model, api_base=provider.url, **kw)


def req(i=0, text="hello", max_tokens=20):
    return service.Request(messages=[{"role": "user", "content": text}], sample_idx=i, max_tokens=max_tokens, seed=7)


def test_call_passes_sampling_params_and_key_from_env(provider):
    provider.default = (200, "hi there", {})
    with make(provider) as svc:
        reply = svc.complete(req())
    assert reply.text == "hi there" and reply.error is None
    body = provider.requests[0]["body"]
    assert body["seed"] == 7 and body["max_tokens"] == 20 and body["model"] == "fake-model"
    headers = {k.lower(): v for k, v in provider.requests[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {CANARY}"
    assert svc.stats.prompt_tokens == 10 and svc.stats.completion_tokens == 5
    assert svc.stats.cost_usd is None, "unknown price: tokens counted, cost unknown"


def test_transient_errors_are_retried_then_succeed(provider):
    provider.script = [(500, "boom", {}), (503, "busy", {}), (408, "slow", {})]
    provider.default = (200, "ok", {})
    with make(provider, max_retries=3) as svc:
        reply = svc.complete(req())
    assert reply.text == "ok" and len(provider.requests) == 4 and svc.stats.retries == 3


def test_timeout_is_retried(provider):
    provider.delays = [3.0]
    provider.default = (200, "ok", {})
    start = time.monotonic()
    with make(provider, timeout_s=0.5) as svc:
        reply = svc.complete(req())
    assert reply.text == "ok" and svc.stats.retries == 1 and len(provider.requests) == 2
    elapsed = time.monotonic() - start
    assert elapsed < 2.5, f"the stuck call was abandoned at its timeout ({elapsed:.1f} s)"


def test_429_honours_retry_after(provider):
    provider.script = [(429, "slow down", {"Retry-After": "1"})]
    provider.default = (200, "ok", {})
    start = time.monotonic()
    with make(provider, backoff_s=0.0) as svc:
        assert svc.complete(req()).text == "ok"
    assert time.monotonic() - start >= 0.95 and len(provider.requests) == 2


def test_persistent_429_stops_with_the_distinct_code_and_keeps_work(provider):
    provider.default = (200, "ok", {})
    with make(provider, journal="j", concurrency=1) as svc:
        svc.map([req(0), req(1)])
    provider.default = (429, "rate limited", {})
    with make(provider, journal="j", concurrency=1) as svc:
        with pytest.raises(service.ServiceStop) as err:
            svc.map([req(0), req(1), req(2)])
    assert err.value.exit_code == service.EXIT_STOPPED == 75
    assert "rate-limiting" in err.value.message
    provider.default = (200, "back", {})
    before = len(provider.requests)
    with make(provider, journal="j") as svc:
        replies = svc.map([req(0), req(1), req(2)])
    assert len(provider.requests) - before == 1, "after the limit clears only the missing call is made"
    assert [r.cached for r in replies] == [True, True, False]


def test_quota_exhaustion_stops_at_once(provider):
    provider.default = (429, "You exceeded your current quota (insufficient_quota)", {})
    with make(provider) as svc:
        with pytest.raises(service.ServiceStop, match="quota"):
            svc.complete(req())
    assert len(provider.requests) == 1


@pytest.mark.parametrize("status", [401, 403, 404])
def test_fatal_errors_make_one_call_and_never_leak_the_key(provider, capsys, status):
    provider.default = (status, f"invalid key {CANARY}", {})
    with make(provider) as svc:
        with pytest.raises(service.ServiceFatal) as err:
            svc.map([req(i) for i in range(5)])
    assert len(provider.requests) == 1 and svc.stats.calls == 1
    assert CANARY not in err.value.message and CANARY not in str(capsys.readouterr())


def test_bad_request_fails_only_that_request(provider):
    provider.script = [(400, "bad", {})]
    provider.default = (200, "ok", {})
    with make(provider, concurrency=1) as svc:
        replies = svc.map([req(0), req(1)])
    assert replies[0].error and "BadRequest" in replies[0].error and replies[1].text == "ok"
    assert len(provider.requests) == 2


def test_context_overflow_truncates_once_then_counts(provider):
    provider.script = [(400, "This model's maximum context length is 8192 tokens", {})]
    provider.default = (200, "ok", {})
    with make(provider) as svc:
        reply = svc.complete(req(text="x" * 1000))
    assert reply.text == "ok" and svc.stats.overflows == 1
    assert len(provider.requests[1]["body"]["messages"][0]["content"]) < 600
    provider.script = [(400, "maximum context length exceeded", {})]
    with make(provider, on_overflow="skip") as svc:
        reply = svc.complete(req(1, text="y" * 1000))
    assert "context window" in reply.error and svc.stats.overflows == 1


def test_journal_resumes_without_paying_twice_and_keeps_sample_index_apart(provider):
    provider.default = (200, lambda body: f"reply {len(provider.requests)}", {})
    with make(provider, journal="t", concurrency=1) as svc:
        first = svc.map([req(0), req(1), req(2)])
    assert len(provider.requests) == 3, "same request with another sample index is a new call"
    assert len({r.text for r in first}) == 3
    with make(provider, journal="t") as svc:
        again = svc.map([req(0), req(1), req(2), req(3)])
    assert len(provider.requests) == 4, "only the missing request is paid for"
    assert [r.text for r in again[:3]] == [r.text for r in first] and svc.stats.cached == 3
    journal = (service.JOURNAL_DIR / "t.jsonl").read_text()
    assert CANARY not in journal and "hello" not in journal, "the journal stores replies, not prompts/keys"


def test_failures_are_not_journaled(provider):
    provider.script = [(500, "x", {})] * 3
    with make(provider, journal="f") as svc:
        assert svc.complete(req()).error
    provider.default = (200, "fine", {})
    with make(provider, journal="f") as svc:
        assert svc.complete(req()).text == "fine"


def test_torn_journal_line_is_ignored(provider):
    provider.default = (200, "ok", {})
    with make(provider, journal="torn") as svc:
        svc.complete(req())
    with open(service.JOURNAL_DIR / "torn.jsonl", "a") as fh:
        fh.write('{"key": "abc", "te')
    with make(provider, journal="torn") as svc:
        assert svc.complete(req()).cached


def test_concurrency_is_bounded(provider):
    provider.delay_s = 0.2
    provider.default = (200, "ok", {})
    with make(provider, concurrency=3) as svc:
        svc.map([req(i) for i in range(12)])
    assert svc.stats.max_in_flight == 3
    assert len(provider.requests) == 12


def test_requests_per_minute_limit(provider, monkeypatch):
    provider.default = (200, "ok", {})
    limiter = service.RateLimiter(rpm=2, tpm=0)
    clock = [0.0]
    from duo.service import limits

    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])

    async def fake_sleep(s):
        clock[0] += s

    monkeypatch.setattr(limits.asyncio, "sleep", fake_sleep)
    import asyncio

    async def three():
        for _ in range(3):
            await limiter.acquire(10)

    asyncio.run(three())
    assert clock[0] >= 60.0, "the third request waited for the one-minute window"


def test_budget_cap_stops_before_a_call_that_could_pass_it(provider):
    provider.default = (200, "ok", {})
    # gpt-4o has a price in litellm's bundled table; the fake echoes the model name. One call's worst
    # case (8 prompt tokens + 20 max_tokens) is $0.00022, its real price (the fake's 10 + 5 tokens)
    # $0.000075: a cap of $0.00025 lets one through, not a second (0.000075 + 0.00022 > 0.00025).
    with make(provider, model="openai/gpt-4o", concurrency=1, budget_usd=2.5e-4, journal="b") as svc:
        with pytest.raises(service.ServiceStop, match="budget_usd=0.00025 would be passed") as err:
            svc.map([req(i) for i in range(5)])
    assert err.value.exit_code == 75 and "\n" not in err.value.message
    assert "the next call may cost up to $0.000220" in err.value.message
    assert len(provider.requests) == 1 and svc.stats.cost_usd > 0
    assert len((service.JOURNAL_DIR / "b.jsonl").read_text().splitlines()) == 1, "the paid reply is kept"
    with make(provider, model="openai/gpt-4o", budget_usd=1e-9, journal="b") as svc:
        with pytest.raises(service.ServiceStop, match="budget_usd"):
            svc.map([req(i) for i in range(5)])
    assert len(provider.requests) == 1 and svc.stats.cached == 1, "a cap below one call sends nothing"


def test_scrub_removes_env_secrets_and_key_shapes(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "verysecretvalue123")
    text = service.scrub("key verysecretvalue123 and sk-abcdefghijklmnop and Bearer abc.def.ghi123")
    assert "verysecretvalue123" not in text and "sk-abcdefghijklmnop" not in text and "abc.def.ghi123" not in text
