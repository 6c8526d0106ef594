"""`duo record`: the recording proxy, run as the real command, called with the `openai` SDK exactly as
an application would, in front of the loopback provider (tests/fake_provider.py). Checks what reaches
the provider, what the app gets back and what lands in data/traffic/ (never a key), and that a kill -9
loses no finished exchange. Validation and the traffic file itself are unit tests (default tier)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from duo.llamacpp import llama_server
from duo.app import record, traffic
from tests.fake_provider import FakeProvider

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KEY = "sk-provider-canary-0123456789abcdef"
APP_KEY = "sk-app-canary-fedcba9876543210"
SYSTEM = {"role": "system", "content": "You are a terse support bot for ACME routers. Answer in one sentence."}


# --- unit: request validation, the traffic file -------------------------------------------------------

@pytest.mark.parametrize("body, says", [
    ([], "must be a JSON object"),
    ({"model": "x"}, "'messages' must be a non-empty list"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": ["hi"]}, "messages[0] must be an object"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user"}]}, "messages[0].content is missing"),
    ({"messages": [{"role": "user", "content": 3}]}, "content must be text or a list"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "'stream' must be true or false"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "'temperature' must be a number"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "'max_tokens' must be a whole number"),
])
def test_malformed_requests_are_named(body, says):
    assert says in record.problem(body)


def test_a_good_request_passes_and_credentials_are_never_params():
    from duo.service.relay import params_of

    body = {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]},
                                       {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0.2, "api_key": APP_KEY, "x-auth-token": "t", "top_k": 5}
    assert record.problem(body) is None
    assert params_of(body) == {"temperature": 0.2, "top_k": 5}


def test_traffic_log_appends_whole_lines_and_closes_a_torn_one(tmp_path):
    day = traffic.file_for(tmp_path, 0.0)
    day.write_bytes(b'{"id": "old", "messages": []}\n{"id": "torn", "mess')  # a crash mid-write
    log = traffic.TrafficLog(tmp_path)
    threads = [threading.Thread(target=lambda i=i: log.append({"id": f"e{i}", "messages": [{"x": "y" * 5000}]}, 0.0))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert log.synced == log.appended == 16
    ids = [obj["id"] for _, obj in traffic.read(day)]
    assert ids[0] == "old" and sorted(ids[1:]) == sorted(f"e{i}" for i in range(16))


def test_a_streamed_reply_is_put_back_together_with_tool_calls_and_usage():
    from duo.service.relay import assemble

    chunks = [{"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
              {"choices": [{"index": 0, "delta": {"content": "Let me "}}]},
              {"choices": [{"index": 0, "delta": {"content": "check."}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [
                  {"index": 0, "id": "call_1", "function": {"name": "lookup", "arguments": '{"id"'}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ': 7}'}}]}}]},
              {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
              {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}]
    out = assemble(chunks)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": 7}'}}]}
    assert out["choices"][0]["finish_reason"] == "tool_calls" and out["usage"]["total_tokens"] == 7


# --- integration: the real command ------------------------------------------------------------------

class Proxy:
    def __init__(self, cwd: Path, provider: FakeProvider, *extra: str, **env):
        self.port = llama_server.free_port()
        (cwd / "params.yaml").write_text(f"service:\n  model: openai/upstream-model\n  api_base: {provider.url}\n"
                                         f"  max_retries: 1\n  timeout_s: 20\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": PROVIDER_KEY, **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "duo.cli", "record", "--port", str(self.port), *extra],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("record: http://127.0.0.1"), line + self.proc.stdout.read()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cwd = cwd

    def client(self, key: str = APP_KEY):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        return out

    def exchanges(self) -> list[dict]:
        return [obj for path in traffic.files(self.cwd / "data" / "traffic") for _, obj in traffic.read(path)]


@pytest.fixture
def provider():
    with FakeProvider() as fake:
        fake.default = (200, lambda body: f"echo {len(body['messages'])} messages", {})
        yield fake


@pytest.fixture(params=["passthrough", "litellm"])
def proxy(request, tmp_path, provider):
    """Both paths to the provider: the OpenAI-compatible pass-through and litellm's (any provider)."""
    proc = Proxy(tmp_path, provider, *(["--via-litellm"] if request.param == "litellm" else []))
    yield proc
    proc.stop()


