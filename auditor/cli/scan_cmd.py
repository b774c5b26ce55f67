"""``audit scan``."""

from __future__ import annotations

import dataclasses
import sys
import time

import click

from auditor.cli.common import handle_errors

# Options of the scan that are not settings of its results: how and where the work runs.
ENGINE_OPTION_LIST = [
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: this process; ray: a pool of Ray actors (pip install 'persona-audit[ray]').",
    ),
    click.option("--workers", default=2, show_default=True, type=int, help="Ray actors, each holding one copy of the model (--engine ray)."),
    click.option("--num-gpus-per-worker", default=0.0, show_default=True, type=float, help="GPUs per Ray actor (--engine ray)."),
    click.option("--ray-address", default=None, help="Existing Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local one)."),
]


def setting_option(field, option):
    """The click option of one ScanConfig field, from its declaration (auditor.config.setting)."""
    default = option.cli_default(field.default if field.default is not dataclasses.MISSING else field.default_factory())
    if option.choices:
        kind = click.Choice(list(option.choices))
    else:
        kind = click.Path() if option.type == "path" else option.type
    shown = default is not None and not option.flag and not option.multiple
    return click.option(
        *option.decls,
        option.param or field.name,
        type=kind,
        default=default,
        show_default=shown,
        is_flag=option.flag,
        multiple=option.multiple,
        metavar=option.metavar,
        help=option.help,
    )


def _apply(fn, options):
    for option in reversed(options):
        fn = option(fn)
    return fn


def scan_options(fn):
    """The ScanConfig options shared by scan and gate (from auditor.config, in declaration order), then the engine options."""
    from auditor.config import cli_settings

    return _apply(fn, [setting_option(f, o) for f, o in cli_settings() if not o.scan_only] + ENGINE_OPTION_LIST)


def output_options(fn):
    """The ScanConfig options only ``audit scan`` has: where the results go."""
    from auditor.config import cli_settings

    return _apply(fn, [setting_option(f, o) for f, o in cli_settings() if o.scan_only])


# Their parameter names, read from the declarations above (scan and gate pass them to the engine, not to ScanConfig).
ENGINE_OPTIONS = tuple(p.name for p in click.command()(_apply(lambda **kw: None, ENGINE_OPTION_LIST)).params)


def config_from_options(source: str, policy_path: str | None = None, use_policy: bool = True, **options):
    """A ScanConfig from the parsed options: each field's option goes through its declared ``parse``.

    A field may also be given by its own name (``report=False``), as gate does. --field/--role
    override the policy file's [scan] mapping name by name (``with_policy_mapping``).
    """
    from auditor.config import ScanConfig, cli_settings

    for name in ENGINE_OPTIONS:
        options.pop(name, None)
    values, given = {}, []
    for field, option in cli_settings():
        param = option.param or field.name
        if param in options:
            if given_on_command_line(param):
                given.append((field.name, option.flag_name))
            try:
                values[field.name] = option.to_field(options.pop(param))
            except ValueError as e:  # a malformed value (auditor.config.trait_values); AuditorErrors pass through
                raise click.BadParameter(str(e), param_hint=option.flag_name) from None
        elif field.name in options:
            values[field.name] = options.pop(field.name)
    if options:
        raise TypeError(f"config_from_options: unknown options {', '.join(sorted(options))}")
    seed_needs_sample(values)
    config = ScanConfig(source=source, **with_policy_mapping(values, policy_path, use_policy))
    note_unused_generation_options(config, given)
    return config


GENERATION_SETTINGS = ("max_new_tokens", "generator", "generation_dtype", "generation_batch_size")  # only baseline generate uses them


def given_on_command_line(param: str) -> bool:
    """Whether the user typed (or set through the environment) this option, rather than taking its default."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(param) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def note_unused_generation_options(config, given: list[tuple[str, str]]) -> None:
    """Say so when a generation option was given to a scan that generates nothing (the default baseline is prompt-last)."""
    unused = [flag for name, flag in given if name in GENERATION_SETTINGS]
    if unused and config.baseline != "generate":
        click.echo(
            f"note: {', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect with --baseline {config.baseline}, which generates "
            "no base response; add --baseline generate to score against the base model's own answers",
            err=True,
        )


def seed_needs_sample(values: dict) -> None:
    """--seed only means something with --sample (the library accepts a seed it does not use)."""
    if values.get("sample") is None and values.get("seed"):
        raise click.BadParameter("--seed only applies to --sample; add --sample N", param_hint="--seed")


def with_policy_mapping(values: dict, policy_path: str | None, use_policy: bool) -> dict:
    """``values`` with the policy file's [scan] field/role mapping under the --field/--role flags (flags win name by name)."""
    from auditor.gate import policy_mapping
    from auditor.sources import FieldMap

    mapping = policy_mapping(policy_path, use_policy).merged(FieldMap.parse(values.get("fields"), values.get("roles")))
    return {**values, "fields": dict(mapping.fields), "roles": dict(mapping.roles)}


