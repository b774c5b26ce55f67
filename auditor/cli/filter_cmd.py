"""``audit filter``."""

from __future__ import annotations

import click

from auditor.cli.common import handle_errors, split_list
from auditor.config import default_of
from auditor.store.db import DEFAULT_DB


@click.command("filter", context_settings={"max_content_width": 100})
@click.argument("source")
@click.option(
    "--run",
    "run_spec",
    default="latest",
    show_default=True,
    metavar="RUN_ID|latest",
    help="The run whose scores decide (latest: the newest complete run that scanned SOURCE).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Filtered dataset, in SOURCE's format (JSONL, Parquet or CSV); for a JSON array or an hf: dataset, .jsonl or .parquet.",
)
@click.option(
    "--where",
    default=None,
    metavar="SQL",
    help="Drop records with a sample for which this SQL boolean holds, over columns sample_id, source, line, turn, trait, layer, delta, proj_response, "
    "proj_base, flagged, score, response, proj_rejected, margin (the last two: preference pairs).",
)
@click.option(
    "--drop-top",
    default=None,
    metavar="P%|N",
    help="Drop the top P percent (rounded up) or top N samples of each trait by the run's score (delta, projection or margin).",
)
@click.option("--split", default=default_of("split"), show_default=True, help="Split, for hf: datasets (as scanned).")
@click.option("--drop-flagged", is_flag=True, help="Drop records with a sample flagged for any trait.")
@click.option("--traits", default=None, help="Comma-separated traits the rules look at (default: every trait of the run).")
@click.option(
    "--rejects", default=None, type=click.Path(dir_okay=False), help="JSONL of dropped records with their reasons (default: OUT's name + .rejects.jsonl)."
)
@click.option(
    "--manifest",
    default=None,
    type=click.Path(dir_okay=False),
    help="JSON manifest: counts, sha256 of input and output, the rule, the run (default: OUT's name + .manifest.json).",
)
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False), help="DuckDB database holding the run (opened read-only).")
@handle_errors
def filter_(
    source: str,
    run_spec: str,
    out: str,
    where: str | None,
    drop_top: str | None,
    drop_flagged: bool,
    traits: str | None,
    rejects: str | None,
    manifest: str | None,
    db: str,
    split: str,
) -> None:
    """Write SOURCE without the records a rule selects; every kept record is unchanged.

    The rules read the scores a scan stored (audit scan SOURCE first); a record goes when
    any rule selects any of its samples (with --score-all-turns, any of its turns). Kept
    JSONL and CSV records are their input bytes; Parquet rows keep the file's schema. JSON
    arrays and hf: datasets (hf:/path/to/local/copy) are read record by record and written
    as JSONL or Parquet (--out's suffix). The input is streamed, so it may be larger than
    memory. A record that changed since the scan stops the filter (scan again). A preference
    pair is one record: the rules drop whole pairs.

    \b
    Examples:
      audit filter data.jsonl --out clean.jsonl --drop-flagged
      audit filter data.jsonl --out clean.jsonl --drop-top 5%
      audit filter data.parquet --out clean.parquet --where "trait = 'sycophancy' and delta > 3.1"
      audit filter hf:/data/copy --split train --out clean.parquet --drop-flagged
      audit filter prefs.jsonl --out clean.jsonl --where "trait = 'sycophancy' and margin > 2"
    """
    from auditor.filter import FilterRule, filter_dataset

    if not (where or drop_top or drop_flagged):
        raise click.UsageError("give a rule: --where SQL, --drop-top P%|N or --drop-flagged")
    rule = FilterRule(where=where, drop_top=drop_top, drop_flagged=drop_flagged, traits=split_list(traits))
    result = filter_dataset(source, out, rule, run=run_spec, db=db, rejects=rejects, manifest=manifest, split=split)
    c = result.counts
    click.echo(
        f"run {result.run_id}: read {c['read']} records, kept {c['kept']}, dropped {c['dropped']}"
        + (f" ({c['unscored_kept']} kept unscored: the scan rejected them)" if c["unscored_kept"] else "")
    )
    click.echo(f"  output    {result.output_path}")
    click.echo(f"  rejects   {result.rejects_path}")
    click.echo(f"  manifest  {result.manifest_path}")
