"""What a row says to the model: the one place where rows become chat messages.

A coverage row is `{"id", "task", "prompt", "response"}` (one user turn) or `{"id", "task", "messages",
"response"}`: `messages` is the conversation the app sent (system prompt, earlier turns, the final user
turn; OpenAI roles) and `response` the final assistant answer. After prepare every row also carries
`prompt`, the final user turn's text (what curation, reports and reference metrics read); `messages`,
where present, is what the model is trained on, asked, judged and served with.

Finetune, infer (both backends), the judge, P-Match, the export's perplexity check and synthesis all
call `messages(row)`; anything that renders a chat template first calls `for_template`, which does what
llama.cpp's server does to the same request (so training, inference and `make serve` see one prompt):
a `developer` message becomes `system`, and a template without a system role (one that never uses the
system message it is given) gets the system text merged into the next message with a newline, or
dropped when it is alone (llama.cpp common/chat.cpp, `system_message_not_supported`).
"""
from __future__ import annotations

import functools

ROLES = ("system", "developer", "user", "assistant")


def problem(row: dict) -> str | None:
    """Why a row's conversation is unusable (None: it is fine). With both `prompt` and `messages`, the
    prompt must be the final user turn."""
    msgs = row.get("messages")
    prompt = row.get("prompt")
    if msgs is None:
        if "prompt" not in row:
            return "missing field 'prompt' (or 'messages')"
        if not isinstance(prompt, str):
            return f"field 'prompt' must be str, got {type(prompt).__name__}"
        return None if prompt.strip() else "field 'prompt' is empty"
    if not isinstance(msgs, list) or not msgs:
        return "field 'messages' must be a non-empty list of {\"role\", \"content\"} objects"
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            return f"messages[{i}] must be an object, got {type(msg).__name__}"
        if msg.get("role") not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}; got {msg.get('role')!r}"
        if not isinstance(msg.get("content"), str):
            return f"messages[{i}].content must be text, got {type(msg.get('content')).__name__}"
    if msgs[-1]["role"] != "user":
        return f"messages must end with the user turn that 'response' answers, not a '{msgs[-1]['role']}' message"
    if not msgs[-1]["content"].strip():
        return "the final user message is empty"
    if prompt is not None and prompt != msgs[-1]["content"]:
        return "field 'prompt' differs from the final user message (give one of them, or the same text)"
    return None


def read_coverage(path) -> list[dict]:
    """Coverage rows (`prompt` or `messages`), checked line by line as the prepare stage checks them."""
    from duo import contracts
    from duo.data import records

    return records.read_records(path, contracts.COVERAGE_FIELDS, unique="id", check=problem)


def messages(row: dict) -> list[dict]:
    """The conversation up to the final answer: the row's messages, or its prompt as one user turn."""
    if row.get("messages"):
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return [{"role": "user", "content": row["prompt"]}]


def conversation(row: dict, template: str | None = None) -> dict:
    """TRL's prompt/completion conversation of a row: the loss falls on the completion (the final answer)."""
    prompt = messages(row)
    return {"prompt": for_template(prompt, template) if template else prompt,
            "completion": [{"role": "assistant", "content": row["response"]}]}


def tokenized(tokenizer, row: dict) -> dict:
    """A training example (`input_ids`, `completion_mask`) of a row, as the served student meets it: the
    prompt's tokens exactly as the server tokenizes the rendered prompt, then the answer's own tokens
    (generated after the prompt, so tokenized on their own). Tokenizing prompt and answer together, as
    TRL does, lets a tokenizer merge across the boundary (Llama 3's "\n\n" before a word, with a GPT-2
    style tokenizer): the prompt trained on would then end in other tokens than the one served. A
    template that renders the prompt differently once answered gets TRL's way: the common prefix."""
    conv = conversation(row, tokenizer.chat_template)
    prompt = tokenizer.apply_chat_template(conv["prompt"], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(conv["prompt"] + conv["completion"], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if full.startswith(prompt):
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    else:
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), min(len(prompt_ids), len(full_ids)))
        prompt_ids, answer_ids = full_ids[:n], full_ids[n:]
    return {"input_ids": list(prompt_ids) + list(answer_ids),
            "completion_mask": [0] * len(prompt_ids) + [1] * len(answer_ids)}


