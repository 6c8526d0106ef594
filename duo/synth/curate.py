"""Curation of synthetic pairs against one incremental index: quality filters (duo/synth/filters.py),
decontamination against the test split, exact and near duplicates (MinHash LSH over word shingles,
each candidate confirmed with ROUGE-L).

The index is built once per stage run from SEEN rows (train, earlier cycles) and the test split; each
NEW row is then checked as it arrives and, when it passes the exact checks, joins the index, so the cost
per row does not grow with the rows before it. SEEN and TEST rows are never modified; in a
near-duplicate cluster a SEEN row always wins, and among NEW rows the first one.

`duo curate NEW.jsonl --seen FILE ... --test TEST.jsonl --out KEPT.jsonl --report REPORT.json`
"""
from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from typing import Iterable

from duo.synth import filters
from duo.synth.filters import normalise, words


def ngrams(tokens: list[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


class TestIndex:
    """Every n-gram (words, normalised) of every test prompt and response, indexed once as a set,
    plus the normalised test prompts; a NEW row is then checked in one pass.

    An n-gram that the user's own train rows (`shared`) hold too is dropped: it is a task template's
    fixed text ("Given this review: ... would you recommend this app"), not what the test rows say, and a
    pair that repeats it reveals nothing the student does not train on anyway. Kept, it removed every
    synthetic pair of a templated task (the development data's star ratings: 96 of 156 candidates)."""

    def __init__(self, test_rows: list[dict], n: int, shared: Iterable[dict] = ()):
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.prompts: dict[str, str] = {}
        self.shared = 0  # test n-grams dropped because train holds them too
        for row in test_rows:
            self.prompts.setdefault(normalise(row["prompt"]), row["id"])
            for field in ("prompt", "response"):
                for gram in ngrams(words(row[field]), n):
                    self.grams.setdefault(gram, row["id"])
        for row in shared if self.grams else ():
            for gram in ngrams(words(row["prompt"]) + words(row["response"]), n):
                if self.grams.pop(gram, None):
                    self.shared += 1

    def hit(self, wi: list[str], wr: list[str]) -> tuple[str, str] | None:
        """(reason, test id) when a row (its normalised instruction and response words) overlaps test."""
        tid = self.prompts.get(" ".join(wi))
        if tid:
            return "test_prompt", tid
        if self.grams:
            for tokens in (wi, wr):
                for gram in ngrams(tokens, self.n):
                    tid = self.grams.get(gram)
                    if tid:
                        return "test_ngram_overlap", tid
        return None


def _shingle_hashes(tokens: list[str], k: int):
    """32-bit hashes of the word k-shingles: crc32 per word once, combined per shingle with numpy (a
    stable, C-speed stand-in for hashing each shingle's text)."""
    import numpy as np

    h = np.fromiter((zlib.crc32(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens))
    if len(h) == 0:
        return np.zeros(1, dtype=np.uint64)
    k = min(k, len(h))
    v = np.zeros(len(h) - k + 1, dtype=np.uint64)
    for j in range(k):
        v = ((v * np.uint64(0x01000193)) ^ h[j:len(h) - k + 1 + j]) & np.uint64(0xFFFFFFFF)
    return np.unique(v)


def _identity(x: int) -> int:
    return x


def _rouge_tokens(row: dict) -> list[str]:
    from rouge_score import tokenize

    return tokenize.tokenize(row["prompt"] + " " + row["response"], None)


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two rouge-score token lists, as rouge_score computes it, with the LCS length
    from a bit-parallel algorithm (Hyyro 2004): rouge_score's Python LCS table ran ~130 pairs/s here,
    too slow for the candidate volume of a 300k-row cycle. tests/test_curate.py checks equality."""
    if not a or not b:
        return 0.0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    lcs = len(a) - bin(v).count("1")
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(b), lcs / len(a)
    return 2 * precision * recall / (precision + recall)


def _digest(*texts: str) -> bytes:
    # 16-byte digests, not the texts: the exact-match maps of a 300k-row cycle stay small
    return hashlib.blake2b("\x00".join(texts).encode(), digest_size=16).digest()


class CurationIndex:
    """Everything a NEW row is checked against, built once and grown one row at a time."""

    def __init__(self, seen: Iterable[dict], test: list[dict], cfg, thresholds: dict | None = None,
                 train: Iterable[dict] = ()):
        """`train`: the user's own rows, whose n-grams are not test overlap (TestIndex); not earlier
        synthetic rows, which a re-split may have made overlap test."""
        from datasketch import MinHash, MinHashLSH

        self.cfg = cfg
        self.thresholds = thresholds or {}
        self.fallback = filters.fixed(cfg)
        self.test = TestIndex(test, cfg.decontam_ngram, shared=train)
        self.exact_inst: dict[bytes, str] = {}
        self.exact_pair: dict[bytes, str] = {}
        self.lsh = MinHashLSH(threshold=cfg.lsh_threshold, num_perm=cfg.num_perm)
        self.template = MinHash(num_perm=cfg.num_perm)
        self.rows: list[dict] = []          # LSH key (position) -> row, SEEN first, then NEW in arrival order
        self.representative: list[str] = []  # LSH key -> id of the row its cluster keeps
        self._rouge: dict[int, list[str]] = {}
        self.lsh_candidates = 0
        self.near_duplicates = 0
        for row in seen:
            self.add_seen(row)

    def _minhash(self, tokens: list[str]):
        from datasketch import MinHash

        m = MinHash(num_perm=self.cfg.num_perm, hashfunc=_identity, permutations=self.template.permutations,
                    scheme=self.template.scheme)
        m.update_batch(_shingle_hashes(tokens, self.cfg.shingle))
        return m

    def _insert(self, row: dict, mh, representative: str) -> None:
        key = len(self.rows)
        self.lsh.insert(key, mh, check_duplication=False)
        self.rows.append(row)
        self.representative.append(representative)

    def _tokens(self, key: int) -> list[str]:
        if key not in self._rouge:
            self._rouge[key] = _rouge_tokens(self.rows[key])
        return self._rouge[key]

    def add_seen(self, row: dict) -> None:
        """A row that wins every contest (train, an earlier cycle's kept row)."""
        ni, nr = normalise(row["prompt"]), normalise(row["response"])
        self.exact_inst.setdefault(_digest(ni), row["id"])
        self.exact_pair.setdefault(_digest(ni, nr), row["id"])
        self._insert(row, self._minhash(ni.split() + nr.split()), row["id"])

    def check(self, row: dict) -> dict | None:
        """None when the NEW row is kept (it joins the index); else {"id", "reason", "duplicate_of"}.
        Cheap checks first: filters, test overlap, exact duplicates; then near duplicates."""
        ni, nr = normalise(row.get("prompt", "")), normalise(row.get("response", ""))
        wi, wr = ni.split(), nr.split()
        limits = self.thresholds.get(row.get("task"), self.fallback)
        reason = filters.quality_reason(row, limits, self.cfg, wi, wr)
        if reason:
            return {"id": row["id"], "reason": reason, "duplicate_of": None}
        hit = self.test.hit(wi, wr)
        if hit:
            return {"id": row["id"], "reason": hit[0], "duplicate_of": hit[1]}
        pair, inst = _digest(ni, nr), _digest(ni)
        if pair in self.exact_pair:
            return {"id": row["id"], "reason": "exact_duplicate", "duplicate_of": self.exact_pair[pair]}
        if inst in self.exact_inst:
            return {"id": row["id"], "reason": "exact_instruction", "duplicate_of": self.exact_inst[inst]}
        self.exact_inst[inst] = row["id"]
        self.exact_pair[pair] = row["id"]
        # ROUGE-L (quadratic in length) runs only on LSH candidates, SEEN first, then NEW in order.
        mh = self._minhash(wi + wr)
        mine, dup_of = None, None
        for key in sorted(self.lsh.query(mh)):
            self.lsh_candidates += 1
            if mine is None:
                mine = _rouge_tokens(row)
            if rouge_l(self._tokens(key), mine) >= self.cfg.rouge_l_max:
                dup_of = self.representative[key]
                break
        # A removed row stays in the index pointing at its cluster's kept row, so a near duplicate of a
        # near duplicate joins the same cluster (clusters are transitive; one row kept each).
        self._insert(row, mh, dup_of or row["id"])
        if mine is not None:
            self._rouge[len(self.rows) - 1] = mine
        if dup_of:
            self.near_duplicates += 1
            return {"id": row["id"], "reason": "near_duplicate", "duplicate_of": dup_of}
        return None


def curate(new: list[dict], seen: list[dict], test: list[dict], cfg, progress=None,
           thresholds: dict | None = None, train: list[dict] | None = None) -> tuple[list[dict], list[dict], dict]:
    """Return (kept NEW rows in order, removed [{id, reason, duplicate_of}], counts). `train`: the
    user's own rows among `seen` (all of `seen` when None)."""
    index = CurationIndex(seen, test, cfg, thresholds, train=seen if train is None else train)
    kept, removed = [], []
    for row in new:
        verdict = index.check(row)
        if verdict:
            removed.append(verdict)
        else:
            kept.append(row)
        if progress:
            progress(1)
    counts = Counter(r["reason"] for r in removed)
    report = {"in": len(new), "out": len(kept), "removed": dict(sorted(counts.items())),
              "lsh_candidates": index.lsh_candidates, "near_duplicates_confirmed": index.near_duplicates,
              "test_ngrams_shared_with_train": index.test.shared}
    return kept, removed, report


def decontaminate(rows: Iterable[dict], held_out: list[dict], n: int, train: Iterable[dict] = ()) -> tuple[list[dict], Counter]:
    """Earlier cycles' synthetic rows that overlap none of `held_out` (test and validation as split
    now), by the check curation made when they were kept (TestIndex: a held-out prompt, or an n-gram
    of a held-out prompt or response that `train` does not hold). A re-split (coverage.seed, train_ratio, new rows) can move rows
    that those pairs paraphrase into test: training on them would leak the judge's answers. Returns
    (kept rows, removed count per reason)."""
    index = TestIndex(held_out, n, shared=train)
    kept, removed = [], Counter()
    for row in rows:
        hit = index.hit(words(row["prompt"]), words(row["response"]))
        if hit:
            removed[hit[0]] += 1
        else:
            kept.append(row)
    return kept, removed
