"""What the teacher is asked for each seed, and how its reply is read."""
from __future__ import annotations

from duo import contracts, prompts
from duo.data import chat
from duo.replies import json_objects
from duo.service import Request

TOPICS = {"summarization": "concise, faithful summaries of passages",
          "classification": "text classification with a fixed label set",
          "coding": "short, correct programming solutions",
          "closed_qa": "answering questions from a given passage only"}


def schema(n: int) -> dict:
    pair = {"type": "object", "properties": {"instruction": {"type": "string", "minLength": 1},
                                             "response": {"type": "string", "minLength": 1}},
            "required": ["instruction", "response"]}
    return {"type": "object", "properties": {"contents": {"type": "array", "items": pair,
                                                          "minItems": 1, "maxItems": n}},
            "required": ["contents"]}


def request_for(seed_row: dict, p, structured: bool, cycle: int, draw: int) -> Request:
    """Draw `draw` of cycle `cycle`: its own seed (the provider samples anew even for a seed row an
    earlier cycle or pass used) and its own tag (journal replays stay within the cycle's own draws)."""
    name = "synth_summarization.txt" if seed_row["task"] == "summarization" else "synth.txt"
    topic = TOPICS.get(seed_row["task"], seed_row["task"].replace("_", " "))
    text = prompts.render(name, instruction=chat.transcript(seed_row), response=seed_row["response"], topic=topic,
                          n=str(p.pairs_per_request))
    fmt = {"type": "json_object", "schema": schema(p.pairs_per_request)} if structured else {"type": "json_object"}
    return Request(messages=[{"role": "user", "content": text}], temperature=p.temperature,
                   max_tokens=p.max_tokens, seed=contracts.derived_seed(p.seed, "synth", cycle, draw),
                   response_format=fmt, tag=f"synth:c{cycle}:d{draw}")


def parse_pairs(text: str | None) -> list[dict]:
    """The `contents` list of a reply, tolerating code fences and prose around the JSON."""
    if not text:
        return []
    for obj in json_objects(text):
        if isinstance(obj.get("contents"), list):
            return [c for c in obj["contents"] if isinstance(c, dict)
                    and isinstance(c.get("instruction"), str) and isinstance(c.get("response"), str)
                    and c["instruction"].strip() and c["response"].strip()]
    return []
