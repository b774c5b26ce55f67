"""``audit report``."""

from __future__ import annotations

import os

import click

from auditor.cli.common import handle_errors
from auditor.config import default_of
from auditor.store.db import DEFAULT_DB


@click.command(context_settings={"max_content_width": 100})
@click.argument("run_id", metavar="RUN_ID|latest")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False), help="DuckDB database to read (opened read-only).")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="HTML file to write (default: report.html in the run's output folder).")
@click.option(
    "--top-n",
    default=default_of("top_n"),
    show_default=True,
    type=click.IntRange(min=0),
    help="Samples per trait in the ranked tables, with details and heat maps.",
)
@handle_errors
def report(run_id: str, db: str, out: str | None, top_n: int) -> None:
    """Rebuild a run's HTML report from the database alone (the model is not loaded).

    RUN_ID is a run id, a unique prefix of one, or latest (the newest complete run);
    audit runs lists them. The report is one self-contained HTML file (no network, opens
    from disk): per trait the dataset-level score against the calibration set, flag counts,
    a histogram, the top samples ranked with their base-model responses and token heat
    maps, then samples flagged for several traits and a breakdown by source file and
    metadata. The same run always gives a byte-identical file.

    Heat maps exist for the samples the scan stored token scores for (its --top-n): a
    larger --top-n here shows more rows, and the extra ones without heat maps.
    """
    from auditor.report import render_report
    from auditor.store.db import connect
    from auditor.store.queries import resolve_run, run_output_dir

    if out is None:
        with connect(db, read_only=True) as con:
            info = resolve_run(con, run_id, db)
            folder = run_output_dir(con, info.run_id) or os.path.join(os.path.dirname(db) or ".", "runs", info.run_id)
        out = os.path.join(folder, "report.html")
        run_id = info.run_id
    path = render_report(run_id, db=db, out=out, top_n=top_n)
    click.echo(f"report written: {path}")
