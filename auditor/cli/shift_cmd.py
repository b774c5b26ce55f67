"""``audit shift``."""

from __future__ import annotations

import json
import sys

import click

from auditor.cli.common import handle_errors, parse_pairs, split_list
from auditor.model.loading import DEVICES, DTYPES
from auditor.shift import DEFAULT_MAX_NEW_TOKENS
from auditor.store.db import DEFAULT_DB

_RULE = "TRAIT=V, or V for every trait. Repeatable; a broken limit exits 1."


def print_shift(report, results, console) -> None:
    from rich.table import Table

    def fmt(v):
        return "-" if v is None else f"{v:+.4f}"

    console.print(f"[bold]persona-audit shift[/] {report.tuned} against {report.base} ({report.seconds:.1f} s)", highlight=False)
    table = Table()
    for col in ("trait", "layer", "finetuning shift", "expression base", "expression tuned", "expression shift", "behaviour shift"):
        table.add_column(col, justify="left" if col == "trait" else "right")
    for ts in report.traits:
        table.add_row(
            ts.trait,
            str(ts.layer),
            fmt(ts.shift),
            fmt(ts.expression_base),
            fmt(ts.expression_tuned),
            fmt(ts.expression_shift),
            fmt(ts.behaviour_shift),
        )
    console.print(table)
    console.print(
        "[dim]finetuning shift: last-prompt-token projection, tuned - base, on the trait's evaluation questions; expression: "
        "projection of each model's own answers; behaviour: change of the written answers' log-likelihood margin (no vector).[/]"
    )
    for r in results:
        mark = "[green]pass[/]" if r["passed"] else "[bold red]FAIL[/]"
        console.print(f"{mark} {r['rule']} {r['trait']}: {fmt(r['value'])} (limit {r['limit']:+.4f})", highlight=False)


@click.command(context_settings={"max_content_width": 100})
@click.argument("tuned")
@click.option(
    "--base",
    default=None,
    help="The model TUNED was fine-tuned from: a folder, a hub id in the cache, or 'embedded' (default: an adapter's base, else embedded).",
)
@click.option("--traits", default=None, help="Comma-separated traits (default: every vector in --vectors).")
@click.option("--vectors", default=None, type=click.Path(), help="Vector folder or file (default: vectors/<base model>/).")
@click.option("--layer", "layers", multiple=True, metavar="TRAIT=L", help="Use layer L instead of the vector's recommended one. Repeatable.")
@click.option(
    "--max-new-tokens", default=DEFAULT_MAX_NEW_TOKENS, show_default=True, type=click.IntRange(1), help="Length of the answers the expression measure reads."
)
@click.option("--no-expression", is_flag=True, help="Skip the expression measure (no generation: much faster).")
@click.option("--max-shift", multiple=True, metavar="TRAIT=V", help=f"Largest allowed finetuning shift. {_RULE}")
@click.option("--max-expression-shift", multiple=True, metavar="TRAIT=V", help=f"Largest allowed expression shift. {_RULE}")
@click.option("--max-behaviour-shift", multiple=True, metavar="TRAIT=V", help=f"Largest allowed behavioural (log-likelihood margin) shift. {_RULE}")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Database that keeps a row per (base, tuned, trait).")
@click.option("--no-store", is_flag=True, help="Do not write to the database.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(DTYPES), help="Weights dtype for both models.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES), help="Where to run both models.")
@click.option("--trust-remote-code", is_flag=True, help="Run model code shipped with the checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (nothing else goes to stdout).")
@handle_errors
# long: a click command: the signature (one line per option) and the docstring (the --help) take 30 lines; the body, about 40, loads, measures and prints.
def shift(
    tuned,
    base,
    traits,
    vectors,
    layers,
    max_new_tokens,
    no_expression,
    max_shift,
    max_expression_shift,
    max_behaviour_shift,
    db,
    no_store,
    dtype,
    device,
    trust_remote_code,
    as_json,
):
    """Measure what fine-tuning did: TUNED (a model folder or a PEFT/LoRA adapter folder) against its base.

    \b
    Per trait, on the trait's evaluation questions (never its extraction questions):
      finetuning shift   last-prompt-token projection on the vector, tuned - base (the paper's measure)
      expression         projection of each model's own greedy answers, and their difference
      behaviour          change of the log-likelihood margin of the trait-showing written answer
                         over the trait-free one (vectors/traits/*.yaml examples.evaluation): no vector
    Exit 0: every limit holds (or none given); 1: a limit is broken; 2: an error.
    """
    from rich.console import Console

    from auditor.model import load_model
    from auditor.shift import adapter_base, broken_rules, is_adapter, load_tuned, measure_shift
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    if base is None:
        base = (adapter_base(tuned) if is_adapter(tuned) else None) or "embedded"
    limits = {
        measure: parse_pairs(values, option)
        for measure, values, option in (
            ("shift", max_shift, "--max-shift"),
            ("expression", max_expression_shift, "--max-expression-shift"),
            ("behaviour", max_behaviour_shift, "--max-behaviour-shift"),
        )
        if values
    }
    console = Console(stderr=as_json)
    base_lm = load_model(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    tuned_lm = load_tuned(tuned, base_lm, dtype=dtype, device=base_lm.device, trust_remote_code=trust_remote_code)
    pvs = load_vectors(
        vectors,
        base_lm.name,
        traits=split_list(traits),
        layers=parse_pairs(layers, "--layer", int),
        num_layers=base_lm.num_layers,
        hidden_size=base_lm.hidden_size,
        fingerprint=base_lm.fingerprint,
    )
    report = measure_shift(base_lm, tuned_lm, pvs, {pv.trait: load_trait(pv.trait) for pv in pvs}, max_new_tokens=max_new_tokens, expression=not no_expression)
    if not no_store:
        from auditor.store.shifts import save_shifts

        save_shifts(db, report)
    results = broken_rules(report, limits)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "rules": results, "passed": all(r["passed"] for r in results)}, indent=2))
    else:
        print_shift(report, results, console)
    sys.exit(0 if all(r["passed"] for r in results) else 1)
