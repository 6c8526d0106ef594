"""Every internal of another library duo relies on (duo/compat/) is still there and behaves as relied
on with the pinned versions: an upgrade that moves one fails here, by name, not quietly in a stage."""
import pytest

from duo import compat


@pytest.mark.parametrize("internal", compat.every_internal(), ids=[i.name for i in compat.every_internal()])
def test_internal_still_holds(internal):
    internal.check()


def test_every_internal_says_what_it_is_for_and_where():
    assert len(compat.every_internal()) >= 7
    for internal in compat.every_internal():
        assert internal.used_for and internal.where.startswith("duo/")


def test_no_module_reaches_an_internal_except_through_compat():
    """The internals compat lists are spelled nowhere else in duo/."""
    import re

    from tests.conftest import ROOT

    spelled = re.compile(r"_use_triton|_save_checkpoint|_get_output_dir|_hidden_params|GLOBAL_LOGGING_WORKER|"
                         r"batch_cost_calculator|_get_train_sampler|from llama_cpp import _internals|\._model\b")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "duo").rglob("*.py")) if p.parent.name != "compat"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if spelled.search(line)]
    assert not offenders, offenders
