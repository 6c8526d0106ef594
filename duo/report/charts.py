"""The report's charts: matplotlib (Agg backend, no display), each returned as PNG bytes."""
from __future__ import annotations

import io

from duo.report.render import SCORES, eval_block


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def charts(data: dict) -> dict[str, bytes]:
    """name -> PNG bytes, for the charts the data allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out: dict[str, bytes] = {}
    cycles = [c for c in data["cycles"] if (c.get("eval") or {}).get("mode", "single") == "single"]
    if cycles:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        xs = [c["cycle"] for c in cycles]
        tasks = sorted({t for c in cycles for s in SCORES for t in eval_block(c["eval"], s).get("by_task", {})})
        for ax, score in zip(axes, SCORES):
            for task in tasks:
                ys = [eval_block(c["eval"], score).get("by_task", {}).get(task, {}).get("mean") for c in cycles]
                ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", alpha=0.7, label=task)
            overall = [eval_block(c["eval"], score).get("mean") for c in cycles]
            ax.plot(xs, [float("nan") if y is None else y for y in overall], marker="s", color="black",
                    linewidth=2.5, label="all tasks")
            gate = data["gate_params"]
            if gate.score == score and gate.statistic == "mean":
                ax.axhline(gate.threshold, color="crimson", linestyle="--", label=f"ε = {gate.threshold:g}")
            ax.set_title(f"{score} V per cycle")
            ax.set_xlabel("cycle")
            ax.set_xticks(xs)
            ax.set_ylim(0, 102)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("V (mean judge score, 1-100)")
        axes[1].legend(fontsize=8, loc="best")
        out["scores_by_cycle"] = _png(fig)
    if any(data["scores"][s] for s in SCORES):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
        for ax, score in zip(axes, SCORES):
            values = data["scores"][score]
            ax.hist(values, bins=range(0, 105, 5), color="#4c72b0", edgecolor="white")
            for z in data["zetas"]:
                ax.axvline(z, color="crimson", linestyle="--")
                ax.text(z + 1, ax.get_ylim()[1] * 0.92, f"ζ={z}", color="crimson")
            ax.set_title(f"{score}: {len(values)} judged samples")
            ax.set_xlabel("judge score")
            ax.set_xlim(0, 101)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_ylabel("samples")
        out["score_histograms"] = _png(fig)
    points = data.get("calibration_points") or []
    if points:  # each rated response: the person's score against the judge panel's
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        ax.scatter([p[1] for p in points], [p[0] for p in points], alpha=0.7, color="#4c72b0")
        ax.plot([1, 100], [1, 100], color="grey", linestyle=":", label="same score")
        for z in data["zetas"]:
            ax.axvline(z, color="crimson", linestyle="--", alpha=0.5)
            ax.axhline(z, color="crimson", linestyle="--", alpha=0.5)
        ax.set_xlim(0, 101)
        ax.set_ylim(0, 101)
        ax.set_xlabel("judge panel's precision (mean of its samples)")
        ax.set_ylabel("person's score")
        ax.set_title(f"{len(points)} rated responses; dashed: ζ = {', '.join(map(str, data['zetas']))}")
        ax.legend(fontsize=8, loc="lower right")
        out["calibration"] = _png(fig)
    curve = (data.get("train") or {}).get("loss_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker="." if len(curve) < 50 else None)
        ax.set_title(f"training loss, cycle {data['train'].get('cycle', data['cycle'])}")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        out["loss"] = _png(fig)
    return out
