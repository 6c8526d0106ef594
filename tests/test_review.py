"""`duo review`: the exchanges panel's decisions and the coverage file it writes (unit), and the real page
in a real headless browser (Debian's chromium over WebDriver): accept three exchanges, edit one, reject
one, reload, and data/coverage.jsonl holds exactly the three; a screenshot of the page is saved."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from duo.app import traffic
from duo.data import chat, records
from duo.app.review import exchanges
from tests import webdriver

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are ACME's support bot. Classify the ticket: billing, outage or other."}


def exchange(i: int, text: str, reply: str, history: list | None = None, error=None) -> dict:
    return {"id": f"{i:032x}", "at": f"2026-03-01T10:00:0{i}.000Z", "model": "openai/gpt-4o",
            "messages": [SYSTEM, *(history or []), {"role": "user", "content": text}], "params": {"temperature": 0},
            "reply": None if error else {"role": "assistant", "content": reply}, "error": error}


TRAFFIC = [
    exchange(1, "I was charged twice this month", "billing"),
    exchange(2, "The router light is red and nothing loads", "outage"),
    exchange(3, "And my invoice?", "billing", history=[{"role": "user", "content": "Site down"},
                                                      {"role": "assistant", "content": "outage"}]),
    exchange(4, "Do you sell gift cards?", "other"),
    exchange(5, "Where is the office?", "outage"),
    exchange(6, "boom", "", error={"status": 500, "message": "provider down"}),
]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = traffic.TrafficLog(tmp_path / "data" / "traffic")
    for ex in TRAFFIC:
        log.append(ex, 1772359200.0)
    log.close()
    return tmp_path


def panel(project) -> exchanges.Exchanges:
    items = exchanges.from_traffic(project / "data" / "traffic")
    return exchanges.Exchanges(items, project / "data" / "coverage.jsonl", project / "data" / "review.json")


# --- unit: the panel ------------------------------------------------------------------------------

def test_decisions_become_coverage_rows_with_stable_ids(project):
    p = panel(project)
    assert p.list({})["counts"] == {"pending": 5, "accepted": 0, "rejected": 0}, "a failed call is no pair"
    keys = [item.key for item in p.items]
    with pytest.raises(ValueError, match="give the exchange a task"):
        p.decide({"key": keys[0], "status": "accepted"})
    p.decide({"key": keys[0], "status": "accepted", "task": "triage"})
    p.decide({"key": keys[2], "status": "accepted", "task": "triage", "response": "billing (invoice)"})
    p.decide({"key": keys[4], "status": "rejected"})
    rows = chat.read_coverage(project / "data" / "coverage.jsonl")  # what prepare accepts
    assert [r["id"] for r in rows] == [exchanges.row_id(keys[0]), exchanges.row_id(keys[2])]
    assert rows[1] == {"id": exchanges.row_id(keys[2]), "task": "triage", "messages": TRAFFIC[2]["messages"],
                       "response": "billing (invoice)"}
    # a restart reads the same decisions; undoing an acceptance removes the row
    again = panel(project)
    assert again.list({"status": "rejected"})["items"][0]["key"] == keys[4]
    assert again.list({"q": "INVOICE"})["items"][0]["edited"] is True
    again.decide({"key": keys[0], "status": "pending"})
    assert [r["id"] for r in chat.read_coverage(project / "data" / "coverage.jsonl")] == [exchanges.row_id(keys[2])]
    assert exchanges.row_id(keys[2]) == panel(project).list({"q": "invoice"})["items"][0]["id"], "stable"


def test_other_rows_are_kept_and_a_bad_line_stops_the_review(project):
    cov = project / "data" / "coverage.jsonl"
    mine = {"id": "hand-1", "task": "triage", "prompt": "Refund please", "response": "billing"}
    records.write_jsonl(cov, [mine])
    p = panel(project)
    p.decide({"key": p.items[1].key, "status": "accepted", "task": "triage"})
    assert [r["id"] for r in chat.read_coverage(cov)] == ["hand-1", exchanges.row_id(p.items[1].key)]
    with open(cov, "a") as fh:
        fh.write('{"id": "bad", "task": "triage", "response": "x"}\n')
    with pytest.raises(records.DataError, match=r"coverage.jsonl:3: missing field 'prompt' \(or 'messages'\)"):
        panel(project)
    from duo.app.review import main

    result = CliRunner().invoke(main, [])
    assert result.exit_code == 1 and "coverage.jsonl:3: missing field 'prompt'" in result.output
    assert "Traceback" not in result.output


def test_imported_files_are_exchanges_too_and_keep_their_task(project):
    src = project / "log.jsonl"
    src.write_text(json.dumps({"request": {"messages": [SYSTEM, {"role": "user", "content": "Refund?"}]},
                               "response": {"choices": [{"message": {"content": "billing"}}]}, "task": "triage"})
                   + "\n" + json.dumps({"prompt": "no task here", "response": "other"}) + "\n")
    items = exchanges.from_file(src, None)
    assert [(i.task, i.response) for i in items] == [("triage", "billing"), (None, "other")]
    assert items[0].messages == [SYSTEM, {"role": "user", "content": "Refund?"}]


# --- integration: the real command, in a real browser -------------------------------------------------

def start(project) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "duo.cli", "review"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert line.startswith("review: http://127.0.0.1:"), line + proc.stdout.read()
    return proc, line.split()[1]


@contextlib.contextmanager
def in_browser(project):
    """`duo review` on the project and a headless browser; both stopped after."""
    proc, url = start(project)
    browser = webdriver.Browser()
    try:
        yield browser, url
    finally:
        browser.close()
        proc.terminate()
        proc.wait(timeout=10)


def screenshot(browser, path: Path, what: str) -> None:
    shot = browser.screenshot(path)
    print(f"\nscreenshot of {what}: {shot}")
    assert shot.stat().st_size > 10_000


@pytest.mark.integration
def test_the_page_needs_its_token(project):
    proc, url = start(project)
    try:
        base = url.split("?")[0]
        for path in ("", "panel/exchanges.js"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path, timeout=10)
            assert info.value.code == 403
        req = urllib.request.Request(base + "api/exchanges/list", data=b"{}", headers={"X-Duo-Token": "wrong"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 403
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"duo review" in resp.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.skipif(webdriver.available() is not None, reason=str(webdriver.available()))
def test_accept_three_edit_one_reload_in_a_real_browser(project, tmp_path_factory):
    with in_browser(project) as (browser, url):
        browser.get(url)
        cards = browser.wait(".card", 5)
        keys = [browser.js("return arguments[0].dataset.key", c) for c in cards]
        assert len(keys) == 5

        def card(key: str) -> str:
            return browser.wait(f'.card[data-key="{key}"]')[0]

        def act(key: str, button: str, task: str | None = None, response: str | None = None) -> None:
            here = card(key)
            if task is not None:
                browser.type(browser.find(".task", here)[0], task)
            if response is not None:
                browser.type(browser.find("textarea.response", here)[0], response)
            browser.click(browser.find(f"button.{button}", here)[0])
            browser.wait(f'.card[data-key="{key}"][data-status="{ {"accept": "accepted", "reject": "rejected"}[button]}"]')

        act(keys[0], "accept", task="triage")
        act(keys[1], "accept", task="triage", response="outage (router)")
        act(keys[2], "accept", task="triage")
        act(keys[3], "reject")

        # filters: text, then status, then none
        def search(text: str) -> None:
            browser.js("const e = document.querySelector('#filter-q'); e.value = arguments[0];"
                       "e.dispatchEvent(new Event('change'))", text)

        def shown() -> list[str]:
            return browser.js("return [...document.querySelectorAll('.card')].map(c => c.dataset.key)")

        search("router")
        browser.until(lambda: shown() == [keys[1]], "only the router exchange shown")
        search("")
        browser.wait(".card", 5)
        browser.js("const e = document.querySelector('#filter-status'); e.value = 'rejected';"
                   "e.dispatchEvent(new Event('change'))")
        browser.until(lambda: shown() == [keys[3]], "only the rejected exchange shown")
        browser.js("const e = document.querySelector('#filter-status'); e.value = '';"
                   "e.dispatchEvent(new Event('change'))")
        browser.wait(".card", 5)

        browser.refresh()
        browser.wait(".card", 5)
        status = {k: browser.js("return document.querySelector(`.card[data-key='${arguments[0]}']`).dataset.status", k)
                  for k in keys}
        assert status == dict(zip(keys, ["accepted", "accepted", "accepted", "rejected", "pending"]))
        edited = browser.js("return document.querySelector(`.card[data-key='${arguments[0]}'] textarea`).value", keys[1])
        assert edited == "outage (router)"
        screenshot(browser, tmp_path_factory.mktemp("review") / "review.png", "the review page")

    rows = chat.read_coverage(project / "data" / "coverage.jsonl")  # what prepare accepts
    by_key = {ex["id"]: ex for ex in TRAFFIC}
    assert [r["id"] for r in rows] == [exchanges.row_id(k) for k in keys[:3]]
    for row, key in zip(rows, keys[:3]):
        assert row["task"] == "triage" and row["messages"] == by_key[key]["messages"]
    assert [r["response"] for r in rows] == [by_key[keys[0]]["reply"]["content"], "outage (router)",
                                             by_key[keys[2]]["reply"]["content"]]


# --- the Ratings panel: people rate judged test responses -----------------------------------------

JUDGE_SCORES = [90, 15, 60, 35, 75]


@pytest.fixture
def judged(project):
    """A cycle's judged predictions (one with a conversation) and judgments in the project."""
    preds = [{"prompt_id": f"q{i}", "sample_idx": 0, "task": "triage", "prompt": f"Ticket {i}: {text}",
              "reference": ref, "response": resp, "cycle": 0}
             for i, (text, ref, resp) in enumerate([("charged twice", "billing", "billing"),
                                                    ("router red", "outage", "billing"),
                                                    ("gift cards?", "other", "other, probably"),
                                                    ("office?", "other", "outage"),
                                                    ("site down", "outage", "outage")])]
    preds[0]["messages"] = [SYSTEM, {"role": "user", "content": preds[0]["prompt"]}]
    judgments = [{"prompt_id": p["prompt_id"], "sample_idx": 0, "judge_idx": 0, "judge": "openai/gpt-4o",
                  "subject": "student", "similarity": s, "precision": s, "error": None, "raw": "{}"}
                 for p, s in zip(preds, JUDGE_SCORES)]
    judgments.append({**judgments[1], "judge_idx": 1, "precision": None, "similarity": None, "error": "unparseable"})
    records.write_jsonl(project / "data" / "predictions.jsonl", preds)
    records.write_jsonl(project / "data" / "judgments.jsonl", judgments)
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return preds


