"""duo/data/chat.py: rows become messages in one place, and every consumer (finetune, infer, the judge, P-Match,
synthesis) gets the same conversation; templates without a system role get it merged as llama.cpp's
server merges it. The end-to-end proof (three template families, a tiny model trained, served token for
token) is tests/test_conversations.py."""
from __future__ import annotations

import pytest

from duo import prompts
from duo.data import chat
from duo.evaluation import judging
from duo.params import Infer, Judge, Synth
from duo.synth import teacher
from tests.conftest import ROOT
from tests.hand_templates import CHATML, GEMMA, LLAMA3

SYSTEM = {"role": "system", "content": "Translate the colour into French. One word."}
ROW = {"id": "c1", "task": "colours", "messages": [SYSTEM, {"role": "user", "content": "red"}], "response": "rouge"}
PLAIN = {"id": "p1", "task": "qa", "prompt": "What is 2+2?", "response": "4"}
# Gemma's own template refuses a system turn outright
GEMMA_STRICT = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                "{% endif %}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
                "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
                "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
IGNORES_SYSTEM = ("{% for m in messages %}{% if m['role'] != 'system' %}<{{ m['role'] }}>{{ m['content'] }}"
                  "{% endif %}{% endfor %}")


@pytest.mark.parametrize("row, says", [
    ({}, "missing field 'prompt' (or 'messages')"),
    ({"prompt": 3}, "'prompt' must be str"),
    ({"prompt": "  "}, "'prompt' is empty"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content must be text"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be one of"),
    ({"messages": [SYSTEM]}, "must end with the user turn"),
    ({"messages": [{"role": "user", "content": " "}]}, "final user message is empty"),
    ({"messages": [{"role": "user", "content": "a"}], "prompt": "b"}, "'prompt' differs"),
])
def test_bad_conversations_are_named(row, says):
    assert says in chat.problem(row)


def test_a_row_is_its_conversation():
    assert chat.problem(ROW) is None and chat.problem(PLAIN) is None
    assert chat.messages(PLAIN) == [{"role": "user", "content": "What is 2+2?"}]
    assert chat.messages(ROW) == ROW["messages"]
    assert chat.conversation(ROW) == {"prompt": ROW["messages"], "completion": [{"role": "assistant", "content": "rouge"}]}
    assert chat.with_prompt(ROW)["prompt"] == "red" and chat.problem(chat.with_prompt(ROW)) is None
    assert chat.fields([{"role": "user", "content": "x"}]) == {"prompt": "x"}
    assert chat.context_of(PLAIN) == {} and chat.context_of(ROW) == {"messages": ROW["messages"]}


def test_new_rows_keep_the_seeds_system_prompt_and_history():
    history = [SYSTEM, {"role": "user", "content": "red"}, {"role": "assistant", "content": "rouge"},
               {"role": "user", "content": "and blue?"}]
    seed = {**ROW, "messages": history}
    new = chat.like(seed, "and green?")
    assert new == {"prompt": "and green?", "messages": history[:3] + [{"role": "user", "content": "and green?"}]}
    # a teacher that copied the transcript's labels: only the final message is kept
    copied = chat.like(seed, chat.transcript({"messages": [SYSTEM, {"role": "user", "content": "yellow"}]}))
    assert copied["messages"][-1] == {"role": "user", "content": "yellow"} and chat.problem(copied) is None
    assert chat.like(PLAIN, "What is 3+3?") == {"prompt": "What is 3+3?"}


@pytest.mark.parametrize("template, system", [(CHATML, True), (LLAMA3, True), (GEMMA, True), (GEMMA_STRICT, False),
                                              (IGNORES_SYSTEM, False)])
def test_system_role_probe(template, system):
    assert chat.has_system_role(template) is system


def test_templates_without_a_system_role_get_it_merged_as_llama_cpp_does():
    conv = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat.for_template(conv, CHATML) == [{"role": "system", "content": "Be brief."}, conv[1]]
    assert chat.for_template(conv, GEMMA_STRICT) == [{"role": "user", "content": "Be brief.\nHi"}]
    assert chat.for_template(conv[:1], GEMMA_STRICT) == []
    assert chat.for_template(conv[1:], GEMMA_STRICT) == conv[1:]
    assert chat.conversation(ROW, GEMMA_STRICT)["prompt"] == [{"role": "user", "content": SYSTEM["content"] + "\nred"}]


def test_the_judge_sees_the_context_and_p_match_asks_with_the_same_messages():
    pred = {"prompt_id": "c1", "sample_idx": 0, "task": "colours", "prompt": "red", **chat.context_of(ROW),
            "reference": "rouge", "response": "rouge"}
    text = judging.judge_request(pred, 0, 0, Judge(), False).messages[0]["content"]
    assert SYSTEM["content"] in text and "[Final user message]\nred" in text
    plain = {"prompt_id": "p1", "sample_idx": 0, "task": "qa", "prompt": "What is 2+2?", "reference": "4",
             "response": "4"}
    expected = prompts.render("judge.txt", root=ROOT / "prompts", instruction="What is 2+2?", human_response="4",
                              lm_response="4")
    assert judging.judge_request(plain, 0, 0, Judge(), False).messages[0]["content"] == expected, \
        "a one-turn row asks exactly what it asked before (journaled replies still match)"

    class Svc:
        def map(self, reqs):
            self.reqs = reqs
            from duo.service import Reply
            return [Reply(text="rouge") for _ in reqs]

    svc = Svc()
    rows = judging.teacher_answers([chat.with_prompt(ROW), PLAIN], svc, Infer())
    assert [r.messages for r in svc.reqs] == [ROW["messages"], chat.messages(PLAIN)]
    assert rows[0]["messages"] == ROW["messages"] and "messages" not in rows[1]


def test_the_teacher_sees_the_system_prompt_and_a_plain_seed_is_asked_as_before(in_tmp):
    req = teacher.request_for(chat.with_prompt(ROW), Synth(), False, 1, 0)
    assert SYSTEM["content"] in req.messages[0]["content"]
    plain = teacher.request_for(PLAIN, Synth(), False, 1, 0).messages[0]["content"]
    assert plain == prompts.render("synth.txt", instruction=PLAIN["prompt"], response="4", topic="qa",
                                   n=str(Synth().pairs_per_request))
