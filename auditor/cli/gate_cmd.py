"""``audit gate``."""

from __future__ import annotations

import sys

import click

from auditor.cli.common import handle_errors
from auditor.cli.scan_cmd import ENGINE_OPTIONS, config_from_options, run_with_progress, scan_options

_RULE_HELP = "TRAIT=V, or V for every trait. Repeatable."


def print_gate(gates, console) -> None:
    """The human summary: one rules table per gate, the worst samples of failed rules, a verdict."""
    from rich.table import Table

    from auditor.gate import format_limit, format_value

    for g in gates:
        rejected = f", {g.n_rejected} rejected" if g.n_rejected else ""
        console.print(f"[bold]persona-audit gate[/] {g.dataset or g.run_id}: run {g.run_id}, {g.model}, {g.n_scored} samples{rejected}", highlight=False)
        table = Table()
        for col, justify in (("rule", "left"), ("trait", "left"), ("value", "right"), ("limit", "right"), ("result", "left")):
            table.add_column(col, justify=justify)
        for r in g.results:
            table.add_row(r.rule, r.trait, format_value(r), format_limit(r), "[green]pass[/]" if r.passed else "[bold red]FAIL[/]")
        console.print(table)
        for r in g.results:
            if r.passed:
                continue
            console.print(f"[red]FAIL[/] {r.message}  [dim](from {r.origin})[/]", highlight=False)
            for w in r.worst:
                where = f"{w['source']}:{w['line']}"
                # Ids default to file:line; show the id only when the record chose its own.
                named = "" if where.endswith(str(w["sample_id"])) else f"  id {w['sample_id']}"
                console.print(f"    {where}{named}  {w['score_name']} {w['score']:+.4f}  {w['response'][:80]!r}", highlight=False, soft_wrap=True)
    failed = sum(not r.passed for g in gates for r in g.results)
    total = sum(len(g.results) for g in gates)
    if failed:
        console.print(f"[bold red]gate failed[/]: {failed} of {total} rules broken")
    else:
        console.print(f"[bold green]gate passed[/]: {total} rules checked")


