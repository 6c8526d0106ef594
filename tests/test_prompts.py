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
