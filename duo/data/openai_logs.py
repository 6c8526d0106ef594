"""OpenAI chat-completions logs as (conversation, answer) pairs for `duo import` and `duo review`.

Understood layouts (one JSON object per line):
- request/response pairs, as an app or a gateway logs them: `{"request": BODY, "response": BODY}`, where
  each may also be wrapped as `{"body": BODY}` (and the response may carry `status_code`);
- batch-API output files: `{"custom_id", "response": {"status_code", "body"}, "error"}`; the messages are
  in the batch *input* file (`{"custom_id", "body": {"messages", ...}}`), joined on custom_id;
- duo's own traffic (data/traffic/*.jsonl, written by `duo record`): `{"messages", "reply", "error"}`.
The conversation is the request's messages as sent (system prompt and history); the answer is the first
choice's assistant text. A failed call, a reply without text (tool calls only) or a conversation that
does not end with a user turn is not a pair: RowError says why.
"""
from __future__ import annotations

from pathlib import Path

from duo.data import chat, records


class RowError(ValueError):
    """One record is unusable; the reason, without the location."""


def kind(obj: dict) -> str | None:
    """Which log layout a record is in, or None (not a log record)."""
    if isinstance(obj.get("messages"), list) and "reply" in obj:
        return "traffic"
    if isinstance(obj.get("request"), dict) and isinstance(obj.get("response"), dict):
        return "pair"
    if "custom_id" in obj and isinstance(obj.get("response"), (dict, type(None))):
        return "batch"
    return None


def _body(part: dict) -> dict:
    return part["body"] if isinstance(part.get("body"), dict) else part


def _answer(response: dict) -> str:
    status = response.get("status_code", 200)
    body = _body(response)
    if status != 200 or body.get("error"):
        error = body.get("error") or {}
        message = error.get("message") if isinstance(error, dict) else error
        raise RowError(f"the logged call failed (status {status}: {str(message or '')[:120]})")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RowError("the response holds no choices")
    return _text((choices[0].get("message") or {}).get("content"))


def _text(content) -> str:
    if isinstance(content, list):  # content parts: the text ones, joined
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str) or not content.strip():
        raise RowError("the reply holds no text (a tool call, or empty)")
    return content.strip()


def conversation(msgs) -> list[dict]:
    """The request's messages as row messages (content parts flattened to their text); checked."""
    if not isinstance(msgs, list) or not msgs:
        raise RowError("the request holds no messages")
    out = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise RowError(f"messages[{i}] must be an object")
        try:
            out.append({"role": msg.get("role"), "content": _text(msg.get("content"))})
        except RowError:
            raise RowError(f"messages[{i}] ({msg.get('role')}) holds no text") from None
    why = chat.problem({"messages": out})
    if why:
        raise RowError(why)
    return out


def pair(obj: dict, batch_inputs: dict[str, dict] | None = None) -> tuple[list[dict], str]:
    """(conversation, answer) of one log record."""
    found = kind(obj)
    if found == "traffic":
        if obj.get("error"):
            raise RowError(f"the recorded call failed ({obj['error'].get('message', '')[:120]})")
        return conversation(obj["messages"]), _text((obj.get("reply") or {}).get("content"))
    if found == "pair":
        return conversation(_body(obj["request"]).get("messages")), _answer(obj["response"])
    if found == "batch":
        if obj.get("error") or obj.get("response") is None:
            raise RowError(f"the batch request failed ({str(obj.get('error'))[:120]})")
        if batch_inputs is None:
            raise RowError("a batch output line holds no messages: pass the batch input file with --batch-input")
        request = batch_inputs.get(obj["custom_id"])
        if request is None:
            raise RowError(f"custom_id {obj['custom_id']!r} is not in the batch input file")
        return conversation(request.get("messages")), _answer(obj["response"])
    raise RowError("not an OpenAI log record")


def batch_inputs(path: Path) -> dict[str, dict]:
    """custom_id -> request body of a batch input file (bad lines stop with path:line)."""
    out: dict[str, dict] = {}
    for lineno, obj in records.iter_jsonl(path):
        if not isinstance(obj.get("custom_id"), str) or not isinstance(obj.get("body"), dict):
            raise records.DataError(f"{path}:{lineno}: a batch input line needs 'custom_id' and 'body'")
        out[obj["custom_id"]] = obj["body"]
    return out
