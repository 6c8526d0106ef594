"""The Ollama Modelfiles proven with Go's own text/template: tests/ollama_template/main.go renders what
Ollama renders (its SYSTEM and system-message handling, message merging, .System/.Messages), and for every
chat template of the pinned llama.cpp sdist that duo assigns a family, the Modelfile's TEMPLATE and
SYSTEM give, for chat and generate requests with and without a system prompt, single- and multi-turn,
exactly the prompt transformers renders from the model's own Jinja template (as llama.cpp serves it: a
template without a system role gets the system prompt folded into the next user turn). Go is Debian's
golang-go (.ci/run installs it); without it these tests skip."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from duo.llamacpp import converter
from duo.export import families

SYS, U1, A1, U2 = families.SYSTEM, families.USER1, families.REPLY1, families.USER2
LONGER = [{"role": "system", "content": "Be brief.\nUse English."}, {"role": "user", "content": "One?"},
          {"role": "assistant", "content": "1"}, {"role": "user", "content": "Two?"},
          {"role": "assistant", "content": "2"}, {"role": "user", "content": "Three?"}]
CONVERSATIONS = [*families.PROBES, LONGER, LONGER[1:]]


@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory):
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (Debian: apt-get install golang-go; .ci/run installs it)")
    out = tmp_path_factory.mktemp("go")
    source = os.path.join(os.path.dirname(__file__), "ollama_template", "main.go")
    env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(out / "cache"), "GOPATH": str(out / "path")}
    subprocess.run([go, "build", "-o", str(out / "ollama_template"), source], check=True, env=env)

    def render(template: str, system: str, requests: list[dict]) -> list[str]:
        proc = subprocess.run([str(out / "ollama_template")], input=json.dumps(
            {"template": template, "system": system, "requests": requests}), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    return render


def parse_modelfile(text: str) -> tuple[str | None, str]:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return (template.group(1) if template else None), (system.group(1) if system else "")


def assigned_templates() -> list[tuple[str, str]]:
    folder = converter.templates()
    found = [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.jinja"))]
    return [(name, text) for name, text in found if families.detect(text).family]


@pytest.mark.parametrize("name,chat_template", assigned_templates())
def test_modelfile_renders_what_the_model_was_trained_on(name, chat_template, ollama_render):
    text, warning = families.modelfile("student.gguf", chat_template, ["</s>"])
    template, system = parse_modelfile(text)
    assert warning is None and template, text
    chats = [{"messages": c} for c in CONVERSATIONS]
    generates = [{"generate": True, "system": SYS, "prompt": U1}, {"generate": True, "prompt": U1}]
    ollama = ollama_render(template, system, chats + generates)
    jinja = [families.render(chat_template, families.served(chat_template, c)) for c in CONVERSATIONS]
    jinja += [jinja[1], jinja[0]]  # generate with a system prompt = PROBES[1]; without = PROBES[0]
    for i, (ours, theirs) in enumerate(zip(ollama, jinja)):
        assert ours == theirs, (name, i, ours, theirs)


SETTINGS = [(families.CHATML, {"default_system": ""}), (families.CHATML, {"default_system": "You are helpful."}),
            (families.LLAMA3, {"preamble": None}),
            (families.LLAMA3, {"preamble": "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"}),
            (families.GEMMA, {}), (families.MISTRAL, {}), (families.PHI3, {})]


@pytest.mark.parametrize("family,settings", SETTINGS, ids=lambda x: getattr(x, "name", None) or str(sorted(x.values())))
def test_system_prompt_once_never_dropped_history_in_order(family, settings, ollama_render):
    """Ollama's semantics on each family's Go template: a request's system prompt appears exactly once
    and replaces the default, the default appears only without one, every turn keeps its place; and
    the family's reference Jinja (what detection compares a model's template with) renders the same."""
    default = settings.get("default_system", "")
    with_system, without = ollama_render(family.go(settings), default, [{"messages": families.PROBES[3]},
                                                                        {"messages": families.PROBES[2]}])
    assert with_system.count(SYS) == 1 and (not default or default not in with_system)
    assert (default in without) if default else SYS not in without
    for text in (with_system, without):  # where the system prompt goes is the family's (Mistral: last turn)
        positions = [text.index(t) for t in (U1, A1, U2)]
        assert positions == sorted(positions), text
    expected = [families.render(family.reference, c, **settings) for c in (families.PROBES[3], families.PROBES[2])]
    assert [with_system, without] == expected


def test_the_old_modelfiles_failed_under_ollama(ollama_render):
    """What the issue reported, reproduced with the Go templates duo shipped before: ChatML's read .System
    and also ranged over every message (the system prompt twice); Mistral's looked for the system prompt
    at the first message's index, where Ollama puts the system message itself (dropped)."""
    doubled = ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
               '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n')
    dropped = ('{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST] '
               '{{ if and (eq $i 0) $.System }}{{ $.System }}\n\n{{ end }}{{ .Content }} [/INST]'
               '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{ end }}')
    twice = ollama_render(doubled, "", [{"messages": families.PROBES[1]}])[0]
    never = ollama_render(dropped, "", [{"messages": families.PROBES[1]}])[0]
    assert twice.count(SYS) == 2 and SYS not in never
