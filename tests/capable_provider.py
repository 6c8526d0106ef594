"""A capable stand-in teacher and judge for benchmarks, built from real held-out data: a loopback
OpenAI-compatible server (tests/fake_provider.py underneath, the only kind of stand-in the project allows)
whose answers come from a development-data folder (`../shared/devdata/`: coverage.jsonl, templates.jsonl,
pool.jsonl; its README says what they hold).

- A synthesis request (the rendered prompts/synth*.txt, seeded with one coverage row of template T) is
  answered with pool rows of T that no earlier request was given (each pool row at most once while the
  server runs; once a template's pool is spent, rows are given again and curation drops them as
  duplicates, as it would a teacher that repeats itself). Which rows is decided by the request body.
- A judge request (prompts/judge.txt) is scored from the reference it carries: exact match (95, else 5)
  where the reference is a short answer, ROUGE-L F1 x 100 otherwise; similarity and precision alike.
- A direct question (P-Match asks the teacher itself) is answered with the coverage row's reference.

Run: python -m tests.capable_provider DEVDATA_DIR   (prints the base URL; runs until stdin closes)
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from pathlib import Path

SHORT_WORDS = 5  # a reference of at most this many words is a short answer: scored by exact match
_N_PAIRS = re.compile(r"Write (\d+) new")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _norm(text: str) -> str:
    from duo.evaluation.reference import normalise_answer

    return normalise_answer(text)


def _block(text: str, label: str) -> str | None:
    """The text between `LABEL <<<` and the next line holding only `>>>`, as prompts/judge.txt lays it out."""
    start = text.find(f"{label} <<<\n")
    if start < 0:
        return None
    start += len(label) + 5
    end = text.find("\n>>>", start)
    return text[start:end if end >= 0 else None]


class CapableTeacher:
    """The reply function: request body in, reply text out."""

    def __init__(self, devdata: Path):
        devdata = Path(devdata)
        template_of = {r["id"]: r["template"] for r in _rows(devdata / "templates.jsonl")}
        self.coverage = _rows(devdata / "coverage.jsonl")
        self.template = {r["prompt"]: template_of[r["id"]] for r in self.coverage}
        self.reference = {r["prompt"]: r["response"] for r in self.coverage}
        self.pool: dict[str, list[dict]] = {}
        for row in _rows(devdata / "pool.jsonl"):
            self.pool.setdefault(row["template"], []).append(row)
        # longest prompts first: a seed whose prompt contains another's is recognised as itself
        self._prompts = sorted(self.template, key=len, reverse=True)
        self.given: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        self.counts = {"synth": 0, "judge": 0, "answer": 0, "unknown": 0}

    def __call__(self, body: dict) -> str:
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        if "similarity_assessment" in text:
            return self.judge(text)
        if '"contents"' in text:
            return self.synthesize(text, body)
        return self.answer(text)

    def synthesize(self, text: str, body: dict) -> str:
        seed_prompt = next((p for p in self._prompts if p in text), None)
        with self.lock:
            self.counts["synth" if seed_prompt else "unknown"] += 1
            if seed_prompt is None:
                return json.dumps({"contents": []})
            template = self.template[seed_prompt]
            pool = self.pool.get(template, [])
            n = int(_N_PAIRS.search(text).group(1)) if _N_PAIRS.search(text) else 3
            rng = random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest())
            fresh = [i for i in range(len(pool)) if (template, i) not in self.given]
            picked = rng.sample(fresh, min(n, len(fresh))) if fresh else []
            picked += rng.sample(range(len(pool)), min(n - len(picked), len(pool))) if len(picked) < n else []
            self.given.update((template, i) for i in picked)
        return json.dumps({"contents": [{"instruction": pool[i]["prompt"], "response": pool[i]["response"]}
                                        for i in picked]})

    def judge(self, text: str) -> str:
        from rouge_score import rouge_scorer

        with self.lock:
            self.counts["judge"] += 1
        reference, response = _block(text, "REFERENCE RESPONSE") or "", _block(text, "MODEL RESPONSE") or ""
        if len(reference.split()) <= SHORT_WORDS:
            score = 95 if _norm(reference) == _norm(response) else 5
        else:
            scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
            score = max(1, min(100, round(100 * scorer.score(reference, response)["rougeL"].fmeasure)))
        return json.dumps({"similarity_assessment": {"score": score}, "precision_assessment": {"score": score}})

    def answer(self, text: str) -> str:
        with self.lock:
            known = text in self.reference
            self.counts["answer" if known else "unknown"] += 1
        return self.reference.get(text, "I do not know.")


def serve_forever(devdata: str) -> None:
    import sys

    from tests.fake_provider import FakeProvider

    fake = FakeProvider()
    fake.default = (200, CapableTeacher(Path(devdata)), {})
    with fake:
        print(fake.url, flush=True)
        sys.stdin.read()  # runs until the parent closes our stdin


if __name__ == "__main__":
    import sys

    serve_forever(sys.argv[1])
