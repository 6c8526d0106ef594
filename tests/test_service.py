"""The service layer against a real loopback HTTP server speaking the OpenAI API."""
import json
import os

import pytest

from duo import service
from tests.fake_provider import FakeProvider

CANARY = "sk-canary-1234567890abcdef"


@pytest.fixture
def provider(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with FakeProvider() as fake:
        yield fake


def make(provider, **kw):
    return service.Service("openai/fake-model", api_base=provider.url, max_retries=kw.pop("max_retries", 2),
                           timeout_s=kw.pop("timeout_s", 10), **kw)


def req(i=0, text="hello"):
    return service.Request(messages=[{"role": "user", "content": text}], sample_idx=i, max_tokens=20, seed=7)


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


def test_transient_errors_are_retried_then_succeed(provider, monkeypatch):
    monkeypatch.setattr(service.time, "sleep", lambda s: None)
    provider.script = [(500, "boom", {}), (429, "slow down", {})]
    provider.default = (200, "ok", {})
    with make(provider) as svc:
        reply = svc.complete(req())
    assert reply.text == "ok" and len(provider.requests) == 3 and svc.stats.retries == 2


def test_auth_error_fails_fast_and_never_leaks_the_key(provider, capsys):
    provider.script = [(401, f"invalid key {CANARY}", {})]
    with make(provider) as svc:
        reply = svc.complete(req())
    assert reply.error and len(provider.requests) == 1
    assert CANARY not in reply.error and CANARY not in capsys.readouterr().err


def test_journal_resumes_without_paying_twice_and_keeps_sample_index_apart(provider):
    provider.default = (200, lambda body: f"reply {len(provider.requests)}", {})
    with make(provider, journal="t") as svc:
        first = svc.map([req(0), req(1), req(2)])
    assert len(provider.requests) == 3, "same request with another sample index is a new call"
    assert len({r.text for r in first}) == 3
    with make(provider, journal="t") as svc:
        again = svc.map([req(0), req(1), req(2), req(3)])
    assert len(provider.requests) == 4, "only the missing request is paid for"
    assert [r.text for r in again[:3]] == [r.text for r in first] and svc.stats.cached == 3
    journal = (service.JOURNAL_DIR / "t.jsonl").read_text()
    assert CANARY not in journal and "hello" not in journal, "the journal stores replies, not prompts/keys"


def test_failures_are_not_journaled(provider, monkeypatch):
    monkeypatch.setattr(service.time, "sleep", lambda s: None)
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


def test_scrub_removes_env_secrets_and_key_shapes(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "verysecretvalue123")
    text = service.scrub("key verysecretvalue123 and sk-abcdefghijklmnop and Bearer abc.def.ghi123")
    assert "verysecretvalue123" not in text and "sk-abcdefghijklmnop" not in text and "abc.def.ghi123" not in text
