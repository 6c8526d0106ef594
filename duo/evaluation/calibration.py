"""How far the judge agrees with people: for each judge of the panel, and for the panel's pooled score
(the mean of its judges', what the gate acts on), against the ratings of data/ratings.jsonl
(duo/evaluation/ratings.py):

- Spearman's ρ between the person's score and the judge's precision (its mean over the M judge samples
  of that response): do they order responses alike? 1 = the same order, 0 = unrelated.
- Cohen's κ at each ζ of judge.zetas: do they agree on pass (>= ζ) / fail beyond what chance would
  give with the same pass rates? 1 = always agree, 0 = chance, < 0 = worse than chance. A pass/fail
  rating counts at its own ζ only; a score counts at every ζ.
- n, and 95% bootstrap intervals resampling the rated responses (duo/evaluation/reference.py).

A rated response is matched to the judge's scores by its key (a hash of conversation and response), so
ratings given in earlier cycles count whenever the judge scored that response: this cycle's judgments
of the student, or the evaluate stage's judgments of rated rows not among this cycle's predictions."""
from __future__ import annotations

import warnings
from collections import defaultdict

from duo.evaluation import ratings as ratings_mod, reference

SCORE = "precision"  # what people rate: the judge's precision scale, 1-100
RESAMPLES = 1000


def judge_scores(judgments: list[dict], keys: dict[tuple, str]) -> dict[str, dict[str, float]]:
    """{judge: {rating key: mean precision over its valid samples}}; `keys` maps (prompt_id, sample_idx)
    of the student's predictions to their keys, rated rows carry theirs."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in judgments:
        if j.get("error") is not None or j.get(SCORE) is None:
            continue
        if j.get("subject") == "rated":
            k = j["key"]
        elif j.get("subject", "student") == "student":
            k = keys.get((j["prompt_id"], j["sample_idx"]))
        else:
            continue
        if k is not None:
            sums[j["judge"]][k].append(float(j[SCORE]))
    return {name: {k: sum(v) / len(v) for k, v in by_key.items()} for name, by_key in sums.items()}


def pooled(per_judge: dict[str, dict[str, float]]) -> dict[str, float]:
    """The panel's score per key: the mean of its judges' (those that scored it)."""
    values: dict[str, list[float]] = defaultdict(list)
    for by_key in per_judge.values():
        for k, v in by_key.items():
            values[k].append(v)
    return {k: sum(v) / len(v) for k, v in values.items()}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's ρ (scipy, ties averaged); None where it is undefined (fewer than 3 pairs, or either side
    all alike)."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(xs, ys).statistic)


def kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's κ of two pass/fail raters; None where chance agreement is total (both always say the
    same one thing, so agreement beyond chance is not defined)."""
    n = len(a)
    if not n:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    return None if chance >= 1 else (observed - chance) / (1 - chance)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def agreement(rated: dict[str, dict], scores: dict[str, float], zetas: list[int], seed: int = 0,
              resamples: int = RESAMPLES) -> dict:
    """ρ and κ@ζ (with n and 95% intervals; none with resamples=0) of one judge's `scores` against the
    ratings it scored."""

    def interval(n: int, statistic):
        return reference.bootstrap_statistic(n, statistic, resamples=resamples, seed=seed) if resamples else None

    both = sorted(k for k in rated if k in scores)
    scored = [k for k in both if rated[k].get("score") is not None]
    xs, ys = [rated[k]["score"] for k in scored], [scores[k] for k in scored]
    out = {"n": len(both), "spearman": {
        "value": _r(spearman(xs, ys)), "n": len(scored),
        "ci95": interval(len(scored), lambda ix: spearman([xs[i] for i in ix], [ys[i] for i in ix]))}}
    for z in zetas:
        pairs = [(h, scores[k] >= z) for k in both if (h := ratings_mod.human_label(rated[k], z)) is not None]
        people, judge = [p for p, _ in pairs], [j for _, j in pairs]
        out[f"kappa_c{z}"] = {
            "value": _r(kappa(people, judge)), "n": len(pairs),
            "agree": _r(sum(p == j for p, j in pairs) / len(pairs)) if pairs else None,
            "ci95": interval(len(pairs), lambda ix: kappa([people[i] for i in ix], [judge[i] for i in ix]))}
    return out


def calibrate(rated: dict[str, dict], per_judge: dict[str, dict[str, float]], names: list[str],
              zetas: list[int]) -> dict:
    """metrics/eval.json's `calibration` block: the panel's pooled score and each judge against the
    ratings."""
    return {"score": SCORE, "ratings": len(rated),
            "panel": agreement(rated, pooled(per_judge), zetas),
            "by_judge": {n: agreement(rated, per_judge.get(n, {}), zetas) for n in names}}


def describe(block: dict | None) -> list[str]:
    """Lines for `duo status` and the report: the panel, then each judge."""
    if not block:
        return ["no calibration: evaluate has not run since ratings were supported"]
    if not block.get("ratings"):
        return ["no ratings yet: rate test responses in `duo review` (Ratings tab) to measure the judge"]

    def one(name: str, a: dict) -> str:
        rho = a["spearman"]
        parts = [f"{name}: {a['n']} rated responses scored, Spearman ρ {_fmt(rho['value'])}{_ci(rho['ci95'])}"]
        for k, v in a.items():
            if k.startswith("kappa_c"):
                parts.append(f"κ@{k[7:]} {_fmt(v['value'])}{_ci(v['ci95'])} (n {v['n']})")
        return ", ".join(parts)

    lines = [one("panel", block["panel"])]
    if len(block.get("by_judge") or {}) > 1:
        lines += [one(n, a) for n, a in block["by_judge"].items()]
    return lines


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def _ci(v) -> str:
    return "" if not v else f" [{v[0]:+.2f}, {v[1]:+.2f}]"
