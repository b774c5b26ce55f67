"""``sql``: read queries on the results database, written as a table, CSV, JSON or Parquet.

Two locks keep the database unchanged: the connection is opened with ``read_only=True``
(DuckDB refuses INSERT, UPDATE, DELETE, CREATE, DROP ...), and statements other than
read queries (SELECT and its forms: WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE;
EXPLAIN; the PRAGMAs that only read, such as show_tables and table_info) are refused before they run, which also keeps ``COPY ... TO``,
``EXPORT DATABASE``, ``ATTACH`` and ``INSTALL`` from writing files elsewhere.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import decimal
import json
import re
import sys
import uuid
from collections.abc import Callable
from typing import IO, Any

from auditor.errors import AuditorError

FORMATS = ("table", "csv", "json", "jsonl", "parquet")
VIEWS_HELP = """\
Tables: runs, samples, scores, rejects, base_responses, run_chunks, token_scores.
Views:
  flagged          every flagged (sample, trait) with its text: run_id, sample_id, trait, layer, delta,
                   proj_response, proj_base, source, line, response, base_response, context
  top_samples      every (sample, trait) with its rank within run and trait (1 = the highest score the run
                   flags on: delta, or proj_response with --flag-on projection or --baseline none), and that score
  run_scores       the scores table with each row's flag score (score) and its column name (score_column)
  dataset_summary  per run and trait: n, mean_delta, mean_proj_response, n_flagged, flag_rate, max_delta
