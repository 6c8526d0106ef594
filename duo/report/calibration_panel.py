"""The report's judge-vs-people panel as plain text: the judge panel and each judge against people's
ratings (metrics/eval.json `calibration`, duo/evaluation/calibration.py) and whether the gate's rating
requirement (gate.min_ratings, gate.min_agreement) is met. render.py lays it out."""
from __future__ import annotations


def calibration_table(data: dict) -> tuple[list[str], list[list[str]], str]:
    """(head, rows, sentence) of the judge-vs-people panel: the panel and each judge against the ratings
    of data/ratings.jsonl (metrics/eval.json `calibration`)."""
    block = (data.get("eval") or {}).get("calibration") or {}
    zs = data["zetas"]
    head = ["judge", "rated", "Spearman ρ", "95% CI"] + [f"κ@{z} (n)" for z in zs]

    def f(v):
        return "–" if v is None else f"{v:+.2f}"

    def row(name, a):
        rho = a.get("spearman") or {}
        return [name, str(a.get("n", 0)), f(rho.get("value")), "–" if not rho.get("ci95") else
                f"{rho['ci95'][0]:+.2f} – {rho['ci95'][1]:+.2f}"] + [
            f"{f((a.get(f'kappa_c{z}') or {}).get('value'))} ({(a.get(f'kappa_c{z}') or {}).get('n', 0)})" for z in zs]

    rows = [row("panel (what the gate reads)", block["panel"])] if block.get("panel") else []
    if len(block.get("by_judge") or {}) > 1:
        rows += [row(n, a) for n, a in block["by_judge"].items()]
    check = (data.get("verdict") or {}).get("calibration")
    if not block.get("ratings"):
        words = ("No ratings yet: the judge's scores are unchecked. Rate test responses in `duo review` "
                 "(Ratings tab); the next evaluate measures the judge against them.")
    else:
        words = (f"{block['ratings']} responses rated by people, {(block.get('panel') or {}).get('n', 0)} of them "
                 f"scored by the judge this cycle: Spearman ρ {f(((block.get('panel') or {}).get('spearman') or {}).get('value'))}.")
    if check:
        words += (f" Gate requirement: at least {check['min_ratings']} ratings and ρ ≥ {check['min_agreement']:g}: "
                  + ("met." if check["calibrated"] else f"NOT met ({check['why']}): the gate cannot pass."))
    else:
        words += " The gate does not require ratings (gate.min_ratings: 0)."
    return head, rows, words
