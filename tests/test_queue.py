"""Parallel experiments (slow, `make test-all`): two variants queued with `dvc exp run --queue` and run by
`dvc queue start -j 2` both complete, each in its own workspace, and `dvc exp show` compares them. The
runs stop at the finetune stage (the variants differ there); the sample data is cut to the micro set."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import copy_project
from tests.test_pipeline import MICRO, git_commit, micro_coverage, set_params

pytestmark = pytest.mark.slow


def dvc(repo: Path, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "CI": "true"}
    # Files, not pipes: the queue's workers can inherit the output handles of `dvc queue start`, and a pipe
    # then stays open until they finish (CI waited 300 s on a start that had exited 0).
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert proc.returncode == 0, (args, stdout[-3000:], stderr[-3000:])
    return stdout


def test_two_queued_variants_run_in_parallel_and_compare(tmp_path):
    repo = copy_project(tmp_path / "q")
    (repo / "data" / "coverage.jsonl").write_text(micro_coverage())
    set_params(repo, MICRO)
    git_commit(repo, "micro configuration")

    for rank in (4, 8):
        dvc(repo, "exp", "run", "--queue", "-n", f"rank-{rank}", "-S", f"finetune.lora.r={rank}", "finetune")
    dvc(repo, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 1500
    while True:
        status = dvc(repo, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(10)
    assert status.count("Success") == 2, status + dvc(repo, "queue", "logs", "rank-4")

    table = list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv"))))
    seen = {row["Experiment"]: row["finetune.lora.r"] for row in table if row["Experiment"].startswith("rank-")}
    assert seen == {"rank-4": "4", "rank-8": "8"}, seen
    dvc(repo, "queue", "stop")