def run_with_progress(config, quiet: bool = False, engine: dict | None = None):
    """Run a scan with a rich progress bar on stderr; returns the ScanResult.

    ``engine``: the --engine/--workers/... options; ``None`` or engine local runs here.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from auditor.pipeline import scan_run

    console = Console(stderr=True)
    total = estimate_records(config.source) if not config.score_all_turns else None
    if total is not None and (config.limit or config.sample):
        total = min(total, config.limit or config.sample)
    started = time.perf_counter()
    columns = [
        TextColumn("[bold]scanning[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rows" if total else "{task.completed} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("scan", total=total, rate="")

        def on_progress(state):
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = f"{state['scored'] / elapsed:.2f} samples/s, {state['tokens'] / elapsed:,.0f} tok/s"
            if state["rejected"]:
                rate += f", {state['rejected']} rejected"
            bar.update(task, completed=state["read"], rate=rate)

        engine = engine or {}
        if engine.get("engine", "local") == "ray":
            from auditor.distributed import scan_run_ray

            return interruptible(
                lambda: scan_run_ray(
                    config,
                    workers=engine["workers"],
                    num_gpus_per_worker=engine["num_gpus_per_worker"],
                    ray_address=engine["ray_address"],
                    progress=on_progress,
                )
            )
        return interruptible(lambda: scan_run(config, progress=on_progress))


def interruptible(fn):
    """Run ``fn``; a Ctrl-C always comes out as KeyboardInterrupt.

    Ctrl-C during a DuckDB query makes DuckDB raise an error of its own
    (``RuntimeError("Query interrupted")`` or ``duckdb.InterruptException``; it swallows the
    KeyboardInterrupt): the handler sets ``SIGINT_RECEIVED`` so the caller still sees an
    interruption (exit 130 and how to resume) and the run is marked interrupted, not failed.
    """
    import signal
    import threading

    from auditor.pipeline import SIGINT_RECEIVED, is_interruption

    if threading.current_thread() is not threading.main_thread():
        return fn()
    SIGINT_RECEIVED.clear()

    def on_sigint(signum, frame):
        SIGINT_RECEIVED.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return fn()
    except Exception as exc:
        if is_interruption(exc):
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def estimate_records(source: str) -> int | None:
    """Row count for a progress bar when it is cheap to know (local JSONL, Parquet)."""
    try:
        from auditor.sources.readers import expand_paths, file_type

        total = 0
        for path in expand_paths(source):
            if file_type(path) == "jsonl" and not path.endswith(".gz"):
                with open(path, "rb") as fh:
                    total += sum(1 for line in fh if line.strip())
            elif file_type(path) == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
            else:
                return None
        return total
    except Exception:
        return None


# Narrower terminals get the top samples as lines under the table, not as a column.
TOP_COLUMN_MIN_WIDTH = 110


def print_summary(result, console=None) -> None:
    """The scan's summary on the terminal: the per-trait table, the top samples, counts, where things are, notes."""
    from rich.console import Console

    console = console or Console()
    wide = console.width >= TOP_COLUMN_MIN_WIDTH
    ordered = sorted(result.summaries, key=lambda s: -(s.n_flagged / s.n if s.n else 0))
    console.print(_summary_table(result, ordered, wide))
    if not wide and any(s.top for s in ordered):
        _print_top_lines(console, ordered)
    _print_run_footer(console, result)


def _summary_table(result, ordered: list, wide: bool):
    """One row per trait (most flagged first); the top samples as a column when the terminal is ``wide``."""
    from rich.table import Table

    from auditor.score import ScoreMeaning

    table = Table(title=f"persona-audit: {result.n_scored} samples scored with {result.model_name}", title_justify="left")
    table.add_column("trait")
    table.add_column("layer", justify="right")
    score = result.summaries[0].score if result.summaries else "delta"
    table.add_column(ScoreMeaning.from_column(None, score).mean_label, justify="right")
    table.add_column("clean ref", justify="right")
    table.add_column("flagged", justify="right")
    table.add_column("threshold", justify="right")
    if wide:
        table.add_column("top samples (score)", overflow="fold")
    tops = {s.trait: "\n".join(f"{t['sample_id']} ({t['score']:+.2f})" for t in s.top[:2]) for s in ordered}  # one sample per line
    for s in ordered:
        level = s.mean_score
        rate = f"{s.n_flagged} ({100 * s.n_flagged / s.n:.1f}%)" if s.n else "0"
        cells = [
            s.trait,
            str(s.layer),
            "-" if level is None else f"{level:+.3f}",
            "-" if s.calibration_mean is None else f"{s.calibration_mean:+.3f}",
            rate,
            "-" if s.threshold is None else f"{s.threshold:.3f}",
        ]
        table.add_row(*cells, *([tops[s.trait]] if wide else []))
    return table


def _print_top_lines(console, ordered: list) -> None:
    """Narrow terminals: the top samples under the table, one line per sample (score first), cut at the edge rather than wrapped."""
    console.print("top samples (score):")
    name_width = max(len(s.trait) for s in ordered)
    for s in ordered:
        for i, t in enumerate(s.top[:2] or [None]):
            text = "-" if t is None else f"{t['score']:+8.2f}  {t['sample_id']}"
            console.print(f"  {s.trait if i == 0 else '':<{name_width}}  {text}", markup=False, highlight=False, no_wrap=True, overflow="ellipsis")


