import json
from collections import Counter

import click
import pytest
import yaml
from click.testing import CliRunner

from duo import contracts
from duo.data import records
from duo.data import splits
from stages import prepare
from tests.conftest import ROOT


def rows(n_per_task: dict[str, int]):
    return [{"id": f"{t}-{i}", "task": t, "prompt": f"p {t} {i}", "response": "r"}
            for t, n in n_per_task.items() for i in range(n)]


def test_shipped_sample_data_is_a_real_coverage_set():
    data = records.read_records(ROOT / "data" / "coverage.jsonl", contracts.ROW_FIELDS, unique="id")
    counts = Counter(r["task"] for r in data)
    assert set(counts) == {"summarization", "classification", "coding", "closed_qa"}
    assert min(counts.values()) >= 30
    words = [len(r["prompt"].split()) for r in data if r["task"] == "summarization"]
    assert min(words) >= 60, "summarization prompts carry a passage"


def test_split_is_per_task_seeded_and_by_ratio():
    data = rows({"a": 10, "b": 5})
    train, val, test = splits.split(data, 0.8, seed=1)
    assert Counter(r["task"] for r in test) == {"a": 2, "b": 1} and val == []
    assert len(train) + len(test) == 15 and not {r["id"] for r in train} & {r["id"] for r in test}
    again = splits.split(list(reversed(data)), 0.8, seed=1)
    assert again == (train, val, test), "input order does not change the split"
    other = splits.split(data, 0.8, seed=2)
    assert {r["id"] for r in other[2]} != {r["id"] for r in test}


def test_validation_is_carved_from_train_per_task_and_never_touches_test():
    data = rows({"a": 40, "b": 10, "c": 3})
    _, _, test_before = splits.split(data, 0.8, seed=7)
    train, val, test = splits.split(data, 0.8, seed=7, validation_ratio=0.25)
    assert test == test_before, "the judge's split does not depend on the validation ratio"
    assert Counter(r["task"] for r in val) == {"a": 8, "b": 2, "c": 1}
    ids = [{r["id"] for r in part} for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]) and sum(map(len, ids)) == len(data)
    assert Counter(r["task"] for r in train)["c"] == 1, "a task keeps at least one training row"
    assert splits.split(data, 0.8, seed=7, validation_ratio=0.25) == (train, val, test)


def test_task_that_cannot_be_split_is_refused():
    with pytest.raises(click.ClickException, match="task 'b' has 1 row"):
        splits.split(rows({"a": 5, "b": 1}), 0.8, seed=1)
    with pytest.raises(click.ClickException, match="leaves no training row"):
        splits.split(rows({"a": 2}), 0.1, seed=1)


def _run(tmp_path, monkeypatch, coverage: str, params=None):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "coverage.jsonl").write_text(coverage)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or {}))
    return CliRunner().invoke(prepare.main, [])


def test_cli_writes_both_splits(tmp_path, monkeypatch):
    text = "".join(json.dumps(r) + "\n" for r in rows({"a": 5, "b": 5}))
    result = _run(tmp_path, monkeypatch, text)
    assert result.exit_code == 0, result.output
    assert len(records.read_records("data/test.jsonl", contracts.ROW_FIELDS)) == 2


@pytest.mark.parametrize("coverage, message", [
    ('{"id": "x", "task": "a", "prompt": "p", "response": "r"}\n{"id": "y", "task": "a", "prompt": "p",\n',
     "data/coverage.jsonl:2: invalid JSON"),
    ('{"id": "x", "prompt": "p", "response": "r"}\n', "data/coverage.jsonl:1: missing field 'task'"),
    ("", "data/coverage.jsonl: no records (empty file)"),
    ('{"id": "x", "task": "a", "response": "r"}\n', "data/coverage.jsonl:1: missing field 'prompt' (or 'messages')"),
    ('{"id": "x", "task": "a", "prompt": "p", "response": "r"}\n'
     '{"id": "y", "task": "a", "messages": [{"role": "system", "content": "s"}], "response": "r"}\n',
     "data/coverage.jsonl:2: messages must end with the user turn that 'response' answers"),
    ('{"id": "y", "task": "a", "messages": [{"role": "robot", "content": "s"}], "response": "r"}\n',
     "data/coverage.jsonl:1: messages[0].role must be one of system, developer, user, assistant"),
])
def test_cli_bad_input_is_a_clean_error(tmp_path, monkeypatch, coverage, message):
    result = _run(tmp_path, monkeypatch, coverage)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "data" / "train.jsonl").exists()


def test_cli_unknown_params_key_is_named(tmp_path, monkeypatch):
    result = _run(tmp_path, monkeypatch, "", {"coverage": {"ratio": 0.5}})
    assert result.exit_code == 1 and "unknown key 'coverage.ratio'" in result.output


