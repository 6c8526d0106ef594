"""The `duo` command. Every entry point: cycle, converge, estimate, serve, report, bench, status, chat,
import, curate, measure, record, review.

Run: duo -h
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from duo import contracts, progress
from duo.data import records

ROW_FIELDS = contracts.ROW_FIELDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """duo: migrate one task's skill from a service LLM into a small local GGUF model.

    `duo cycle` (make cycle) runs one turn of the loop; the other commands converge it, serve and talk
    to its model, report on it, prepare data and measure.
    """
    from duo import entry

    entry.process()


@main.command("estimate")
@click.option("--cycle", "cycle_no", type=click.IntRange(min=0),
              help="The cycle to forecast (default: the one `make cycle` runs next).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def estimate_cmd(cycle_no: int | None, as_json: bool, params_path: str) -> None:
    """What a cycle's synthesis and judging calls will cost before any is paid: calls, tokens, dollars
    at litellm's prices (batch prices with service.batch), and whether service.budget_usd and
    service.budget_total_usd cover it. Nothing is called."""
    from duo.loop import estimate

    t = estimate.next_cycle(params_path) if cycle_no is None else cycle_no
    if t is None:
        click.echo("estimate: nothing to pay: the gate passed or gate.max_cycles is reached (duo status)")
        return
    forecast = estimate.forecast(t, params_path)
    click.echo(json.dumps(forecast, indent=2) if as_json else estimate.render(forecast))


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the summary.")
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def status_cmd(as_json: bool, params_path: str) -> None:
    """Current cycle, last metrics, gate verdict, stale stages and what `make cycle` will do next."""
    from duo.loop import status

    info = status.collect(params_path)
    click.echo(json.dumps(info, indent=2, ensure_ascii=False) if as_json else status.render(info))


def _load_llm(path: Path, n_ctx: int, threads: int):
    import llama_cpp

    from duo.llamacpp import local_llm
    from duo.app import serve

    serve.check_gguf(path)
    try:
        # The GGUF's own template (the training one), as `make serve` uses it.
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, verbose=False, chat_format=local_llm.EMBEDDED,
                              **local_llm.load_kwargs(threads))
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(f"{path}: llama.cpp cannot load it ({exc})") from None
    if "tokenizer.chat_template" not in llm.metadata:
        raise click.ClickException(f"{path}: the GGUF holds no chat template (not an instruction-tuned model?)")
    return llm


def _prompt_tokens(llm, messages: list[dict]) -> int:
    from duo.llamacpp import local_llm

    # as create_chat_completion tokenizes it: the template writes BOS where the model has one
    return len(llm.tokenize(local_llm.render_chat(llm, messages).encode(), add_bos=False, special=True))


def _as_served(llm, messages: list[dict]) -> list[dict]:
    """The messages as `make serve` hands them to this GGUF's template (duo/data/chat.py)."""
    from duo.data import chat

    return chat.for_template(messages, llm.metadata.get("tokenizer.chat_template"))


@main.command("chat")
@click.argument("prompt", required=False)
@click.option("--model", "model_path", default=str(contracts.GGUF), show_default=True,
              type=click.Path(path_type=Path), help="GGUF to talk to (dist/student.gguf: the delivered one).")
