import click
import pytest

from duo import prompts
from tests.conftest import ROOT

EXPECTED = {
    "judge.txt": {"instruction", "human_response", "lm_response"},
    "synth.txt": {"instruction", "response", "topic", "n"},
    "synth_summarization.txt": {"instruction", "response", "topic", "n"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_prompts_have_the_placeholders_the_code_fills(name):
    assert prompts.placeholders(prompts.load(name, ROOT / "prompts")) == EXPECTED[name]


def test_judge_prompt_asks_for_the_json_keys():
    text = (ROOT / "prompts" / "judge.txt").read_text()
    assert '"similarity_assessment": {"score": N}' in text and '"precision_assessment": {"score": N}' in text


def test_missing_variable_fails_and_dollars_in_data_stay_literal():
    with pytest.raises(click.ClickException, match=r"no value for \$lm_response"):
        prompts.render("judge.txt", ROOT / "prompts", instruction="i", human_response="h")
    out = prompts.render("judge.txt", ROOT / "prompts", instruction="cost $instruction $5",
                         human_response="h", lm_response="${x}")
    assert "cost $instruction $5" in out and "${x}" in out


@pytest.mark.parametrize("name, fields", [("judge.txt", ("instruction", "human_response", "lm_response")),
                                          ("judge_pairwise.txt", ("instruction", "response_a", "response_b"))])
def test_judge_rubric_precedes_the_data_so_every_call_shares_it_as_a_prefix(name, fields):
    # llama.cpp reuses the KV cache of the previous call's common prefix, and providers cache long
    # shared prefixes: the rubric and the JSON form must come before anything that varies per call.
    one = prompts.render(name, ROOT / "prompts", **{f: f"first {f}" for f in fields})
    two = prompts.render(name, ROOT / "prompts", **{f: f"second {f}" for f in fields})
    shared = one[:next(i for i, (a, b) in enumerate(zip(one, two)) if a != b)]
    assert "JSON only" in shared and ("precision:" in shared or "tie" in shared)
    # only a short cue follows the last datum
    assert len(one) - one.rindex(">>>") < 60
