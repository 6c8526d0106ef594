"""Detection over every chat template in the pinned llama.cpp sdist (models/templates/*.jinja) plus
Zephyr's and Llama 2's (tests/templates/; not in the sdist): each maps to the family it renders as, or is
unknown and its Modelfile says so, with no TEMPLATE. The README's table of vendor students and
docs/students.md are generated here: DUO_WRITE_TABLES=1 rewrites them, otherwise they must match."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from duo.llamacpp import converter
from duo.export import families
from tests.generated import section
from tests.vendor_students import VENDORS

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "tests/test_template_table.py"
EXTRA = Path(__file__).resolve().parent / "templates"
CHATML, LLAMA3, GEMMA, MISTRAL, PHI3 = "chatml", "llama3", "gemma", "mistral", "phi3"
# Read off each template by hand: the family it renders as for a plain conversation, None for unknown.
EXPECTED = {
    "Apertus-8B-Instruct": None, "Apriel-1.6-15b-Thinker-fixed": None, "Bielik-11B-v3.0-Instruct": CHATML,
    "ByteDance-Seed-OSS": None, "Cohere2MoE": None, "CohereForAI-c4ai-command-r-plus-tool_use": None,
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": None, "GLM-4.6": None, "GLM-4.7-Flash": None,
    "GigaChat3-10B-A1.8B": None, "GigaChat3.1-10B-A1.8B": None, "HuggingFaceTB-SmolLM3-3B": None,
    "Kimi-K2-Instruct": None, "Kimi-K2-Thinking": None, "Kimi-K3": None, "LFM2-8B-A1B": CHATML,
    "LFM2.5-8B-A1B": CHATML, "LFM2.5-Instruct": CHATML, "MiMo-VL": CHATML, "MiniMax-M1": None,
    "MiniMax-M2": None, "MiniMax-M3": None, "Mistral-Small-3.2-24B-Instruct-2506": None,
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": None, "NVIDIA-Nemotron-Nano-v2": None,
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": None, "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": None,
    "Qwen-QwQ-32B": None, "Qwen-Qwen2.5-7B-Instruct": CHATML, "Qwen-Qwen3-0.6B": CHATML, "Qwen3-Coder": CHATML,
    "Qwen3.5-4B": None, "Reka-Edge": None, "Spark2.5": None, "StepFun3.5-Flash": None,
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": None, "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": None,
    "deepseek-ai-DeepSeek-V3.1": None, "deepseek-ai-DeepSeek-V3.2": None, "deepseek-ai-DeepSeek-V4-Flash-0731": None,
    "deepseek-ai-DeepSeek-V4": None, "fireworks-ai-llama-3-firefunction-v2": None, "google-gemma-2-2b-it": GEMMA,
    "google-gemma-4-31B-it-interleaved": None, "google-gemma-4-31B-it": None,
    "ibm-granite-granite-3.3-2B-Instruct": None, "ibm-granite-granite-4.0": None, "ibm-granite-granite-4.1": None,
    "inclusionai-ling-3.0-flash": None, "llama-cpp-deepseek-r1": None, "llama-cpp-rwkv-world": None,
    "meetkai-functionary-medium-v3.1": None, "meetkai-functionary-medium-v3.2": None,
    "meta-llama-Llama-3.1-8B-Instruct": LLAMA3, "meta-llama-Llama-3.2-3B-Instruct": LLAMA3,
    "meta-llama-Llama-3.3-70B-Instruct": LLAMA3, "microsoft-Phi-3.5-mini-instruct": PHI3,
    "mistralai-Ministral-3-14B-Reasoning-2512": None, "mistralai-Mistral-Nemo-Instruct-2407": MISTRAL,
    "moonshotai-Kimi-K2": None, "muse-glimmer": None, "openai-gpt-oss-120b": None, "openbmb-MiniCPM5-1B": CHATML,
    "poolside-Laguna-S-2.1": None, "poolside-Laguna-XS-2.1": None, "poolside-Laguna-XS.2": None, "tencent-Hy3": None,
    "unsloth-Apriel-1.5": None, "unsloth-mistral-Devstral-Small-2507": None, "upstage-Solar-Open-100B": None,
    # not in the sdist: Zephyr/TinyLlama (Phi-3's markers, </s> ends turns) and Llama 2 (<<SYS>> block)
    "HuggingFaceH4-zephyr-7b-beta": None, "meta-llama-Llama-2-7b-chat-hf": None,
}


def templates() -> dict[str, Path]:
    found = {p.stem: p for folder in (converter.templates(), EXTRA) for p in sorted(folder.glob("*.jinja"))}
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def test_the_table_covers_every_template_in_the_sdist():
    assert set(templates()) == set(EXPECTED), "classify the new or removed templates in EXPECTED"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_template_maps_to_its_family_or_is_unknown_with_a_warning(name):
    chat_template = templates()[name].read_text(encoding="utf-8")
    match = families.detect(chat_template)
    assert match.name == EXPECTED[name], match.reason
    text, warning = families.modelfile("student.gguf", chat_template, ["</s>"])
    if match.family:
        assert warning is None and 'TEMPLATE """' in text and f'PARAMETER stop "{match.family.turn_end}"' in text
    else:
        assert "TEMPLATE" not in text and match.reason in warning and 'PARAMETER stop "</s>"' in text


def _cell(text: str) -> str:
    """Markdown table cell text: pipes escaped, newlines shown as \\n, and no HTML tags (`</s>` would vanish)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|") \
        .replace("\n", "\\n")


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("\n", "\\n") + "`"


def vendor_table() -> str:
    rows = ["| student | architecture | vocabulary (llama.cpp's) | template | family | Ollama TEMPLATE |",
            "|---|---|---|---|---|---|"]
    for v in VENDORS.values():
        match = families.detect(templates()[v.template].read_text(encoding="utf-8"), eos_token=v.eos)
        ollama = "proven (Go text/template)" if match.family else "none: the GGUF's template (warned)"
        rows.append(f"| {v.label}{' ¹' if v.note else ''} | {v.arch} | `{v.vocab}` | `{v.template}` | "
                    f"{match.name or 'unknown'} | {ollama} |")
    notes = [f"{v.label}: {v.note}." for v in VENDORS.values() if v.note]
    return "\n".join(rows) + "\n\n¹ " + " ".join(notes) + "\n"


def template_table() -> str:
    rows = ["| template | family | Modelfile |", "|---|---|---|"]
    for name, path in templates().items():
        match = families.detect(path.read_text(encoding="utf-8"))
        if match.family:
            setting = {k: v for k, v in match.settings.items() if v}
            today = datetime.now().strftime("%d %b %Y")  # strftime_now in a template: the day it is rendered
            extra = f"; SYSTEM (the template's default): {_code(setting['default_system'])}" \
                if "default_system" in setting else \
                f"; system header: {_code(setting['preamble'].replace(today, '<export date>'))}" if setting else ""
            rows.append(f"| `{name}` | {match.family.label} | TEMPLATE{extra} |")
        else:
            rows.append(f"| `{name}` | unknown | no TEMPLATE: {_cell(match.reason)} |")
    return "\n".join(rows) + "\n"


def test_readme_and_docs_list_the_students_this_test_checks():
    section(ROOT / "README.md", "students", vendor_table(), SOURCE)
    section(ROOT / "docs" / "students.md", "students", vendor_table(), SOURCE)
    section(ROOT / "docs" / "students.md", "templates", template_table(), SOURCE)
