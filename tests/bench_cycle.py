"""The cycle for `make bench`: set-up of a fresh clone, one default cycle with each stage's wall time
and peak RSS, and a `make cycle` with nothing to do.

The clone is a copy of the working tree's tracked and untracked files (as tests/conftest.py makes
them), in .bench/clone. `make setup` there builds its own .venv from pip's cache (warm on any machine
that set up duo once; the very first set-up also compiles llama-cpp-python). The cycle runs
`duo cycle` (what `make cycle` runs) with a `python` shim first on PATH: DVC starts each
stage as `python -m stages.<name>`, and the shim records the stage's wall time and the peak RSS of the
stage and everything it started (the llama.cpp server included: the largest single process).
gate.max_cycles is set to 1 in the clone, so the second `make cycle` has nothing to do (otherwise a
failed gate would start cycle 1); it changes nothing cycle 0 computes.

Run: python -m tests.bench cycle
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
SHIM = """#!{python}
import json, os, resource, subprocess, sys, time
start = time.monotonic()
rc = subprocess.call([{python!r}, *sys.argv[1:]])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(os.environ["DUO_BENCH_STAGE_LOG"], "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "seconds": time.monotonic() - start, "rc": rc,
                         "peak_rss_mb": usage.ru_maxrss / 1024}}) + "\\n")
sys.exit(rc)
"""


def clean_env() -> dict:
    """The caller's environment without its virtualenv: the clone uses its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and p != venv_bin and not p.startswith(str(ROOT / ".venv")))
    return env


def fresh_clone(dest: Path, with_tools: bool) -> Path:
    from tests.conftest import copy_project

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    copy_project(dest)
    if not with_tools:
        shutil.rmtree(dest / "tools", ignore_errors=True)
    return dest


def _set_max_cycles(clone: Path, n: int) -> None:
    import yaml

    raw = yaml.safe_load((clone / "params.yaml").read_text())
    text = (clone / "params.yaml").read_text()
    old = f"max_cycles: {raw['gate']['max_cycles']}"
    assert old in text, "params.yaml: gate.max_cycles not found"
    (clone / "params.yaml").write_text(text.replace(old, f"max_cycles: {n}", 1))
    subprocess.run(["git", "commit", "-qam", "bench: gate.max_cycles=1"], cwd=clone, check=True,
                   capture_output=True, env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                                             "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"})


def _timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    start = time.monotonic()
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}); see {log}:\n"
                           + log.read_text()[-3000:])
    return seconds


def bench_cycle(work: Path = WORK) -> dict:
    clone = fresh_clone(work / "clone", with_tools=False)
    _set_max_cycles(clone, 1)
    log = work / "cycle.log"
    log.write_text("")
    env = clean_env()
    setup_s = _timed(["make", "setup"], clone, env, log)

    python = clone / ".venv" / "bin" / "python"
    shim_dir = work / "shim"
    shim_dir.mkdir(exist_ok=True)
    shim = shim_dir / "python"
    shim.write_text(SHIM.format(python=str(python)))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    stage_log = work / "stages.jsonl"
    stage_log.write_text("")
    # what `make cycle` exports, with the shim before the clone's .venv/bin
    cycle_env = {**env, "PATH": os.pathsep.join([str(shim_dir), str(python.parent), env["PATH"]]),
                 "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
                 "DUO_BENCH_STAGE_LOG": str(stage_log), "CI": "1"}
    cycle_s = _timed([str(python), "-m", "duo.cli", "cycle"], clone, cycle_env, log)

    noop_log = work / "noop.log"
    noop_log.write_text("")
    noop_s = _timed(["make", "cycle"], clone, env, noop_log)
    noop_said = noop_log.read_text()

    stages, rss = {}, {}
    for line in stage_log.read_text().splitlines():
        rec = json.loads(line)
        argv = rec["argv"]
        name = argv[argv.index("-m") + 1].removeprefix("stages.") if "-m" in argv else " ".join(argv)[:40]
        stages[name] = round(stages.get(name, 0.0) + rec["seconds"], 1)
        rss[name] = round(max(rss.get(name, 0.0), rec["peak_rss_mb"]), 1)
    rss["cycle_max"] = max(rss.values()) if rss else None
    train = json.loads((clone / "metrics" / "train.json").read_text())
    infer = json.loads((clone / "metrics" / "infer.json").read_text())
    return {
        "cycle.setup_s": round(setup_s, 1),
        "cycle.setup_note": "make setup on a fresh copy, pip wheel cache warm (llama-cpp-python not compiled)",
        "cycle.default_s": round(cycle_s, 1),
        "cycle.stage_s": stages,
        "cycle.dvc_overhead_s": round(cycle_s - sum(stages.values()), 1),
        "cycle.noop_s": round(noop_s, 1),
        "cycle.noop_did_nothing": "nothing to do" in noop_said and "running cycle" not in noop_said,
        "memory.peak_rss_mb": rss,
        "cycle.train": train,
        "cycle.infer": infer,
    }
