"""`make bench`: measured figures, written to metrics/bench.json (keys merged with other benches).

service: 400 judge calls through the evaluate stage's code against a loopback OpenAI-compatible
server answering each call after 500 ms, at concurrency 16 (ideal 400 x 0.5 s / 16 = 12.5 s); then
the same stage again, answered from the journal.

cycle, train, infer, synth, serve, record, quality, loop, defaults: tests/bench_cycle.py, bench_train.py,
bench_infer.py, bench_synth.py, bench_serve.py, bench_record.py, bench_quality.py, bench_loop.py,
bench_defaults.py (their docstrings say what is measured and how).

Run: python -m tests.bench [cycle] [train [levers]] [infer] [service] [curate] [synth] [serve] [record] [quality]
     [loop] [defaults]   (no argument: all but levers, quality, loop and defaults)
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from duo import contracts, service
from duo.data import records
from duo.params import Judge
from duo.evaluation import judging as evaluate

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / contracts.BENCH
LAST_CYCLE = ROOT / ".bench" / "last_cycle.json"  # the last cycle section's finetune and infer metrics


def bench_service(calls: int = 400, concurrency: int = 16, latency_s: float = 0.5) -> dict:
    preds = [{"prompt_id": f"p{i}", "sample_idx": 0, "task": "qa", "prompt": f"Question {i}?",
              "reference": "Ref.", "response": "Answer."} for i in range(calls)]
    import subprocess
    import sys

    p = Judge(m=1, max_parse_retries=0)
    cwd = os.getcwd()
    reply = '{"similarity_assessment": {"score": 70}, "precision_assessment": {"score": 80}}'
    # the provider runs in its own process, as a remote one would
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_provider", str(latency_s), reply], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(ROOT / "prompts", Path(tmp) / "prompts")
        os.chdir(tmp)
        try:
            os.environ.setdefault("OPENAI_API_KEY", "bench-no-key")
            timings = []
            for _ in range(2):
                with service.Service("openai/bench", api_base=url, concurrency=concurrency, journal="bench") as svc:
                    start = time.monotonic()
                    rows = evaluate.judge_single(preds, svc, p, "bench", "student")
                    timings.append((time.monotonic() - start, svc.stats.calls, svc.stats.max_in_flight))
                    assert all(r["error"] is None for r in rows)
        finally:
            os.chdir(cwd)
            server.stdin.close()
            server.wait(timeout=10)
    (first, n1, peak), (second, n2, _) = timings
    n2 += n1  # calls are per run
    ideal = calls * latency_s / concurrency
    return {"service.concurrency_efficiency": round(ideal / first, 3), "service.calls": n1,
            "service.first_run_s": round(first, 2), "service.ideal_s": ideal, "service.max_in_flight": peak,
            "service.rerun_calls": n2 - n1, "service.rerun_s": round(second, 3),
            "service.rerun_fraction": round(second / first, 4)}


def synthetic_rows(n: int, seen: int, test: int, dup_share: float, overlap_share: float, seed: int = 0):
    """Rows of realistic lengths built from the sample data's vocabulary, with planted near
    duplicates (one word changed, of an earlier NEW or SEEN row) and test overlaps (a 15-word span of a
    test text inside a longer instruction). Returns new, seen, test and the planted ids."""
    import random

    rng = random.Random(seed)
    vocab = sorted({w for line in (ROOT / "data" / "coverage.jsonl").read_text().splitlines()
                    for w in json.loads(line)["prompt"].split() if w.isalpha()})

    def text(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    def fresh(prefix, i):
        return {"id": f"{prefix}{i}", "task": "qa", "prompt": text(20, 120), "response": text(5, 60)}

    seen_rows = [fresh("s", i) for i in range(seen)]
    test_rows = [fresh("t", i) for i in range(test)]
    new_rows, dups, overlaps = [], set(), set()
    for i in range(n):
        r = rng.random()
        if r < dup_share and (new_rows or seen_rows):
            src = rng.choice(new_rows if new_rows and rng.random() < 0.8 else seen_rows)
            words = src["prompt"].split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            row = {"id": f"n{i}", "task": "qa", "prompt": " ".join(words), "response": src["response"]}
            dups.add(row["id"])
        elif r < dup_share + overlap_share:
            t = rng.choice(test_rows)
            words = max(t["prompt"].split(), t["response"].split(), key=len)
            start = rng.randrange(max(1, len(words) - 15))
            row = {"id": f"n{i}", "task": "qa", "prompt": text(5, 20) + " " + " ".join(words[start:start + 15]),
                   "response": text(5, 40)}
            overlaps.add(row["id"])
        else:
            row = fresh("n", i)
        new_rows.append(row)
    return new_rows, seen_rows, test_rows, dups, overlaps


def bench_curate(n: int = 300_000, seen: int = 10_000, test: int = 1_000) -> dict:
    """Runs in a child process so that its peak RSS is its own."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tests.bench", "--curate-child", str(n), str(seen), str(test)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def _curate_child(n: int, seen: int, test: int) -> None:
    import resource

    from duo.synth import curate
    from duo.params import Curate

    new_rows, seen_rows, test_rows, dups, overlaps = synthetic_rows(n, seen, test, 0.05, 0.01)
    start = time.monotonic()
    kept, removed, report = curate.curate(new_rows, seen_rows, test_rows, Curate())
    seconds = time.monotonic() - start
    reasons = {r["id"]: r["reason"] for r in removed}
    # a planted row counts as found when it is removed (a duplicate of an overlap row may go as either)
    found_dups = sum(i in reasons for i in dups)
    found_over = sum(i in reasons for i in overlaps)
    # naive: rouge-score's own ROUGE-L on every pair; timed on pairs from a 2,000-row sample,
    # extrapolated to all rows
    from rouge_score.rouge_scorer import _score_lcs

    sample = [curate._rouge_tokens(r) for r in new_rows[:2000]]
    pairs, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 5.0:
        a, b = sample[pairs % 2000], sample[(pairs * 7 + 1) % 2000]
        _score_lcs(a, b)
        pairs += 1
    per_pair = (time.monotonic() - t0) / pairs
    total = n + seen
    naive = per_pair * total * (total - 1) / 2
    print(json.dumps({"curate.rows": n, "curate.seconds": round(seconds, 1),
                      "curate.rows_per_s": round(n / seconds), "curate.recall": round(
                          (found_dups + found_over) / (len(dups) + len(overlaps)), 4),
                      "curate.recall_near_duplicates": round(found_dups / len(dups), 4),
                      "curate.recall_test_overlaps": round(found_over / len(overlaps), 4),
                      "curate.kept": len(kept), "curate.removed": report["removed"],
                      "curate.lsh_candidates": report["lsh_candidates"],
                      "curate.naive_rouge_pairs_per_s": round(1 / per_pair),
                      "curate.naive_extrapolated_s": round(naive), "curate.speedup_vs_naive": round(naive / seconds),
                      "curate.peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


SECTIONS = ("cycle", "train", "infer", "service", "curate", "synth", "serve", "record", "quality", "loop", "defaults")
# asked for by name only: full finetunes on the shipped sample (quality, ~40 min on 2 cores) or the
# development data (loop ~1 h, defaults hours) would push `make bench` past its 45 minutes
OPT_IN = ("quality", "loop", "defaults")


def _last_cycle() -> dict:
    """The last cycle section's finetune/infer metrics, while its clone (with that adapter) is still there."""
    from tests import bench_cycle

    last = records.read_json(LAST_CYCLE, default=None)
    if not last or not (bench_cycle.WORK / "clone" / "models" / "adapter").exists():
        return {"train": None, "infer": None}
    return {k: last[k] and {**last[k], "from_cycle_at": last["at"]} for k in ("train", "infer")}


def _workspace(cycle_ran: bool, need_model: bool) -> Path:
    """The scratch clone the train and infer benches read: the bench's own cycle's, or (a section run
    alone) one made here with the base model, the split and, for infer, a 2-step adapter and its GGUF."""
    import subprocess
    import sys

    from tests import bench_cycle

    clone = bench_cycle.WORK / "clone"
    if not cycle_ran and not (clone / "models" / "base" / "config.json").exists():
        bench_cycle.fresh_clone(clone, with_tools=True)
    steps = [("base", clone / "models" / "base" / "config.json"), ("prepare", clone / "data" / "train.jsonl")]
    if need_model:
        steps += [("finetune", clone / "models" / "adapter"), ("export", clone / "models" / "student.gguf")]
    quick = clone / ".bench-params.yaml"
    quick.write_text((clone / "params.yaml").read_text().replace("max_steps: -1", "max_steps: 2", 1))
    for stage, out in steps:
        if not out.exists():
            proc = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--params", str(quick)], cwd=clone,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"stages.{stage} failed in {clone}:\n{proc.stderr[-3000:]}")
    return clone


def machine() -> dict:
    """What the figures depend on: they are comparable only between runs on the same kind of machine."""
    from duo import machine

    info = {"cores": machine.cores(), "cpu": None, "bf16_hardware": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                            if line.startswith("model name")), None)
        info["bf16_hardware"] = " avx512_bf16" in text or " amx_bf16" in text
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["memory_gb"] = round(int(mem.split()[1]) / 1024 ** 2, 1)
    except (OSError, StopIteration):
        pass
    return info


def run(sections: list[str], save=lambda figures: None) -> tuple[dict, dict]:
    """Runs the sections in order; `save` gets the figures so far after each one (a failed section
    keeps the others' figures). Returns figures and errors."""
    # each section records the machine it ran on: a section rerun alone on another kind of machine
    # must not relabel the figures of the others
    info = machine()
    figures: dict = {"bench.machine": info} if set(SECTIONS) - set(OPT_IN) <= set(sections) else {}
    timings: dict = {}
    errors: dict = {}
    # a section run alone uses the last bench cycle's own finetune and infer figures (labelled as such)
    state: dict = {"train": None, "infer": None} if "cycle" in sections else _last_cycle()
    for section in SECTIONS:
        if section not in sections:
            continue
        start = time.monotonic()
        try:
            got = _section(section, sections, state)
        except Exception as exc:  # keep going: one broken section must not lose the others' figures
            errors[section] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
            print(f"bench: {section} FAILED: {errors[section]}", flush=True)
            got = {}
        timings[section] = round(time.monotonic() - start, 1)
        figures.update(got)
        if set(got) != {f"{section}.variants"}:  # a variant alone names its own machine, not the section's
            figures[f"{section}.machine"] = info
        print(f"bench: {section} done in {timings[section]} s", flush=True)
        figures["bench.section_s"] = timings
        save(_tidy(dict(figures)))
    figures["bench.load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return _tidy(figures), errors


def _tidy(figures: dict) -> dict:
    """Peak RSS per stage of the cycle and of the bench's own runs, under one key."""
    rss = dict(figures.pop("memory.peak_rss_mb", None) or {})
    for key in [k for k in figures if k.startswith("memory.peak_rss_mb.")]:
        rss[key.removeprefix("memory.peak_rss_mb.")] = figures.pop(key)
    if rss:
        figures["memory.peak_rss_mb"] = rss
    return figures


def _section(section: str, sections: list[str], state: dict) -> dict:
    from tests import bench_cycle, bench_infer, bench_train

    cycle_train, cycle_infer = state["train"], state["infer"]
    if section == "cycle":
        got = bench_cycle.bench_cycle()
        state["train"], state["infer"] = got.pop("cycle.train"), got.pop("cycle.infer")
        records.write_json(LAST_CYCLE, {"at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "train": state["train"], "infer": state["infer"]})
    elif section == "train":
        clone = _workspace(cycle_train is not None, need_model=False)
        got = bench_train.bench_train(clone / "models" / "base", clone / "data" / "train.jsonl",
                                      bench_cycle.WORK, cycle_train=cycle_train,
                                      levers="levers" in sections)
    elif section == "infer":
        clone = _workspace(cycle_infer is not None, need_model=True)
        got = bench_infer.bench_infer(clone, cycle_infer=cycle_infer)
    elif section == "service":
        got = bench_service()
    elif section == "synth":
        from tests import bench_synth

        got = bench_synth.bench_synth()
    elif section == "serve":
        from tests import bench_serve

        got = bench_serve.bench_serve()
    elif section == "record":
        from tests import bench_record

        got = bench_record.bench_record()
    elif section == "quality":
        from tests import bench_quality

        got = bench_quality.bench_quality(_workspace(cycle_train is not None, need_model=False))
    elif section == "loop":
        from tests import bench_loop

        got = bench_loop.bench_loop()
    elif section == "defaults":
        from tests import bench_defaults

        got = bench_defaults.bench_defaults()
    else:
        got = bench_curate()
    return got


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--curate-child":
        _curate_child(*map(int, sys.argv[2:5]))
        return
    sections = sys.argv[1:] or [s for s in SECTIONS if s not in OPT_IN]
    unknown = sorted(set(sections) - set(SECTIONS) - {"levers"})
    if unknown:
        raise SystemExit(f"unknown bench section(s) {unknown}; choose from {list(SECTIONS)} (+ levers with train)")
    def save(figures: dict) -> None:
        # read again at each save: a section runs for hours, and figures written meanwhile must survive
        results = records.read_json(OUT, default={}) or {}
        timings = {**(results.get("bench.section_s") or {}), **(figures.get("bench.section_s") or {})}
        records.write_json(OUT, {**results, **figures, "bench.section_s": timings})

    figures, errors = run(sections, save)
    save(figures)
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    print(f"-> {OUT}")
    if errors:
        raise SystemExit(f"bench: failed sections: {', '.join(errors)} (figures of the others are saved)")


if __name__ == "__main__":
    main()
