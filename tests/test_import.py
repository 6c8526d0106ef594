"""`duo import`: JSONL, CSV and Parquet (columns and No Robots chat records) into coverage rows, with
`path:line` errors for malformed records, dedup of identical pairs, stable ids and atomic, guarded writes."""
from __future__ import annotations

import json

from click.testing import CliRunner

from duo.data import chat as chat_mod
from duo import contracts
from duo.data import records
from duo.cli import main


def run(*args, ok=True):
    result = CliRunner().invoke(main, ["import", *map(str, args)])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
    return result


def read(path):
    return records.read_records(path, contracts.ROW_FIELDS, unique="id")  # what the prepare stage accepts


def jl(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_jsonl_columns_dedup_and_stable_ids(tmp_path):
    src = jl(tmp_path / "in.jsonl", [
        {"id": "a", "task": "qa", "prompt": " What is 2+2? ", "response": "4\n"},
        {"task": "qa", "prompt": "Capital of France?", "response": "Paris"},
        {"task": "qa", "prompt": "What is 2+2?", "response": "4"},            # same pair as 'a' once stripped
        {"id": 7, "task": "qa", "prompt": "Capital of Spain?", "response": "Madrid"},
        "",
    ])
    result = run(src, "--out", tmp_path / "out.jsonl")
    rows = read(tmp_path / "out.jsonl")
    assert [r["prompt"] for r in rows] == ["What is 2+2?", "Capital of France?", "Capital of Spain?"]
    assert rows[0] == {"id": "a", "task": "qa", "prompt": "What is 2+2?", "response": "4"}
    assert rows[1]["id"].startswith("imp-") and rows[2]["id"] == "7"
    assert "4 read (jsonl), 3 kept, 1 duplicate pairs dropped" in result.output
    first = (tmp_path / "out.jsonl").read_bytes()
    run(src, "--out", tmp_path / "out.jsonl", "--force")
    assert (tmp_path / "out.jsonl").read_bytes() == first  # generated ids are a hash of the content


def test_jsonl_malformed_line_fails_fast_or_is_skipped(tmp_path):
    src = jl(tmp_path / "in.jsonl", [
        {"task": "qa", "prompt": "p1", "response": "r1"},
        {"task": "qa", "prompt": "p2", "response": "r2"},
        '{"task": "qa", "prompt": "p3", "resp',
        {"task": "qa", "prompt": "p4"},
        {"task": "qa", "prompt": 5, "response": "r5"},
        {"task": "qa", "prompt": "p6", "response": "r6"},
    ])
    out = tmp_path / "out.jsonl"
    result = run(src, "--out", out, ok=False)
    assert f"{src}:3: invalid JSON" in result.output
    assert not out.exists()  # nothing half-written
    result = run(src, "--out", out, "--skip-invalid")
    assert [r["prompt"] for r in read(out)] == ["p1", "p2", "p6"]
    assert f"skipped {src}:3: invalid JSON" in result.output
    assert f"skipped {src}:4: no response (column 'response')" in result.output
    assert f"skipped {src}:5: prompt (column 'prompt') must be text, got int" in result.output
    assert "3 invalid skipped" in result.output


def test_csv_mapping_multiline_fields_and_physical_line_numbers(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(
        'instruction,output,label\n'                                  # line 1
        '"Summarize:\nline one\nline two","A summary, with a comma",sum\n'  # lines 2-4
        'Classify: great film,positive,cls\n'                         # line 5
        'only,two\n'                                                   # line 6: wrong field count
        'Classify: dull,"negative ""really""",cls\n',                 # line 7
        encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = [src, "--out", out, "--prompt-col", "instruction", "--response-col", "output", "--task-col", "label"]
    result = run(*args, ok=False)
    assert f"{src}:6: 2 fields, the header has 3" in result.output
    run(*args, "--skip-invalid")
    rows = read(out)
    assert rows[0]["prompt"] == "Summarize:\nline one\nline two" and rows[0]["task"] == "sum"
    assert rows[2]["response"] == 'negative "really"'
    # a constant task instead of a column; a missing prompt column names the columns there are
    run(src, "--out", out, "--force", "--prompt-col", "instruction", "--response-col", "output",
        "--task", "mixed", "--skip-invalid")
    assert {r["task"] for r in read(out)} == {"mixed"}
    result = run(src, "--out", out, "--force", "--task", "x", ok=False)
    assert f"{src}:2: no prompt (column 'prompt'); columns here: instruction, output, label" in result.output


def test_csv_bad_bytes_name_their_line(tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes(b"prompt,response,task\np1,r1,t\np2,r\xff2,t\np3,\"unterminated\n")
    result = run(src, "--out", tmp_path / "o.jsonl", ok=False)
    assert f"{src}:3: not UTF-8" in result.output
    result = run(src, "--out", tmp_path / "o.jsonl", "--skip-invalid")
    assert f"skipped {src}:4: malformed CSV (unexpected end of data)" in result.output
    assert [r["prompt"] for r in read(tmp_path / "o.jsonl")] == ["p1"]


def _no_robots(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def chat(*turns):
    return [{"role": role, "content": text} for role, text in turns]


def test_parquet_chat_records_like_no_robots_keep_the_conversation_whole(tmp_path):
    src = _no_robots(tmp_path / "train.parquet", [
        {"prompt": "Write a haiku", "prompt_id": "h1", "category": "Generation",
         "messages": chat(("user", "Write a haiku"), ("assistant", "Leaves fall"))},
        {"prompt": "Ahoy", "prompt_id": "h2", "category": "Chat",
         "messages": chat(("system", "You are a pirate."), ("user", "Ahoy"), ("assistant", "Arr!"),
                          ("user", "More"), ("assistant", "Yo ho"))},
        {"prompt": "Q", "prompt_id": "h3", "category": "Open QA", "messages": chat(("user", "Q"))},
        {"prompt": "Q2", "prompt_id": "h4", "category": "Open QA",
         "messages": chat(("user", "Q2"), ("assistant", "A2"))},
    ])
    out = tmp_path / "out.jsonl"
    result = run(src, "--out", out, "--id-col", "prompt_id", ok=False)
    assert f"{src}:row 2: 'messages' does not end with a (non-empty) assistant reply" in result.output
    result = run(src, "--out", out, "--id-col", "prompt_id", "--skip-invalid")
    rows = chat_mod.read_coverage(out)  # what the prepare stage accepts
    assert rows == [
        {"id": "h1", "task": "Generation", "prompt": "Write a haiku", "response": "Leaves fall"},
        {"id": "h2", "task": "Chat", "messages": chat(("system", "You are a pirate."), ("user", "Ahoy"),
                                                      ("assistant", "Arr!"), ("user", "More")), "response": "Yo ho"},
        {"id": "h4", "task": "Open QA", "prompt": "Q2", "response": "A2"},
    ]
    assert "3 chat records, 0 API log records, 1 kept as conversations" in result.output
    # every task has one row: prepare could not split them
    assert "warning: task 'Chat' has 1 row(s): too few for a train/test split" in result.output
    run(src, "--out", out, "--force", "--system", "drop", "--skip-invalid")
    assert chat_mod.read_coverage(out)[1]["messages"][0] == {"role": "user", "content": "Ahoy"}
    run(src, "--out", out, "--force", "--system", "prepend", "--skip-invalid")
    assert chat_mod.read_coverage(out)[1]["messages"][0] == {"role": "user", "content": "You are a pirate.\n\nAhoy"}


SYSTEM = "Classify the ticket as billing, outage or other. Answer with the label only."


def completion(text):
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31}}


def test_openai_request_response_logs_keep_system_prompt_and_history(tmp_path):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "I was charged twice"}]
    history = msgs + [{"role": "assistant", "content": "billing"},
                      {"role": "user", "content": [{"type": "text", "text": "And the site is down"}]}]
    src = jl(tmp_path / "gateway.jsonl", [
        {"request": {"model": "gpt-4o", "messages": msgs, "temperature": 0}, "response": completion("billing")},
        {"request": {"body": {"model": "gpt-4o", "messages": history}},
         "response": {"status_code": 200, "body": completion("outage")}},
        {"request": {"model": "gpt-4o", "messages": msgs},
         "response": {"status_code": 429, "body": {"error": {"message": "Rate limit reached"}}}},
        {"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}, "response": completion("other")},
    ])
    out = tmp_path / "cov.jsonl"
    result = run(src, "--out", out, "--task", "triage", ok=False)
    assert f"{src}:3: the logged call failed (status 429: Rate limit reached)" in result.output
    result = run(src, "--out", out, "--task", "triage", "--skip-invalid")
    rows = chat_mod.read_coverage(out)
    assert [r.get("messages") for r in rows] == [
        msgs, msgs[:1] + [msgs[1], {"role": "assistant", "content": "billing"},
                          {"role": "user", "content": "And the site is down"}], None]
    assert [r["response"] for r in rows] == ["billing", "outage", "other"] and rows[2]["prompt"] == "Hi"
    assert all(r["id"].startswith("imp-") for r in rows) and "3 API log records" in result.output
    again = tmp_path / "again.jsonl"
    run(src, "--out", again, "--task", "triage", "--skip-invalid")
    assert chat_mod.read_coverage(again) == rows, "stable ids"


def test_openai_batch_output_joins_its_input_file(tmp_path):
    inputs = jl(tmp_path / "batch_in.jsonl", [
        {"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o", "messages": [{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": f"ticket {i}"}]}} for i in range(3)])
    output = jl(tmp_path / "batch_out.jsonl", [
        {"id": "batch_req_1", "custom_id": "t1", "response": {"status_code": 200, "body": completion("outage")},
         "error": None},
        {"id": "batch_req_0", "custom_id": "t0", "response": {"status_code": 200, "body": completion("billing")},
         "error": None},
        {"id": "batch_req_2", "custom_id": "t2", "response": None, "error": {"code": "server_error"}},
    ])
    result = run(output, "--out", tmp_path / "x.jsonl", "--task", "triage", ok=False)
    assert f"{output}:1: a batch output line holds no messages: pass the batch input file" in result.output
    run(output, "--out", tmp_path / "cov.jsonl", "--task", "triage", "--batch-input", inputs, "--skip-invalid")
    rows = chat_mod.read_coverage(tmp_path / "cov.jsonl")
    assert [(r["id"], r["messages"][1]["content"], r["response"]) for r in rows] == [
        ("batch_req_1", "ticket 1", "outage"), ("batch_req_0", "ticket 0", "billing")]
    assert rows[0]["messages"][0] == {"role": "system", "content": SYSTEM}


def test_duo_record_traffic_imports_and_failed_calls_are_not_pairs(tmp_path):
    ok = {"id": "e1", "at": "2026-01-01T00:00:00.000Z", "messages": [{"role": "system", "content": SYSTEM},
                                                                     {"role": "user", "content": "refund?"}],
          "params": {}, "reply": {"role": "assistant", "content": "billing"}, "error": None}
    failed = dict(ok, id="e2", reply=None, error={"status": 500, "message": "boom"})
    src = jl(tmp_path / "2026-01-01.jsonl", [ok, failed])
    result = run(src, "--out", tmp_path / "cov.jsonl", "--task", "triage", "--skip-invalid")
    assert chat_mod.read_coverage(tmp_path / "cov.jsonl") == [
        {"id": "e1", "task": "triage", "messages": ok["messages"], "response": "billing"}]
    assert "the recorded call failed (boom)" in result.output


def test_parquet_wrong_types_and_not_parquet(tmp_path):
    src = _no_robots(tmp_path / "x.parquet", [{"prompt": "p", "response": "r", "task": "t", "id": 1.5}])
    result = run(src, "--out", tmp_path / "o.jsonl", ok=False)
    assert f"{src}:row 0: id (column 'id') must be text or an integer, got float" in result.output
    bad = tmp_path / "bad.parquet"
    bad.write_text("prompt,response\n")
    result = run(bad, "--out", tmp_path / "o.jsonl", ok=False)
    assert f"{bad}: not a readable Parquet file" in result.output


def test_guards(tmp_path):
    src = jl(tmp_path / "in.jsonl", [{"task": "t", "prompt": "p", "response": "r"},
                                     {"id": "x", "task": "t", "prompt": "p2", "response": "r2"},
                                     {"id": "x", "task": "t", "prompt": "p3", "response": "r3"}])
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    assert f"{out} exists; pass --force" in run(src, "--out", out, ok=False).output
    assert out.read_text() == "keep me\n"
    result = run(src, "--out", out, "--force", ok=False)
    assert f"{src}:3: duplicate id 'x' (first at {src}:2)" in result.output
    assert out.read_text() == "keep me\n"
    assert "file not found" in run(tmp_path / "none.jsonl", "--out", tmp_path / "n.jsonl", ok=False).output
    assert "pass --format" in run(tmp_path / "data.txt", "--out", tmp_path / "n.jsonl", ok=False).output
    (tmp_path / "empty.csv").write_text("")
    assert "no usable rows" in run(tmp_path / "empty.csv", "--out", tmp_path / "n.jsonl", ok=False).output
    result = CliRunner().invoke(main, ["import", str(src), "--out", str(tmp_path / "n.jsonl"),
                                       "--task", "a", "--task-col", "b"])
    assert result.exit_code == 2 and "either --task or --task-col" in result.output


def test_csv_long_passage_is_one_field(tmp_path):
    passage = "word " * 60_000  # 300 kB: over the csv module's default field limit
    src = tmp_path / "in.csv"
    src.write_text(f'prompt,response,task\n"Summarize: {passage}",short,sum\n', encoding="utf-8")
    run(src, "--out", tmp_path / "o.jsonl")
    assert read(tmp_path / "o.jsonl")[0]["prompt"] == f"Summarize: {passage}".strip()
