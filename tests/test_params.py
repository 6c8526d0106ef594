import pytest
import yaml

from duo import params
from tests.conftest import ROOT


def write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_params_parse_and_cover_every_section():
    p = params.load(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == {f for f in params.as_dict(p)}, "every section is declared and shipped"
    assert p.service.model == "local" and p.student.source == "bundled:smollm2"
    assert p.finetune.lora.r == 16 and p.finetune.lora.alpha == "auto" and p.finetune.lora.target_modules == "all-linear"


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(params.ParamsError, match=r"unknown key 'finetune.learning_rate'"):
        params.load(write(tmp_path, {"finetune": {"learning_rate": 1e-4}}))
    with pytest.raises(params.ParamsError, match=r"unknown key 'finetune.lora.alpah'.*did you mean 'alpha'"):
        params.load(write(tmp_path, {"finetune": {"lora": {"alpah": 8}}}))
    with pytest.raises(params.ParamsError, match=r"unknown key 'judges'.*'judge'"):
        params.load(write(tmp_path, {"judges": {}}))


def test_mistyped_values_are_named(tmp_path):
    with pytest.raises(params.ParamsError, match=r"'infer.k' must be int, got '4'"):
        params.load(write(tmp_path, {"infer": {"k": "4"}}))
    with pytest.raises(params.ParamsError, match=r"'finetune.loss' must be 'completion' \| 'sequence'"):
        params.load(write(tmp_path, {"finetune": {"loss": "all"}}))
    with pytest.raises(params.ParamsError, match=r"'coverage.train_ratio' must be <= 1.0, got 1.5"):
        params.load(write(tmp_path, {"coverage": {"train_ratio": 1.5}}))
    with pytest.raises(params.ParamsError, match=r"'service' must be a mapping"):
        params.load(write(tmp_path, {"service": "openai/gpt-4o"}))
    with pytest.raises(params.ParamsError, match=r"'infer.parallel' must be >= 1, got 0"):
        params.load(write(tmp_path, {"infer": {"parallel": 0}}))


def test_ints_accepted_for_floats_and_auto_for_lora(tmp_path):
    p = params.load(write(tmp_path, {"finetune": {"lr": 1, "lora": {"r": 16, "alpha": "auto"}}}))
    assert p.finetune.lr == 1.0 and isinstance(p.finetune.lr, float)
    assert p.finetune.lora.r == 16


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("cycle: [1,\n")
    with pytest.raises(params.ParamsError, match="invalid YAML"):
        params.load(bad)
    with pytest.raises(params.ParamsError, match="not found"):
        params.load(tmp_path / "nope.yaml")


def test_the_dataclass_defaults_are_params_yaml():
    """One source of truth: a section left out of params.yaml means exactly what the shipped file says."""
    shipped = params.as_dict(params.load(ROOT / "params.yaml"))
    assert shipped == params.as_dict(params.Params())


def test_every_key_of_params_yaml_has_a_comment():
    import re

    lines = (ROOT / "params.yaml").read_text().splitlines()
    keys = [(i + 1, line) for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_]+:", line)]
    missing = [f"line {n}: {line.strip()}" for n, line in keys if "#" not in line]
    assert not missing, missing


def test_every_numeric_key_has_a_range():
    import dataclasses
    import typing

    def walk(cls, where=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            dotted = f"{where}.{f.name}" if where else f.name
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], dotted)
            elif f.name != "seed" and (hints[f.name] in (int, float) or int in typing.get_args(hints[f.name])):
                yield dotted, f.metadata.get("range")

    unranged = [k for k, bounds in walk(params.Params) if bounds is None]
    assert not unranged, unranged


@pytest.mark.parametrize("section, value, message", [
    ({"finetune": {"lora": {"r": 0}}}, None, r"'finetune.lora.r' must be >= 1, got 0"),
    ({"finetune": {"lr": -1}}, None, r"'finetune.lr' must be > 0.0, got -1"),
    ({"finetune": {"micro_batch_size": "auto", "batch_size": 0}}, None, r"'finetune.batch_size' must be >= 1"),
    ({"judge": {"zetas": ["x"]}}, None, r"'judge'.*zetas must be a non-empty list of whole scores 1-100"),
    ({"service": {"concurrency": 0}}, None, r"'service.concurrency' must be >= 1"),
    ({"infer": {"max_tokens": 4096}}, None, r"'infer'.*max_tokens \(4096\) must be below n_ctx"),
    ({"gate": {"statistic": "c65"}}, None, r"'gate.statistic': 'c65' names ζ = 65, which judge.zetas \[50, 70\]"),
    ({"gate": {"score": "pairwise", "statistic": "win"}}, None, r"'gate.score': 'pairwise' needs judge.mode: pairwise"),
    ({"judge": {"mode": "pairwise"}}, None, r"'gate.score': 'precision' is not produced by judge.mode: pairwise"),
])
def test_ranges_and_cross_section_checks_fail_at_load_with_the_dotted_key(tmp_path, section, value, message):
    with pytest.raises(params.ParamsError, match=message):
        params.load(write(tmp_path, section))


def test_a_gate_on_a_configured_zeta_loads(tmp_path):
    p = params.load(write(tmp_path, {"gate": {"statistic": "c50"}, "judge": {"zetas": [50, 90]}}))
    assert p.gate.statistic == "c50"
