"""Chat-template families: which one a model's Jinja template belongs to, judged by what it renders, and
the Ollama Modelfile for it.

llama.cpp (llama-server, llama-cpp-python) and training both render the model's own Jinja template; only
Ollama needs a translation, into a Go template. Ollama passes every system message twice, inside
`.Messages` and joined into `.System`, prepends the Modelfile's SYSTEM as a system message only when a
request has none, and merges consecutive messages of one role (template/template.go `collate`,
server/routes.go ChatHandler). Each family's Go template below reads the system prompt from one of the
two only, so it appears once, never dropped, with history in order; tests/test_ollama_templates.py runs
them with Go's own text/template on what Ollama passes and compares with the Jinja rendering.

A template is a family's when it renders the PROBES exactly as the family's reference Jinja does (with the
few settings read off its rendering: a default system prompt, Llama 3.1's dated system header); anything
else is unknown: the Modelfile then has no TEMPLATE, with a warning saying why."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

SYSTEM, USER1, REPLY1, USER2 = "Answer in one word.", "Name a colour.", "Blue.", "Name a fruit.\nJust one."
PROBES = (  # with and without a system prompt, single- and multi-turn
    [{"role": "user", "content": USER1}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER1}],
    [{"role": "user", "content": USER1}, {"role": "assistant", "content": REPLY1}, {"role": "user", "content": USER2}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER1},
     {"role": "assistant", "content": REPLY1}, {"role": "user", "content": USER2}],
)


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    marker: str                       # a string the family's renderings contain (for the warning)
    turn_end: str                     # what closes a turn: a stop string
    reference: str                    # Jinja rendering exactly what the Go template renders
    go: Callable[[dict], str]         # settings -> Ollama's Go template
    settings: Callable[[str], dict] = lambda first: {}  # read off the rendering of PROBES[0]


def _default_system(first: str) -> dict:
    found = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", first, re.S)
    return {"default_system": found.group(1) if found else ""}


def _preamble(first: str) -> dict:
    """Llama 3.1+ always writes a system header ('Cutting Knowledge Date...'), the system prompt after it."""
    found = re.match(r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", first, re.S)
    return {"preamble": found.group(1) if found else None}


CHATML = Family(
    "chatml", "ChatML", "<|im_start|>", "<|im_end|>",
    "{%- if default_system and messages[0].role != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{% endif %}"
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    # the default system prompt is the Modelfile's SYSTEM: Ollama adds it as a message when none is sent
    lambda s: "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    _default_system)

LLAMA3 = Family(
    "llama3", "Llama 3", "<|start_header_id|>", "<|eot_id|>",
    "{%- if preamble is not none %}{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + preamble }}"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}{% set messages = messages[1:] %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endif %}"
    "{%- for m in messages %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    lambda s: (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        if s.get("preamble") is None else
        # the first message, if a system one, goes into the header; .System would add later ones too
        "<|start_header_id|>system<|end_header_id|>\n\n" + s["preamble"] +
        '{{ if eq (index .Messages 0).Role "system" }}{{ (index .Messages 0).Content }}{{ end }}<|eot_id|>'
        '{{- range $i, $_ := .Messages }}{{ if or $i (ne .Role "system") }}<|start_header_id|>{{ .Role }}'
        "<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}{{ end }}"
    ) + "<|start_header_id|>assistant<|end_header_id|>\n\n",
    _preamble)

GEMMA = Family(
    "gemma", "Gemma", "<start_of_turn>", "<end_of_turn>",
    # no system role: a system prompt opens the next user turn, as llama.cpp folds it (duo/data/chat.py)
    "{%- set ns = namespace(system='') %}{%- for m in messages %}"
    "{%- if m.role == 'system' %}{% set ns.system = m.content %}"
    "{%- elif m.role == 'user' %}{{ '<start_of_turn>user\\n' + (ns.system + '\\n' if ns.system else '') + m.content"
    " + '<end_of_turn>\\n' }}{% set ns.system = '' %}"
    "{%- elif m.role == 'assistant' %}{{ '<start_of_turn>model\\n' + m.content + '<end_of_turn>\\n' }}{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    lambda s: '{{- $system := "" }}{{- range .Messages }}'
              '{{- if eq .Role "system" }}{{ $system = .Content }}'
              '{{- else if eq .Role "user" }}<start_of_turn>user\n{{ if $system }}{{ $system }}\n{{ end }}'
              '{{- .Content }}<end_of_turn>\n{{ $system = "" }}'
              '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}'
              "{{- end }}<start_of_turn>model\n")

MISTRAL = Family(
    "mistral", "Mistral (v3-Tekken, Nemo)", "[INST]", "</s>",
    # the system prompt opens the last user message
    "{%- if messages[0].role == 'system' %}{% set system = messages[0].content %}{% set messages = messages[1:] %}"
    "{% endif %}{%- for m in messages %}{%- if m.role == 'user' %}"
    "{{ '[INST]' + (system + '\\n\\n' if system is defined and loop.last else '') + m.content + '[/INST]' }}"
    "{%- elif m.role == 'assistant' %}{{ m.content + eos_token }}{% endif %}{% endfor %}",
    lambda s: '{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST]'
              '{{ if and (eq (len (slice $.Messages $i)) 1) $.System }}{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]'
              '{{- else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{ end }}')

PHI3 = Family(
    "phi3", "Phi-3", "<|user|>", "<|end|>",
    "{%- for m in messages %}{%- if m.role == 'system' and m.content %}{{ '<|system|>\\n' + m.content + '<|end|>\\n' }}"
    "{%- elif m.role in ('user', 'assistant') %}{{ '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    lambda s: '{{- range .Messages }}{{ if and (eq .Role "system") .Content }}<|system|>\n{{ .Content }}<|end|>\n'
              '{{ else if eq .Role "user" "assistant" }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}'
              "<|assistant|>\n")

FAMILIES = (CHATML, LLAMA3, GEMMA, MISTRAL, PHI3)
NEEDLE = "<system needle>"


def render(chat_template: str, messages: list[dict], *, eos_token: str = "</s>", **variables) -> str:
    """The template rendered by transformers' own renderer (what training uses), with the generation prompt
    and BOS written as nothing: llama.cpp and Ollama add it as a token."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=chat_template, add_generation_prompt=True,
                                        bos_token="", eos_token=eos_token, **variables)
    return rendered[0]


