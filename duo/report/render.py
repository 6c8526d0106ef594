"""Rendering of the report data built by duo/report/build.py: one self-contained HTML page (inline CSS,
the charts of duo/report/charts.py as data: URIs, no script, nothing fetched) and a Markdown twin. Every text that comes from data (prompts, responses, task names, model names) is
untrusted and escaped: a `<script>` in a response is shown, never run."""
from __future__ import annotations

import base64
import html as html_mod
import json

from duo.loop import gate
from duo.report.calibration_panel import calibration_table

SCORES = ("similarity", "precision")
GLOSSARY = [
    ("V", "mean judge score (1-100) over all judged responses; judge errors are left out."),
    ("C@ζ", "coverage: the share of judged responses scoring at least ζ."),
    ("95% CI", "bootstrap interval of V, resampling prompts."),
    ("similarity", "how closely the local model's response matches the reference written by a person."),
    ("precision", "how accurately and relevantly the response answers the instruction."),
    ("P-Match", "the local model's V divided by the service model's own V on the same prompts (1.0 = as good)."),
    ("ε", "the gate threshold: when the gated statistic reaches it, the GGUF is delivered; "
          "otherwise the next cycle synthesizes more data and retrains."),
    ("Spearman ρ", "how alike the judge and people order responses by precision: 1 = the same order, 0 = unrelated."),
    ("κ@ζ", "Cohen's kappa: agreement of the judge and people on pass (>= ζ) / fail beyond chance; "
            "1 = always agree, 0 = as chance would, < 0 = worse."),
]


# ---- formatting ---------------------------------------------------------------------------------

def num(v, nd: int = 1) -> str:
    return "unknown" if v is None else f"{v:,.{nd}f}"


def pct(v) -> str:
    return "unknown" if v is None else f"{100 * v:.1f}%"


def usd(v) -> str:
    if v is None:
        return "unknown"
    return f"${v:,.4f}" if 0 < abs(v) < 1 else f"${v:,.2f}"


def ci(v) -> str:
    return "–" if not v else f"{v[0]:.1f} – {v[1]:.1f}"


def _esc(text) -> str:
    return html_mod.escape("" if text is None else str(text), quote=True)


def eval_block(ev: dict | None, score: str) -> dict:
    return (ev or {}).get(score) or {}


def _pmatch(ev: dict | None, score: str):
    return (((ev or {}).get("pmatch") or {}).get("pooled") or {}).get(score, {}).get("overall")


# ---- shared content -----------------------------------------------------------------------------

def verdict_text(v: dict | None) -> tuple[str, bool | None]:
    if not v:
        return "no verdict yet (the gate stage has not run)", None
    return gate.sentence(v), v["passed"]


def summary_rows(data: dict) -> list[tuple[str, list[tuple]]]:
    """(label, [(metric key, value, text), ...]) per score; keys are paths into metrics/eval.json."""
    ev = data.get("eval") or {}
    rows = []
    for s in SCORES:
        b = eval_block(ev, s)
        if not b:
            continue
        cells = [(f"{s}.mean", b.get("mean"), num(b.get("mean"), 2)), (f"{s}.ci95", b.get("ci95"), ci(b.get("ci95")))]
        cells += [(f"{s}.c{z}", b.get(f"c{z}"), pct(b.get(f"c{z}"))) for z in data["zetas"]]
        cells += [(f"{s}.n", b.get("n"), str(b.get("n"))),
                  (f"pmatch.pooled.{s}.overall", _pmatch(ev, s), num(_pmatch(ev, s), 3))]
        rows.append((s, cells))
    return rows