def test_ratings_panel_rates_hides_the_judge_until_rated_and_keeps_ratings(judged, project):
    from duo.app.review import ratings as panel_mod
    from duo.evaluation import ratings

    p = panel_mod.from_project()
    first = p.list({})
    assert first["counts"] == {"rated": 0, "unrated": 5, "judged": 5} and first["zetas"] == [50, 70]
    assert all(item["judge"] is None for item in first["items"]), "no anchoring: the judge's score is hidden"
    order = [item["key"] for item in first["items"]]
    assert order == [item["key"] for item in panel_mod.from_project().list({})["items"]], "a fixed sample order"
    by_prompt = {item["prompt_id"]: item for item in first["items"]}
    assert by_prompt["q0"]["messages"][0] == SYSTEM
    done = p.rate({"key": by_prompt["q0"]["key"], "score": 85})
    assert done["rated"] and done["judge"] == 90.0
    assert p.rate({"key": by_prompt["q1"]["key"], "verdict": "fail", "zeta": 70})["judge"] == 15.0
    for bad, why in (({"score": 0}, "score must be"), ({"score": 50, "verdict": "pass", "zeta": 50}, "exactly one"),
                     ({"verdict": "pass", "zeta": 60}, "not one of judge.zetas")):
        with pytest.raises(ValueError, match=why):
            p.rate({"key": by_prompt["q2"]["key"], **bad})
    with pytest.raises(ValueError, match="no judged response"):
        p.rate({"key": "nope", "score": 5})
    saved = ratings.read(project / "data" / "ratings.jsonl")
    assert {r["prompt_id"]: (r["score"], r["verdict"], r["zeta"]) for r in saved.values()} == {
        "q0": (85, None, None), "q1": (None, "fail", 70)}
    # a restart reads them; a later cycle that no longer has q1's response still lists its rating to revise
    records.write_jsonl(project / "data" / "predictions.jsonl", [judged[0]])
    again = panel_mod.from_project()
    listing = again.list({"filter": "rated"})
    assert {i["prompt_id"]: i["current"] for i in listing["items"]} == {"q0": True, "q1": False}
    assert listing["counts"]["unrated"] == 0
    again.rate({"key": by_prompt["q1"]["key"], "clear": True})
    assert set(ratings.read(project / "data" / "ratings.jsonl")) == {by_prompt["q0"]["key"]}


