"""`make serve` (duo serve): the real llama-server on the bundled 135M GGUF, called through
litellm and the openai client exactly as an application would; the prompt it renders is the training one;
parallel clients, the API key, /health."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from duo import bundled, machine
from duo.llamacpp import llama_server, local_llm
from duo.app import serve

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

MESSAGES = [{"role": "user", "content": "Name one colour of the sky."}]


@pytest.fixture(scope="module")
def gguf():
    return bundled.bundled_gguf()


def start(gguf, cwd, **env_extra):
    port = llama_server.free_port()
    env = {**os.environ, "SERVE_PORT": str(port), "SERVE_MODEL": str(gguf), **env_extra}  # `make serve`'s route
    proc = subprocess.Popen([sys.executable, "-m", "duo.cli", "serve", "--threads", "2"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 900  # a hang guard: the event is the health check
    while not llama_server._ready(f"http://127.0.0.1:{port}/health"):
        if proc.poll() is not None:
            pytest.fail(f"duo.app.serve exited {proc.returncode}:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, "server not ready after 900 s"
        time.sleep(0.3)
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def server(gguf, tmp_path_factory):
    proc, base = start(gguf, tmp_path_factory.mktemp("serve"))
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_litellm_and_openai_clients_get_the_same_reply(server):
    import litellm
    import openai

    # What the README tells an application to change: the model name and the base URL, nothing else.
    reply = litellm.completion(model="openai/student", api_base=server, api_key="none", messages=MESSAGES,
                               max_tokens=12, temperature=0.0)
    text = reply.choices[0].message.content
    assert text and text.strip()
    assert reply.usage.completion_tokens > 0

    client = openai.OpenAI(base_url=server, api_key="none")
    direct = client.chat.completions.create(model="student", messages=MESSAGES, max_tokens=12, temperature=0.0)
    assert direct.model == "student"
    assert direct.choices[0].message.content == text  # greedy: same server, same prompt, same reply


def test_served_prompt_is_the_training_template(server, gguf):
    """RELIABILITY 17: the server renders exactly what transformers renders for training."""
    import llama_cpp
    from transformers import AutoTokenizer

    # The base stage takes its tokenizer (and chat template) from this GGUF; training renders with it.
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    for messages in (MESSAGES, [{"role": "system", "content": "Answer in French."}] + MESSAGES):
        training = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert local_llm.render_chat(llm, messages) == training

    # And the live server really uses it: its prompt token count is that rendering's.
    import openai

    reply = openai.OpenAI(base_url=server, api_key="none").chat.completions.create(
        model="student", messages=MESSAGES, max_tokens=1)
    training = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(llm.tokenize(training.encode(), add_bos=True, special=True))


def test_missing_or_bad_model_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(serve.main, [])
    assert result.exit_code == 1
    assert "models/student.gguf: model file not found (run `make cycle` first)" in result.output
    (tmp_path / "x.gguf").write_text("not a model")
    result = CliRunner().invoke(serve.main, ["--model", "x.gguf"])
    assert result.exit_code == 1 and "x.gguf: not a GGUF file" in result.output
    assert "Traceback" not in result.output


def test_busy_port_is_a_clean_error(gguf):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(serve.main, ["--model", str(gguf), "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_all_cores_by_default_and_the_same_text_as_one_thread(gguf):
    """`threads: 0` resolves to every core for decoding too (llama-cpp-python alone decodes on half);
    sampled text at a fixed seed does not depend on the thread count, so the speed-up changes no result."""
    import llama_cpp

    assert local_llm.threads_for(0) == machine.cores() and local_llm.threads_for(3) == 3
    cmd = llama_server.command(gguf, host="127.0.0.1", port=1, n_ctx=512, parallel=1)
    assert cmd[cmd.index("--threads") + 1] == cmd[cmd.index("--threads-batch") + 1] == str(machine.cores())
    texts = []
    for threads in (1, local_llm.threads_for(0)):
        llm = llama_cpp.Llama(str(gguf), n_ctx=512, verbose=False, chat_format=local_llm.EMBEDDED,
                              **local_llm.load_kwargs(threads))
        texts.append([llm.create_chat_completion([{"role": "user", "content": q}], max_tokens=40, temperature=0.7,
                                                 top_p=0.9, seed=7)["choices"][0]["message"]["content"]
                      for q in ("Name one colour of the sky.", "Summarize: the cat sat on the mat all day.")])
        del llm
    assert texts[0] == texts[1] and all(texts[0])


def test_eight_concurrent_clients_with_the_key_and_401_without(gguf, tmp_path):
    import json
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    import openai

    proc, base = start(gguf, tmp_path, SERVE_API_KEY="sk-serve-test-key-0123", SERVE_PARALLEL="4")
    try:
        client = openai.OpenAI(base_url=base, api_key="sk-serve-test-key-0123", max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: client.chat.completions.create(
                model="student", messages=[{"role": "user", "content": f"Count to {i + 2}."}], max_tokens=16,
                temperature=0.0), range(8)))
        assert all(r.choices[0].message.content for r in replies) and len(replies) == 8
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).chat.completions.create(
                model="student", messages=MESSAGES, max_tokens=4)
        request = urllib.request.Request(base + "/chat/completions", method="POST",
                                         data=json.dumps({"messages": MESSAGES, "max_tokens": 4}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 401
        assert llama_server._ready(base.removesuffix("/v1") + "/health"), "/health needs no key"
        assert "sk-serve-test-key" not in " ".join(open(f"/proc/{proc.pid}/cmdline").read().split("\0"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_network_host_without_a_key_is_refused(gguf, monkeypatch):
    monkeypatch.delenv("SERVE_API_KEY", raising=False)
    result = CliRunner().invoke(serve.main, ["--model", str(gguf), "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "refusing to serve on 0.0.0.0 without a key" in result.output
