"""make report: files, embedded images, numbers equal to metrics/eval.json, escaping of untrusted
text, the break-even arithmetic, the curves across real DVC experiments, `dvc plots show` on the
plots stage's files, and the page as headless Chromium renders it."""
from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from duo import params as params_mod
from duo.data import records
from duo.report import breakeven, build as report, render as report_render
from duo.evaluation import reference, summary
from duo.loop import gate as gate_mod
from stages import plots as plots_stage
from tests.conftest import ROOT

TASKS = ("classification", "closed_qa", "summarization")
EVIL = '<script>alert("pwned")</script> & "quotes"'


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.metrics, self.images, self.tags, self._open = [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(a["src"])
        if "data-metric" in a:
            self._open = [a["data-metric"], json.loads(a["data-value"]), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag):
        if self._open is not None and tag in ("td", "span", "div"):
            self.metrics.append(tuple(self._open))
            self._open = None


def make_project(root: Path, cycle: int = 1) -> dict:
    """Metrics and data files of one finished cycle, produced by the stages' own pure functions
    (judge aggregation, reference metrics, gate verdict and cost) from planted judgments."""
    rng = random.Random(7)
    preds, rows, teacher_rows = [], [], []
    for t in TASKS:
        for i in range(4):
            pid = f"{t[:3]}-{i}"
            for k in range(2):
                response = EVIL if (t, i, k) == ("closed_qa", 0, 0) else f"answer {i}.{k} for {t}"
                preds.append({"prompt_id": pid, "sample_idx": k, "task": t, "prompt": f"Question {i} about {t}?",
                              "reference": f"reference {i} for {t}", "response": response, "cycle": cycle})
                error = (t, i, k) == ("summarization", 3, 1)
                sim, prec = (100.0, 99.0) if response == EVIL else (float(rng.randint(1, 95)), float(rng.randint(1, 95)))
                rows.append({"prompt_id": pid, "sample_idx": k, "judge_idx": 0, "judge": "local", "subject": "student",
                             "similarity": None if error else sim, "precision": None if error else prec,
                             "error": "unparseable: no JSON object in reply" if error else None, "raw": "{}"})
            teacher_rows.append({"prompt_id": pid, "sample_idx": 0, "judge_idx": 0, "judge": "local",
                                 "subject": "teacher", "similarity": 80.0, "precision": 85.0, "error": None, "raw": "{}"})
    judgments = rows + teacher_rows
    p = params_mod.Judge()
    tasks = {r["prompt_id"]: r["task"] for r in preds}
    errors = sum(r["error"] is not None for r in judgments)
    calls = {"calls": 32, "cached": 0, "failed": 0, "retries": 0, "overflows": 0, "prompt_tokens": 9000,
             "completion_tokens": 700, "cost_usd": 0.0123, "max_in_flight": 4}
    ev = {"cycle": cycle, "mode": "single", **summary.summarise_single(judgments, tasks, p, ["local"]),
          "reference": reference.reference_metrics(preds),
          "judge": {"models": ["local"], "samples": len(judgments), "judge_errors": errors,
                    "error_rate": round(errors / len(judgments), 4), "calls": {"local": calls}}}
    synth = {"cycle": cycle, "service": calls | {"cost_usd": 0.004}}
    train = {"rows": 40, "steps": 6, "epochs": 1.0, "train_loss": 1.5, "final_loss": 0.9,
             "loss_curve": [{"step": s, "loss": round(2.0 - 0.2 * s, 4)} for s in range(1, 7)],
             "tokens": 5000, "tokens_per_s": 80.5, "train_seconds": 62.1, "truncated_rows": 0, "lora_r": 16,
             "lora_alpha": 32, "device": "cpu", "quantized_4bit": False, "precision": "bf16", "cycle": cycle,
             "train_rows": 30, "synth_rows": 10}
    infer = {"cycle": cycle, "backend": "llama_cpp", "k": 2, "responses": len(preds), "completion_tokens": 2000,
             "seconds": 80.0, "tokens_per_s": 25.0, "stopped_share": 0.9}
    g = params_mod.Gate(threshold=60, max_cycles=3)
    files = {"eval": ev, "train": train, "infer": infer, "synth": synth, "cycle": gate_mod.verdict(ev, g, cycle),
             "cost": gate_mod.cost(synth, ev, cycle)}
    for name, obj in files.items():
        records.write_json(root / "metrics" / f"{name}.json", obj)
    records.write_jsonl(root / "data" / "predictions.jsonl", preds)
    records.write_jsonl(root / "data" / "judgments.jsonl", judgments)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["cycle"] = cycle
    params["gate"].update({"threshold": 60, "max_cycles": 3})
    params["report"].update({"price_model": "gpt-4o", "examples": 2})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return files


def _earlier_cycle(files: dict) -> dict:
    ev = json.loads(json.dumps(files["eval"]))
    for s in ("similarity", "precision"):
        ev[s]["mean"] = 20.0
        for t in ev[s]["by_task"].values():
            t["mean"] = 15.0
    return {"name": "cycle-0", "cycle": 0, "timestamp": "2026-11-25T10:00:00", "source": "experiment", "eval": ev,
            "verdict": None, "cost": {"cost_usd": None, "prompt_tokens": 100, "completion_tokens": 10}}


@pytest.fixture
def project(tmp_path):
    return tmp_path, make_project(tmp_path)


def _build(root: Path, exps=None):
    params = params_mod.load(root / "params.yaml")
    return report.build(root, params, exps=exps or [], exps_note=None if exps else "no DVC experiments found")


def _lookup(obj, dotted):
    for part in dotted.split("."):
        obj = obj[part]
    return obj


def test_report_files_images_and_numbers_equal_eval_json(project, tmp_path):
    root, files = project
    data = _build(root, [_earlier_cycle(files)])
    html_path, md_path = report.write(data, tmp_path / "reports")
    assert html_path.name == "cycle-1.html" and md_path.name == "cycle-1.md"
    page = html_path.read_text()
    parsed = _Collect()
    parsed.feed(page)

    # Every image is inline PNG; nothing is fetched (no script, no stylesheet link, no remote URL).
    assert len(parsed.images) == 3
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        from PIL import Image
        assert Image.open(io.BytesIO(png)).format == "PNG"
    assert "script" not in parsed.tags and "link" not in parsed.tags and "http://" not in page and "https://" not in page

    # The numbers shown are metrics/eval.json's, as stored and as formatted.
    ev = files["eval"]
    shown = {key: (value, text) for key, value, text in parsed.metrics}
    for s in ("similarity", "precision"):
        for key in ("mean", "c50", "c70", "ci95", "n"):
            assert f"{s}.{key}" in shown
        for t in TASKS:
            assert f"{s}.by_task.{t}.mean" in shown
    for key, (value, text) in shown.items():
        if key.startswith("breakeven."):
            continue
        assert value == _lookup(ev, key), key
        if key.endswith(".mean"):
            assert text == f"{value:,.2f}"
        elif key.split(".")[-1] in ("c50", "c70"):
            assert text == f"{100 * value:.1f}%"
    assert f"{ev['precision']['mean']:,.2f}" in page and "C@70" in page
    assert "judge error rate" in page and f"{100 * ev['judge']['error_rate']:.1f}%" in page
    assert "cycle-0" in page, "the earlier cycle's experiment is in the across-cycles table"
    assert "unknown" in page, "a cycle whose cost litellm could not price says so"
    assert files["cost"]["cost_usd"] == 0.0163 and "$0.0163" in page, "this cycle: synthesize + evaluate"
    # The gate verdict, with the threshold.
    verdict = files["cycle"]
    assert f"vs ε = {verdict['threshold']:g}" in page and ("PASSED" if verdict["passed"] else "not passed") in page

    # The Markdown twin: same numbers, images as files next to it.
    md = md_path.read_text()
    assert f"{ev['precision']['mean']:,.2f}" in md
    for name in ("scores_by_cycle", "score_histograms", "loss"):
        assert f"](cycle-1/{name}.png)" in md
        assert (tmp_path / "reports" / "cycle-1" / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_untrusted_text_is_escaped(project, tmp_path):
    root, _ = project
    data = _build(root)
    assert data["best"][0]["response"] == EVIL, "the planted response scored highest"
    page = report_render.html(data, {})
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    md = report_render.markdown(data, {})
    assert "```text\n" + EVIL + "\n```" in md, "in Markdown the text sits inside a code fence, verbatim"
    tricky = report_render._fence("a ``` b")
    assert tricky.startswith("````text\n") and tricky.endswith("\n````")


def test_best_and_worst_and_judge_errors(project):
    root, files = project
    data = _build(root)
    best, worst = data["best"], data["worst"]
    assert len(best) == len(worst) == 2
    assert best[0]["precision"] >= best[1]["precision"] >= worst[1]["precision"] >= worst[0]["precision"]
    assert not {(r["prompt_id"], r["sample_idx"]) for r in best} & {(r["prompt_id"], r["sample_idx"]) for r in worst}
    # The histograms hold exactly the valid student samples V was computed over.
    assert len(data["scores"]["precision"]) == files["eval"]["precision"]["n"] == 23


def test_cli_writes_report_and_names_missing_metrics(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    result = CliRunner().invoke(report.main, [])
    assert result.exit_code == 0, result.output
    assert (root / "reports" / "cycle-1.html").exists() and (root / "reports" / "cycle-1.md").exists()
    page = (root / "reports" / "cycle-1.html").read_text()
    assert "showing the current metrics only" in page, "no DVC experiments here: said, not hidden"
    assert "months to break even" in page and "gpt-4o" in page
    (root / "metrics" / "eval.json").unlink()
    result = CliRunner().invoke(report.main, [])
    assert result.exit_code == 1 and "metrics/eval.json: not found" in result.output
    assert "Traceback" not in result.output


# ---- break-even ---------------------------------------------------------------------------------

def test_prices_come_from_litellms_bundled_table():
    assert breakeven.token_prices("gpt-4o") == (2.5e-06, 1e-05)
    assert breakeven.token_prices("openai/gpt-4o") == (2.5e-06, 1e-05)
    assert breakeven.token_prices("local") is None and breakeven.token_prices("local:/x.gguf") is None
    assert breakeven.token_prices("nobody/unknown-model-x") is None


def test_breakeven_known_numbers():
    p = params_mod.Report(daily_tokens_in=1_000_000, daily_tokens_out=250_000, hardware_usd=1500,
                          hardware_watts=150, usd_per_kwh=0.2)
    b = breakeven.compute(p, (2.5e-06, 1e-05), tokens_per_s=25.0, migration_usd=10.0, price_model="gpt-4o")
    month = 365.25 / 12
    # service: $2.50 in + $2.50 out per day; local: 0.15 kW x 24 h x $0.20 = $0.72 per day
    assert b["service_usd_per_month"] == round(5.0 * month, 2) == 152.19
    assert b["local_usd_per_month"] == pytest.approx(0.72 * month, abs=0.005)  # $21.915
    assert b["boxes"] == 1 and b["compute_days_per_day"] == round(250_000 / (25 * 86_400), 4)
    assert b["upfront_usd"] == 1510.0
    assert b["months"] == round(1510 / ((5.0 - 0.72) * month), 2) == 11.59
    assert b["verdict"] == "breaks even" and "11.6 months" in breakeven.sentence(b)

    slow = breakeven.compute(p, (2.5e-06, 1e-05), tokens_per_s=1.0, price_model="gpt-4o")
    assert slow["boxes"] == 3, "250k tokens a day at 1 token/s is 2.9 days of compute: three boxes"
    assert slow["upfront_usd"] == 4500.0 and slow["local_usd_per_month"] == round(3 * 0.72 * month, 2)

    cheap = params_mod.Report(daily_tokens_in=1000, daily_tokens_out=100, hardware_usd=1500, hardware_watts=150,
                              usd_per_kwh=0.2)
    never = breakeven.compute(cheap, (2.5e-06, 1e-05), tokens_per_s=25.0, price_model="gpt-4o")
    assert never["verdict"] == "never" and never["months"] is None and breakeven.sentence(never).startswith("Never")

    unpriced = breakeven.compute(p, None, tokens_per_s=None, price_model="local")
    assert unpriced["verdict"] == "no price known" and unpriced["months"] is None and unpriced["boxes"] == 1
    assert "report.price_model" in breakeven.sentence(unpriced)


def test_breakeven_uses_the_measured_serve_rate_before_the_batched_infer_rate():
    infer = {"tokens_per_s": 120.0}  # llama.cpp decoding 16 sequences of one stage run together
    rate, source = breakeven.local_rate({"serve.tokens_per_s_8": 41.5, "serve.tokens_per_s_1": 15.2}, infer)
    assert rate == 41.5 and "8 concurrent clients" in source
    rate, source = breakeven.local_rate({"train.tokens_per_s": 300}, infer)
    assert rate == 120.0 and "never measured: make bench SECTION=serve" in source
    assert breakeven.local_rate(None, None) == (None, "not measured")


def test_report_params_are_checked(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"report": {"hardware_usd": -1}}))
    with pytest.raises(params_mod.ParamsError, match="'report.hardware_usd' must be >= 0.0, got -1"):
        params_mod.load(path)
    path.write_text(yaml.safe_dump({"report": {"daily_tokens": 5}}))
    with pytest.raises(params_mod.ParamsError, match="unknown key 'report.daily_tokens'"):
        params_mod.load(path)


# ---- DVC: experiments across cycles and `dvc plots show` ------------------------------------------

def _dvc(repo: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)


def test_series_comes_from_real_dvc_experiments(tmp_path):
    """Two real `dvc exp run`s of a one-stage pipeline whose eval.json (a plain output, as in duo's
    dvc.yaml) depends on the cycle; summary.json is the declared metrics file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    (repo / "params.yaml").write_text("cycle: 0\n")
    (repo / "write.py").write_text(
        "import json, yaml\nt = yaml.safe_load(open('params.yaml'))['cycle']\n"
        "json.dump({'cycle': t, 'mode': 'single', 'precision': {'mean': 10.0 + t, 'by_task': {}}}, "
        "open('metrics/eval.json', 'w'))\n"
        "json.dump({'cycle': t, 'prec_V': 10.0 + t}, open('metrics/summary.json', 'w'))\n")
    (repo / "metrics").mkdir()
    (repo / "dvc.yaml").write_text("stages:\n  ev:\n    cmd: python write.py\n    deps: [write.py]\n"
                                   "    params: [cycle]\n    outs:\n      - metrics/eval.json:\n"
                                   "          cache: false\n    metrics:\n      - metrics/summary.json:\n"
                                   "          cache: false\n")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    assert _dvc(repo, "init", "-q").returncode == 0
    subprocess.run(["git", "commit", "-qam", "dvc"], cwd=repo, check=True, env=env, capture_output=True)
    for t in (0, 1):
        proc = _dvc(repo, "exp", "run", "-n", f"cycle-{t}", "-S", f"cycle={t}")
        assert proc.returncode == 0, proc.stderr
    exps, note = report.experiments(repo)
    assert note is None
    assert sorted((e["name"], e["cycle"], e["eval"]["precision"]["mean"]) for e in exps) == \
        [("cycle-0", 0, 10.0), ("cycle-1", 1, 11.0)]
    current = {"name": "workspace", "cycle": 1, "eval": {"precision": {"mean": 99.0}}}
    assert [(c["name"], c["eval"]["precision"]["mean"]) for c in report.series(exps, current)] == \
        [("cycle-0", 10.0), ("workspace", 99.0)], "the workspace's own metrics win for its cycle"
    assert report.experiments(tmp_path)[1], "outside a repository: an empty series and the reason"


def test_dvc_plots_show_renders_the_plots_stage_files(project, tmp_path):
    root, files = project
    repo = tmp_path / "plots"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    assert _dvc(repo, "init", "--no-scm", "-q").returncode == 0
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    judgments = [obj for _, obj in records.iter_jsonl(root / "data" / "judgments.jsonl")]
    records.write_json(repo / "metrics/plots/loss.json", plots_stage.loss_rows(files["train"]))
    records.write_json(repo / "metrics/plots/scores.json", plots_stage.score_rows(judgments))
    records.write_json(repo / "metrics/plots/tasks.json", plots_stage.task_rows(files["eval"]))
    proc = _dvc(repo, "plots", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)["data"]
    assert {"Training loss", "Similarity per sample (histogram)", "Precision per sample (histogram)",
            "Precision V per task", "Similarity V per task"} <= set(shown)
    hist = shown["Precision per sample (histogram)"][0]["content"]
    assert hist["encoding"]["x"]["bin"] and len(hist["data"]["values"]) == files["eval"]["precision"]["n"]
    assert [p["loss"] for p in shown["Training loss"][0]["content"]["data"]["values"]] == \
        [p["loss"] for p in files["train"]["loss_curve"]]


# ---- the page as a browser shows it -------------------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian package `chromium` not installed (.ci/run installs it)")
def test_headless_chromium_renders_a_non_blank_page(project, tmp_path):
    from PIL import Image

    root, files = project
    html_path, _ = report.write(_build(root, [_earlier_cycle(files)]), tmp_path / "reports")
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1200,2000", html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2000)
    colours = img.getcolors(maxcolors=1 << 24)  # [(count, (r, g, b)), ...]
    non_white = sum(n for n, c in colours if min(c) < 240) / (img.width * img.height)
    assert len(colours) > 200, "text, tables and charts give many distinct colours"
    assert non_white > 0.03, f"only {non_white:.1%} of the page is not white"
    # Our page, not an error page: the verdict box's own background (CSS .pass / .fail) fills a band.
    box = (227, 246, 232) if files["cycle"]["passed"] else (255, 244, 224)
    assert dict((c, n) for n, c in colours).get(box, 0) > 20_000


def test_pairwise_mode_reports_win_rates_without_histograms(project, tmp_path):
    root, files = project
    preds = [obj for _, obj in records.iter_jsonl(root / "data" / "predictions.jsonl")]
    outcomes = ["win", "tie", "loss"]
    rows = [{"prompt_id": p["prompt_id"], "sample_idx": p["sample_idx"], "judge_idx": 0, "judge": "local",
             "subject": "student", "verdicts": ["A", "B"], "outcome": outcomes[i % 3], "error": None, "raw": ["", ""]}
            for i, p in enumerate(preds)]
    tasks = {p["prompt_id"]: p["task"] for p in preds}
    ev = {"cycle": 1, "mode": "pairwise", **summary.summarise_pairwise(rows, tasks, ["local"]),
          "reference": files["eval"]["reference"], "judge": files["eval"]["judge"]}
    records.write_json(root / "metrics" / "eval.json", ev)
    records.write_jsonl(root / "data" / "judgments.jsonl", rows)
    html_path, _ = report.write(_build(root), tmp_path / "reports")
    page = html_path.read_text()
    assert f"{100 * ev['pairwise']['win']:.1f}%" in page and "closed_qa" in page
    assert "No data for this chart yet (similarity and precision histograms)" in page


def test_a_filter_warning_reaches_the_report(project):
    root, files = project
    synth = files["synth"] | {"requests": 42, "pairs_generated": 126, "kept": 75, "target": 75, "surplus": 0,
                              "keep_rate": 0.595, "exact_duplicate_rate": 0.0, "near_duplicate_rate": 0.01,
                              "by_task": {"summarization": {"candidates": 51, "kept": 0,
                                                            "removed": {"no_passage_to_summarize": 51}}},
                              "warnings": ["summarization: no_passage_to_summarize removed 51 of 51 candidates"]}
    records.write_json(root / "metrics" / "synth.json", synth)
    data = _build(root)
    page, md = report_render.html(data, {}), report_render.markdown(data, {})
    for text in (page, md):
        assert "no_passage_to_summarize removed 51 of 51 candidates" in text
        assert "0 of 51 kept (no_passage_to_summarize 51)" in text


def _rated(root: Path, files: dict, min_ratings: int) -> dict:
    """People rate the 12 first responses: their scores follow the judge's precision with noise, one
    response rated pass/fail; the calibration block and the verdict as evaluate and gate make them."""
    from duo.evaluation import calibration, ratings

    preds = [json.loads(line) for line in (root / "data" / "predictions.jsonl").read_text().splitlines()]
    judgments = [json.loads(line) for line in (root / "data" / "judgments.jsonl").read_text().splitlines()]
    keys = {(p["prompt_id"], p["sample_idx"]): ratings.key(p) for p in preds}
    per_judge = calibration.judge_scores(judgments, keys)
    rng = random.Random(3)
    given = {}
    for i, p in enumerate(preds[:12]):
        judge = per_judge["local"][keys[(p["prompt_id"], p["sample_idx"])]]
        row = ratings.rating_row(p, verdict="pass", zeta=70) if i == 5 else \
            ratings.rating_row(p, score=max(1, min(100, round(judge + rng.uniform(-15, 15)))))
        given[row["key"]] = row
    ratings.write(root / "data" / "ratings.jsonl", given)
    ev = files["eval"] | {"calibration": calibration.calibrate(given, per_judge, ["local"], [50, 70])}
    g = params_mod.Gate(threshold=60, max_cycles=3, min_ratings=min_ratings, min_agreement=0.5)
    records.write_json(root / "metrics" / "eval.json", ev)
    records.write_json(root / "metrics" / "cycle.json", gate_mod.verdict(ev, g, 1))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["gate"].update({"min_ratings": min_ratings, "min_agreement": 0.5})
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return ev


def test_calibration_panel_shows_eval_jsons_numbers_and_the_gate_requirement(project, tmp_path):
    root, files = project
    data = _build(root)
    html = report_render.html(data, {})
    assert "Judge vs people" in html and "No ratings yet" in html and "gate.min_ratings: 0" in html
    ev = _rated(root, files, min_ratings=40)
    data = _build(root)
    assert len(data["calibration_points"]) == ev["calibration"]["panel"]["spearman"]["n"] == 11
    html_path, md_path = report.write(data, tmp_path / "reports")
    page = html_path.read_text()
    rho = ev["calibration"]["panel"]["spearman"]["value"]
    assert rho > 0.5 and f"{rho:+.2f}" in page
    assert f"{ev['calibration']['panel']['kappa_c70']['value']:+.2f} (12)" in page, "the pass/fail rating counts at 70"
    assert "NOT met (12 rated responses &lt; gate.min_ratings 40)" in page and "uncalibrated judge" in page
    assert 'alt="people&#x27;s scores against the judge&#x27;s"' in page
    assert "## Judge vs people" in md_path.read_text() and (tmp_path / "reports" / "cycle-1" / "calibration.png").exists()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None, reason="no chromium")
def test_calibration_panel_in_a_browser(project, tmp_path):
    from tests import webdriver

    root, files = project
    _rated(root, files, min_ratings=10)
    html_path, _ = report.write(_build(root), tmp_path / "reports")
    browser = webdriver.Browser()
    try:
        browser.get(html_path.as_uri())
        browser.wait("#calibration")
        browser.js("document.querySelector('#calibration').scrollIntoView()")
        text = browser.js("return document.querySelector('#calibration').nextElementSibling.textContent")
        assert "met." in text and "NOT met" not in text, text
        loaded = browser.js("const i = document.querySelector('img[alt^=\"people\"]'); return i.complete && i.naturalWidth")
        assert loaded > 300, "the scatter is embedded and decodes"
        folder = Path(os.environ.get("DUO_SCREENSHOTS") or tmp_path)
        shot = browser.screenshot(folder / "report_calibration.png")
        print(f"\nscreenshot of the report's calibration panel: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()