def task_rows(data: dict) -> list[tuple[str, list[tuple]]]:
    ev = data.get("eval") or {}
    ref = (ev.get("reference") or {}).get("by_task", {})
    tasks = sorted(set(ref) | {t for s in SCORES for t in eval_block(ev, s).get("by_task", {})})
    rows = []
    for t in tasks:
        cells = []
        for s in SCORES:
            b = eval_block(ev, s).get("by_task", {}).get(t, {})
            cells.append((f"{s}.by_task.{t}.mean", b.get("mean"), num(b.get("mean"), 2)))
            cells += [(f"{s}.by_task.{t}.c{z}", b.get(f"c{z}"), pct(b.get(f"c{z}"))) for z in data["zetas"]]
        r = ref.get(t, {})
        cells += [(f"reference.by_task.{t}.rougeL", r.get("rougeL"), num(r.get("rougeL"), 2)),
                  (f"reference.by_task.{t}.exact_match", r.get("exact_match"), pct(r.get("exact_match"))),
                  (f"reference.by_task.{t}.n", r.get("n"), str(r.get("n")))]
        rows.append((t, cells))
    return rows


def task_header(data: dict) -> list[str]:
    head = []
    for s in SCORES:
        head += [f"{s} V"] + [f"{s} C@{z}" for z in data["zetas"]]
    return head + ["ROUGE-L", "exact match", "responses"]


def cycle_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    gate = data["gate_params"]
    score = data["gate_score"]
    tasks = sorted({t for c in data["cycles"] for t in eval_block(c.get("eval"), score).get("by_task", {})})
    head = ["cycle", "run", "similarity V", "precision V", "ROUGE-L"] + [f"{score} V: {t}" for t in tasks] + \
        [f"gate ({gate.score} {gate.statistic})", "passed", "service cost"]
    rows = []
    for c in data["cycles"]:
        ev, v = c.get("eval") or {}, c.get("verdict") or {}
        rows.append([str(c["cycle"]), c["name"], num(eval_block(ev, "similarity").get("mean"), 2),
                     num(eval_block(ev, "precision").get("mean"), 2), num((ev.get("reference") or {}).get("rougeL"), 2)]
                    + [num(eval_block(ev, score).get("by_task", {}).get(t, {}).get("mean"), 2) for t in tasks]
                    + [num(v.get("value"), 2), {True: "yes", False: "no"}.get(v.get("passed"), "–"),
                       usd((c.get("cost") or {}).get("cost_usd"))])
    return head, rows


def judge_rows(data: dict) -> list[tuple[str, str]]:
    j = (data.get("eval") or {}).get("judge") or {}
    return [("judge models", ", ".join(j.get("models") or []) or "unknown"),
            ("judged samples (student and teacher)", str(j.get("samples", "unknown"))),
            ("judge errors", str(j.get("judge_errors", "unknown"))),
            ("judge error rate", pct(j.get("error_rate")))]


def train_rows(data: dict) -> list[tuple[str, str]]:
    t = data.get("train") or {}
    if not t:
        return []
    return [("rows (train + synthetic)", f"{t.get('rows')} ({t.get('train_rows')} + {t.get('synth_rows')})"),
            ("optimizer steps / epochs", f"{t.get('steps')} / {t.get('epochs')}"),
            ("mean / final loss", f"{num(t.get('train_loss'), 4)} / {num(t.get('final_loss'), 4)}"),
            ("training time", f"{num(t.get('train_seconds'))} s at {num(t.get('tokens_per_s'))} tokens/s"),
            ("LoRA r / alpha, precision, device", f"{t.get('lora_r')} / {t.get('lora_alpha')}, {t.get('precision')}, "
                                                 f"{t.get('device')}")]


def synth_rows(data: dict) -> list[tuple[str, str]]:
    m = data.get("synth") or {}
    if not m or m.get("skipped"):
        return []
    rows = [("teacher requests / pairs generated", f"{m.get('requests')} / {m.get('pairs_generated')}"),
            ("kept (target)", f"{m.get('kept')} ({m.get('target')}; {m.get('surplus', 0)} landed past it)"),
            ("keep rate / exact / near duplicates", f"{pct(m.get('keep_rate'))} / {pct(m.get('exact_duplicate_rate'))}"
                                                   f" / {pct(m.get('near_duplicate_rate'))}")]
    for task, t in (m.get("by_task") or {}).items():
        removed = ", ".join(f"{k} {v}" for k, v in (t.get("removed") or {}).items()) or "nothing removed"
        rows.append((f"task {task}", f"{t.get('kept')} of {t.get('candidates')} kept ({removed})"))
    return rows


