"""The export stage on the real bundled SmolLM2-135M: a real LoRA adapter (PEFT, random non-zero
weights so the merge matters), llama.cpp's real converter and quantizer, and every check it runs.
One q4_k_m export with lora_only is shared by the default-tier tests; every quantization type and
the f16 path are in the slow tier."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from duo.data import records
from duo.loop import delivery
from duo.export import checks as gguf_checks
from duo.export import gguf
from stages import export

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

ROOT = Path(__file__).resolve().parent.parent


def make_adapter(base: Path, out: Path) -> None:
    """A LoRA adapter as finetune saves one (weights, tokenizer, chat template, resolved params)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    records.write_json(out / "duo_params.json", {"epochs": 1.0, "lr": 5e-4, "rows": 9})


def write_data(root: Path) -> None:
    rows = [json.loads(line) for line in (ROOT / "data" / "coverage.jsonl").read_text().splitlines() if line]
    (root / "data" / "synth").mkdir(parents=True)
    records.write_jsonl(root / "data" / "train.jsonl", rows[:6])
    records.write_jsonl(root / "data" / "test.jsonl", rows[6:14])
    synth = [dict(r, id=f"syn-c1-{i}") for i, r in enumerate(rows[14:17])]
    records.write_jsonl(root / "data" / "synth" / "cycle-1.jsonl", synth)


