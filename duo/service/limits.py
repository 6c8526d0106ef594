"""Requests- and tokens-per-minute limits: sliding one-minute windows, 0 = no limit."""
from __future__ import annotations

import asyncio
import time
from collections import deque


class RateLimiter:
    def __init__(self, rpm: int, tpm: int):
        self.rpm, self.tpm = rpm, tpm
        self.events: deque[tuple[float, int]] = deque()
        self.used = 0  # tokens inside the window

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        while True:
            now = time.monotonic()
            while self.events and now - self.events[0][0] >= 60.0:
                self.used -= self.events.popleft()[1]
            if (not self.rpm or len(self.events) < self.rpm) and \
                    (not self.tpm or not self.events or self.used + tokens <= self.tpm):
                self.events.append((now, tokens))
                self.used += tokens
                return
            await asyncio.sleep(max(0.01, 60.0 - (now - self.events[0][0])))
