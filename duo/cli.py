"""duo: migrate one task's skill from a service LLM into a small local GGUF model.

The loop itself runs with `make cycle`; these commands work on its data and models.
"""
from __future__ import annotations

from pathlib import Path

import click

from duo import records

ROW_FIELDS = records.ROW_FIELDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """duo: migrate one task's skill from a service LLM into a small local GGUF model."""


@main.command("curate")
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--seen", multiple=True, type=click.Path(path_type=Path),
              help="Rows that win every duplicate contest (train, earlier cycles); never modified.")
@click.option("--test", "test_path", type=click.Path(path_type=Path), help="Test split to decontaminate against.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Kept rows of NEW, in input order.")
@click.option("--report", type=click.Path(path_type=Path), help="JSON report: counts and every removed id.")
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              help="Reads the `curate` section when the file exists; defaults otherwise.")
def curate_cmd(new, seen, test_path, out, report, params_path) -> None:
    """Deduplicate, filter and decontaminate NEW.jsonl (rows {"id","task","prompt","response"}).

    Removed rows go to OUT's sibling `<name>.rejected.jsonl` with their reason and the id they duplicate.
    """
    from tqdm import tqdm

    from duo import curate
    from duo import params as params_mod

    cfg = params_mod.load(params_path).curate if Path(params_path).exists() else params_mod.Curate()
    new_rows = records.read_records(new, ROW_FIELDS, unique="id", allow_blank=True)  # blanks: filtered, named
    seen_rows = [r for path in seen for r in records.read_records(path, ROW_FIELDS, allow_empty=True)]
    test_rows = records.read_records(test_path, ROW_FIELDS, allow_empty=True) if test_path else []
    with tqdm(total=len(new_rows), desc="curate", unit="row", disable=None) as bar:
        kept, removed, counts = curate.curate(new_rows, seen_rows, test_rows, cfg, progress=bar.update)
    records.write_jsonl(out, kept)
    by_id = {r["id"]: r for r in new_rows}
    records.write_jsonl(out.with_name(out.stem + ".rejected.jsonl"), [by_id[r["id"]] | r for r in removed])
    if report:
        records.write_json(report, counts | {"removed_rows": removed})
    reasons = ", ".join(f"{k} {v}" for k, v in counts["removed"].items()) or "nothing"
    click.echo(f"curate: {counts['in']} in, {counts['out']} kept; removed: {reasons}")


# `duo report` = `make report` (the command lives with its module).
from duo.report import main as _report  # noqa: E402

main.add_command(_report, "report")