@pytest.mark.integration
def test_system_prompt_multi_turn_and_stream_reach_the_provider_whole_and_are_recorded(proxy, provider):
    client = proxy.client()
    first = client.chat.completions.create(model="gpt-4o", messages=[SYSTEM, {"role": "user", "content": "Reset?"}],
                                           temperature=0.2, max_tokens=64, seed=3)
    assert first.choices[0].message.content == "echo 2 messages" and first.usage.prompt_tokens == 10
    history = [SYSTEM, {"role": "user", "content": "Reset?"}, {"role": "assistant", "content": "Hold the button."},
               {"role": "user", "content": "For how long?"}]
    second = client.chat.completions.create(model="gpt-4o", messages=history)
    assert second.choices[0].message.content == "echo 4 messages"
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=history, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo 4 messages"
    assert all(c.usage is None for c in chunks), "no usage chunk the app did not ask for"
    with_usage = list(client.chat.completions.create(model="gpt-4o", messages=history, stream=True,
                                                     stream_options={"include_usage": True}))
    assert with_usage[-1].usage.completion_tokens == 5

    # the provider got the app's conversation verbatim, with the service model and the app's parameters
    sent = [r["body"] for r in provider.requests]
    assert [b["messages"] for b in sent] == [history[:2], history, history, history]
    assert sent[0]["model"] == "upstream-model" and sent[0]["temperature"] == 0.2 and sent[0]["seed"] == 3
    # the provider's key from the environment, never the app's
    assert all({k.lower(): v for k, v in r["headers"].items()}["authorization"] == f"Bearer {PROVIDER_KEY}"
               for r in provider.requests)

    rows = proxy.exchanges()
    assert [r["messages"] for r in rows] == [history[:2], history, history, history]
    assert rows[0]["params"] == {"temperature": 0.2, "max_tokens": 64, "seed": 3}
    assert [r["stream"] for r in rows] == [False, False, True, True]
    for row in rows:
        assert row["reply"]["content"] == f"echo {len(row['messages'])} messages" and row["error"] is None
        assert row["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        assert row["model"] == "openai/upstream-model" and row["requested_model"] == "gpt-4o"
        assert row["latency_ms"] > 0 and row["status"] == 200 and len(row["id"]) == 32
    assert len({r["id"] for r in rows}) == 4


@pytest.mark.integration
def test_provider_errors_reach_the_app_as_the_provider_gave_them_and_are_recorded(proxy, provider):
    import openai

    client = proxy.client()
    provider.script = [(400, f"unsupported value for 'temperature' (key {PROVIDER_KEY})", {})]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400
    assert info.value.body["message"].startswith("unsupported value for 'temperature'")
    assert PROVIDER_KEY not in json.dumps(info.value.body)
    # transient: retried once (service.max_retries: 1), then the provider's status reaches the app
    provider.script = [(503, "overloaded", {"Retry-After": "0"}), (503, "still overloaded", {"Retry-After": "0"})]
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "again"}])
    assert info.value.status_code == 503 and info.value.body["message"] == "still overloaded"
    provider.script = [(503, "blip", {"Retry-After": "0"})]
    ok = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "third"}])
    assert ok.choices[0].message.content == "echo 1 messages"
    # a stream that fails before its first chunk is an ordinary error response
    provider.script = [(429, "rate limited", {"Retry-After": "0"}), (429, "rate limited", {"Retry-After": "0"})]
    with pytest.raises(openai.RateLimitError):
        list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "s"}], stream=True))
    assert len(provider.requests) == 1 + 2 + 2 + 2

    rows = proxy.exchanges()
    assert [(r["status"], r["error"] and r["error"]["status"]) for r in rows] == [
        (400, 400), (503, 503), (200, None), (429, 429)]
    assert rows[0]["reply"] is None and "temperature" in rows[0]["error"]["message"]


