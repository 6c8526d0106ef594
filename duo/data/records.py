"""JSONL and JSON files: strict reading with `path:line: reason`, atomic writing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import click


def _umask() -> int:
    """The process umask, read without setting it (os.umask can only set it, and a set-and-restore
    would race with threads creating files meanwhile)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DataError(click.ClickException):
    """A user's data file is wrong; the message names the file and line."""


def _fail(path: Path, line: int | None, reason: str) -> DataError:
    where = f"{path}:{line}" if line else f"{path}"
    return DataError(f"{where}: {reason}")


def _too_long(fh, path: Path, lineno: int, head: bytes, max_bytes: int, what: str) -> DataError:
    size = len(head)
    while not head.endswith(b"\n"):  # count the rest of the line without holding it
        head = fh.readline(1 << 20)
        if not head:
            break
        size += len(head)
    size -= len(head) - len(head.rstrip(b"\r\n"))
    return _fail(path, lineno, f"record is {size:,} bytes, over {what} = {max_bytes:,}; shorten or drop it")


def decode_line(raw: bytes, first: bool) -> str:
    """One raw line as text; ValueError(reason) for NUL bytes or bad UTF-8."""
    if first and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a BOM is an editor's habit, not a data error
    if b"\x00" in raw:
        raise ValueError("NUL byte in line (binary or corrupt file?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None


def parse_line(raw: bytes, first: bool = False) -> dict | None:
    """One JSONL line -> its object, None when blank; ValueError(reason) when it is not an object."""
    text = decode_line(raw, first).rstrip("\r\n")
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (truncated last line?)" if not raw.endswith(b"\n") else ""
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}{hint}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def iter_jsonl(path: str | Path, *, max_bytes: int | None = None, what: str = "the record size limit",
               offsets: bool = False) -> Iterator[tuple]:
    """Yield (line number, object) for each non-blank line, one line in memory at a time; with
    `offsets`, (line number, byte offset, object). Bad lines raise DataError naming path and line;
    a line over `max_bytes` is refused without being read whole."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, None, "file not found")
    with open(path, "rb") as fh:
        lineno, offset = 0, 0
        while True:
            raw = fh.readline(max_bytes + 2) if max_bytes else fh.readline()
            if not raw:
                break
            lineno, start = lineno + 1, offset
            offset += len(raw)
            if max_bytes and len(raw.rstrip(b"\r\n")) > max_bytes:
                raise _too_long(fh, path, lineno, raw, max_bytes, what)
            try:
                obj = parse_line(raw, lineno == 1)
            except ValueError as exc:
                raise _fail(path, lineno, str(exc)) from None
            if obj is not None:
                yield (lineno, start, obj) if offsets else (lineno, obj)


def iter_records(path: str | Path, fields: dict[str, type], *, unique: str | None = None,
                 allow_empty: bool = False, allow_blank: bool = False, max_bytes: int | None = None,
                 what: str = "the record size limit", check=None) -> Iterator[tuple[int, int, dict]]:
    """Stream (line number, byte offset, record) of a JSONL file whose objects must hold `fields`
    with the given types (extra keys are kept) and pass `check(record)` (a reason, or None). Memory:
    one line, plus the ids seen if `unique`."""
    path = Path(path)
    seen: dict = {}
    count = 0
    for lineno, offset, obj in iter_jsonl(path, max_bytes=max_bytes, what=what, offsets=True):
        for name, typ in fields.items():
            if name not in obj:
                raise _fail(path, lineno, f"missing field '{name}'")
            value = obj[name]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise _fail(path, lineno, f"field '{name}' must be {typ.__name__}, got {type(value).__name__}")
            if typ is str and not value.strip() and not allow_blank:
                raise _fail(path, lineno, f"field '{name}' is empty")
        reason = check(obj) if check else None
        if reason:
            raise _fail(path, lineno, reason)
        if unique:
            key = obj[unique]
            if key in seen:
                raise _fail(path, lineno, f"duplicate {unique} {key!r} (first on line {seen[key]})")
            seen[key] = lineno
        count += 1
        yield lineno, offset, obj
    if not count and not allow_empty:
        raise _fail(path, None, "no records (empty file)")


def read_records(path: str | Path, fields: dict[str, type], *, unique: str | None = None,
                 allow_empty: bool = False, allow_blank: bool = False, max_bytes: int | None = None,
                 what: str = "the record size limit", check=None) -> list[dict]:
    """Read a JSONL file whose objects must hold `fields` with the given types (extra keys are kept)."""
    return [obj for _, _, obj in iter_records(path, fields, unique=unique, allow_empty=allow_empty,
                                              allow_blank=allow_blank, max_bytes=max_bytes, what=what, check=check)]


def read_at(path: str | Path, offsets: Iterable[int]) -> Iterator[dict]:
    """The objects starting at these byte offsets (from iter_records), in the order given."""
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(offset)
            raw = fh.readline()
            yield json.loads(raw[3:] if offset == 0 and raw.startswith(b"\xef\xbb\xbf") else raw)


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not exc.filename:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # name the file (disk full)
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


def replace_dir(new: str | Path, dest: str | Path) -> None:
    """Publish the finished folder `new` as `dest`: the old `dest` is moved aside, not deleted,
    until the new one is in place, so a crash at any point leaves a complete version on disk."""
    new, dest = Path(new), Path(dest)
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.rename(dest, old / dest.name)
    try:
        os.rename(new, dest)
    except BaseException:
        if old is not None:
            os.rename(old / dest.name, dest)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def copy_file(src: str | Path, dest: str | Path) -> None:
    """Copy to a temp file beside `dest`, fsync, rename: `dest` is the old file or the whole new one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(data), binary=True)


def file_sha256(path: str | Path, algorithm: str = "sha256") -> str:
    """A file's digest, read in 1 MiB blocks (GGUFs and checkpoints do not fit comfortably in memory);
    md5 is what DVC's cache names a file by."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
