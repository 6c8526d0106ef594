"""Quality filters for synthetic pairs, with length thresholds that fit the user's own data.

`auto` thresholds are derived per task from the coverage train rows: half the 5th percentile of their
own word counts as the minimum, three times their maximum as the maximum. A teacher that writes pairs in
the seeds' own form (one-sentence passages to summarize, one-word labels) then passes, whatever the
task; a fixed number tuned on one data set dropped every pair of another (51 of 51 headline pairs).

A summarization instruction must carry its passage: the passage is measured apart from the directive
(`passage_words`), and its `auto` bound comes from the train rows' passages. (Bounded like the whole
instruction, and checked after it, the rule could never fire.)
"""
from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import asdict, dataclass

from duo.data.text import normalise, words  # noqa: F401  (curation compares in the same normal form)

REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i apologi[sz]e|as an ai( language model)?|i cannot (help|assist|"
                     r"provide|comply)|i can'?t (help|assist|provide|comply)|i am unable to|i'?m unable to)\b", re.I)
LEFTOVER = re.compile(r"\$(instruction|response|topic|n|human_response|lm_response)\b|\{\{.*?\}\}|"
                      r'^\s*[\[{]\s*"(instruction|response|contents)"|"(instruction|response)"\s*:', re.I | re.M)
SUMMARIZATION = "summarization"  # the task whose instructions must carry a passage
_SEGMENTS = re.compile(r"\n+|:\s+|(?<=[.?!])\s+")  # line breaks, colons, sentence ends


def passage_words(instruction: str) -> int:
    """Words of the passage a summarization instruction carries: the instruction less its directive,
    taken to be the shorter of its first and last segment (split at line breaks, colons and sentence
    ends: "Summarize this as a headline: <passage>", "<passage>\n\nSummarize it in one sentence.").
    One segment is a directive alone: 0. Directive-first instructions whose passage ends in a shorter
    sentence count a few directive words as passage; the bound is derived with the same measure."""
    segments = [seg for seg in _SEGMENTS.split(instruction) if words(seg)]
    if len(segments) < 2:
        return 0
    return len(words(instruction)) - min(len(words(segments[0])), len(words(segments[-1])))


@dataclass(frozen=True)
class Thresholds:
    """Word-count bounds for one task."""
    min_instruction: int
    max_instruction: int
    min_response: int
    max_response: int
    min_passage: int  # summarization only: an instruction shorter than this holds no passage


def _low(counts: list[int]) -> int:
    # At least 1 word, unless the user's own rows hold answers of 0 words: answers made only of symbols
    # (star ratings "★★★") have no words in the normal form, and a floor of 1 dropped every such answer
    # the teacher wrote; the `empty` rule still catches blank ones.
    ranked = sorted(counts)
    p5 = ranked[max(0, math.ceil(0.05 * len(ranked)) - 1)]  # nearest-rank 5th percentile
    return max(min(1, ranked[0]), p5 // 2)


def derive(train: list[dict], cfg) -> dict[str, Thresholds]:
    """Per task: each `auto` bound from the task's own train rows, each number as the user set it."""
    by_task: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for row in train:
        inst, resp, passage = by_task.setdefault(row["task"], ([], [], []))
        inst.append(len(words(row["prompt"])))
        resp.append(len(words(row["response"])))
        passage.append(passage_words(row["prompt"]))

    def pick(value, auto: int) -> int:
        return auto if value == "auto" else int(value)

    out = {}
    for task, (inst, resp, passage) in sorted(by_task.items()):
        out[task] = Thresholds(
            min_instruction=pick(cfg.min_instruction_tokens, _low(inst)),
            max_instruction=pick(cfg.max_instruction_tokens, max(64, 3 * max(inst))),
            min_response=pick(cfg.min_response_tokens, _low(resp)),
            max_response=pick(cfg.max_response_tokens, max(64, 3 * max(resp))),
            min_passage=pick(cfg.min_passage_words, _low(passage)) if task == SUMMARIZATION else 0)
    return out


def fixed(cfg) -> Thresholds:
    """Bounds for a task with no train rows to learn from: the numbers set in params, else lenient ones."""
    def num(value, default: int) -> int:
        return default if value == "auto" else int(value)

    return Thresholds(num(cfg.min_instruction_tokens, 1), num(cfg.max_instruction_tokens, 1 << 30),
                      num(cfg.min_response_tokens, 1), num(cfg.max_response_tokens, 1 << 30),
                      num(cfg.min_passage_words, 1))


def as_dict(thresholds: dict[str, Thresholds]) -> dict:
    return {task: asdict(t) for task, t in thresholds.items()}


def quality_reason(row: dict, limits: Thresholds, cfg, wi: list[str], wr: list[str]) -> str | None:
    """The first quality filter a row fails, by name; None if it passes them all. `cfg` is the `curate`
    params section; `wi`/`wr` are the normalised words of the row's instruction and response."""
    inst, resp = row.get("prompt", ""), row.get("response", "")
    if not inst.strip() or not resp.strip():
        return "empty"
    if len(wi) < limits.min_instruction:
        return "instruction_too_short"
    if len(wi) > limits.max_instruction:
        return "instruction_too_long"
    if len(wr) < limits.min_response:
        return "response_too_short"
    if len(wr) > limits.max_response:
        return "response_too_long"
    if len(wr) >= 4 and " ".join(wr) in " ".join(wi):
        return "response_repeats_instruction"
    if REFUSAL.search(resp):
        return "refusal"
    if LEFTOVER.search(inst) or LEFTOVER.search(resp):
        return "leftover_template"
    if row.get("task") == SUMMARIZATION and passage_words(inst) < limits.min_passage:
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
    counts = Counter(words(text))
    votes = {lang: sum(counts[w] for w in sw) for lang, sw in _STOPWORDS.items()}
    best = max(votes.values())
    return best == 0 or votes[language] == best
