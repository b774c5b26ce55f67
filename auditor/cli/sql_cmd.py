"""``audit sql``."""

from __future__ import annotations

import sys

import click

from auditor.cli.common import handle_errors
from auditor.store.db import DEFAULT_DB


@click.command(context_settings={"max_content_width": 100})
@click.argument("query", required=False)
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False), help="DuckDB database to query (opened read-only).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "jsonl", "parquet"]),
    default="table",
    show_default=True,
    help="Output format; parquet needs --out.",
)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the result to this file instead of stdout.")
@click.option("--max-rows", default=200, show_default=True, type=int, help="Rows shown by --format table (the file formats write every row).")
@handle_errors
def sql(query: str | None, db: str, fmt: str, out: str | None, max_rows: int) -> None:
    """Query the results database, read-only.

    QUERY is DuckDB SQL; only read queries run (SELECT, WITH, SHOW, DESCRIBE, SUMMARIZE,
    EXPLAIN, reading PRAGMAs): the database is opened read-only and anything else is
    refused, COPY ... TO and ATTACH included.
    With no QUERY, a terminal gets an interactive prompt (statements end with ';',
    .quit leaves); otherwise it prints how to open the database with the duckdb CLI.

    \b
    Views over the tables (runs, samples, scores, rejects, ...):
      flagged          every flagged (sample, trait) with its text
      top_samples      every (sample, trait) ranked by the run's flag score (delta or proj_response)
      dataset_summary  per run and trait: n, mean_delta, n_flagged, flag_rate, max_delta

    \b
    Examples:
      audit sql "SELECT * FROM dataset_summary"
      audit sql "SELECT sample_id, delta, source, line FROM flagged WHERE trait = 'evil' ORDER BY delta DESC" --format csv
      audit sql "SELECT * FROM scores" --format parquet --out scores.parquet
    """
    from auditor.sql import duckdb_cli_hint, repl, run_sql

    if query is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            from rich.console import Console

            from auditor.sql import open_readonly

            open_readonly(db).close()  # a missing database fails now, not at the first query
            repl(db, input, Console(), max_rows=max_rows)
            return
        click.echo(duckdb_cli_hint(db))
        return
    run_sql(db, query, fmt, out=out, max_rows=max_rows)
    if out:
        click.echo(f"wrote {out}", err=True)
