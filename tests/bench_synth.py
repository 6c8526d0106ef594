"""Synthesis at the paper's volume for `make bench`: the streaming stage core against a loopback
teacher in its own process that answers each call after 200 ms with pairs of fresh random words
(`tests/fake_provider.py unique-pairs:N`), at concurrency 32.

Per cycle: kept pairs per second, concurrency efficiency = (calls x 0.2 s / 32) / wall time, peak RSS
of the synthesizing process (a child, so the figure is its own), and wall seconds per kept row (flat
from 20k to 100k if the cost per row does not grow with the rows before it). Then cycle 2 after
cycle 1 with one journal: calls replayed from cycle 1 (should be 0) and duplicate removals.

Run: python -m tests.bench synth   (or python -m tests.bench_synth 20000 for one size)
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LATENCY_S, CONCURRENCY, PAIRS = 0.2, 32, 3


def _rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "task": "qa", "prompt": f"Write a short question about topic {i} for a quiz",
             "response": f"A short answer about topic {i} in one or two sentences."} for i in range(n)]


def _cycle(url: str, target: int, cycle: int, earlier: list[dict]) -> tuple[dict, list[dict]]:
    from duo import service
    from duo.params import Curate, Synth
    from duo.synth import generate

    p = Synth(per_cycle=target, pairs_per_request=PAIRS, max_requests=10 * target)
    with service.Service("openai/gpt-4o-mini", api_base=url, concurrency=CONCURRENCY, journal="synth",
                         cycle=cycle, timeout_s=60) as svc:
        start = time.monotonic()
        out = generate.synthesize(_rows("t", 200), _rows("q", 1000), earlier, svc, p, Curate(), cycle)
        wall = time.monotonic() - start
    m, calls = out.metrics, svc.stats.calls
    return {"target": target, "kept": m["kept"], "calls": calls, "replayed": svc.stats.cached,
            "wall_s": round(wall, 1), "kept_per_s": round(m["kept"] / wall, 1),
            "efficiency": round(calls * LATENCY_S / CONCURRENCY / wall, 3),
            "ms_per_kept_row": round(1000 * wall / m["kept"], 2),
            "duplicate_removal_rate": round(m["exact_duplicate_rate"] + m["near_duplicate_rate"], 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}, out.kept


def child(url: str, target: int, two_cycles: bool) -> None:
    first, kept = _cycle(url, target, 1, [])
    result = {"cycle1": first}
    if two_cycles:
        result["cycle2"], _ = _cycle(url, target, 2, kept)
    print(json.dumps(result), flush=True)


def run(target: int, two_cycles: bool = False) -> dict:
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_provider", str(LATENCY_S), f"unique-pairs:{PAIRS}"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.symlink(ROOT / "prompts", Path(tmp) / "prompts")
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "bench-no-key"}
            proc = subprocess.run([sys.executable, "-m", "tests.bench_synth", "--child", url, str(target),
                                   str(int(two_cycles))], cwd=tmp, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def bench_synth() -> dict:
    small = run(20_000, two_cycles=True)
    large = run(100_000)["cycle1"]
    figures = {f"synth.{k}_20k": v for k, v in small["cycle1"].items()}
    figures |= {f"synth.{k}_100k": v for k, v in large.items()}
    figures |= {f"synth.cycle2_{k}": v for k, v in small["cycle2"].items()}
    figures["synth.cost_per_row_ratio_100k_vs_20k"] = round(large["ms_per_kept_row"] /
                                                             small["cycle1"]["ms_per_kept_row"], 3)
    figures["synth.setting"] = (f"loopback teacher, {LATENCY_S * 1000:.0f} ms per call, {PAIRS} unique pairs per "
                                f"call, concurrency {CONCURRENCY}, 200 seed rows, 1,000 test rows")
    return figures


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
    else:
        print(json.dumps(run(int(sys.argv[1])), indent=1))
