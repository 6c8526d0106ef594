"""JSON out of a model's reply, with bounded repair and never evaluation.

JSON out of a model's reply: the reply itself, a fenced block, or objects embedded in prose, with
bounded repair (trailing commas, single quotes) and never evaluation. The judge's scores and the
teacher's pairs are both read this way."""
from __future__ import annotations

import ast
import json
import re


def _objects(text: str):
    """Every top-level {...} JSON object in the text, last first: a judge's verdict comes after
    any text it echoes."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            _, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        found.append(text[i:end])
        i = end
    return reversed(found)


def _candidates(text: str):
    """The reply itself, then the body of a code fence, then each embedded object, last first."""
    yield text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        yield fence.group(1).strip()
    yield from _objects(text)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        yield text[start:end + 1]


def _load(candidate: str):
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    repaired = re.sub(r",\s*([}\]])", r"\1", candidate)  # trailing commas
    try:
        return json.loads(repaired)
    except json.JSONDecodeError:
        pass
    try:  # single quotes: a Python literal, parsed safely (no evaluation)
        return ast.literal_eval(repaired)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def json_objects(text: str):
    """Each JSON object a model reply can soundly be read as, best candidate first (the reply
    itself, a fenced block, embedded objects last-first), after bounded repair."""
    for candidate in _candidates(text):
        obj = _load(candidate)
        if isinstance(obj, dict):
            yield obj