def synth_warnings(data: dict) -> list[str]:
    """Filters that removed more than half of a task's candidates: the data may not fit their bounds."""
    return list((data.get("synth") or {}).get("warnings") or [])


def cost_rows(data: dict) -> tuple[list[list[str]], list[list[str]], str]:
    stages = [[name, str(s.get("calls", "")), f"{s.get('prompt_tokens', 0):,}", f"{s.get('completion_tokens', 0):,}",
               usd(s.get("cost_usd"))] for name, s in ((data.get("cost") or {}).get("stages") or {}).items()]
    cs = data["cost_so_far"]
    cycles = [[str(c["cycle"]), f"{c['prompt_tokens'] or 0:,}", f"{c['completion_tokens'] or 0:,}", usd(c["cost_usd"])]
              for c in cs["per_cycle"]]
    if cs["known_usd"] is None:
        total = "unknown (litellm has no price for the service model)"
    else:
        total = usd(cs["known_usd"]) + ("" if cs["complete"] else " (at least: some cycles have no known price)")
    return stages, cycles, total


def breakeven_rows(b: dict) -> list[tuple[str, str, str]]:
    """(label, key, text)."""
    price = "no price known" if b["price_in_per_mtok"] is None else \
        f"${b['price_in_per_mtok']:,.4g} in / ${b['price_out_per_mtok']:,.4g} out per million tokens"
    busy = "unknown (metrics/infer.json has no tokens/s)" if b["compute_days_per_day"] is None else \
        f"{b['compute_days_per_day']:.3f} days of compute per day → {b['boxes']} box(es)"
    months = {"never": "never", "no price known": "unknown (no price)"}.get(b["verdict"]) or f"{b['months']:,.1f}"
    return [("prices used", "price_model", f"{b['price_model']}: {price} (litellm's bundled price table)"),
            ("daily traffic", "daily_tokens", f"{b['daily_tokens_in']:,} tokens in, {b['daily_tokens_out']:,} out"),
            ("measured local throughput", "tokens_per_s", f"{num(b['tokens_per_s'])} tokens/s ({b.get('tokens_per_s_source') or 'metrics/infer.json'})"),
            ("can the local box carry it?", "boxes", busy),
            ("service cost per month", "service_usd_per_month", usd(b["service_usd_per_month"])),
            ("local running cost per month", "local_usd_per_month",
             f"{usd(b['local_usd_per_month'])} ({b['hardware_watts']:g} W always on at ${b['usd_per_kwh']:g}/kWh)"),
            ("upfront", "upfront_usd", f"{usd(b['upfront_usd'])} (hardware ${b['hardware_usd']:,.0f} per box + "
                                        f"migration so far {usd(b['migration_usd'])})"),
            ("saving per month", "saving_usd_per_month", usd(b["saving_usd_per_month"])),
            ("months to break even", "months", months)]


