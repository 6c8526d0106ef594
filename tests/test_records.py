import json
import os

import pytest

from duo.data import records

FIELDS = {"id": str, "task": str, "prompt": str, "response": str}


def write(tmp_path, text: bytes | str, name="c.jsonl"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def row(i, **kw):
    return json.dumps({"id": f"r{i}", "task": "qa", "prompt": "p", "response": "r", **kw})


@pytest.mark.parametrize("content, reason", [
    (row(1) + "\n{not json}\n", r"c.jsonl:2: invalid JSON"),
    (row(1) + "\n" + json.dumps({"id": "r2", "task": "qa", "prompt": "p"}) + "\n", r"c.jsonl:2: missing field 'response'"),
    (json.dumps({"id": 3, "task": "qa", "prompt": "p", "response": "r"}) + "\n", r"c.jsonl:1: field 'id' must be str, got int"),
    (row(1) + "\n" + row(1) + "\n", r"c.jsonl:2: duplicate id 'r1' \(first on line 1\)"),
    (row(1, prompt="  ") + "\n", r"c.jsonl:1: field 'prompt' is empty"),
    ("[1, 2]\n", r"c.jsonl:1: expected a JSON object"),
    (row(1) + "\n" + row(2)[:-5], r"c.jsonl:2: invalid JSON.*truncated last line"),
    ("", r"c.jsonl: no records \(empty file\)"),
])
def test_bad_lines_name_file_line_and_reason(tmp_path, content, reason):
    with pytest.raises(records.DataError, match=reason):
        records.read_records(write(tmp_path, content), FIELDS, unique="id")


def test_nul_bytes_and_bad_utf8(tmp_path):
    with pytest.raises(records.DataError, match=r":2: NUL byte"):
        records.read_records(write(tmp_path, (row(1) + "\n").encode() + b'{"id"\x00}\n'), FIELDS)
    with pytest.raises(records.DataError, match=r":1: not UTF-8"):
        records.read_records(write(tmp_path, b'{"id": "\xff"}\n'), FIELDS)


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + (row(1) + "\r\n\r\n" + row(2) + "\r\n").encode())
    assert [r["id"] for r in records.read_records(path, FIELDS)] == ["r1", "r2"]


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    records.write_jsonl(path, [{"a": 1}])

    def broken():
        yield {"a": 2}
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        records.write_jsonl(path, broken())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"], "temp file cleaned up"


def test_write_json_roundtrip(tmp_path):
    records.write_json(tmp_path / "m" / "x.json", {"v": 1.5, "s": "é"})
    assert records.read_json(tmp_path / "m" / "x.json") == {"v": 1.5, "s": "é"}
    assert records.read_json(tmp_path / "missing.json", default={}) == {}
    assert os.stat(tmp_path / "m" / "x.json").st_mode & 0o777 == 0o666 & ~records._umask()


def test_loss_curve_is_bounded_and_evenly_spaced():
    from duo import contracts

    points = list(range(1001))
    curve = contracts.evenly(points)
    assert len(curve) == contracts.LOSS_CURVE_POINTS and curve[0] == 0 and curve[-1] == 1000
    gaps = {b - a for a, b in zip(curve, curve[1:])}
    assert gaps <= {5, 6}
    assert contracts.evenly(points[:50]) == points[:50]