@click.option("--system", help="System message sent before the conversation.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(min=0.0))
@click.option("--n-ctx", default=2048, show_default=True, type=click.IntRange(min=256), help="Context window.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="0 = all cores.")
def chat_cmd(prompt, model_path, system, max_tokens, temperature, n_ctx, threads) -> None:
    """Talk to the student GGUF: one reply to PROMPT, or a conversation on stdin without it.

    In a conversation each line is a message; /reset starts over, /exit (or end of input) quits.
    """
    llm = _load_llm(model_path, n_ctx, threads)
    start = [{"role": "system", "content": system}] if system else []

    def reply(messages: list[dict]) -> str:
        parts = []
        messages = _as_served(llm, messages)
        # llama.cpp fails obscurely on a prompt longer than the context: say it plainly first.
        if (n := _prompt_tokens(llm, messages)) >= llm.n_ctx():
            raise click.ClickException(f"the conversation is {n} tokens; the context window (--n-ctx) is "
                                       f"{llm.n_ctx()}: use /reset, a shorter message or a larger --n-ctx")
        try:
            for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=temperature,
                                                    stream=True):
                text = chunk["choices"][0]["delta"].get("content") or ""
                parts.append(text)
                click.echo(text, nl=False)
        except ValueError as exc:  # llama.cpp: the prompt does not fit the context window
            raise click.ClickException(f"{exc} (use /reset, a shorter message or a larger --n-ctx)") from None
        click.echo()
        return "".join(parts)

    if prompt is not None:
        if not prompt.strip():
            raise click.ClickException("the prompt is empty")
        reply(start + [{"role": "user", "content": prompt}])
        return
    stdin = sys.stdin
    interactive = stdin.isatty()
    if interactive:
        click.echo(f"chat with {model_path}; /reset starts over, /exit quits", err=True)
    messages = list(start)
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(start)
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        try:
            messages.append({"role": "assistant", "content": reply(messages)})
        except click.ClickException as exc:
            if not interactive:
                raise
            messages.pop()
            click.echo(f"Error: {exc.message}", err=True)


@main.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Coverage JSONL to write.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]),
              help="Default: from SRC's extension (.jsonl/.ndjson, .csv, .parquet/.pq).")
@click.option("--prompt-col", default="prompt", show_default=True)
@click.option("--response-col", default="response", show_default=True)
@click.option("--task-col", help="Column naming the task.  [default: task, else category]")
@click.option("--task", "task_name", help="One task for every row (instead of a task column).")
@click.option("--id-col", default="id", show_default=True, help="Rows without it get a content hash id.")
@click.option("--messages-col", default="messages", show_default=True,
              help="Chat records: the list of {role, content}; the last (assistant) message is the response.")
@click.option("--system", type=click.Choice(["keep", "prepend", "drop"]), default="keep", show_default=True,
              help="Chat records: system messages kept as the system turn, folded into the first user turn, or dropped.")
