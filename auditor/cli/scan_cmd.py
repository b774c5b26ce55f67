"""``audit scan``."""

from __future__ import annotations

import os
import sys
import time

import click

from auditor.cli.common import handle_errors, parse_pairs, split_list
from auditor.score import BASELINES, FLAG_ON

DEFAULT_DB = os.path.join("reports", "audit.duckdb")


# long: only the list of scan options (one declaration each, with default and help); no logic to split.
def scan_options(fn):
    """Options shared by scan and gate (declared once, shown by --help)."""
    options = [
        click.option("--traits", "-t", default=None, help="Comma-separated traits to score (default: every vector found)."),
        click.option("--model", "-m", default=None, help="Hugging Face id or local model folder (default: the embedded SmolLM2-135M-Instruct)."),
        click.option("--vectors", default=None, type=click.Path(), help="Vector folder or file (.safetensors, or published .pt) (default: vectors/<model>/)."),
        click.option("--layer", "layers", multiple=True, help="Layer to use, TRAIT=L or L for all (default: the vector's recommended layer). Repeatable."),
        click.option(
            "--baseline",
            type=click.Choice(list(BASELINES)),
            default="generate",
            show_default=True,
            help="What to subtract: the base model's own response (generate), the last prompt token (prompt-last), or nothing (raw projection).",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["auto", "messages", "sharegpt", "alpaca", "prompt-response", "preference"]),
            default="auto",
            show_default=True,
            help="Record format (docs/formats.md); preference: prompt/chosen/rejected pairs, scored by their margin.",
        ),
        click.option(
            "--field",
            "fields",
            multiple=True,
            metavar="OURS=THEIRS",
            help="Read one of our fields from the dataset's: prompt=question, response=best_answer, messages=conversation, role=speaker ... Repeatable.",
        ),
        click.option(
            "--role", "roles", multiple=True, metavar="OURS=THEIRS", help="Read a role under the dataset's name: user=human, assistant=bot. Repeatable."
        ),
        click.option("--limit", default=None, type=int, help="Scan only the first N records (a preview)."),
        click.option("--sample", default=None, type=int, help="Scan N records spread over the whole dataset, chosen by --seed (streamed; a preview)."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of --sample: the same seed gives the same records."),
        click.option("--split", default="train", show_default=True, help="Split, for hf: datasets."),
        click.option("--config", "hf_config", default=None, help="Config name, for hf: datasets."),
        click.option("--score-all-turns", is_flag=True, help="Score every assistant turn of multi-turn conversations as its own row."),
        click.option("--max-new-tokens", default=256, show_default=True, type=int, help="Length cap of generated base responses."),
        click.option(
            "--max-prompt-tokens", default=512, show_default=True, type=int, help="Prompts longer than this lose tokens from their start (0: no cap)."
        ),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default="auto",
            show_default=True,
            help="auto: bfloat16 where the hardware runs it fast (AMX CPUs, GPUs), else float32.",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps."),
        click.option(
            "--batch-tokens",
            default=0,
            show_default=True,
            type=int,
            help="Padded tokens per forward batch; 0: automatic (4096 on CPU, from free memory on a GPU).",
        ),
        click.option(
            "--generation-batch-size",
            default=0,
            show_default=True,
            type=int,
            help="Prompts generated together; 0: automatic (32 on CPU, from free memory on a GPU).",
        ),
        click.option(
            "--generation-dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default="auto",
            show_default=True,
            help="dtype of the model copy that generates base responses; auto: float32 on CPU (greedy tokens then do not depend on the batch), the model's dtype on a GPU.",
        ),
        click.option(
            "--generator",
            type=click.Choice(["hf", "vllm"]),
            default="hf",
            show_default=True,
            help="Base responses with transformers (hf) or vLLM (pip install 'persona-audit[vllm]', a CUDA GPU).",
        ),
        click.option("--chunk-size", default=256, show_default=True, type=int, help="Records per stored chunk (memory and resume granularity)."),
        click.option(
            "--flag-on",
            type=click.Choice(list(FLAG_ON)),
            default="delta",
            show_default=True,
            help="Per-sample score that flags use: the projection difference (delta, the paper's measure) or the raw projection of the response (bench/NOTES.md compares them).",
        ),
        click.option(
            "--flag-percentile", default=95.0, show_default=True, type=float, help="Flag samples above this percentile of the vector's clean calibration set."
        ),
        click.option("--threshold", "thresholds", multiple=True, help="Absolute flag threshold, TRAIT=VALUE (overrides calibration). Repeatable."),
        click.option(
            "--on-error",
            type=click.Choice(["fail", "skip"]),
            default="fail",
            show_default=True,
            help="Bad records: stop with an error, or skip them and record why.",
        ),
        click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(), help="DuckDB database that accumulates runs."),
        click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run (only for models you trust)."),
        click.option("--layers-path", default=None, help="Dotted path of the decoder block list, for architectures persona-audit does not know."),
        click.option("--resume", is_flag=True, help="Continue the last unfinished run with the same settings after its last stored chunk."),
        click.option(
            "--no-reuse",
            is_flag=True,
            help="Compute every sample. By default a sample whose text, model, vectors and projection settings match a sample of an earlier "
            "complete run in --db takes that run's scores (docs/incremental.md).",
        ),
        click.option("--num-shards", default=1, show_default=True, type=int, help="Split the dataset into this many deterministic slices (by chunk)."),
        click.option(
            "--shard-index", default=0, show_default=True, type=int, help="Which slice this process scans (0-based); merge the parts with audit merge."
        ),
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
    for option in reversed(options):
        fn = option(fn)
    return fn