# Long for its --help text (the docstring) and one parameter per option; the work is in the library.
@click.command(context_settings={"max_content_width": 100})
@click.argument("targets", nargs=-1, metavar="[SOURCE_OR_RUN]...")
@click.option(
    "--run",
    "run_spec",
    default=None,
    metavar="RUN_ID|latest",
    help="Gate a run already in the database instead of scanning (a run id, a unique prefix, or latest).",
)
@click.option("--max-delta", multiple=True, metavar="TRAIT=V", help=f"Fail when the dataset-level delta (mean over samples) is above V. {_RULE_HELP}")
@click.option(
    "--max-delta-over-calibration",
    multiple=True,
    metavar="TRAIT=M",
    help=f"Fail when the dataset-level delta is above the vector's calibration mean by more than M. {_RULE_HELP}",
)
@click.option("--max-flag-rate", multiple=True, metavar="TRAIT=R", help=f"Fail when more than R (0.05 or 5%) of the samples are flagged. {_RULE_HELP}")
@click.option("--max-sample-delta", multiple=True, metavar="TRAIT=V", help=f"Fail when any sample's delta is above V. {_RULE_HELP}")
@click.option(
    "--policy",
    "policy_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Policy file (audit.toml, or a pyproject.toml) instead of the one found from the working directory up.",
)
@click.option("--no-policy", is_flag=True, help="Ignore audit.toml / pyproject.toml; use only the rules given as flags.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (nothing else goes to stdout).")
@click.option("--junit-xml", "junit_path", default=None, type=click.Path(dir_okay=False), help="Also write a JUnit XML file: one test case per rule.")
@click.option("--report", is_flag=True, help="Also render the HTML report of a scanned dataset (off: the gate stays fast).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar while scanning.")
@scan_options
@handle_errors
# long: a click command: the signature (one line per option) and the docstring (the --help, with the policy example) take 40 lines; the body is about 30.
def gate(
    targets,
    run_spec,
    max_delta,
    max_delta_over_calibration,
    max_flag_rate,
    max_sample_delta,
    policy_path,
    no_policy,
    as_json,
    junit_path,
    report,
    quiet,
    **scan_kw,
) -> None:
    """Fail (exit 1) when a dataset breaks the policy; exit 0 when it keeps it.

    SOURCE_OR_RUN is a dataset (scanned first, with the scan options below) or a run id
    already in the database; --run RUN_ID|latest does the same. Several datasets may be
    given (each is gated on its own, e.g. from a pre-commit hook). A failed rule exits 1;
    anything that goes wrong exits 2, never 1, so CI can tell a risky dataset from a
    broken run (the exit codes are listed at the end).

    Rules are per trait; a value without TRAIT= applies to every trait. The policy is read
    from audit.toml (or [tool.persona-audit.gate] in pyproject.toml) found from the working
    directory upward; flags override it per rule and trait:

    \b
        # audit.toml
        [gate]
        max-delta = 0.5                       # every trait
        max-flag-rate = { sycophancy = "5%" }
        max-sample-delta = { "*" = 8.0, evil = 6.0 }

    On GitHub Actions (GITHUB_ACTIONS=true) the gate also appends a Markdown summary to
    $GITHUB_STEP_SUMMARY and prints error annotations at the worst samples' file and line.
    """
    from rich.console import Console

    from auditor.config import split_list
    from auditor.gate import check_rule_traits, dumps_json, evaluate_runs, load_policy, resolve_targets, write_outputs

    if run_spec and targets:
        raise click.UsageError("give either datasets/run ids or --run, not both")
    if not run_spec and not targets:
        raise click.UsageError("give a dataset to scan (audit gate data/train.jsonl) or a run (--run RUN_ID|latest)")
    flags = {
        "max-delta": max_delta,
        "max-delta-over-calibration": max_delta_over_calibration,
        "max-flag-rate": max_flag_rate,
        "max-sample-delta": max_sample_delta,
    }
    rules, _policy_file = load_policy(flags, policy_path=policy_path, use_files=not no_policy)
    if not rules:
        raise click.UsageError(
            "no gate rules: pass --max-delta, --max-delta-over-calibration, --max-flag-rate or --max-sample-delta, or write them in audit.toml ([gate] table)"
        )
    if scan_kw.get("num_shards", 1) != 1:
        raise click.UsageError("a gate needs the whole dataset: scan the shards, audit merge them, then audit gate --run MERGED_RUN")
    db = scan_kw["db"]
    traits = split_list(scan_kw.get("traits"))
    if targets and traits:
        # Before an expensive scan: a rule for a trait the scan will not score could only fail afterwards.
        check_rule_traits(rules, traits, f"--traits leaves out of this scan (it scores {', '.join(traits)})")
    run_ids = _run_ids(resolve_targets(targets, db, run_spec), scan_kw, policy_path, not no_policy, report, quiet)
    gates = evaluate_runs(db, run_ids, rules)
    # Workflow commands are read from the step's output; with --json they go to stderr so
    # stdout stays one JSON document.
    annotations = write_outputs(gates, junit_path)
    if as_json:
        click.echo(dumps_json(gates))
    else:
        print_gate(gates, Console())
    for line in annotations:
        click.echo(line, err=as_json)
    sys.exit(0 if all(g.passed for g in gates) else 1)


def _run_ids(todo: list[tuple[str, str]], scan_kw: dict, policy_path: str | None, use_policy: bool, report: bool, quiet: bool) -> list[str]:
    """Every target as a run id: datasets (``("scan", path)``) are scanned now, run ids are taken as they are."""
    engine = {name: scan_kw.get(name) for name in ENGINE_OPTIONS}
    run_ids: list[str] = []
    for kind, target in todo:
        if kind != "scan":
            run_ids.append(target)
            continue
        config = config_from_options(target, policy_path=policy_path, use_policy=use_policy, report=report, **dict(scan_kw))
        try:
            result = run_with_progress(config, quiet=quiet, engine=engine)
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            sys.exit(130)
        run_ids.append(result.run_id)
    return run_ids
