"""audit sql: read queries in every format, the README's example queries, and proof that
nothing a user types can change the database (or write files beside it)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SMALL_CHATS, make_vectors, write_jsonl

from auditor.cli import main

# The example queries of docs/usage.md ("Query the results"), run as written.
README_QUERIES = {
    "summary": """SELECT run_id, trait, n, round(mean_delta, 3) AS mean_delta, n_flagged, round(100 * flag_rate, 1) AS pct_flagged
FROM dataset_summary ORDER BY run_id, trait""",
    "top": """SELECT rank, sample_id, round(delta, 3) AS delta, source, line, left(response, 60) AS response
FROM top_samples
WHERE trait = 'sycophancy' AND rank <= 10
  AND run_id = (SELECT run_id FROM runs WHERE status = 'complete' ORDER BY started_at DESC LIMIT 1)
ORDER BY rank""",
    "multi": """SELECT run_id, sample_id, list(trait ORDER BY trait) AS traits, round(max(delta), 3) AS max_delta
FROM flagged GROUP BY run_id, sample_id HAVING count(*) > 1 ORDER BY max_delta DESC""",
    "base": """SELECT sample_id, trait, round(delta, 2) AS delta, response, base_response
FROM flagged ORDER BY delta DESC LIMIT 5""",
    "rejects": """SELECT r.run_id, r.source, r.line, r.reason FROM rejects r JOIN runs USING (run_id) ORDER BY started_at DESC, line""",
}


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_lm):
    import polars as pl

    from auditor.pipeline import ScanConfig, scan_run

    root = tmp_path_factory.mktemp("sql")
    vectors = make_vectors(root / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    data = write_jsonl(root / "d.jsonl", SMALL_CHATS)
    db = str(root / "audit.duckdb")
    common = dict(source=data, vectors=vectors, baseline="generate", max_new_tokens=4, db=db, report=False)  # the docs' "base" query reads base responses
    probe = scan_run(ScanConfig(**common), lm=tiny_lm).scores
    thresholds = {t: float(probe[f"{t}_delta"].median()) for t in ("evil", "sycophancy")}
    run = scan_run(ScanConfig(**common, thresholds=thresholds), lm=tiny_lm)
    return {"db": db, "run_id": run.run_id, "scores": pl.read_parquet(run.parquet_path)}


def sql(store, *args, **kw):
    return CliRunner().invoke(main, ["sql", *args, "--db", store["db"]], catch_exceptions=False, **kw)


def test_table_output(store):
    result = sql(store, f"SELECT trait, n, mean_delta FROM dataset_summary WHERE run_id = '{store['run_id']}' ORDER BY trait")
    assert result.exit_code == 0, result.output
    s = store["scores"]
    for t in ("evil", "sycophancy"):
        assert f"{float(s[f'{t}_delta'].mean()):.6g}" in result.output
    assert "2 rows" in result.output


def test_table_output_caps_rows(store):
    result = sql(store, "SELECT * FROM range(50)", "--max-rows", "7")
    assert result.exit_code == 0
    assert "showing the first 7 rows" in result.output
    cells = [line.strip("│ ") for line in result.output.splitlines() if line.startswith("│")]
    assert cells == [str(i) for i in range(7)]  # numbers, right-aligned, the first seven only


def test_csv_json_jsonl_parquet_agree_with_duckdb(store, tmp_path):
    import duckdb
    import pyarrow.parquet as pq

    query = f"SELECT sample_id, trait, delta, flagged, line FROM scores JOIN samples USING (run_id, sample_id) WHERE run_id = '{store['run_id']}' ORDER BY sample_id, trait"
    con = duckdb.connect(store["db"], read_only=True)
    expected = con.execute(query).fetchall()
    con.close()
    assert len(expected) == 2 * len(SMALL_CHATS)

    out = sql(store, query, "--format", "csv")
    rows = list(csv.reader(io.StringIO(out.output)))
    assert rows[0] == ["sample_id", "trait", "delta", "flagged", "line"]
    assert [(r[0], r[1], float(r[2]), r[3] == "True", int(r[4])) for r in rows[1:]] == expected

    doc = json.loads(sql(store, query, "--format", "json").output)
    assert [tuple(d.values()) for d in doc] == expected
    lines = sql(store, query, "--format", "jsonl").output.splitlines()
    assert [tuple(json.loads(line).values()) for line in lines] == expected

    target = tmp_path / "r.parquet"
    result = sql(store, query, "--format", "parquet", "--out", str(target))
    assert result.exit_code == 0
    table = pq.read_table(target)
    assert table.column_names == ["sample_id", "trait", "delta", "flagged", "line"]
    assert list(zip(*(c.to_pylist() for c in table.columns), strict=True)) == expected

    target_csv = tmp_path / "r.csv"
    assert sql(store, query, "--format", "csv", "--out", str(target_csv)).exit_code == 0
    assert target_csv.read_text() == out.output


def test_json_handles_timestamps_and_lists(store):
    doc = json.loads(sql(store, "SELECT started_at, [1, 2] AS xs, 1.5::DECIMAL(4,2) AS d FROM runs ORDER BY started_at LIMIT 1", "--format", "json").output)
    assert doc[0]["xs"] == [1, 2] and doc[0]["d"] == 1.5 and "T" in doc[0]["started_at"]


def test_readme_queries_run_and_answer_correctly(store):
    import polars as pl

    results = {}
    for name, query in README_QUERIES.items():
        result = sql(store, query, "--format", "json")
        assert result.exit_code == 0, (name, result.output)
        results[name] = json.loads(result.output)
    s = store["scores"]
    mine = [r for r in results["summary"] if r["run_id"] == store["run_id"]]
    assert [(r["trait"], r["n"], r["n_flagged"]) for r in mine] == [(t, len(SMALL_CHATS), int(s[f"{t}_flagged"].sum())) for t in ("evil", "sycophancy")]
    assert [r["sample_id"] for r in results["top"]] == s.sort("sycophancy_delta", descending=True)["sample_id"].to_list()
    assert [r["rank"] for r in results["top"]] == list(range(1, len(SMALL_CHATS) + 1))
    both = s.filter(pl.col("evil_flagged") & pl.col("sycophancy_flagged"))["sample_id"].to_list()
    assert sorted(r["sample_id"] for r in results["multi"]) == sorted(both)
    assert all(r["traits"] == ["evil", "sycophancy"] for r in results["multi"])
    assert len(results["base"]) == 5 and all(r["base_response"] is not None for r in results["base"])
    assert results["rejects"] == []


# ---------------------------------------------------------------- the database cannot change

WRITES = [
    "INSERT INTO runs (run_id, status) VALUES ('x', 'complete')",
    "UPDATE scores SET delta = 0",
    "DELETE FROM scores",
    "DROP TABLE scores",
    "DROP VIEW flagged",
    "CREATE TABLE stolen AS SELECT * FROM samples",
    "ALTER TABLE runs ADD COLUMN x INTEGER",
    "ATTACH 'other.duckdb' AS other",
    "COPY scores TO 'dump.csv'",
    "COPY (SELECT * FROM samples) TO 'dump.parquet' (FORMAT parquet)",
    "EXPORT DATABASE 'dumpdir'",
    "IMPORT DATABASE 'dumpdir'",
    "PRAGMA enable_profiling = 'json'",
    "INSTALL httpfs",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "SET threads = 1",
    "SELECT 1; DELETE FROM scores",
]


@pytest.mark.parametrize("statement", WRITES)
def test_sql_cannot_modify_the_database(store, tmp_path, statement):
    import duckdb

    before = sha(store["db"])
    counts = duckdb.connect(store["db"], read_only=True)
    n_before = counts.execute("SELECT (SELECT count(*) FROM scores), (SELECT count(*) FROM runs)").fetchone()
    counts.close()
    result = sql(store, statement)
    assert result.exit_code == 2, result.output
    assert "audit sql runs read queries only" in result.output and "refused" in result.output
    assert sha(store["db"]) == before
    assert not os.path.exists(store["db"] + ".wal")
    assert not any(tmp_path.iterdir())  # nothing written beside it either (the test runs in tmp_path)
    con = duckdb.connect(store["db"], read_only=True)
    assert con.execute("SELECT (SELECT count(*) FROM scores), (SELECT count(*) FROM runs)").fetchone() == n_before
    con.close()


@pytest.mark.parametrize(
    "statement", ["INSERT INTO runs (run_id, status) VALUES ('x', 'y')", "DELETE FROM scores", "DROP TABLE scores", "CREATE TABLE t AS SELECT 1"]
)
def test_the_connection_itself_is_read_only(store, statement):
    """The second lock: even past the statement check, the connection refuses writes."""
    from auditor.sql import QueryError, execute, open_readonly

    before = sha(store["db"])
    con = open_readonly(store["db"])
    try:
        with pytest.raises(QueryError, match="read-only"):
            execute(con, statement)
    finally:
        con.close()
    assert sha(store["db"]) == before


def test_read_forms_are_allowed(store):
    for query in (
        "SHOW TABLES",
        "DESCRIBE scores",
        "SUMMARIZE SELECT delta FROM scores",
        "EXPLAIN SELECT * FROM flagged",
        "PRAGMA table_info('runs')",
        "FROM runs LIMIT 1",
        "VALUES (1, 2)",
    ):
        result = sql(store, query, "--max-rows", "500")
        assert result.exit_code == 0, (query, result.output)


def test_errors_are_clear(store, tmp_path):
    missing = CliRunner().invoke(main, ["sql", "SELECT 1", "--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 2 and "no such database" in missing.output
    bad = sql(store, "SELECT nosuch FROM runs")
    assert bad.exit_code == 2 and "nosuch" in bad.output
    parquet = sql(store, "SELECT 1", "--format", "parquet")
    assert parquet.exit_code == 2 and "add --out PATH" in parquet.output
    two = sql(store, "SELECT 1; SELECT 2", "--format", "csv")
    assert two.exit_code == 2 and "give one query" in two.output


def test_no_query_without_a_terminal_prints_how_to_open_the_database(store):
    result = sql(store, input="")
    assert result.exit_code == 0
    assert f"duckdb -readonly {store['db']}" in result.output
    assert "dataset_summary" in result.output and "top_samples" in result.output


def test_interactive_prompt(store):
    from rich.console import Console

    from auditor.sql import repl

    lines = iter(
        [".tables", "SELECT count(*) AS n_scores", "FROM scores;", "DELETE FROM scores;", "SELECT nosuch;", ".help", ".quit", "SELECT 'never reached';"]
    )
    prompts = []

    def read_line(prompt):
        prompts.append(prompt)
        return next(lines)

    buffer = io.StringIO()
    before = sha(store["db"])
    repl(store["db"], read_line, Console(file=buffer, width=120))
    text = buffer.getvalue()
    import duckdb

    con = duckdb.connect(store["db"], read_only=True)
    n = con.execute("SELECT count(*) FROM scores").fetchone()[0]
    con.close()
    assert "dataset_summary" in text and "token_scores" in text  # .tables
    assert prompts[:3] == ["audit> ", "audit> ", "  ...> "]  # a statement may span lines
    assert re.search(rf"│\s+{n} │", text)  # the count, as a table
    assert "refused DELETE" in text and "nosuch" in text  # errors do not end the session
    assert "flagged          every flagged" in text  # .help
    assert "never reached" not in text
    assert sha(store["db"]) == before


def test_interactive_prompt_ends_on_eof(store):
    from rich.console import Console

    from auditor.sql import repl

    def read_line(prompt):
        raise EOFError

    buffer = io.StringIO()
    repl(store["db"], read_line, Console(file=buffer))
    assert "read-only" in buffer.getvalue()


# Queries that would read or write a file outside the database. Each is a SELECT (or a COPY,
# refused earlier): only DuckDB's external-access switch stops the SELECTs.
FILE_QUERIES = [
    "SELECT content FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('/etc/hostname', header = false)",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM sniff_csv('/etc/hostname')",
]


@pytest.mark.parametrize("query", FILE_QUERIES)
@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_sql_cannot_read_files(store, query, fmt):
    hostname = Path("/etc/hostname").read_text().strip()
    result = sql(store, query, "--format", fmt)
    assert result.exit_code == 2, result.output
    assert "audit sql reads only the results database: file access is switched off" in result.output
    assert hostname not in result.output
    assert "Traceback" not in result.output


def test_sql_cannot_write_files(store, tmp_path):
    target = tmp_path / "leak.csv"
    before = sha(store["db"])
    for statement in (f"COPY (SELECT * FROM runs) TO '{target}'", f"COPY runs TO '{target}' (FORMAT parquet)"):
        result = sql(store, statement)
        assert result.exit_code == 2, result.output
        assert "refused COPY" in result.output
    assert not target.exists()
    assert sha(store["db"]) == before


def test_external_access_cannot_be_switched_back_on(store):
    """Past the statement check (a library caller using execute directly), the connection
    itself refuses files, and its configuration is locked."""
    from auditor.sql import QueryError, execute, open_readonly

    con = open_readonly(store["db"])
    try:
        for statement in ("SET enable_external_access = true", "RESET enable_external_access", "SET lock_configuration = false"):
            with pytest.raises(QueryError, match="file access is switched off"):
                execute(con, statement)
        with pytest.raises(QueryError, match="file access is switched off"):
            execute(con, "SELECT * FROM read_text('/etc/hostname')")
        with pytest.raises(QueryError, match="file access is switched off"):
            execute(con, "COPY (SELECT 1) TO 'leak.csv'")
        assert execute(con, "SELECT current_setting('enable_external_access')").fetchone() == (False,)
        # Normal queries still work on the same connection.
        assert execute(con, "SELECT count(*) FROM scores").fetchone()[0] > 0
    finally:
        con.close()
    assert not os.path.exists("leak.csv")


def test_normal_queries_still_work_with_files_off(store, tmp_path):
    result = sql(store, "SELECT trait, n FROM dataset_summary ORDER BY trait", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "trait,n"
    out = tmp_path / "s.parquet"
    written = sql(store, f"SELECT * FROM scores WHERE run_id = '{store['run_id']}'", "--format", "parquet", "--out", str(out))
    assert written.exit_code == 0, written.output
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == len(store["scores"]) * 2  # one row per (sample, trait)
