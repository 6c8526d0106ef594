"""Portable runs and data off the machine (slow, `make test-all`): from a fresh copy of the tracked
files, run cycle 0 with `dvc exp run --temp` (every dep must be tracked), push models and data to an S3
remote (a real moto S3 server on loopback), then a fresh `git clone` pulls them and serves the GGUF
with llama.cpp without retraining. Credentials only in the environment: they never reach a file."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import copy_project
from tests.test_pipeline import MICRO, git_commit, micro_coverage, set_params

pytestmark = pytest.mark.slow
# Made at run time, so that no file (this one is copied into the project too) holds them beforehand.
KEY_ID, SECRET = "AKIA" + secrets.token_hex(8).upper(), "canary-" + secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                     aws_secret_access_key=SECRET).create_bucket(Bucket="duo-remote")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "CI": "true",
            "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


def sh(cwd: Path, *cmd: str, timeout: int = 1800) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{out[-6000:]}"
    return out


def dvc(cwd: Path, *args: str) -> str:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def make(cwd: Path, target: str) -> str:
    # -o setup: the environment is this test's own; do not re-install it in a scratch copy.
    return sh(cwd, "make", "-o", "setup", target, f"VENV={Path(sys.executable).parent.parent}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_temp_run_push_then_fresh_clone_pulls_and_serves(tmp_path, s3):
    repo = copy_project(tmp_path / "origin")
    (repo / "data" / "coverage.jsonl").write_text(micro_coverage())
    set_params(repo, MICRO)
    dvc(repo, "remote", "add", "-d", "storage", "s3://duo-remote/cache")
    dvc(repo, "remote", "modify", "--local", "storage", "endpointurl", s3)
    git_commit(repo, "micro configuration, S3 remote")

    # 1. Every dep is tracked: the cycle runs in DVC's temp copy of the git tree.
    start = time.monotonic()
    out = dvc(repo, "exp", "run", "--temp", "-n", "temp-cycle-0")
    print(f"exp run --temp: {time.monotonic() - start:.0f} s")
    assert "Running stage 'export'" in out and "Running stage 'gate'" in out
    dvc(repo, "exp", "apply", "temp-cycle-0")
    git_commit(repo, "cycle 0")
    assert json.loads((repo / "metrics" / "cycle.json").read_text())["cycle"] == 0
    gguf_sha = sha256(repo / "models" / "student.gguf")

    # 2. make push: the outputs of the cycle go to the bucket.
    out = make(repo, "push")
    import boto3

    s3c = boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id=KEY_ID,
                       aws_secret_access_key=SECRET)
    keys = [o["Key"] for o in s3c.list_objects_v2(Bucket="duo-remote").get("Contents", [])]
    assert len(keys) >= 8, keys

    # 3. A fresh clone (git only), with its own local endpoint setting: make pull, then nothing to rerun.
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "models" / "student.gguf").exists()
    dvc(clone, "remote", "modify", "--local", "storage", "endpointurl", s3)
    make(clone, "pull")
    assert sha256(clone / "models" / "student.gguf") == gguf_sha
    for rel in ("models/base/model.safetensors", "models/adapter/adapter_model.safetensors", "data/train.jsonl",
                "data/predictions.jsonl", "data/judgments.jsonl", "metrics/eval.json"):
        assert (clone / rel).exists(), rel
    status = dvc(clone, "status", "--json")
    assert json.loads(status[status.find("{"):]) == {}, "pulled outputs match dvc.lock: nothing reruns"

    # 4. Serve the pulled GGUF without retraining.
    import llama_cpp

    llm = llama_cpp.Llama(str(clone / "models" / "student.gguf"), n_ctx=512, verbose=False)
    reply = llm.create_chat_completion([{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert reply["choices"][0]["message"]["content"].strip()

    # 5. The credentials were only ever in the environment.
    for where in (repo, clone):
        tracked = subprocess.run(["git", "ls-files"], cwd=where, capture_output=True, text=True).stdout.split()
        files = [where / t for t in tracked] + [where / ".dvc" / "config", where / ".dvc" / "config.local"]
        for f in files:
            if f.is_file():
                text = f.read_bytes()
                assert KEY_ID.encode() not in text and SECRET.encode() not in text, f
    assert "endpointurl" in (clone / ".dvc" / "config.local").read_text()
    assert "config.local" not in subprocess.run(["git", "ls-files", ".dvc"], cwd=clone, capture_output=True,
                                                text=True).stdout
