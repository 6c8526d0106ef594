"""Synthetic data curation: quality filters, decontamination against the test split, exact and near
deduplication (MinHash LSH over word shingles, each candidate confirmed with ROUGE-L).

Keeps NEW rows in input order. SEEN rows (train, earlier cycles) and TEST rows are never modified;
in a near-duplicate cluster a SEEN row always wins, and among NEW rows the first one.

`duo curate NEW.jsonl --seen FILE ... --test TEST.jsonl --out KEPT.jsonl --report REPORT.json`
"""
from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from typing import Iterable

from duo.params import Curate

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i apologi[sz]e|as an ai( language model)?|i cannot (help|assist|"
                     r"provide|comply)|i can'?t (help|assist|provide|comply)|i am unable to|i'?m unable to)\b", re.I)
LEFTOVER = re.compile(r"\$(instruction|response|topic|n|human_response|lm_response)\b|\{\{.*?\}\}|"
                      r'^\s*[\[{]\s*"(instruction|response|contents)"|"(instruction|response)"\s*:', re.I | re.M)


def normalise(text: str) -> str:
    """Case, whitespace, punctuation and Unicode (NFKC) insensitive form used for every comparison."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def words(text: str) -> list[str]:
    return normalise(text).split()


Config = Curate  # the params section is the configuration


def quality_reason(row: dict, cfg: Config, wi: list[str] | None = None, wr: list[str] | None = None) -> str | None:
    """The first quality filter a row fails, by name; None if it passes them all."""
    inst, resp = row.get("prompt", ""), row.get("response", "")
    if not inst.strip() or not resp.strip():
        return "empty"
    wi = words(inst) if wi is None else wi
    wr = words(resp) if wr is None else wr
    if len(wi) < cfg.min_instruction_tokens:
        return "instruction_too_short"
    if len(wi) > cfg.max_instruction_tokens:
        return "instruction_too_long"
    if len(wr) < cfg.min_response_tokens:
        return "response_too_short"
    if len(wr) > cfg.max_response_tokens:
        return "response_too_long"
    if len(wr) >= 4 and " ".join(wr) in " ".join(wi):
        return "response_repeats_instruction"
    if REFUSAL.search(resp):
        return "refusal"
    if LEFTOVER.search(inst) or LEFTOVER.search(resp):
        return "leftover_template"
    if row.get("task") == "summarization" and len(wi) < cfg.min_passage_words:
        return "no_passage_to_summarize"
    raw = (inst + "\n" + resp).encode()
    if len(raw) >= 200 and len(zlib.compress(raw)) / len(raw) < cfg.min_compression_ratio:
        return "repetitive"
    if cfg.language and not _looks_like(inst + " " + resp, cfg.language):
        return "wrong_language"
    return None


_STOPWORDS = {
    "en": {"the", "and", "of", "to", "a", "in", "is", "that", "for", "it", "with", "as", "on", "are", "this", "be"},
    "fr": {"le", "la", "les", "et", "de", "des", "un", "une", "est", "que", "dans", "pour", "en", "du", "qui"},
    "de": {"der", "die", "das", "und", "ist", "nicht", "ein", "eine", "zu", "den", "mit", "von", "sich", "auf"},
    "es": {"el", "la", "los", "las", "y", "de", "que", "en", "un", "una", "es", "por", "con", "para", "se"},
}


def _looks_like(text: str, language: str) -> bool:
    """A stop-word vote among the languages we know; unknown codes pass (no model, no network)."""
    if language not in _STOPWORDS:
        return True
    counts = Counter(w for w in words(text))
    votes = {lang: sum(counts[w] for w in sw) for lang, sw in _STOPWORDS.items()}
    best = max(votes.values())
    return best == 0 or votes[language] == best


def ngrams(tokens: list[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


class TestIndex:
    """Every n-gram (words, normalised) of every test prompt and response, indexed once as a set,
    plus the normalised test prompts; a NEW row is then checked in one pass."""

    def __init__(self, test_rows: list[dict], n: int):
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.prompts: dict[str, str] = {}
        for row in test_rows:
            self.prompts.setdefault(normalise(row["prompt"]), row["id"])
            for field in ("prompt", "response"):
                for gram in ngrams(words(row[field]), n):
                    self.grams.setdefault(gram, row["id"])

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


def _minhash(hashes, template):
    """A MinHash of precomputed shingle hashes (datasketch's own update, the template's permutations)."""
    from datasketch import MinHash

    m = MinHash(num_perm=len(template.hashvalues), hashfunc=_identity, permutations=template.permutations,
                scheme=template.scheme)
    m.update_batch(hashes)
    return m


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


def curate(new: list[dict], seen: list[dict], test: list[dict], cfg: Config,
           progress=None) -> tuple[list[dict], list[dict], dict]:
    """Return (kept NEW rows in order, removed [{id, reason, duplicate_of}], counts)."""
    from datasketch import MinHashLSH

    removed: list[dict] = []
    index = TestIndex(test, cfg.decontam_ngram)
    exact_inst: dict[str, str] = {}
    exact_pair: dict[tuple[str, str], str] = {}
    for row in seen:
        ni, nr = normalise(row["prompt"]), normalise(row["response"])
        exact_inst.setdefault(ni, row["id"])
        exact_pair.setdefault((ni, nr), row["id"])

    # pass 1: filters, decontamination, exact duplicates (cheap, and shrinks what MinHash sees)
    survivors, survivor_hashes = [], []
    for row in new:
        ni, nr = normalise(row.get("prompt", "")), normalise(row.get("response", ""))
        wi, wr = ni.split(), nr.split()
        reason = quality_reason(row, cfg, wi, wr)
        if reason:
            removed.append({"id": row["id"], "reason": reason, "duplicate_of": None})
            continue
        hit = index.hit(wi, wr)
        if hit:
            removed.append({"id": row["id"], "reason": hit[0], "duplicate_of": hit[1]})
            continue
        if (ni, nr) in exact_pair:
            removed.append({"id": row["id"], "reason": "exact_duplicate", "duplicate_of": exact_pair[(ni, nr)]})
            continue
        if ni in exact_inst:
            removed.append({"id": row["id"], "reason": "exact_instruction", "duplicate_of": exact_inst[ni]})
            continue
        exact_inst[ni] = row["id"]
        exact_pair[(ni, nr)] = row["id"]
        survivors.append(row)
        # keep only the compact shingle hashes: word lists for 300k rows cost gigabytes
        survivor_hashes.append(_shingle_hashes(wi + wr, cfg.shingle))

    # pass 2: near duplicates; SEEN rows go in first so they always win, then NEW in input order.
    # ROUGE-L (quadratic) runs only on LSH candidates.
    lsh = MinHashLSH(threshold=cfg.lsh_threshold, num_perm=cfg.num_perm)
    rows_by_key: dict[tuple, dict] = {}
    rouge_cache: dict[tuple, list[str]] = {}
    order: dict[tuple, int] = {}
    representative: dict[tuple, str] = {}  # LSH key -> id of the row its cluster keeps

    def rouge_tokens(key, row):
        if key not in rouge_cache:
            rouge_cache[key] = _rouge_tokens(row)
        return rouge_cache[key]

    from datasketch import MinHash

    template = MinHash(num_perm=cfg.num_perm)
    for row in seen:
        mh = _minhash(_shingle_hashes(words(row["prompt"]) + words(row["response"]), cfg.shingle), template)
        key = ("seen", row["id"])
        lsh.insert(key, mh, check_duplication=False)
        rows_by_key[key], order[key], representative[key] = row, len(order), row["id"]
    kept, confirmed, candidates = [], 0, 0
    for i, row in enumerate(survivors):
        mh = _minhash(survivor_hashes[i], template)
        survivor_hashes[i] = None
        dup_of, mine = None, ("new", row["id"])
        for key in sorted(lsh.query(mh), key=lambda k: (k[0] != "seen", order[k])):  # SEEN, then NEW in order
            candidates += 1
            if rouge_l(rouge_tokens(key, rows_by_key[key]), rouge_tokens(mine, row)) >= cfg.rouge_l_max:
                dup_of = representative[key]
                break
        # Removed rows stay in the index pointing at their cluster's kept row, so a near duplicate
        # of a near duplicate joins the same cluster (clusters are transitive; one row kept each).
        lsh.insert(mine, mh, check_duplication=False)
        rows_by_key[mine], order[mine], representative[mine] = row, len(order), dup_of or row["id"]
        if dup_of:
            confirmed += 1
            removed.append({"id": row["id"], "reason": "near_duplicate", "duplicate_of": dup_of})
        else:
            kept.append(row)
        if progress:
            progress(1)
    counts = Counter(r["reason"] for r in removed)
    report = {"in": len(new), "out": len(kept), "removed": dict(sorted(counts.items())),
              "lsh_candidates": candidates, "near_duplicates_confirmed": confirmed}
    return kept, removed, report
