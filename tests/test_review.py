"""`duo review`: the exchanges panel's decisions and the coverage file it writes (unit), and the real page
in a real headless browser (Debian's chromium over WebDriver): accept three exchanges, edit one, reject
one, reload, and data/coverage.jsonl holds exactly the three; a screenshot of the page is saved."""
from __future__ import annotations

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
    proc, url = start(project)
    browser = webdriver.Browser()
    try:
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
        shot = browser.screenshot(tmp_path_factory.mktemp("review") / "review.png")
        print(f"\nscreenshot of the review page: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()
        proc.terminate()
        proc.wait(timeout=10)

    rows = chat.read_coverage(project / "data" / "coverage.jsonl")  # what prepare accepts
    by_key = {ex["id"]: ex for ex in TRAFFIC}
    assert [r["id"] for r in rows] == [exchanges.row_id(k) for k in keys[:3]]
    for row, key in zip(rows, keys[:3]):
        assert row["task"] == "triage" and row["messages"] == by_key[key]["messages"]
    assert [r["response"] for r in rows] == [by_key[keys[0]]["reply"]["content"], "outage (router)",
                                             by_key[keys[2]]["reply"]["content"]]