def served(chat_template: str, messages: list[dict]) -> list[dict]:
    """The conversation llama.cpp renders for `messages` with this template (duo/data/chat.py decides)."""
    from duo.data import chat

    return chat.for_template(messages, chat_template)


@dataclass
class Match:
    family: Family | None
    settings: dict = field(default_factory=dict)
    reason: str | None = None          # why no family, for the warning

    @property
    def name(self) -> str | None:
        return self.family.name if self.family else None

    @property
    def go_template(self) -> str:
        return self.family.go(self.settings)


def _difference(ours: str, theirs: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"{ours[max(0, at - 20):at + 20]!r} where {theirs[max(0, at - 20):at + 20]!r} was expected"


def detect(chat_template: str, eos_token: str = "</s>") -> Match:
    """The family whose reference renders every probe exactly as `chat_template` does (as llama.cpp
    serves it), or Match(None, reason=...)."""
    from jinja2 import TemplateError

    try:
        rendered = [render(chat_template, served(chat_template, p), eos_token=eos_token) for p in PROBES]
    except (TemplateError, TypeError, ValueError) as exc:  # any failure of the template itself
        return Match(None, reason=f"the template does not render a plain conversation ({exc})")
    near = None
    for family in FAMILIES:
        settings = family.settings(rendered[0])
        expected = [render(family.reference, p, eos_token=eos_token, **settings) for p in PROBES]
        if expected == rendered:
            unsafe = [v for v in settings.values() if v and ("{{" in v or '"""' in v)]
            if not unsafe:
                return Match(family, settings)
        if near is None and family.marker in rendered[-1]:
            diff = next(_difference(r, e) for r, e in zip(rendered, expected) if r != e) if expected != rendered \
                else "its settings contain '{{' or '\"\"\"'"
            near = f"it uses {family.label}'s markers but renders differently: {diff}"
    return Match(None, reason=near or "it matches none of ChatML, Llama 3, Gemma, Mistral, Phi-3")


def modelfile(gguf_name: str, chat_template: str, end_tokens: list[str]) -> tuple[str, str | None]:
    """(Modelfile text, a warning or None). Stops: the tokenizer's end tokens and the family's turn end."""
    match = detect(chat_template, eos_token=end_tokens[0] if end_tokens else "</s>")
    lines = [f"FROM ./{gguf_name}"]
    ends = [t for t in end_tokens if t]
    warning = None
    if match.family is None:
        warning = (f"the chat template belongs to no family duo can translate for Ollama: {match.reason}. The "
                   f"Modelfile has no TEMPLATE, so Ollama picks the nearest of its own built-in templates (or "
                   f"none); llama.cpp (duo serve, llama-cli) renders the GGUF's own template exactly")
    else:
        lines.append(f'TEMPLATE """{match.go_template}"""')
        if match.settings.get("default_system"):
            lines.append(f'SYSTEM """{match.settings["default_system"]}"""')
        ends = [match.family.turn_end, *ends]
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(ends)]
    return "\n".join(lines) + "\n", warning
