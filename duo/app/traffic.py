"""The app's recorded traffic, `data/traffic/<date>.jsonl` (UTC date of the request): one exchange per
line, written by `duo record`, read by `duo review` and `duo import`.

An exchange: `{"id", "at", "messages", "params", "stream", "requested_model", "model", "reply",
"finish_reason", "usage", "cost_usd", "latency_ms", "status", "error"}`: the messages as the app sent
them (system prompt and history), its parameters (less anything named like a credential), the reply
message (`{"role": "assistant", "content", ...}`, null on error), the model that answered, the
provider's usage, the latency of the provider call(s) in ms, and the error (`{"status", "message"}`) or
null. No header is ever recorded, so no key is either (neither the provider's nor the app's).

Durability: each line is appended with one write(2) on an O_APPEND descriptor *before* the app gets its
reply, so a kill -9 of the recorder loses no exchange the app saw finish; a background thread fsyncs
what was appended (one fsync per burst: an fsync costs ~4 ms here, which would otherwise be added to
every request), so a power loss costs at most the last moments. A line torn by a crash mid-write (no
newline at the end of a file) is skipped by the reader and closed by the next writer.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import orjson

TRAFFIC_DIR = Path("data/traffic")


def file_for(directory: Path, at: float) -> Path:
    return directory / f"{time.strftime('%Y-%m-%d', time.gmtime(at))}.jsonl"


class TrafficLog:
    """Appends exchanges; `close` fsyncs the rest. Safe to call `append` from any thread."""

    def __init__(self, directory: str | Path = TRAFFIC_DIR):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fds: dict[Path, int] = {}
        self._dirty: set[int] = set()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self.appended = 0
        self.synced = 0
        self._syncer = threading.Thread(target=self._sync_loop, name="duo-traffic-fsync", daemon=True)
        self._syncer.start()

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        os.write(fd, b"\n")  # close a line torn by a crash: the next one stays whole
            for old in [p for p in self._fds if p != path]:  # a new day: yesterday's file is done
                old_fd = self._fds.pop(old)
                os.fsync(old_fd)
                os.close(old_fd)
                self._dirty.discard(old_fd)
            self._fds[path] = fd
        return fd

    def append(self, exchange: dict, at: float | None = None) -> Path:
        """Write one exchange (to the file of the day `at`, a time.time(), falls on)."""
        data = orjson.dumps(exchange) + b"\n"
        path = file_for(self.directory, time.time() if at is None else at)
        with self._lock:
            fd = self._fd(path)
            view = memoryview(data)
            while view:  # one write(2) in practice; a short write is continued, never interleaved
                view = view[os.write(fd, view):]
            self.appended += 1
            self._dirty.add(fd)
            self._wake.notify()
        return path

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while not self._dirty and not self._closed:
                    self._wake.wait()
                if not self._dirty and self._closed:
                    return
                fds, self._dirty = set(self._dirty), set()
                count = self.appended
            for fd in fds:
                try:
                    os.fsync(fd)
                except OSError:
                    pass  # closed by a date change meanwhile (it was fsync'd there)
            with self._lock:
                self.synced = max(self.synced, count)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._syncer.join()
        with self._lock:
            for fd in self._fds.values():
                os.fsync(fd)
                os.close(fd)
            self._fds.clear()


def read(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, exchange) of a traffic file; a line torn by a crash (unterminated, or not an
    object) is skipped, as it was never a finished exchange."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                break
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                yield lineno, obj


def files(directory: str | Path = TRAFFIC_DIR) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob("*.jsonl")) if directory.exists() else []
