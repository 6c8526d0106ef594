"""JSONL and JSON files: strict reading with `path:line: reason`, atomic writing."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import click


_UMASK = os.umask(0)
os.umask(_UMASK)


# The row contract of coverage, train, test and synthetic files.
ROW_FIELDS = {"id": str, "task": str, "prompt": str, "response": str}


class DataError(click.ClickException):
    """A user's data file is wrong; the message names the file and line."""


def _fail(path: Path, line: int | None, reason: str) -> DataError:
    where = f"{path}:{line}" if line else f"{path}"
    return DataError(f"{where}: {reason}")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; bad lines raise DataError."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, None, "file not found")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a BOM is an editor's habit, not a data error
            if b"\x00" in raw:
                raise _fail(path, lineno, "NUL byte in line (binary or corrupt file?)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _fail(path, lineno, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                hint = " (truncated last line?)" if not raw.endswith(b"\n") else ""
                raise _fail(path, lineno, f"invalid JSON: {exc.msg} at column {exc.colno}{hint}") from None
            if not isinstance(obj, dict):
                raise _fail(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_records(path: str | Path, fields: dict[str, type], *, unique: str | None = None,
                 allow_empty: bool = False, allow_blank: bool = False) -> list[dict]:
    """Read a JSONL file whose objects must hold `fields` with the given types (extra keys are kept)."""
    path = Path(path)
    rows, seen = [], {}
    for lineno, obj in iter_jsonl(path):
        for name, typ in fields.items():
            if name not in obj:
                raise _fail(path, lineno, f"missing field '{name}'")
            value = obj[name]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise _fail(path, lineno, f"field '{name}' must be {typ.__name__}, got {type(value).__name__}")
            if typ is str and not value.strip() and not allow_blank:
                raise _fail(path, lineno, f"field '{name}' is empty")
        if unique:
            key = obj[unique]
            if key in seen:
                raise _fail(path, lineno, f"duplicate {unique} {key!r} (first on line {seen[key]})")
            seen[key] = lineno
        rows.append(obj)
    if not rows and not allow_empty:
        raise _fail(path, None, "no records (empty file)")
    return rows


def _atomic_write(path: Path, write, binary: bool = False) -> None:
    # Temp file in the same directory, fsync, then rename: readers see the old file or the
    # whole new one, never a half-written one.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    count = 0

    def write(fh):
        nonlocal count
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1

    _atomic_write(Path(path), write)
    return count


def write_json(path: str | Path, obj: Any) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n"))


def write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(data), binary=True)


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
