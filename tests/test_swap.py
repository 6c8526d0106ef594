"""The migration, end to end, as a user runs it: the application (the same openai-SDK code throughout)
talks to `duo record` in front of the service LLM; `duo review` turns the recorded exchanges into
coverage rows; `make cycle` (duo cycle) trains, exports and judges the student on them; `make serve`
(duo serve) answers the application, which changed only its base URL and model name. The task's
instruction lives in the app's system prompt: the student trains on it and is served with it.

Offline: the service LLM is the default `local` one (the bundled 135M GGUF behind llama-server)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from duo.llamacpp import llama_server
from duo.app import traffic
from duo.data import chat
from tests.conftest import copy_project
from tests.test_pipeline import git_commit, jsonl, set_params, turn

pytestmark = pytest.mark.integration  # real servers, training, llama.cpp and DVC: make test-all

SYSTEM = "You label support tickets. Answer with one word: billing, outage or other."
TICKETS = ["I was charged twice this month", "The website is down for everyone", "Do you sell gift cards?",
           "My invoice shows the wrong address", "No internet since this morning", "What are your opening hours?",
           "Refund my last payment please", "The app will not load at all"]


def app(base_url: str, model: str, tickets: list[str]) -> list[str]:
    """The application's own code: it never changes, only the base URL and the model name it is given."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="the-apps-own-key")
    answers = []
    for ticket in tickets:
        reply = client.chat.completions.create(
            model=model, max_tokens=16, temperature=0,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}])
        answers.append(reply.choices[0].message.content)
    return answers


def start(cmd: list[str], cwd, env: dict, ready) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "duo.cli", *cmd], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 900  # a hang guard: the event is `ready`
    while not ready(proc):
        assert proc.poll() is None, f"duo {cmd[0]} exited:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"duo {cmd[0]} not ready"
        time.sleep(0.3)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _post(url: str, body: dict, token: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Duo-Token": token})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_record_review_cycle_serve_with_the_same_client_code(tmp_path):
    repo = copy_project(tmp_path / "repo")
    (repo / "data" / "coverage.jsonl").unlink()  # the coverage set comes from the app's own traffic
    set_params(repo, {"coverage": {"train_ratio": 0.75, "seed": 1},
                      "finetune": {"max_steps": 2, "batch_size": 2, "max_length": 256, "validation_ratio": 0.0},
                      "infer": {"k": 1, "max_tokens": 16}, "judge": {"m": 1}, "gate": {"threshold": 101, "max_cycles": 1}})

    # 1. record: the app's base URL points at duo record, which asks the service LLM
    port = llama_server.free_port()
    recorder = start(["record", "--port", str(port)], repo, {}, lambda p: llama_server._ready(f"http://127.0.0.1:{port}/health"))
    try:
        before = app(f"http://127.0.0.1:{port}/v1", "gpt-4o", TICKETS)
    finally:
        stop(recorder)
    exchanges = [obj for path in traffic.files(repo / "data" / "traffic") for _, obj in traffic.read(path)]
    assert len(exchanges) == len(TICKETS) and all(e["error"] is None for e in exchanges)
    assert [e["reply"]["content"] for e in exchanges] == before
    assert all(e["messages"][0] == {"role": "system", "content": SYSTEM} for e in exchanges)

    # 2. review: every exchange accepted into the task "tickets" (the page's own API; tests/test_review.py
    #    drives the page in a browser)
    reviewer = subprocess.Popen([sys.executable, "-m", "duo.cli", "review"], cwd=repo, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        url = reviewer.stdout.readline().split()[1]
        base, token = url.split("/?token=")
        items = _post(base + "/api/exchanges/list", {}, token)["items"]
        for item in items:
            _post(base + "/api/exchanges/decide", {"key": item["key"], "status": "accepted", "task": "tickets"}, token)
    finally:
        stop(reviewer)
    rows = chat.read_coverage(repo / "data" / "coverage.jsonl")
    assert len(rows) == len(TICKETS) and all(r["messages"][0]["content"] == SYSTEM for r in rows)
    git_commit(repo, "coverage from the app's traffic")

    # 3. make cycle: the student trains on the conversations the app sent, system prompt included
    out = turn(repo)
    assert "verdict: cycle 0" in out
    train = jsonl(repo, "data/train.jsonl")
    assert train and all(r["messages"][0] == {"role": "system", "content": SYSTEM} for r in train)
    preds = jsonl(repo, "data/predictions.jsonl")
    assert preds and all(p["messages"][0]["content"] == SYSTEM for p in preds), "judged with the context"

    # 4. make serve: the same app code, another base URL and model name
    port = llama_server.free_port()
    server = start(["serve", "--threads", "2"], repo, {"SERVE_PORT": str(port)},
                   lambda p: llama_server._ready(f"http://127.0.0.1:{port}/health"))
    try:
        after = app(f"http://127.0.0.1:{port}/v1", "student", TICKETS)
    finally:
        stop(server)
    assert len(after) == len(TICKETS) and all(isinstance(a, str) for a in after)