@pytest.mark.integration
def test_malformed_requests_get_400_and_are_not_forwarded(proxy, provider):
    import urllib.error
    import urllib.request

    def post(data: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(proxy.url + "/chat/completions", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, body = post(b"{not json")
    assert status == 400 and "not JSON" in body["error"]["message"]
    status, body = post(json.dumps({"model": "m", "messages": [{"role": "user"}]}).encode())
    assert status == 400 and body["error"] == {"message": "messages[0].content is missing",
                                               "type": "invalid_request_error", "param": None, "code": None}
    import openai

    with pytest.raises(openai.BadRequestError, match="'messages' must be a non-empty list"):
        proxy.client().chat.completions.create(model="m", messages=[])
    assert provider.requests == [] and proxy.exchanges() == []
    assert proxy.client().models.list().data[0].id == "openai/upstream-model"


@pytest.mark.integration
def test_no_key_is_ever_recorded(proxy, provider):
    client = proxy.client()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"api_key": APP_KEY, "metadata_token": APP_KEY})
    provider.script = [(401, f"Incorrect API key provided: {PROVIDER_KEY}", {})]
    with pytest.raises(Exception):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "api_key" not in provider.requests[0]["body"], "a credential field is not forwarded either"
    out = proxy.stop()
    stored = "".join(p.read_text() for p in traffic.files(proxy.cwd / "data" / "traffic")) + out
    assert len(proxy.exchanges()) == 2
    assert PROVIDER_KEY not in stored and APP_KEY not in stored


@pytest.mark.integration
def test_kill_9_loses_no_finished_exchange(tmp_path, provider):
    proxy = Proxy(tmp_path, provider)
    client = proxy.client()
    finished = []
    for i in range(5):
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
        finished.append(f"q{i}")
        assert reply.choices[0].message.content
    # and some in flight when it dies
    provider.delay_s = 5.0
    pending = [threading.Thread(target=lambda i=i: _ignore(lambda: client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"late{i}"}]))) for i in range(3)]
    for t in pending:
        t.start()
    while len(provider.requests) < 8:
        time.sleep(0.01)
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait(timeout=10)
    for t in pending:
        t.join()
    assert [r["messages"][0]["content"] for r in proxy.exchanges()] == finished

    # a restarted recorder appends to the same file
    provider.delay_s = 0.0
    again = Proxy(tmp_path, provider)
    again.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "after"}])
    again.stop()
    assert [r["messages"][0]["content"] for r in again.exchanges()] == finished + ["after"]


def _ignore(call):
    try:
        call()
    except Exception:
        pass


@pytest.mark.integration
def test_a_key_guards_the_proxy_and_a_network_host_needs_one(tmp_path, provider, monkeypatch):
    import openai

    proxy = Proxy(tmp_path, provider, RECORD_API_KEY="record-key-0123456789")
    try:
        with pytest.raises(openai.AuthenticationError):
            proxy.client("wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        ok = proxy.client("record-key-0123456789").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
        assert ok.choices[0].message.content and len(provider.requests) == 1
    finally:
        proxy.stop()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECORD_API_KEY", raising=False)
    result = CliRunner().invoke(record.main, ["--host", "0.0.0.0"])
    assert result.exit_code == 1 and "refusing to listen on 0.0.0.0 without a key" in result.output
    assert "Traceback" not in result.output


def test_a_service_model_litellm_cannot_place_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("service:\n  model: nonsense/x\n")
    result = CliRunner().invoke(record.main, ["--port", str(llama_server.free_port())])
    assert result.exit_code == 1 and "service.model 'nonsense/x': litellm cannot tell its provider" in result.output
    assert "Traceback" not in result.output