@pytest.mark.integration
@pytest.mark.skipif(webdriver.available() is not None, reason=str(webdriver.available()))
def test_rate_in_a_real_browser(judged, project):
    people = {"q0": 95, "q1": 10, "q2": 25, "q3": 30}  # q4 gets a verdict: pass @70
    with in_browser(project) as (browser, url):
        browser.get(url + "#ratings")
        cards = browser.wait(".rcard", 5)
        assert browser.js("return document.querySelectorAll('.judge-score').length") == 0, "judge hidden before rating"
        metas = {browser.js("return arguments[0].dataset.key", c):
                 browser.js("return arguments[0].querySelector('.meta').textContent", c) for c in cards}
        key = {f"q{i}": next(k for k, meta in metas.items() if f"prompt q{i}" in meta) for i in range(5)}
        browser.js("const e = document.querySelector('#ratings-filter'); e.value = '';"
                   "e.dispatchEvent(new Event('change'))")
        browser.wait(".rcard", 5)
        for pid, score in people.items():
            card = browser.wait(f'.rcard[data-key="{key[pid]}"]')[0]
            browser.type(browser.find("input.score", card)[0], str(score))
            browser.click(browser.find("button.save-score", card)[0])
            browser.wait(f'.rcard[data-key="{key[pid]}"][data-rated="true"]')
        card = browser.wait(f'.rcard[data-key="{key["q4"]}"]')[0]
        browser.click(browser.find("button.pass-70", card)[0])
        browser.wait(f'.rcard[data-key="{key["q4"]}"][data-rated="true"]')
        shown = browser.js("return document.querySelector(`.rcard[data-key='${arguments[0]}'] .judge-score`).textContent",
                           key["q1"])
        assert shown == "15", "once rated, the judge's score is shown (its valid sample; the error left out)"
        browser.until(lambda: "5 rated" in browser.js("return document.querySelector('#ratings-agreement').textContent"),
                      "the live agreement line counts the 5 ratings")
        line = browser.js("return document.querySelector('#ratings-agreement').textContent")
        # people 95, 10, 25, 30 vs judge 90, 15, 60, 35 rank q1 < q2 < q3 < q0 and q1 < q3 < q2 < q0: d² = 2,
        # ρ = 1 - 6·2/(4·15) = 0.8; at ζ = 70 both pass q0 and q4 (a verdict at 70) only: κ = 1 over 5
        assert "Spearman ρ +0.80" in line and "κ@70 +1.00 (n 5)" in line and "κ@50 +0.50 (n 4)" in line, line
        browser.refresh()  # the page opens on what is left to rate: nothing
        browser.wait("#ratings-counts")
        assert "5 rated · 0 to rate" in browser.js("return document.querySelector('#ratings-counts').textContent")
        assert not browser.find(".rcard")
        browser.js("const e = document.querySelector('#ratings-filter'); e.value = '';"
                   "e.dispatchEvent(new Event('change'))")
        browser.wait(".rcard", 5)
        folder = Path(os.environ.get("DUO_SCREENSHOTS") or project)  # where a person looks at it
        screenshot(browser, folder / "ratings_view.png", "the ratings view")
    from duo.evaluation import ratings

    saved = {r["prompt_id"]: r for r in ratings.read(project / "data" / "ratings.jsonl").values()}
    assert {pid: r["score"] for pid, r in saved.items() if r["score"]} == people
    assert (saved["q4"]["verdict"], saved["q4"]["zeta"]) == ("pass", 70)
    assert saved["q0"]["messages"][0] == SYSTEM and saved["q0"]["reference"] == "billing"
