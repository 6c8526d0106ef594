"""Does the loop lift the student? (`make bench SECTION=loop`, asked for by name: about an hour on 2 cores)

Three cycles of the real pipeline (`duo cycle`, DVC experiments, every stage) on the development data
(tests/devdata.py: real tasks no one here wrote) with the capable stand-in teacher and judge
(tests/capable_provider.py: synthesis answered with real held-out pairs of the seed's own data set),
`synth.schedule: doubling`. Per cycle: the student's score on the test split by the metric each task
calls for (exact match for short answers, ROUGE-L otherwise), greedy from the GGUF that ships (infer
runs with k = 1, temperature 0), the mean over tasks, training seconds and rows; the paired bootstrap
95% interval of (last cycle - cycle 0) over test prompts; and the same split trained by a plain TRL
`SFTTrainer` script with the textbook recipe, scored the same way (`plain_trl_score`).

DUO_LOOP_SET="finetune.init=previous synth.focus=failures" runs a variant (recorded under
loop.variants.<name>, DUO_LOOP_NAME or the settings); the main keys describe the shipped defaults.
`python -m tests.bench_loop pool NAME...` pools runs of other seeds: per test prompt, each cycle's
score averaged over the runs, then the paired interval of (last cycle - cycle 0) as above.
DUO_LOOP_FROM=<run> starts a variant from that run's cycle 0 instead of training it again (~45 min less),
for settings that cycle 0 does not read (synth.*, finetune.init: its finetune is kept, CYCLE0_IGNORES); that
run's other settings (its seeds) stay. Stages whose code changed since then rerun (dvc); the rest comes from
that run's DVC cache.
DUO_LOOP_CYCLES=2 is the short form (~40 min less on 2 cores): cycle 0, then one cycle that adds at once
the 192 synthetic rows the three-cycle run holds at its last cycle. With `finetune.init: base` and
`synth.focus: uniform` (the defaults) each cycle trains from the base on all rows so far, so its last
cycle sees the same data; with init=previous or focus=failures the middle cycle matters: run all three.
Run: python -m tests.bench loop
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from duo import params as params_mod
from tests import bench, devdata

WORK = devdata.ROOT / ".bench" / "loop"
CYCLES = int(os.environ.get("DUO_LOOP_CYCLES") or 3)
# the bench's own settings over the shipped params: what makes it a loop measurement, nothing tuned
SYNTH = ({"per_cycle": 64, "schedule": "doubling"} if CYCLES == 3 else
         {"per_cycle": 192 // max(CYCLES - 1, 1), "schedule": "fixed"})  # the same 192 rows by the last cycle
PARAMS = {
    "synth": {**SYNTH, "max_requests": 400, "pairs_per_request": 3},
    "service": {"model": "openai/capable", "concurrency": 8},
    "infer": {"k": 1, "temperature": 0.0},
    "judge": {"m": 1},
    "gate": {"threshold": 101, "max_cycles": CYCLES},  # never passes: every cycle runs
}


def _cycle_figures(project: Path, train_rows: list[dict]) -> tuple[dict, dict]:
    from duo.data import records
    from duo.evaluation import reference

    preds = [obj for _, obj in records.iter_jsonl(project / "data" / "predictions.jsonl")]
    scores = reference.prompt_scores(preds, reference.task_metrics(train_rows))
    train = json.loads((project / "metrics" / "train.json").read_text())
    synth = json.loads((project / "metrics" / "synth.json").read_text())
    val = json.loads((project / "metrics" / "validation.json").read_text())
    fig = {**reference.task_score(scores), "ci95": reference.bootstrap(scores), "train_seconds": train["train_seconds"],
           "rows": train["rows"], "synth_rows": train["synth_rows"], "steps": train["steps"],
           "init": train.get("init"), "synth_kept": synth.get("kept", 0), "synth_requests": synth.get("requests", 0),
           "answers_tvd": {t: a.get("tvd") for t, a in (synth.get("answers") or {}).items()},
           "validation_task_score": val.get("task_score")}
    return fig, scores


def _from_cycle0(src: Path, project: Path) -> None:
    """`project` as run `src` left it after cycle 0 (workspace and DVC cache), with this checkout's code
    (uncommitted: run_loop commits it with the variant's params)."""
    import re
    import shutil

    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(src, project, symlinks=True)
    subprocess.run([sys.executable, "-m", "dvc", "exp", "apply", "cycle-0"], cwd=project, check=True,
                   capture_output=True)
    for folder in ("data/synth", "data/validation"):  # persisted outs: later cycles' files stay otherwise
        for path in (project / folder).glob("*"):
            found = re.search(r"cycle-(\d+)", path.name)
            if found and int(found[1]) > 0:
                path.unlink()
    code = subprocess.run(["git", "ls-files", "duo", "stages", "prompts", "dvc.yaml"], cwd=devdata.ROOT,
                          capture_output=True, text=True, check=True).stdout.split()
    for rel in code:
        shutil.copy2(devdata.ROOT / rel, project / rel)


# keys cycle 0 does not read, by stage: a variant changing only these keeps the earlier run's cycle 0
CYCLE0_IGNORES = {"finetune": {"finetune": {"init"}}}


def _dotted(raw: dict, key: str):
    for part in key.split("."):
        raw = (raw or {}).get(part)
    return raw


def _keep_cycle0(project: Path) -> None:
    """Accept the earlier run's cycle-0 outputs of stages whose only change is a key cycle 0 does not read
    (`finetune.init` trains from the base at cycle 0 whatever it says): DVC sees the whole `finetune`
    section changed and would train cycle 0 again (~40 min) to the same weights."""
    dvc = [sys.executable, "-m", "dvc"]
    status = json.loads(subprocess.run([*dvc, "status", *CYCLE0_IGNORES, "--json"], cwd=project,
                                       capture_output=True, text=True, check=True).stdout or "{}")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    now = yaml.safe_load((project / "params.yaml").read_text())
    for stage, ignores in CYCLE0_IGNORES.items():
        changes = status.get(stage) or []
        params_only = all(set(c) == {"changed deps"} and set(c["changed deps"]) == {"params.yaml"} for c in changes)
        before = lock[stage]["params"]["params.yaml"]
        changed = {(section, key) for section, keys in ignores.items()
                   for key in set(before.get(section) or {}) | set(now.get(section) or {})
                   if (before.get(section) or {}).get(key) != (now.get(section) or {}).get(key)}
        others = {s for s in before if s not in ignores and before[s] != _dotted(now, s)}
        if changes and params_only and not others and all(key in ignores[s] for s, key in changed):
            subprocess.run([*dvc, "commit", "-f", stage], cwd=project, check=True, capture_output=True)
            print(f"loop: cycle 0's {stage} kept: only {sorted(f'{s}.{k}' for s, k in changed)} changed", flush=True)


def run_loop(sets: list[str], name: str) -> dict:
    from duo.evaluation import reference

    project = WORK / name
    params = {k: dict(v) for k, v in PARAMS.items()}
    server = subprocess.Popen([sys.executable, "-m", "tests.capable_provider", str(devdata.folder())],
                              cwd=devdata.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        params["service"]["api_base"] = server.stdout.readline().strip()
        start_from = os.environ.get("DUO_LOOP_FROM")
        if start_from:
            _from_cycle0(WORK / start_from, project)
            devdata.set_params(project, params)  # this run's loop settings and server, not the earlier run's
        else:
            devdata.project(project, params, stages=())
        if sets or start_from:
            raw = yaml.safe_load((project / "params.yaml").read_text())
            for assignment in sets:
                params_mod.assign(raw, assignment)
            (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            subprocess.run(["git", "add", "-A"], cwd=project, check=True)
            subprocess.run(["git", "commit", "-qm", f"variant {name}"], cwd=project, check=True,
                           env=devdata.git_env())
        if start_from:
            _keep_cycle0(project)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "CI": "true",
               "OPENAI_API_KEY": "bench-no-key"}
        figures, per_prompt = [], []
        log = WORK / f"{name}.log"
        log.write_text("")
        for t in range(CYCLES):
            start = time.monotonic()
            with open(log, "a") as fh:
                proc = subprocess.run([sys.executable, "-m", "duo.cli", "cycle"], cwd=project, env=env, stdout=fh,
                                      stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"loop {name}: cycle {t} failed; see {log}:\n{log.read_text()[-3000:]}")
            from duo.data import records

            train_rows = [obj for _, obj in records.iter_jsonl(project / "data" / "train.jsonl")]
            fig, scores = _cycle_figures(project, train_rows)
            figures.append({"cycle": t, "wall_seconds": round(time.monotonic() - start, 1), **fig})
            per_prompt.append(scores)
            records.write_json(WORK / f"{name}-cycle{t}-scores.json", scores)  # for intervals across runs
            print(f"loop {name}: cycle {t}: task score {fig['task_score']} {fig['by_task']}", flush=True)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    lift = reference.bootstrap(per_prompt[-1], per_prompt[0])
    return {"score_by_cycle": figures, "lift": round(figures[-1]["task_score"] - figures[0]["task_score"], 2),
            "lift_ci": lift, "sets": sets, "test_prompts": len(per_prompt[0]), "machine": bench.machine(),
            "seconds": round(sum(f["wall_seconds"] for f in figures), 1)}


def plain_trl(project: Path) -> dict:
    """The plain TRL recipe on cycle 0's split of `project`, scored on its test split like the loop."""
    proc = subprocess.run([sys.executable, "-m", "tests.bench_loop", "plain", str(project)], cwd=devdata.ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"plain TRL failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plain_child(project: Path) -> dict:
    from duo import contracts as c
    from duo import params as params_mod
    from duo.evaluation import reference
    from tests import bench_quality

    os.chdir(project)
    params = params_mod.load()
    got = bench_quality.plain(params, rows=c.read_rows(c.TEST))
    scores = reference.prompt_scores(got.pop("predictions"), reference.task_metrics(c.read_rows(c.TRAIN)))
    return {**reference.task_score(scores), "ci95": reference.bootstrap(scores), "train_seconds": got["train_seconds"],
            "steps": got["steps"]}


def pooled(names: list[str]) -> dict:
    """The lift of several runs (seeds) of one setting: each cycle's per-prompt score averaged over them."""
    from duo.data import records
    from duo.evaluation import reference

    def cycle(t: int) -> dict:
        runs = [records.read_json(WORK / f"{n}-cycle{t}-scores.json") for n in names]
        ids = set.intersection(*(set(r) for r in runs))
        return {i: (*runs[0][i][:2], sum(r[i][2] for r in runs) / len(runs)) for i in sorted(ids)}

    last = max(t for t in range(CYCLES + 1) if all((WORK / f"{n}-cycle{t}-scores.json").is_file() for n in names))
    first, end = cycle(0), cycle(last)
    return {"runs": names, "cycle0": reference.task_score(first), f"cycle{last}": reference.task_score(end),
            "lift": round(reference.task_score(end)["task_score"] - reference.task_score(first)["task_score"], 2),
            "lift_ci": reference.bootstrap(end, first)}


def bench_loop() -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    sets = os.environ.get("DUO_LOOP_SET", "").split()
    name = os.environ.get("DUO_LOOP_NAME") or ("defaults" if not sets else "_".join(
        s.replace("=", "-").split(".")[-1] for s in sets))
    got = run_loop(sets, name)
    from duo.data import records

    records.write_json(WORK / f"{name}.json", got)  # kept should the plain recipe's run not finish
    if sets:
        variants = (records.read_json(bench.OUT, default={}) or {}).get("loop.variants") or {}
        return {"loop.variants": {**variants, name: got}}
    plain = plain_trl(WORK / name)
    return {"loop.score_by_cycle": got["score_by_cycle"], "loop.lift": got["lift"], "loop.lift_ci": got["lift_ci"],
            "loop.plain_trl_score": plain["task_score"], "loop.plain_trl": plain,
            "loop.cycle0_minus_plain": round(got["score_by_cycle"][0]["task_score"] - plain["task_score"], 2),
            "loop.test_prompts": got["test_prompts"], "loop.cycles": CYCLES, "loop.params": PARAMS | {"service": {"model": "openai/capable"}},
            "loop.seconds": got["seconds"]}


if __name__ == "__main__":
    if sys.argv[1] == "plain":
        print(json.dumps(_plain_child(Path(sys.argv[2]))))
    elif sys.argv[1] == "pool":
        print(json.dumps(pooled(sys.argv[2:]), indent=1))
