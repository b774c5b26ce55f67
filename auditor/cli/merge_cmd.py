"""``audit merge``."""

from __future__ import annotations

import click

from auditor.cli.common import handle_errors
from auditor.store.db import DEFAULT_DB


@click.command()
@click.argument("parts", nargs=-1, required=True)
@click.option("--into", default=None, help="Run id of the merged run (default: the first part's id with -merged).")
@click.option(
    "--db", default=DEFAULT_DB, show_default=True, type=click.Path(), help="Database that receives the merged run (and holds parts named by run id alone)."
)
@handle_errors
def merge(parts: tuple[str, ...], into: str | None, db: str) -> None:
    """Combine the runs of a sharded scan (--num-shards N --shard-index I) into one run.

    Each PART is a run id in --db, DB.duckdb:RUN_ID for a shard scanned into another
    database (copy its run folder along), or DB.duckdb when it holds one sharded run.
    Parts made with a different model, vectors or settings are refused.
    """
    from auditor.merge import merge_runs

    result = merge_runs(list(parts), db=db, into=into)
    click.echo(
        f"merged {result['parts']} parts into run {result['run_id']}: {result['n_read']} rows read, "
        f"{result['n_scored']} scored, {result['n_rejected']} rejected\n  scores {result['parquet']}"
    )