def write_params(root: Path, **export_params) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["cycle"] = 1
    params["export"].update(export_params)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """models/base from the bundled GGUF, a PEFT adapter and a little data, as the stages leave them."""
    from duo import models as base

    root = tmp_path_factory.mktemp("export")
    model, tokenizer, provenance = base.load_source("bundled:smollm2", False)
    base.save_base(model, tokenizer, provenance, root / "models" / "base")
    make_adapter(root / "models" / "base", root / "models" / "adapter")
    write_data(root)
    old = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def exported(workdir):
    write_params(workdir, quant="q4_k_m", lora_only=True, ppl_tokens=256)
    result = CliRunner().invoke(export.main, ["--params", "params.yaml"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((workdir / "metrics" / "export.json").read_text())


def test_gguf_reads_back_with_the_training_template_and_special_tokens(workdir, exported):
    meta = gguf.read_metadata(workdir / "models" / "student.gguf")
    template = (workdir / "models" / "adapter" / "chat_template.jinja").read_text()
    assert meta["architecture"] == exported["architecture"] == "llama"
    assert meta["chat_template"] == template and exported["chat_template_matches"]
    assert (meta["bos_token_id"], meta["eos_token_id"]) == (1, 2) and exported["special_tokens_match"]
    assert exported["file_type"] == gguf.quant_types()["q4_k_m"]
    # where the file came from, in its own header: base, licence, cycle, the finetune params' hash
    resolved = workdir / "models" / "adapter" / "duo_params.json"
    params_hash = records.file_sha256(resolved)[:12] if resolved.exists() else "unknown"
    assert meta["name"] == exported["name"] == "duo student of bundled:smollm2"
    assert meta["base_model"] == "bundled:smollm2" and meta["license"] == "apache-2.0"
    assert meta["version"] == "cycle-1" and f"finetune params sha256 {params_hash}" in meta["description"]
    card = (workdir / "models" / "MODEL_CARD.md").read_text()
    assert "GGUF header: name `duo student of bundled:smollm2`, version `cycle-1`" in card


def test_llama_cpp_and_hf_tokenize_the_fixed_strings_identically(exported):
    assert exported["tokenizer_samples"] == len(gguf_checks.TOKENIZER_SAMPLES) >= 15
    assert exported["tokenizer_mismatches"] == []


def test_greedy_decoding_from_the_f16_gguf_matches_pytorch(exported):
    g = exported["greedy"]
    assert g["passed"] and g["common_prefix"] >= gguf_checks.GREEDY_MIN_PREFIX
    assert g["tokens"] == len(g["pytorch_ids"]) > 0
    assert g["gguf_ids"][:g["common_prefix"]] == g["pytorch_ids"][:g["common_prefix"]]


def test_perplexity_of_the_quantized_file_is_reported_against_f16(exported):
    ppl = exported["perplexity"]
    assert ppl["tokens"] > 20 and ppl["rows"] >= 1
    assert 1.0 < ppl["f16"] < 1000
    # q4_k_m loses a little; a file that scores far better or far worse than f16 is broken.
    assert ppl["f16"] * 0.98 <= ppl["q4_k_m"] <= ppl["f16"] * 1.5
    assert ppl["increase_pct"] == pytest.approx(100 * (ppl["q4_k_m"] / ppl["f16"] - 1), abs=0.02)
    assert set(exported["check_seconds"]) >= {"merge", "convert", "quantize", "read_back", "tokenizer", "greedy",
                                              "ppl_f16", "ppl_q4_k_m", "lora"}


def test_lora_gguf_on_the_base_decodes_like_the_merged_file(workdir, exported):
    lora = exported["lora"]
    path = workdir / "models" / "lora" / "adapter.gguf"
    assert path.exists() and lora["size_mb"] < 5
    assert lora["passed"] and lora["common_prefix"] >= gguf_checks.GREEDY_MIN_PREFIX
    from gguf import GGUFReader

    assert GGUFReader(str(path)).fields["general.type"].contents() == "adapter"


def test_model_card_describes_the_export(workdir, exported):
    card = (workdir / "models" / "MODEL_CARD.md").read_text()
    for expected in ("bundled:smollm2", "licence: apache-2.0", "r = 4, alpha = 8", "q_proj, v_proj",
                     "train split: 6 rows; test split: 8 rows", "cycle 1: 3", "q4_k_m",
                     f"llama-cpp-python {exported['llama_cpp']['llama_cpp_python']}", "Pending"):
        assert expected in card, expected
    commit = exported["llama_cpp"]["llama_cpp_commit"]
    assert commit and len(commit) == 40 and commit in card


def test_delivery_refreshes_the_card_with_the_final_metrics(workdir, exported):
    records.write_json(workdir / "metrics" / "eval.json", {
        "cycle": 1, "mode": "single", "similarity": {"mean": 61.5, "c50": 0.7, "c70": 0.4, "n": 8},
        "precision": {"mean": 72.25, "c50": 0.9, "c70": 0.6, "n": 8},
        "reference": {"rougeL": 33.3, "exact_match": 0.25}, "judge": {"models": ["local"]}})
    verdict = {"cycle": 1, "score": "precision", "statistic": "mean", "value": 72.25, "threshold": 70,
               "passed": True, "next": "deliver"}
    records.write_json(workdir / "metrics" / "cycle.json", verdict)
    before = (workdir / "models" / "MODEL_CARD.md").read_text()
    delivery.deliver(verdict)
    card = (workdir / "dist" / "MODEL_CARD.md").read_text()
    assert "Pending" not in card and "precision: V = 72.25" in card and "72.25 vs ε = 70 -> passed" in card
    assert "rougeL 33.3" in card
    assert (workdir / "models" / "MODEL_CARD.md").read_text() == before, "the DVC output stays untouched"
    deliverable = json.loads((workdir / "dist" / "deliverable.json").read_text())
    assert (workdir / "dist" / "adapter.gguf").exists() and deliverable["lora"]["file"] == "adapter.gguf"


def _broken_copy(base: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(base / name, dest / name)
    (dest / "model.safetensors").symlink_to(base / "model.safetensors")
    return dest


def test_unsupported_architecture_fails_with_a_clear_message(workdir, tmp_path):
    folder = _broken_copy(workdir / "models" / "base", tmp_path / "foobar")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["FooBarForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(click.ClickException) as err:
        gguf.convert(folder, tmp_path / "x.gguf", "f16", "student.source 'foobar'")
    msg = err.value.message
    assert "student.source 'foobar'" in msg and "FooBarForCausalLM is not supported" in msg
    assert "student.source in params.yaml" in msg and "Traceback" not in msg


def test_unknown_pre_tokenizer_fails_with_a_clear_message(workdir, tmp_path):
    folder = _broken_copy(workdir / "models" / "base", tmp_path / "oddtok")
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}  # splits differently: llama.cpp knows no such hash
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(click.ClickException) as err:
        gguf.convert(folder, tmp_path / "x.gguf", "f16", "student.source 'oddtok'")
    msg = err.value.message
    assert "student.source 'oddtok'" in msg and "pre-tokenizer is unknown" in msg and "Traceback" not in msg


def test_quant_names_are_checked_against_llama_cpp():
    for ok in ("f16", "f32", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q4_0"):
        gguf.check_quant(ok)
    with pytest.raises(click.ClickException, match=r"'q9_9' unknown; use one of .*q4_k_m.*q8_0"):
        gguf.check_quant("q9_9")
    with pytest.raises(click.ClickException, match="importance matrix"):
        gguf.check_quant("iq2_xxs")
    with pytest.raises(click.ClickException, match="newer than the gguf package"):
        gguf.check_quant("q2_0")


def test_greedy_rule_accepts_a_late_flip_and_rejects_an_early_one():
    ref = list(range(32))
    assert gguf_checks.compare_greedy(ref[:20] + [99] * 12, ref)["passed"]
    assert not gguf_checks.compare_greedy(ref[:5] + [99] * 27, ref)["passed"]
    assert gguf_checks.compare_greedy(ref[:3], ref[:3])["passed"], "a reply that ends early is compared whole"


def test_a_near_tie_split_is_judged_on_pytorchs_path(workdir, exported):
    """Teacher-forced on a path, the GGUF agrees where it picks the path's token or one the path's own
    logits rank within NEAR_TIE of it, and disagrees where they rank its pick far below."""
    import torch
    from transformers import AutoTokenizer

    llm = gguf_checks.load(workdir / "models" / "student.gguf", n_ctx=256)
    ids = gguf_checks.prompt_ids(AutoTokenizer.from_pretrained(workdir / "models" / "adapter"))
    path = gguf_checks.greedy_gguf(llm, ids, 8)
    vocab = llm.n_vocab()

    def logits(tokens, tie_at=None, alt=None):
        out = []
        for i, t in enumerate(tokens):
            row = torch.zeros(vocab)
            row[t] = 5.0
            if i == tie_at:
                row[alt] = 5.0 - gguf_checks.NEAR_TIE / 2
            out.append(row)
        return out

    assert gguf_checks.teacher_forced(llm, ids, path, logits(path))["passed"]
    other = (path[3] + 1) % vocab
    swapped = path[:3] + [other] + path[4:]
    swapped = swapped[:4]  # past the swap the context differs from the GGUF's own path
    tied = gguf_checks.teacher_forced(llm, ids, swapped, logits(swapped, tie_at=3, alt=path[3]))
    assert tied["passed"] and tied["near_ties"] >= 1, "the GGUF's pick was a near-tie on that path"
    wrong = gguf_checks.teacher_forced(llm, ids, swapped, logits(swapped))
    assert not wrong["passed"] and wrong["disagreements"][0]["position"] == 3


@pytest.mark.slow
def test_every_usable_quant_type_quantizes_loads_and_decodes(workdir, exported, tmp_path):
    """Each llama.cpp type duo accepts, from an f16 of the base model (n_embd 576 is not a multiple of
    256, so k- and i-quants fall back per tensor; types with no fallback must fail cleanly)."""
    f16 = tmp_path / "f16.gguf"
    gguf.convert(workdir / "models" / "base", f16, "f16")
    ids = [1, 9690, 198, 19556, 28, 2]
    failed = {}
    for quant in sorted(set(gguf.quant_types()) - gguf.NEEDS_IMATRIX - gguf.UNREADABLE - {"f16"}):
        out = tmp_path / f"{quant}.gguf"
        try:
            gguf.quantize(f16, out, quant)
        except click.ClickException as err:
            failed[quant] = err.message
            continue
        assert gguf.read_metadata(out)["file_type"] == gguf.quant_types()[quant]
        assert len(gguf_checks.greedy_gguf(gguf_checks.load(out, n_ctx=64), ids, 4)) >= 1
        out.unlink()
    # Measured with llama-cpp-python 0.3.36: only these two have no fallback for 576-wide rows.
    assert set(failed) <= {"q1_0", "nvfp4"}, failed
    assert all("block size" in m for m in failed.values())


@pytest.mark.slow
def test_f16_export_scores_one_perplexity(workdir, exported):
    write_params(workdir, quant="f16", lora_only=False, ppl_tokens=32)
    result = CliRunner().invoke(export.main, ["--params", "params.yaml"])
    assert result.exit_code == 1 and "export.ppl_tokens 32 is below the shortest test prompt" in result.output
    write_params(workdir, quant="f16", lora_only=False, ppl_tokens=256)
    result = CliRunner().invoke(export.main, ["--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workdir / "metrics" / "export.json").read_text())
    assert metrics["quant"] == "f16" and set(metrics["perplexity"]) == {"f16", "tokens", "rows"}
    assert metrics["greedy"]["passed"] and metrics["lora"] is None
    assert not (workdir / "models" / "lora" / "adapter.gguf").exists()