@click.option("--batch-input", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="SRC is an OpenAI batch output file: this is its input file (the requests, by custom_id).")
@click.option("--skip-invalid", is_flag=True, help="Skip bad records (listed) instead of stopping at the first.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              help="coverage.train_ratio for the too-few-rows warning (default 0.8 without the file).")
def import_cmd(src, out, fmt, prompt_col, response_col, task_col, task_name, id_col, messages_col, system,
               batch_input, skip_invalid, force, params_path) -> None:
    """Convert SRC (JSONL, CSV, Parquet; columns, chat records, OpenAI chat-completions logs or batch
    output, duo record's traffic) into coverage rows for `make cycle`.

    Rows become {"id","task","prompt","response"}, or {"id","task","messages","response"} for a
    conversation (system prompt, earlier turns); identical pairs are kept once.
    A bad record stops the import with `path:line: reason` (Parquet: `path:row N`) unless --skip-invalid.
    """
    from duo.data import importer
    from duo import params as params_mod

    if task_name is not None and task_col is not None:
        raise click.UsageError("give either --task or --task-col, not both")
    if task_name is not None and not task_name.strip():
        raise click.UsageError("--task is empty")
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists; pass --force to overwrite it")
    if src.exists() and out.exists() and src.resolve() == out.resolve():
        raise click.ClickException(f"{out} is the input file; write somewhere else")
    fmt = importer.detect_format(src, fmt)
    mapping = importer.Mapping(prompt=prompt_col, response=response_col, task_col=task_col,
                               task=task_name.strip() if task_name else None, id_col=id_col,
                               messages=messages_col, system=system, batch_input=batch_input)
    total, unit, _ = importer.source(src, fmt)
    with progress.bar(total, "import", unit=unit, unit_scale=unit == "B") as bar:
        rows, report = importer.run(src, fmt, mapping, skip_invalid=skip_invalid, bar=bar)
    for line in report.invalid[:10]:
        click.echo(f"skipped {line}", err=True)
    if len(report.invalid) > 10:
        click.echo(f"skipped ... and {len(report.invalid) - 10} more", err=True)
    if not rows:
        raise click.ClickException(f"{src}: no usable rows ({report.read} read, {len(report.invalid)} invalid, "
                                   f"{report.duplicates} duplicates)")
    records.write_jsonl(out, rows)
    ratio = params_mod.load(params_path).coverage.train_ratio if Path(params_path).exists() else 0.8
    for warning in importer.split_warnings(report.per_task, ratio):
        click.echo(f"warning: {warning}", err=True)
    tasks = ", ".join(f"{t} {n}" for t, n in sorted(report.per_task.items()))
    extra = ""
    if report.chat_records or report.log_records:
        extra = (f"; {report.chat_records} chat records, {report.log_records} API log records, "
                 f"{report.conversations} kept as conversations (system prompt or earlier turns)")
        if report.system_prepended:
            extra += f", {report.system_prepended} with the system message folded into the prompt"
    progress.summary("import", f"{report.read} read ({fmt}), {report.kept} kept, {report.duplicates} duplicate "
                     f"pairs dropped, {len(report.invalid)} invalid skipped{extra} -> {out}; tasks: {tasks}")


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
    from duo import params as params_mod
    from duo.synth import curate, filters

    cfg = params_mod.load(params_path).curate if Path(params_path).exists() else params_mod.Curate()
    new_rows = records.read_records(new, ROW_FIELDS, unique="id", allow_blank=True)  # blanks: filtered, named
    seen_rows = [r for path in seen for r in records.read_records(path, ROW_FIELDS, allow_empty=True)]
    test_rows = records.read_records(test_path, ROW_FIELDS, allow_empty=True) if test_path else []
    # `auto` length bounds come from the SEEN rows (your train split) of each task
    with progress.bar(len(new_rows), "curate", unit="row") as bar:
        kept, removed, counts = curate.curate(new_rows, seen_rows, test_rows, cfg, progress=bar.update,
                                              thresholds=filters.derive(seen_rows, cfg))
    records.write_jsonl(out, kept)
    by_id = {r["id"]: r for r in new_rows}
    records.write_jsonl(out.with_name(out.stem + ".rejected.jsonl"), [by_id[r["id"]] | r for r in removed])
    if report:
        records.write_json(report, counts | {"removed_rows": removed})
    reasons = ", ".join(f"{k} {v}" for k, v in counts["removed"].items()) or "nothing"
    progress.summary("curate", f"{counts['in']} in, {counts['out']} kept; removed: {reasons}")


@main.command("cycle")
def cycle_cmd() -> None:
    """One turn of the loop: run the current cycle, or the next one if the gate failed (make cycle)."""
    from duo.loop import cycle

    cycle.turn()


@main.command("converge")
def converge_cmd() -> None:
    """Turns until the gate passes or gate.max_cycles (make converge)."""
    from duo.loop import cycle

    cycle.converge()


@main.command("bench", context_settings={"ignore_unknown_options": True})
@click.argument("sections", nargs=-1)
def bench_cmd(sections: tuple[str, ...]) -> None:
    """Measured figures -> metrics/bench.json (make bench; sections: cycle train [levers] infer service
    curate synth serve). The benchmarks live with the tests of this checkout."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "bench.py").exists():
        raise click.ClickException(f"{root / 'tests' / 'bench.py'} not found: `duo bench` runs from a duo checkout")
    sys.exit(subprocess.call([sys.executable, "-m", "tests.bench", *sections], cwd=root))


# Commands that live with their modules: `duo report` (make report), `duo serve` (make serve), `duo measure`.
from duo.train.measure import main as _measure  # noqa: E402
from duo.app.record import main as _record  # noqa: E402
from duo.app.review import main as _review  # noqa: E402
from duo.report.build import main as _report  # noqa: E402
from duo.app.serve import main as _serve  # noqa: E402

main.add_command(_report, "report")
main.add_command(_serve, "serve")
main.add_command(_measure, "measure")
main.add_command(_record, "record")
main.add_command(_review, "review")


if __name__ == "__main__":
    main()