"""


# PRAGMAs that only read. Others are refused: IMPORT DATABASE parses as a PRAGMA, and
# profiling_output would write a file.
_READ_PRAGMA = re.compile(
    r"^\s*pragma\s+(show_tables|show_tables_expanded|table_info|show|database_list|database_size|storage_info|version|platform|functions|metadata_info)\b",
    re.IGNORECASE,
)


class QueryError(AuditorError):
    """A query was refused (not a read query) or failed."""


def read_statements(query: str) -> list[Any]:
    """The statements of ``query``; refuses anything that is not a read query."""
    import duckdb

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"the query is not valid SQL: {str(e).splitlines()[0]}") from None
    if not statements:
        raise QueryError('the query is empty; e.g. audit sql "SELECT * FROM dataset_summary"')
    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
    for st in statements:
        if st.type == duckdb.StatementType.PRAGMA and _READ_PRAGMA.match(st.query):
            continue
        if st.type not in allowed:
            kind = str(st.type).rsplit(".", 1)[-1]
            raise QueryError(
                f"audit sql runs read queries only (SELECT, WITH, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN, PRAGMA show_tables/table_info); refused {kind}: "
                f"{st.query.strip()[:80]!r}. To change the database use the duckdb CLI on a copy of it"
            )
    return statements


def open_readonly(db: str) -> Any:
    """A read-only connection to ``db`` (waits while a scan holds it for writing)."""
    from auditor.store.db import open_db

    return open_db(db, read_only=True)


def execute(con: Any, statement_sql: str) -> Any:
    import duckdb

    try:
        return con.execute(statement_sql)
    except duckdb.Error as e:
        raise QueryError(str(e).strip()) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (_dt.timedelta, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def result_reader(con: Any, query: str, rows_per_batch: int = 10_000) -> Any:
    """A streaming pyarrow RecordBatchReader over one read query (DuckDB 2.x and 1.x)."""
    import duckdb

    try:
        relation = con.sql(query)
    except duckdb.Error as e:
        raise QueryError(str(e).strip()) from None
    if relation is None:
        raise QueryError("the statement returns no rows to write")
    method = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return method(rows_per_batch)


def write_csv(reader: Any, fh: IO[str]) -> int:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(reader.schema.names)
    n = 0
    for batch in reader:
        for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            writer.writerow(["" if v is None else json.dumps(v, default=_json_default) if isinstance(v, (list, dict)) else v for v in row])
            n += 1
    return n


def write_json(reader: Any, fh: IO[str], lines: bool = False) -> int:
    """A JSON array of objects (``lines``: one object per line), streamed batch by batch."""
    n = 0
    if not lines:
        fh.write("[")
    for batch in reader:
        for row in batch.to_pylist():
            text = json.dumps(row, default=_json_default, ensure_ascii=False)
            if lines:
                fh.write(text + "\n")
            else:
                fh.write(("\n  " if n == 0 else ",\n  ") + text)
            n += 1
    if not lines:
        fh.write("\n]\n" if n else "]\n")
    return n


def write_parquet(reader: Any, path: str) -> int:
    import pyarrow.parquet as pq

    n = 0
    with pq.ParquetWriter(path, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            n += batch.num_rows
    return n


def _cell(value: Any, width: int) -> str:
    if value is None:
        return "[dim]NULL[/]"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, default=_json_default, ensure_ascii=False)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    if len(text) > width:
        text = text[: width - 1] + "…"
    from rich.markup import escape

    return escape(text)


def print_table(cursor: Any, console: Any, max_rows: int = 200, width: int = 120) -> int:
    """A rich table of at most ``max_rows`` rows (cells cut at ``width`` characters); returns the rows shown."""
    from rich.table import Table

    names = [d[0] for d in cursor.description]
    rows = cursor.fetchmany(max_rows + 1)
    table = Table(show_lines=False, header_style="bold")
    shown = rows[:max_rows]
    for i, name in enumerate(names):
        values = [row[i] for row in shown if row[i] is not None]
        numeric = bool(values) and all(isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool) for v in values)
        table.add_column(name, overflow="fold", justify="right" if numeric else "left")
    for row in shown:
        table.add_row(*(_cell(v, width) for v in row))
    console.print(table)
    if len(rows) > max_rows:
        console.print(f"[yellow]showing the first {max_rows} rows[/]; use --max-rows N, or --format csv/json/parquet for all of them")
    else:
        console.print(f"[dim]{len(rows)} row{'s' if len(rows) != 1 else ''}[/]")
    return min(len(rows), max_rows)


def run_sql(
    db: str,
    query: str,
    fmt: str = "table",
    out: str | None = None,
    console: Any = None,
    max_rows: int = 200,
    stdout: IO[str] | None = None,
) -> int:
    """Run ``query`` (read-only) on ``db`` and write its result; returns the number of rows written.

    ``table`` prints every statement's result; the file formats take exactly one query.
    """
    if fmt not in FORMATS:
        raise QueryError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    statements = read_statements(query)
    if fmt != "table" and len(statements) > 1:
        raise QueryError(f"--format {fmt} writes one result: give one query, not {len(statements)}")
    if fmt == "parquet" and not out:
        raise QueryError("--format parquet writes a file: add --out PATH")
    con = open_readonly(db)
    try:
        if fmt == "table":
            if console is None:
                from rich.console import Console

                console = Console()
            shown = 0
            for st in statements:
                cursor = execute(con, st.query)
                if cursor.description is None:
                    console.print("[dim]ok[/]")
                    continue
                shown += print_table(cursor, console, max_rows=max_rows)
            return shown
        reader = result_reader(con, statements[0].query)
        if fmt == "parquet":
            return write_parquet(reader, out)  # type: ignore[arg-type]
        if out:
            with open(out, "w", encoding="utf-8", newline="") as fh:
                return _write_text(reader, fmt, fh)
        return _write_text(reader, fmt, stdout or sys.stdout)
    finally:
        con.close()


def _write_text(reader: Any, fmt: str, fh: IO[str]) -> int:
    if fmt == "csv":
        return write_csv(reader, fh)
    return write_json(reader, fh, lines=fmt == "jsonl")


def repl(db: str, read_line: Callable[[str], str], console: Any, max_rows: int = 200) -> None:
    """A small prompt: statements end with ';'; ``.tables``, ``.views``, ``.help``, ``.quit``.

    ``read_line(prompt)`` returns a line or raises EOFError (Ctrl-D); errors are printed
    and the prompt goes on.
    """
    console.print(f"persona-audit sql on {db} (read-only). End statements with ';'. .help for help, .quit to leave.")
    buffer: list[str] = []
    while True:
        try:
            line = read_line("audit> " if not buffer else "  ...> ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            command = stripped.split()[0]
            if command in (".quit", ".exit", ".q"):
                return
            if command == ".help":
                console.print(VIEWS_HELP, highlight=False)
                continue
            if command in (".tables", ".views"):
                stripped = "SELECT table_name, table_type FROM information_schema.tables ORDER BY table_type, table_name;"
            else:
                console.print(f"[red]unknown command {command}[/]; .help, .tables, .quit")
                continue
        buffer.append(line)
        if not stripped.endswith(";"):
            continue
        query = "\n".join(buffer)
        buffer = []
        try:
            run_sql(db, query, "table", console=console, max_rows=max_rows)
        except AuditorError as e:
            console.print(f"[red]Error:[/] {e}", highlight=False)


def duckdb_cli_hint(db: str) -> str:
    return (
        "No query given. Examples:\n"
        f'  audit sql "SELECT * FROM dataset_summary" --db {db}\n'
        f'  audit sql "SELECT sample_id, trait, delta, source, line FROM flagged ORDER BY delta DESC LIMIT 20" --db {db}\n'
        "Run audit sql in a terminal for an interactive prompt, or open the database with the duckdb CLI\n"
        "(https://duckdb.org/docs/installation), read-only so a running scan is not disturbed:\n"
        f"  duckdb -readonly {db}\n\n" + VIEWS_HELP
    )