ENGINE_OPTIONS = ("engine", "workers", "num_gpus_per_worker", "ray_address")


def config_from_options(source: str, policy_path: str | None = None, use_policy: bool = True, **kw):
    """A ScanConfig from the options; --field/--role override the policy file's [scan] mapping name by name."""
    from auditor.gate import policy_mapping
    from auditor.pipeline import ScanConfig
    from auditor.sources import FieldMap

    for name in ENGINE_OPTIONS:
        kw.pop(name, None)
    mapping = policy_mapping(policy_path, use_policy).merged(FieldMap.parse(kw.pop("fields", ()), kw.pop("roles", ())))
    kw.update(fields=dict(mapping.fields), roles=dict(mapping.roles))
    if kw.get("sample") is None and kw.get("seed"):
        raise click.BadParameter("--seed only applies to --sample; add --sample N", param_hint="--seed")
    layers = {k: int(v) for k, v in parse_pairs(kw.pop("layers"), "--layer", int).items()}
    thresholds = parse_pairs(kw.pop("thresholds"), "--threshold", float)
    max_prompt = kw.pop("max_prompt_tokens")
    reuse = not kw.pop("no_reuse", False)
    return ScanConfig(
        source=source,
        traits=split_list(kw.pop("traits")),
        model=kw.pop("model"),
        vectors=kw.pop("vectors"),
        layers=layers,
        thresholds=thresholds,
        format=kw.pop("fmt"),
        max_prompt_tokens=max_prompt or None,
        reuse=reuse,
        **kw,
    )


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
    console.print(
        f"read {result.n_read} rows: {result.n_scored} scored{reused}, {result.n_rejected} rejected; "
        f"base responses: {result.n_generated} generated, {result.n_cached} from cache; "
        f"{result.seconds:.1f} s ({result.n_scored / max(result.seconds, 1e-9):.2f} samples/s)"
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
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Folder for scores.parquet and report.html (default: reports/runs/<run id>/).")
@click.option("--no-report", is_flag=True, help="Do not render report.html.")
@click.option("--top-n", default=50, show_default=True, type=int, help="Samples per trait shown in the report (with token heat maps).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary (JSON) on stdout instead of the table; progress stays on stderr.")
@handle_errors
def scan(source: str, out_dir, no_report: bool, top_n: int, quiet: bool, as_json: bool, **kw) -> None:
    """Score every sample of SOURCE for every trait.

    SOURCE is a .jsonl/.json/.parquet/.csv file (gzip'd JSONL too), a folder, a quoted
    glob, or hf:owner/name for a Hugging Face dataset. Per sample and trait it computes
    the projection of the response on the persona vector, the same for the base model's
    own response to the same prompt, and their difference (delta): a large positive delta
    means training on the sample pushes the model toward the trait. Preference pairs
    (prompt/chosen/rejected) are scored by their margin, proj(chosen) - proj(rejected).
    Formats, --field/--role mapping and --limit/--sample previews: docs/formats.md.
    """
    engine = {name: kw.get(name) for name in ENGINE_OPTIONS}
    config = config_from_options(source, out_dir=out_dir, report=not no_report, top_n=top_n, **kw)
    try:
        result = run_with_progress(config, quiet=quiet, engine=engine)
    except KeyboardInterrupt:
        click.echo("\n" + interrupted_message(), err=True)
        sys.exit(130)
    if as_json:
        click.echo(summary_json(result, source))
    else:
        print_summary(result)
