"""Chat-template families: which one a model's Jinja template belongs to, and the Ollama Modelfile for it
(a Go template per known family, stop strings from the tokenizer's end tokens and the family's turn end).
An unknown family gets a Modelfile without TEMPLATE, so Ollama uses the template the GGUF carries.

llama.cpp (llama-server, llama-cli) and training both render the model's own Jinja template; only
Ollama needs this translation."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    marker: str            # a string only this family's template contains
    turn_end: str          # what closes a turn
    go_template: str       # Ollama's Go template
    system_role: bool      # False: a system prompt is merged into the first user turn by the template


CHATML = Family("chatml", "<|im_start|>", "<|im_end|>", (
    '{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
    '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'), True)
LLAMA3 = Family("llama3", "<|start_header_id|>", "<|eot_id|>", (
    '{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}'
    '{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}'
    '<|start_header_id|>assistant<|end_header_id|>\n\n'), True)
GEMMA = Family("gemma", "<start_of_turn>", "<end_of_turn>", (
    '{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}<start_of_turn>user\n'
    '{{ if and (eq $i 0) $.System }}{{ $.System }}\n\n{{ end }}{{ .Content }}<end_of_turn>\n'
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}'
    '<start_of_turn>model\n'), False)
MISTRAL = Family("mistral", "[INST]", "</s>", (
    '{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST] '
    '{{ if and (eq $i 0) $.System }}{{ $.System }}\n\n{{ end }}{{ .Content }} [/INST]'
    '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{ end }}'), False)
PHI3 = Family("phi3", "<|user|>", "<|end|>", (
    '{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}'
    '{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n'), True)
FAMILIES = (LLAMA3, GEMMA, PHI3, CHATML, MISTRAL)  # most specific marker first


def render(chat_template: str) -> str:
    """The template rendered for a system and a user turn with the generation prompt: templates build
    their markers from pieces ('<|' + role + '|>'), so the markers are looked for in what they render."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    try:
        return env.from_string(chat_template).render(messages=messages, add_generation_prompt=True,
                                                     bos_token="", eos_token="")
    except TemplateError:  # a template that refuses a system turn
        try:
            return env.from_string(chat_template).render(messages=messages[1:], add_generation_prompt=True,
                                                         bos_token="", eos_token="")
        except TemplateError:
            return ""


def detect(chat_template: str) -> Family | None:
    text = render(chat_template) + chat_template
    return next((f for f in FAMILIES if f.marker in text), None)


def default_system(chat_template: str, family: Family) -> str | None:
    """A system prompt the template inserts when none is given (SmolLM2's ChatML does)."""
    if family is CHATML:
        found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", chat_template, re.S)
        return found.group(1) if found else None
    return None


def modelfile(gguf_name: str, chat_template: str, end_tokens: list[str]) -> tuple[str, str | None]:
    """(Modelfile text, a warning or None). Stops: the tokenizer's end tokens and the family's turn end."""
    family = detect(chat_template)
    lines = [f"FROM ./{gguf_name}"]
    warning = None
    if family is None:
        warning = ("the chat template belongs to no family duo knows (ChatML, Llama 3, Gemma, Mistral, Phi-3): "
                   "the Modelfile has no TEMPLATE, so Ollama uses the template inside the GGUF")
        stops = list(dict.fromkeys(t for t in end_tokens if t))
    else:
        lines += [f'TEMPLATE """{family.go_template}"""']
        system = default_system(chat_template, family)
        if system:
            lines.append(f'SYSTEM """{system}"""')
        stops = list(dict.fromkeys([family.turn_end, *(t for t in end_tokens if t)]))
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n", warning