def with_prompt(row: dict) -> dict:
    """The row with `prompt` set to its final user turn (rows that carry only messages)."""
    if "prompt" in row or not row.get("messages"):
        return row
    return {**row, "prompt": row["messages"][-1]["content"]}


def fields(conv: list[dict]) -> dict:
    """Row fields for a conversation that ends with the user turn: a lone user turn stays a `prompt`."""
    if len(conv) == 1 and conv[0]["role"] == "user":
        return {"prompt": conv[0]["content"]}
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in conv]}


def context(row: dict) -> list[dict]:
    """What comes before the final user turn (system prompt, earlier turns); [] for a one-turn row."""
    return messages(row)[:-1]


def context_of(row: dict) -> dict:
    """`{"messages": ...}` for a conversation row, {} for a one-turn row: what a prediction row carries
    along so that the judge sees the context."""
    return {"messages": row["messages"]} if row.get("messages") else {}


FINAL = "[Final user message]"


def like(seed: dict, instruction: str) -> dict:
    """Row fields of a new conversation shaped like `seed`'s: its system prompt and earlier turns
    verbatim, `instruction` as the final user turn (a teacher that copied the transcript's labels from
    `transcript(seed)` has them cut off)."""
    if FINAL in instruction:
        instruction = instruction.rsplit(FINAL, 1)[1].strip() or instruction
    return {"prompt": instruction, **fields(context(seed) + [{"role": "user", "content": instruction}])}


def transcript(row: dict) -> str:
    """The conversation as plain text for a judge or a teacher: the context, labelled, then the final
    user message; a one-turn row is just its prompt."""
    conv = messages(row)
    if len(conv) == 1:
        return conv[0]["content"]
    labels = {"system": "System prompt", "developer": "System prompt", "user": "User", "assistant": "Assistant"}
    parts = [f"[{labels[m['role']]}]\n{m['content']}" for m in conv[:-1]]
    return "\n\n".join(parts + [f"{FINAL}\n{conv[-1]['content']}"])


def for_template(conv: list[dict], template: str | None) -> list[dict]:
    """The messages as llama.cpp's server passes them to this chat template (see the module docstring)."""
    conv = [{**m, "role": "system"} if m["role"] == "developer" else m for m in conv]
    if not template or has_system_role(template) or not conv or conv[0]["role"] != "system":
        return conv
    if len(conv) == 1:
        return []
    merged = {**conv[1], "content": conv[0]["content"] + "\n" + conv[1]["content"]}
    return [merged] + conv[2:]


@functools.lru_cache(maxsize=64)
def has_system_role(template: str) -> bool:
    """Whether the template uses a system message it is given (llama.cpp's capability probe: render a
    system and a user turn; a template that fails on it, or leaves the system text out, has none).
    Plain Jinja as llama.cpp renders it; a template with transformers' own tags ({% generation %}) is
    rendered by transformers' renderer instead."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: "26 Jul 2024")
    marker = "duo-system-probe-7f3a"
    user = {"role": "user", "content": "User message"}

    def render(msgs: list[dict]) -> str:
        try:
            compiled = env.from_string(template)
        except jinja2.TemplateSyntaxError:
            from transformers.utils.chat_template_utils import render_jinja_template

            return render_jinja_template([msgs], chat_template=template, add_generation_prompt=True, bos_token="",
                                         eos_token="")[0][0]
        return compiled.render(messages=msgs, add_generation_prompt=True, bos_token="", eos_token="")

    try:
        return marker in render([{"role": "system", "content": marker}, user])
    except Exception:
        try:
            render([user])
        except Exception:  # fails here even without a system turn: not ours to judge, left as it is
            return True
        return False  # refuses a system turn (raise_exception)
