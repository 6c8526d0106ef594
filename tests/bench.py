"""`make bench`: measured figures, written to metrics/bench.json (keys merged with other benches).

service: 400 judge calls through the evaluate stage's code against a loopback OpenAI-compatible
server answering each call after 500 ms, at concurrency 16 (ideal 400 x 0.5 s / 16 = 12.5 s); then
the same stage again, answered from the journal.

Run: python -m tests.bench
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from duo import records, service
from duo.params import Judge
from stages import evaluate
from tests.fake_provider import FakeProvider

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "metrics" / "bench.json"


def bench_service(calls: int = 400, concurrency: int = 16, latency_s: float = 0.5) -> dict:
    preds = [{"prompt_id": f"p{i}", "sample_idx": 0, "task": "qa", "prompt": f"Question {i}?",
              "reference": "Ref.", "response": "Answer."} for i in range(calls)]
    p = Judge(m=1, max_parse_retries=0)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp, FakeProvider() as fake:
        os.symlink(ROOT / "prompts", Path(tmp) / "prompts")
        os.chdir(tmp)
        try:
            fake.delay_s = latency_s
            fake.default = (200, '{"similarity_assessment": {"score": 70}, "precision_assessment": {"score": 80}}', {})
            os.environ.setdefault("OPENAI_API_KEY", "bench-no-key")
            timings = []
            for _ in range(2):
                with service.Service("openai/bench", api_base=fake.url, concurrency=concurrency,
                                     journal="bench") as svc:
                    start = time.monotonic()
                    rows = evaluate.judge_single(preds, svc, p, "bench", "student")
                    timings.append((time.monotonic() - start, len(fake.requests), svc.stats.max_in_flight))
                    assert all(r["error"] is None for r in rows)
        finally:
            os.chdir(cwd)
    (first, n1, peak), (second, n2, _) = timings
    ideal = calls * latency_s / concurrency
    return {"service.concurrency_efficiency": round(ideal / first, 3), "service.calls": n1,
            "service.first_run_s": round(first, 2), "service.ideal_s": ideal, "service.max_in_flight": peak,
            "service.rerun_calls": n2 - n1, "service.rerun_s": round(second, 3),
            "service.rerun_fraction": round(second / first, 4)}


def main() -> None:
    results = records.read_json(OUT, default={}) or {}
    figures = bench_service()
    results.update(figures)
    records.write_json(OUT, results)
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
