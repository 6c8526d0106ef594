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
    assert p.finetune.lora.r == 16 and p.finetune.lora.alpha == "auto"


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
    with pytest.raises(params.ParamsError, match=r"'coverage'.*train_ratio"):
        params.load(write(tmp_path, {"coverage": {"train_ratio": 1.5}}))
    with pytest.raises(params.ParamsError, match=r"'service' must be a mapping"):
        params.load(write(tmp_path, {"service": "openai/gpt-4o"}))
    with pytest.raises(params.ParamsError, match=r"'infer'.*parallel must be between 1 and 256"):
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
