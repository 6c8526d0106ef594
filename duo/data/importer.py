"""`duo import`: turn a user's JSONL, CSV or Parquet file into coverage rows: `{"id","task","prompt","response"}`,
or `{"id","task","messages","response"}` for a conversation (system prompt and earlier turns kept whole).

Record layouts understood:
- columns: a prompt, a response, a task (or `--task NAME` for the whole file) and optionally an id;
- chat records, as in the No Robots dataset: `{"messages": [{"role": ..., "content": ...}], "category": ...}`.
  The last message must be the assistant's: it is the response, and everything before it (system prompt,
  earlier turns, the final user turn) is the row's conversation, kept as it is (duo/data/chat.py renders it
  with the student's chat template in training and serving alike). `system="prepend"` folds system
  messages into the first user turn instead (a blank line between), `system="drop"` discards them;
- OpenAI chat-completions logs (duo/data/openai_logs.py): request/response pairs as apps and gateways write
  them, batch-API output files (with `--batch-input`, the batch's input file), and duo's own traffic files.
A conversation that is a single user turn becomes a plain `prompt` row.

A record is a chat record when it lacks the response column and has the messages column.
Prompt, response and task are stripped of surrounding whitespace. Ids: the id column when present (text,
or an integer written as text), else `imp-` + 12 hex digits of a hash of (task, conversation, response):
stable across runs. Identical (conversation, response) pairs keep their first occurrence.
Errors name `path:line` (JSONL; CSV: the physical line where the record starts) or `path:row N` (Parquet,
0-based row index).
"""
from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import click

from duo.data import chat, openai_logs, records

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
FORMATS = sorted(set(SUFFIXES.values()))


@dataclass
class Mapping:
    prompt: str = "prompt"
    response: str = "response"
    task_col: str | None = None      # None: `task`, else `category` (the No Robots name)
    task: str | None = None          # one task for every row
    id_col: str = "id"
    messages: str = "messages"
    system: str = "keep"             # keep | prepend | drop
    batch_input: Path | None = None  # a batch-API input file: the requests of a batch output file
    task_optional: bool = False      # a row without a task gets None (duo review asks for one)


@dataclass
class Report:
    read: int = 0
    kept: int = 0
    duplicates: int = 0
    invalid: list[str] = field(default_factory=list)   # "where: reason"
    per_task: Counter = field(default_factory=Counter)
    chat_records: int = 0
    log_records: int = 0             # OpenAI request/response logs, batch output, duo traffic
    conversations: int = 0           # rows kept with their messages (system prompt or earlier turns)
    system_prepended: int = 0

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "duplicates": self.duplicates,
                "invalid": len(self.invalid), "invalid_rows": self.invalid, "per_task": dict(self.per_task),
                "chat_records": self.chat_records, "log_records": self.log_records,
                "conversations": self.conversations, "system_prepended": self.system_prepended}


RowError = openai_logs.RowError


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    if path.suffix.lower() not in SUFFIXES:
        raise click.ClickException(f"{path}: cannot tell the format from '{path.suffix}'; "
                                   f"pass --format ({', '.join(FORMATS)})")
    return SUFFIXES[path.suffix.lower()]


# --- readers: yield (where, record or RowError) -----------------------------------------------------