# -- the same prompt under several ids stays on one side (issue 28) ------------------------------
def keyed(data):
    from duo.data import text

    return [dict(r, line=n, key=text.key(r["prompt"])) for n, r in enumerate(data, 1)]


def test_without_repeated_prompts_the_grouped_split_is_the_split():
    data = rows({"a": 40, "b": 10, "c": 3})
    plain = splits.split(data, 0.8, seed=7, validation_ratio=0.25)
    *grouped, joined = splits.split_by_prompt(keyed(data), 0.8, seed=7, validation_ratio=0.25)
    assert joined == 0 and [[r["id"] for r in part] for part in grouped] == [[r["id"] for r in p] for p in plain]


def test_a_prompt_under_several_ids_lands_on_one_side_for_every_seed():
    data = rows({"a": 30, "b": 12})
    copies = [dict(r, id=f"{r['id']}-copy{k}", prompt=form.format(r["prompt"].upper()), response=f"other {k}")
              for r in data[::3] for k, form in enumerate(("  {}  ", "{}!", "{}"))]
    separated = 0
    for seed in range(40):
        sides = {}
        for side, part in zip("tvs", splits.split(data + copies, 0.8, seed, 0.2)):
            for r in part:
                sides.setdefault(r["id"].split("-copy")[0], set()).add(side)
        separated += any(len(s) > 1 for s in sides.values())
        *parts, joined = splits.split_by_prompt(keyed(data + copies), 0.8, seed, 0.2)
        assert joined == len(copies)
        sides = {}
        for side, part in zip("tvs", parts):
            for r in part:
                sides.setdefault(r["id"].split("-copy")[0], set()).add(side)
        assert all(len(s) == 1 for s in sides.values()), seed
        assert sum(map(len, parts)) == len(data) + len(copies)
    assert separated > 30, "the split by id alone puts copies of a prompt on both sides"


def test_a_prompt_under_two_tasks_or_a_task_of_one_prompt_is_refused_with_its_line(tmp_path, monkeypatch):
    data = rows({"a": 5, "b": 5})
    data.append(dict(data[1], id="dup", task="b", prompt=data[1]["prompt"].upper()))
    result = _run(tmp_path, monkeypatch, "".join(json.dumps(r) + "\n" for r in data))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "data/coverage.jsonl:11: the same prompt as line 2 under another task ('b' vs 'a')" in result.output
    same = [{"id": f"s{i}", "task": "s", "prompt": "Say hi.", "response": f"hi {i}"} for i in range(3)]
    result = _run(tmp_path, monkeypatch, "".join(json.dumps(r) + "\n" for r in rows({"a": 5}) + same))
    assert result.exit_code == 1 and "data/coverage.jsonl:6: task 's' has 3 rows but one prompt" in result.output


def test_prepare_keeps_repeated_prompts_out_of_test_and_says_so(tmp_path, monkeypatch):
    from duo.data import text

    data = [json.loads(x) for x in (ROOT / "data" / "coverage.jsonl").read_text().splitlines()]
    data += [dict(r, id=f"{r['id']}-again", prompt=r["prompt"].lower() + " ", response="another answer")
             for r in data[::4]]
    result = _run(tmp_path, monkeypatch, "".join(json.dumps(r) + "\n" for r in data))
    assert result.exit_code == 0, result.output
    assert f"({len(data) - 144} rows repeat an earlier id's prompt: kept on its side)" in result.output
    parts = {name: records.read_records(f"data/{name}.jsonl", contracts.ROW_FIELDS)
             for name in ("train", "val", "test")}
    keys = {name: {text.key(r["prompt"]) for r in part} for name, part in parts.items()}
    assert not keys["test"] & (keys["train"] | keys["val"]) and not keys["train"] & keys["val"]
    assert sum(map(len, parts.values())) == len(data)


def test_conversation_rows_are_split_and_get_their_final_turn_as_prompt(tmp_path, monkeypatch):
    system = {"role": "system", "content": "Answer with the label only."}
    data = [{"id": f"c{i}", "task": "a", "messages": [system, {"role": "user", "content": f"ticket {i}"}],
             "response": "billing"} for i in range(6)] + rows({"a": 4})
    result = _run(tmp_path, monkeypatch, "".join(json.dumps(r) + "\n" for r in data))
    assert result.exit_code == 0, result.output
    out = [r for path in (contracts.TRAIN, contracts.VAL, contracts.TEST) for r in contracts.read_rows(path)]
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in data)
    conv = {r["id"]: r for r in out if "messages" in r}
    assert len(conv) == 6 and all(r["prompt"] == r["messages"][-1]["content"] and r["messages"][0] == system
                                  for r in conv.values())
