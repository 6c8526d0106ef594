"""How a provider failure is read: retried, truncated, fatal, or a stop (budget, quota); and keys
scrubbed from anything we print or store."""
from __future__ import annotations

import json
import os
import re
import time

import click

EXIT_STOPPED = 75  # EX_TEMPFAIL: budget or quota; rerun later, nothing done so far is lost
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
FATAL_STATUS = {401, 403, 404}


class ServiceStop(click.ClickException):
    """Budget or provider quota exhausted: stop starting calls, keep everything done."""
    exit_code = EXIT_STOPPED

    def show(self, file=None) -> None:
        # A stage's stop reaches `make cycle` through `dvc exp run`, which turns every stage failure into
        # its own exit code: the note lets the cycle runner say why and exit 75 too.
        from duo.service.journal import stop_note

        super().show(file)
        try:
            stop_note().parent.mkdir(parents=True, exist_ok=True)
            stop_note().write_text(json.dumps({"message": self.message, "time": time.time()}) + "\n")
        except OSError:
            pass  # the message above is what matters; a full disk must not hide it


class ServiceFatal(click.ClickException):
    """An error every further call would repeat (bad key, no permission, unknown model)."""


def scrub(text: str) -> str:
    """Remove anything that looks like a credential, and the values of key variables we know."""
    for name, value in os.environ.items():
        if value and len(value) >= 8 and any(t in name.upper() for t in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
            text = text.replace(value, "***")
    return _KEY_PATTERN.sub("***", text)


def status(exc: Exception) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def retry_after(exc: Exception) -> float | None:
    for headers in (getattr(exc, "headers", None), getattr(exc, "litellm_response_headers", None),
                    getattr(getattr(exc, "response", None), "headers", None)):
        try:
            value = headers.get("retry-after") or headers.get("Retry-After") if headers else None
        except AttributeError:
            value = None
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def is_quota(exc: Exception) -> bool:
    text = str(exc).lower()
    return status(exc) == 429 and ("insufficient_quota" in text or "exceeded your current quota" in text)


def classify(exc: Exception, spec: str) -> str:
    """'retry', 'overflow' or 'fail'; raises ServiceStop / ServiceFatal for errors that end the stage."""
    name, code = type(exc).__name__, status(exc)
    text = str(exc).lower()
    if name == "ContextWindowExceededError" or (code == 400 and any(
            t in text for t in ("context length", "context window", "too many tokens", "exceed_context"))):
        return "overflow"
    if is_quota(exc):
        raise ServiceStop(f"provider quota exhausted ({scrub(str(exc))[:200]}); work so far is kept; rerun later")
    if code in FATAL_STATUS or name in ("AuthenticationError", "PermissionDeniedError", "NotFoundError"):
        raise ServiceFatal(f"service {spec}: {scrub(f'{name}: {exc}')[:400]}")
    return "retry" if transient(exc) else "fail"


def transient(exc: Exception) -> bool:
    """An error the same request may not meet again: rate limits (not an exhausted quota), timeouts,
    connection errors, 5xx."""
    return not is_quota(exc) and (status(exc) in RETRY_STATUS or type(exc).__name__ in (
        "Timeout", "APIConnectionError", "RateLimitError", "InternalServerError", "ServiceUnavailableError"))


def truncate(messages: list) -> list:
    """Cut the middle of the longest message to half its length (head and tail carry the task)."""
    longest = max(range(len(messages)), key=lambda i: len(str(messages[i].get("content", ""))))
    text = str(messages[longest]["content"])
    keep = len(text) // 4
    out = [dict(m) for m in messages]
    out[longest]["content"] = text[:keep] + "\n[...]\n" + text[-keep:]
    return out