def _jsonl(path: Path, tick) -> Iterator[tuple[str, dict | RowError]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            tick(len(raw))
            try:
                obj = records.parse_line(raw, lineno == 1)
            except ValueError as exc:
                yield f"{path}:{lineno}", RowError(str(exc))
                continue
            if obj is not None:
                yield f"{path}:{lineno}", obj


def _csv(path: Path, tick) -> Iterator[tuple[str, dict | RowError]]:
    bad_lines: dict[int, str] = {}

    def lines():
        # Decode line by line so an encoding error names its physical line and spoils only its record.
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                tick(len(raw))
                try:
                    yield records.decode_line(raw, lineno == 1)
                except ValueError as exc:
                    bad_lines[lineno] = str(exc)
                    yield "\n"

    # Long passages (summarization) exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
    reader = csv.reader(lines(), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise records.DataError(f"{path}:1: header: {exc}") from None
    if 1 in bad_lines:
        raise records.DataError(f"{path}:1: header: {bad_lines[1]}")
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise records.DataError(f"{path}:1: header repeats column(s) {', '.join(dupes)}")
    end = reader.line_num
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            end = reader.line_num
            yield f"{path}:{start}", RowError(f"malformed CSV ({exc})")
            continue
        end = reader.line_num
        broken = [n for n in range(start, end + 1) if n in bad_lines]
        if broken:
            yield f"{path}:{broken[0]}", RowError(bad_lines[broken[0]])
        elif not fields:
            continue  # blank line
        elif len(fields) != len(header):
            yield f"{path}:{start}", RowError(f"{len(fields)} fields, the header has {len(header)}")
        else:
            yield f"{path}:{start}", dict(zip(header, fields))


def _parquet(path: Path, tick) -> Iterator[tuple[str, dict | RowError]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise records.DataError(f"{path}: not a readable Parquet file ({exc})") from None
    index = 0
    for batch in pf.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            tick(1)
            yield f"{path}:row {index}", row
            index += 1


def source(path: Path, fmt: str) -> tuple[int, str, Callable]:
    """(progress total, unit, reader(tick)) for a file."""
    if not path.is_file():
        raise click.ClickException(f"{path}: file not found")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            total = pq.ParquetFile(path).metadata.num_rows
        except Exception:
            total = None
        return total, "row", lambda tick: _parquet(path, tick)
    return path.stat().st_size, "B", lambda tick: (_jsonl if fmt == "jsonl" else _csv)(path, tick)


# --- one record -> one row ---------------------------------------------------------------------------

def _text(obj: dict, col: str, what: str) -> str:
    if col not in obj or obj[col] is None:
        raise RowError(f"no {what} (column '{col}'); columns here: {', '.join(map(str, obj)) or 'none'}")
    value = obj[col]
    if not isinstance(value, str):
        raise RowError(f"{what} (column '{col}') must be text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{what} (column '{col}') is empty")
    return value.strip()


def _chat(obj: dict, m: Mapping, report: Report) -> tuple[list[dict], str]:
    """(conversation, response) of a chat record: the last message is the assistant's answer."""
    messages = obj[m.messages]
    if not isinstance(messages, list) or not all(isinstance(x, dict) for x in messages):
        raise RowError(f"'{m.messages}' must be a list of {{\"role\", \"content\"}} objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg.get("content"), str):
            raise RowError(f"{m.messages}[{i}]: content must be text, got {type(msg.get('content')).__name__}")
    if not messages or messages[-1].get("role") != "assistant" or not messages[-1]["content"].strip():
        raise RowError(f"'{m.messages}' does not end with a (non-empty) assistant reply")
    conv = [{"role": x.get("role"), "content": x["content"].strip()} for x in messages[:-1]]
    system = [x["content"] for x in conv if x["role"] in ("system", "developer")]
    if system and m.system != "keep":
        conv = [x for x in conv if x["role"] not in ("system", "developer")]
        first_user = next((i for i, x in enumerate(conv) if x["role"] == "user"), None)
        if m.system == "prepend" and first_user is not None:
            joined = "\n\n".join([s for s in system if s] + [conv[first_user]["content"]])
            conv[first_user] = {"role": "user", "content": joined}
            report.system_prepended += 1
    why = chat.problem({"messages": conv})
    if why:
        raise RowError(f"'{m.messages}': {why}")
    report.chat_records += 1
    return conv, messages[-1]["content"].strip()


def to_row(obj: dict, m: Mapping, report: Report, batch: dict | None = None) -> dict:
    if openai_logs.kind(obj):
        conv, response = openai_logs.pair(obj, batch)
        report.log_records += 1
    elif m.response not in obj and m.messages in obj:
        conv, response = _chat(obj, m, report)
    else:
        conv = [{"role": "user", "content": _text(obj, m.prompt, "prompt")}]
        response = _text(obj, m.response, "response")
    fields = chat.fields(conv)
    report.conversations += "messages" in fields
    if m.task:
        task = m.task
    else:
        col = m.task_col or ("task" if "task" in obj else "category" if "category" in obj else "task")
        try:
            task = _text(obj, col, "task")
        except RowError as exc:
            if not m.task_optional:
                raise RowError(f"{exc} (or give every row one task with --task NAME)") from None
            task = None
    value = obj.get(m.id_col)
    if value is None or (isinstance(value, str) and not value.strip()):
        said = fields.get("prompt") or json.dumps(fields["messages"], ensure_ascii=False, sort_keys=True)
        digest = hashlib.sha256("\x1f".join((task or "", said, response)).encode()).hexdigest()
        row_id = f"imp-{digest[:12]}"
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        row_id = str(value).strip()
    else:
        raise RowError(f"id (column '{m.id_col}') must be text or an integer, got {type(value).__name__}")
    return {"id": row_id, "task": task, **fields, "response": response}


def run(path: Path, fmt: str, m: Mapping, *, skip_invalid: bool = False, bar=None) -> tuple[list[dict], Report]:
    """Read, map, validate and deduplicate; the first bad record raises DataError unless skip_invalid."""
    total, _, reader = source(path, fmt)
    report, rows = Report(), []
    pairs: set[bytes] = set()
    ids: dict[str, str] = {}
    tick = bar.update if bar is not None else (lambda n: None)
    batch = openai_logs.batch_inputs(m.batch_input) if m.batch_input else None
    for where, obj in reader(tick):
        report.read += 1
        try:
            if isinstance(obj, RowError):
                raise obj
            row = to_row(obj, m, report, batch)
            if row["id"] in ids:
                raise RowError(f"duplicate id {row['id']!r} (first at {ids[row['id']]})")
        except RowError as exc:
            if not skip_invalid:
                raise records.DataError(f"{where}: {exc}") from None
            report.invalid.append(f"{where}: {exc}")
            continue
        # A digest, not the texts: the set stays small for millions of rows.
        said = row.get("prompt") or json.dumps(row["messages"], ensure_ascii=False, sort_keys=True)
        key = hashlib.blake2b(f"{said}\x00{row['response']}".encode(), digest_size=16).digest()
        if key in pairs:
            report.duplicates += 1
            continue
        pairs.add(key)
        ids[row["id"]] = where
        rows.append(row)
        report.per_task[row["task"]] += 1
    report.kept = len(rows)
    return rows, report


def split_warnings(per_task: Counter, train_ratio: float) -> list[str]:
    """Tasks the prepare stage would refuse: it needs one train and one test row per task."""
    out = []
    for task, n in sorted(per_task.items()):
        n_test = max(1, round(n * (1.0 - train_ratio)))
        if n < 2 or n_test >= n:
            out.append(f"task '{task}' has {n} row(s): too few for a train/test split at coverage.train_ratio "
                       f"{train_ratio} (the prepare stage will stop); add rows or merge tasks")
    return out
