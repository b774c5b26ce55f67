"""``audit runs``."""

from __future__ import annotations

import json

import click

from auditor.cli.common import handle_errors
from auditor.store.db import DEFAULT_DB


@click.command(context_settings={"max_content_width": 100})
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False), help="DuckDB database to read (opened read-only).")
@click.option("--limit", "-n", default=20, show_default=True, type=int, help="Newest runs to list (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@handle_errors
def runs(db: str, limit: int, as_json: bool) -> None:
    """List the runs stored in the database, newest first.

    For each run: its id (what --run takes in gate, filter and report), status, dataset,
    model, samples scored and rejected, flagged counts per trait, and when it started.
    """
    from auditor.store.db import connect
    from auditor.store.queries import list_runs

    with connect(db, read_only=True) as con:
        rows = list_runs(con, limit=limit or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)  # piped or captured: no reason to squeeze the table
    if not rows:
        console.print(f"{db} holds no runs; run audit scan DATASET")
        return
    table = Table(title=f"runs in {db}, newest first", title_justify="left")
    # Run ids are what --run takes: never wrapped, so they can be copied whole.
    for col, justify, no_wrap in (
        ("run id", "left", True),
        ("status", "left", True),
        ("started", "left", True),
        ("scored", "right", True),
        ("rejected", "right", True),
        ("flagged", "left", False),
        ("dataset", "left", False),
        ("model", "left", False),
    ):
        table.add_column(col, justify=justify, no_wrap=no_wrap, overflow="fold", min_width=max(len(r["run_id"]) for r in rows) if col == "run id" else None)
    colours = {"complete": "green", "running": "yellow", "failed": "red", "interrupted": "red"}
    for r in rows:
        flags = "\n".join(f"{t} {n}" for t, n in r["flags"].items()) or "-"
        started = r["started_at"].strftime("%Y-%m-%d %H:%M") if r["started_at"] else "-"
        status = f"[{colours.get(r['status'], 'white')}]{r['status']}[/]"
        table.add_row(r["run_id"], status, started, _count(r["n_scored"]), _count(r["n_rejected"]), flags, _tail(r["dataset"]), _tail(r["model"]))
    console.print(table)


def _count(value) -> str:
    return "-" if value is None else str(value)


def _tail(text: str | None, width: int = 40) -> str:
    """Long paths keep their end (the file name), which is the part that tells runs apart."""
    if not text:
        return "-"
    return text if len(text) <= width else "…" + text[-(width - 1) :]