def _print_run_footer(console, result) -> None:
    """Counts and timing, where the run's files are, how to query it, and notes (thresholds, resume, rejects)."""
    from auditor.store.queries import example_query

    reused = f" ({result.n_computed} computed, {result.n_reused} reused from earlier runs)" if result.n_reused else ""
    if result.baseline == "generate":
        base = f"base responses: {result.n_generated} generated, {result.n_cached} from cache"
    else:
        base = f"baseline {result.baseline}, nothing generated"
    console.print(
        f"read {result.n_read} rows: {result.n_scored} scored{reused}, {result.n_rejected} rejected; "
        f"{base}; {result.seconds:.1f} s ({result.n_scored / max(result.seconds, 1e-9):.2f} samples/s)"
    )
    console.print(f"run {result.run_id}")
    console.print(f"  scores   {result.parquet_path}")
    console.print(f"  database {result.db_path}")
    console.print(f'  query    audit sql "{example_query("flagged", result.run_id)}" --db {result.db_path}', markup=False, highlight=False, soft_wrap=True)
    if result.report_path:
        console.print(f"  report   {result.report_path}")
    for s in result.summaries:
        if s.threshold is None:
            console.print(f"[yellow]note[/]: no flag threshold for {s.trait}: {s.threshold_source}")
    if result.resumed_chunks:
        console.print(f"resumed: {result.resumed_chunks} chunks were already stored and were not scanned again")
    if result.rejects:
        shown = 5
        console.print(f"[yellow]{len(result.rejects)} rejected[/] (--on-error skip); each is in the rejects table with its reason:", markup=True)
        for r in result.rejects[:shown]:
            console.print(f"  {r.reason}", markup=False, highlight=False)
        if len(result.rejects) > shown:
            console.print(
                f'  ... and {len(result.rejects) - shown} more: audit sql "{example_query("rejects", result.run_id)}"',
                markup=False,
                highlight=False,
            )


def summary_json(result, source: str) -> str:
    """``audit scan --json``: the run's summary as one JSON document (the table's content, and more)."""
    import json

    traits = []
    for s in result.summaries:
        traits.append(
            {
                "trait": s.trait,
                "layer": s.layer,
                "score": s.score,
                "mean_delta": s.mean_delta,
                "mean_proj_response": s.mean_proj_response,
                "calibration_mean": s.calibration_mean,
                "threshold": s.threshold,
                "threshold_source": s.threshold_source,
                "n": s.n,
                "n_flagged": s.n_flagged,
                "flag_rate": s.n_flagged / s.n if s.n else None,
                "top": list(s.top),
            }
        )
    doc = {
        "run_id": result.run_id,
        "dataset": source,
        "model": result.model_name,
        "n_read": result.n_read,
        "n_scored": result.n_scored,
        "n_rejected": result.n_rejected,
        "n_generated": result.n_generated,
        "n_cached": result.n_cached,
        "resumed_chunks": result.resumed_chunks,
        "seconds": round(result.seconds, 3),
        "tokens": result.tokens,
        "scores_path": result.parquet_path,
        "db_path": result.db_path,
        "report_path": result.report_path,
        "traits": traits,
        "rejects": [{"source": r.source, "line": r.line, "reason": r.reason} for r in result.rejects],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str)


def interrupted_message(argv: list[str] | None = None) -> str:
    """What Ctrl-C prints: what is kept and the exact command that continues the scan."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return f"Interrupted. Every completed chunk is stored; to continue where the scan stopped, run the same command with --resume:\n  audit {shlex.join(args)}"


@click.command(context_settings={"max_content_width": 100})
@click.argument("source")
@scan_options
@output_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary (JSON) on stdout instead of the table; progress stays on stderr.")
@handle_errors
def scan(source: str, quiet: bool, as_json: bool, **kw) -> None:
    """Score every sample of SOURCE for every trait.

    SOURCE is a .jsonl/.json/.parquet/.csv file (gzip'd JSONL too), a folder, a quoted
    glob, or hf:owner/name for a Hugging Face dataset. Per sample and trait it computes
    the projection of the response on the persona vector minus the base model's reference
    for the same prompt (delta): by default its state at the last prompt token, with
    --baseline generate its own greedy answer. A large positive delta means training on
    the sample pushes the model toward the trait. Preference pairs
    (prompt/chosen/rejected) are scored by their margin, proj(chosen) - proj(rejected).
    Formats, --field/--role mapping and --limit/--sample previews: docs/formats.md.
    """
    engine = {name: kw.get(name) for name in ENGINE_OPTIONS}
    config = config_from_options(source, **kw)
    try:
        result = run_with_progress(config, quiet=quiet, engine=engine)
    except KeyboardInterrupt:
        click.echo("\n" + interrupted_message(), err=True)
        sys.exit(130)
    if as_json:
        click.echo(summary_json(result, source))
    else:
        print_summary(result)