# ---- HTML ---------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;
color:#1d2430;background:#fff;line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #e3e7ee;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#5a6577}.verdict{padding:.8rem 1rem;border-radius:6px;font-weight:600;margin:1rem 0}
.pass{background:#e3f6e8;border:1px solid #5cb27a}.fail{background:#fff4e0;border:1px solid #e0a23a}
.none{background:#eef1f5;border:1px solid #b9c2cf}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}th,td{border:1px solid #d5dbe4;padding:.3rem .6rem;
text-align:right}th{background:#f3f5f9}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #e3e7ee;margin:.5rem 0}
.ex{border:1px solid #d5dbe4;border-radius:6px;margin:1rem 0;padding:.6rem}
.cols{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:.6rem}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f8fa;padding:.5rem;max-height:18rem;overflow:auto;
margin:.2rem 0;font-size:.85rem}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
dt{font-weight:600}dd{margin:0}.note{color:#5a6577;font-size:.9rem}.scroll{overflow-x:auto;max-width:100%}
"""


def _img(images: dict, name: str, alt: str) -> str:
    if name not in images:
        return f'<p class="note">No data for this chart yet ({_esc(alt)}).</p>'
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{_esc(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><tr>{h}</tr>{body}</table></div>'


def _metric_table(head: list[str], rows: list[tuple[str, list[tuple]]]) -> str:
    h = "".join(f"<th>{_esc(x)}</th>" for x in head)
    body = "".join(f"<tr><td>{_esc(label)}</td>" + "".join(
        f'<td data-metric="{_esc(key)}" data-value="{_esc(json.dumps(value))}">{_esc(text)}</td>'
        for key, value, text in cells) + "</tr>" for label, cells in rows)
    return f'<div class="scroll"><table><tr>{h}</tr>{body}</table></div>'


def _examples(title: str, rows: list[dict]) -> str:
    parts = [f"<h3>{_esc(title)}</h3>"]
    if not rows:
        parts.append('<p class="note">No judged responses.</p>')
    for r in rows:
        errors = f" · {r['errors']} judge error(s)" if r["errors"] else ""
        parts.append(
            f'<div class="ex"><b>{_esc(r["task"])}</b> · prompt {_esc(r["prompt_id"])} · sample {r["sample_idx"]} · '
            f"similarity {num(r['similarity'])} · precision {num(r['precision'])}"
            f"{errors}"
            f'<div class="cols"><div><b>Instruction</b><pre>{_esc(r["prompt"])}</pre></div>'
            f'<div><b>Reference (written by a person)</b><pre>{_esc(r["reference"])}</pre></div>'
            f'<div><b>Local model</b><pre>{_esc(r["response"])}</pre></div></div></div>')
    return "".join(parts)


def _calibration_html(data: dict, images: dict) -> list[str]:
    if (data.get("eval") or {}).get("mode") == "pairwise":
        return []
    head, rows, words = calibration_table(data)
    check = (data.get("verdict") or {}).get("calibration")
    klass = "none" if not check else "pass" if check["calibrated"] else "fail"
    return ['<h2 id="calibration">Judge vs people</h2>', f'<div class="verdict {klass}">{_esc(words)}</div>',
            _table(head, rows) if rows else "",
            _img(images, "calibration", "people's scores against the judge's") if rows else ""]


def html(data: dict, images: dict[str, bytes]) -> str:
    text, passed = verdict_text(data.get("verdict"))
    klass = {True: "pass", False: "fail", None: "none"}[passed]
    zs = data["zetas"]
    summary_head = ["score", "V", "95% CI"] + [f"C@{z}" for z in zs] + ["n", "P-Match"]
    cyc_head, cyc_rows = cycle_rows(data)
    stages, per_cycle, total = cost_rows(data)
    be = data["breakeven"]
    ev = data.get("eval") or {}
    ref = ev.get("reference") or {}
    pairwise = ev.get("pairwise")
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>duo report: {_esc(data["project"])}, '
        f'cycle {data["cycle"]}</title><style>{CSS}</style></head><body>',
        f'<h1>duo report: {_esc(data["project"])}, cycle {data["cycle"]}</h1>',
        f'<p class="meta">Generated {_esc(data["generated"])} · service model {_esc(data["service_model"])} · '
        f'gate: {_esc(data["gate_params"].score)} {_esc(data["gate_params"].statistic)} ≥ ε = '
        f'{data["gate_params"].threshold:g}</p>',
        f'<div class="verdict {klass}">Gate verdict: {_esc(text)}</div>',
        "<details><summary>How to read this report</summary><dl>"
        + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in GLOSSARY) + "</dl></details>",
        "<h2>Scores, this cycle</h2>",
        _metric_table(summary_head, summary_rows(data)),
        f'<p>Judge-free reference metrics: ROUGE-L <span data-metric="reference.rougeL" '
        f'data-value="{_esc(json.dumps(ref.get("rougeL")))}">{num(ref.get("rougeL"), 2)}</span>, exact match '
        f'<span data-metric="reference.exact_match" data-value="{_esc(json.dumps(ref.get("exact_match")))}">'
        f'{pct(ref.get("exact_match"))}</span> over {ref.get("n", 0)} responses.</p>',
    ]
    if pairwise:
        out.append(_table(["", "win", "tie", "loss", "n"], [["all tasks", pct(pairwise.get("win")), pct(pairwise.get("tie")),
                          pct(pairwise.get("loss")), str(pairwise.get("n"))]] +
                          [[t, pct(v.get("win")), pct(v.get("tie")), pct(v.get("loss")), str(v.get("n"))]
                           for t, v in (pairwise.get("by_task") or {}).items()]))
    out += ["<h2>Scores per task</h2>", _metric_table(["task"] + task_header(data), task_rows(data)),
            "<h2>Across cycles</h2>",
            f'<p class="note">{_esc(data["cycles_note"])}: showing the current metrics only.</p>'
            if data["cycles_note"] else "",
            _table(cyc_head, cyc_rows), _img(images, "scores_by_cycle", "scores per task per cycle"),
            "<h2>Score distributions</h2>",
            f"<p>Every valid judge sample of the local model's responses; dashed lines at ζ = "
            f"{', '.join(str(z) for z in zs)} (C@ζ is the share to the right of each line).</p>",
            _img(images, "score_histograms", "similarity and precision histograms"),
            "<h2>Judge</h2><table>" + "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>"
                                              for k, v in judge_rows(data)) + "</table>",
            *_calibration_html(data, images),
            "<h2>Training</h2>", _img(images, "loss", "training loss curve"),
            "<table>" + "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in train_rows(data))
            + "</table>",
            "<h2>Synthetic data, this cycle</h2>" if synth_rows(data) else "",
            "".join(f'<div class="verdict fail">Filter warning: {_esc(w)} (see curate.* in params.yaml)</div>'
                    for w in synth_warnings(data)),
            "<table>" + "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in synth_rows(data))
            + "</table>" if synth_rows(data) else "",
            "<h2>Cost so far</h2>",
            f'<p>Service calls since cycle {data["cycles"][0]["cycle"] if data["cycles"] else data["cycle"]}: '
            f"<b>{_esc(total)}</b>. Local work (training, export, inference) is not billed.</p>",
            _table(["cycle", "prompt tokens", "completion tokens", "cost"], per_cycle),
            "<p>This cycle by stage:</p>" + _table(["stage:model", "calls", "prompt tokens", "completion tokens",
                                                      "cost"], stages),
            "<h2>Break-even: service vs. local box</h2>",
            f'<div class="verdict none" data-metric="breakeven.months" data-value="{_esc(json.dumps(be["months"]))}">'
            f'{_esc(data["breakeven_sentence"])}</div>',
            "<table>" + "".join(f'<tr><td>{_esc(label)}</td><td data-breakeven="{_esc(key)}">{_esc(text)}</td></tr>'
                                for label, key, text in breakeven_rows(be)) + "</table>",
            '<p class="note">Throughput is the infer stage\'s rate on the machine that ran it, with infer.parallel '
            "sequences decoded together (a server that answers one request at a time, like make serve, reaches "
            "the rate of infer.parallel: 1); a GPU box is faster. Inputs: report.* in params.yaml.</p>",
            f"<h2>Best and worst responses (by {_esc(data['gate_score'])})</h2>",
            _examples(f"Best {len(data['best'])}", data["best"]),
            _examples(f"Worst {len(data['worst'])}", data["worst"]),
            "</body></html>\n"]
    return "\n".join(out)


# ---- Markdown -----------------------------------------------------------------------------------

def _md_cell(text) -> str:
    # Markdown renders inline HTML: escape it (quotes may stay), and keep each cell on one line.
    return html_mod.escape("" if text is None else str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _fence(text: str) -> str:
    run, longest = 0, 0
    for ch in text or "":
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    f = "`" * max(3, longest + 1)
    return f"{f}text\n{text}\n{f}"


def markdown(data: dict, image_paths: dict[str, str]) -> str:
    text, _ = verdict_text(data.get("verdict"))
    zs = data["zetas"]
    stages, per_cycle, total = cost_rows(data)
    cyc_head, cyc_rows = cycle_rows(data)
    md = [f"# duo report: {_md_cell(data['project'])}, cycle {data['cycle']}", "",
          f"Generated {data['generated']} · service model {_md_cell(data['service_model'])}", "",
          f"**Gate verdict:** {_md_cell(text)}", "", "## Scores, this cycle", "",
          _md_table(["score", "V", "95% CI"] + [f"C@{z}" for z in zs] + ["n", "P-Match"],
                    [[label] + [t for _, _, t in cells] for label, cells in summary_rows(data)]), "",
          "## Scores per task", "",
          _md_table(["task"] + task_header(data), [[label] + [t for _, _, t in cells] for label, cells in task_rows(data)]),
          "", "## Across cycles", ""]
    if data["cycles_note"]:
        md += [f"_{data['cycles_note']}: showing the current metrics only._", ""]
    md += [_md_table(cyc_head, cyc_rows), ""]
    for name, alt in (("scores_by_cycle", "scores per task per cycle"), ("score_histograms", "score histograms"),
                      ("loss", "training loss")):
        if name in image_paths:
            md += [f"![{alt}]({image_paths[name]})", ""]
    if (data.get("eval") or {}).get("mode") != "pairwise":
        head, rows, words = calibration_table(data)
        md += ["## Judge vs people", "", _md_cell(words), ""] + ([_md_table(head, rows), ""] if rows else [])
        if "calibration" in image_paths:
            md += [f"![people's scores against the judge's]({image_paths['calibration']})", ""]
    md += ["## Judge", "", _md_table(["", ""], [list(r) for r in judge_rows(data)]), "",
           "## Training", "", _md_table(["", ""], [list(r) for r in train_rows(data)]), ""]
    if synth_rows(data):
        md += ["## Synthetic data, this cycle", ""]
        md += [f"**Filter warning:** {_md_cell(w)} (see curate.* in params.yaml)" for w in synth_warnings(data)]
        md += ["", _md_table(["", ""], [list(r) for r in synth_rows(data)]), ""]
    md += ["## Cost so far", "", f"Service calls so far: **{total}**.", "",
           _md_table(["cycle", "prompt tokens", "completion tokens", "cost"], per_cycle), "",
           _md_table(["stage:model", "calls", "prompt tokens", "completion tokens", "cost"], stages), "",
           "## Break-even: service vs. local box", "", f"**{_md_cell(data['breakeven_sentence'])}**", "",
           _md_table(["", ""], [[label, t] for label, _, t in breakeven_rows(data["breakeven"])]), "",
           f"## Best and worst responses (by {data['gate_score']})", ""]
    for title, rows in (("Best", data["best"]), ("Worst", data["worst"])):
        md += [f"### {title} {len(rows)}", ""]
        for r in rows:
            md += [f"**{_md_cell(r['task'])}** · prompt {_md_cell(r['prompt_id'])} · similarity {num(r['similarity'])}"
                   f" · precision {num(r['precision'])}", "", "Instruction:", "", _fence(r["prompt"]), "",
                   "Reference:", "", _fence(r["reference"]), "", "Local model:", "", _fence(r["response"]), ""]
    md += ["## How to read this report", ""] + [f"- **{k}**: {v}" for k, v in GLOSSARY] + [""]
    return "\n".join(md)
