"""The DuckDB database: schema, migrations, connections that wait for a busy writer.

DuckDB lets one process hold a database file for writing at a time. A scan therefore
opens the database only for the moment it writes a chunk, and every reader or writer
retries for a while (``timeout``) when another process holds it, then fails with a
message that says who to wait for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from auditor.errors import StoreError

DEFAULT_DB = os.path.join("reports", "audit.duckdb")
NOTE_AFTER = 3.0  # seconds of waiting for a busy database before saying so on stderr
SCHEMA_VERSION = 2

TABLES = """
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    status VARCHAR NOT NULL,            -- running | complete | failed | interrupted
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    dataset VARCHAR,
    model VARCHAR,
    model_fingerprint VARCHAR,
    baseline VARCHAR,                   -- generate | prompt-last | none
    dtype VARCHAR,
    device VARCHAR,
    output_dir VARCHAR,
    config JSON,                        -- every setting of the scan
    vectors JSON,                       -- per trait: path, layer, sha256, threshold
    versions JSON,                      -- package versions
    timings JSON,
    n_read BIGINT,                      -- records read = n_scored + n_rejected (per scored turn)
    n_scored BIGINT,
    n_rejected BIGINT,
    summary JSON,
    result_key VARCHAR,                 -- hash of everything that determines the scores (resume)
    reuse_key VARCHAR,                  -- hash of what decides a sample's projections besides its text (incremental scans)
    n_reused BIGINT                     -- samples whose scores came from an earlier complete run (n_scored = computed + reused)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    source VARCHAR,
    line BIGINT,
    turn INTEGER,
    content_hash VARCHAR,
    context JSON,
    response VARCHAR,
    base_response VARCHAR,
    n_prompt_tokens INTEGER,
    n_response_tokens INTEGER,
    n_base_tokens INTEGER,
    metadata JSON,
    PRIMARY KEY (run_id, sample_id)
);
CREATE TABLE IF NOT EXISTS scores (
    run_id VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    trait VARCHAR NOT NULL,
    layer INTEGER,
    proj_response DOUBLE,
    proj_base DOUBLE,
    delta DOUBLE,
    flagged BOOLEAN,
    PRIMARY KEY (run_id, sample_id, trait)
);
CREATE TABLE IF NOT EXISTS base_responses (
    model_fingerprint VARCHAR NOT NULL,
    settings_key VARCHAR NOT NULL,
    prompt_hash VARCHAR NOT NULL,
    response VARCHAR,
    n_tokens INTEGER,
    created_at TIMESTAMP,
    PRIMARY KEY (model_fingerprint, settings_key, prompt_hash)
);
CREATE TABLE IF NOT EXISTS rejects (
    run_id VARCHAR NOT NULL,
    source VARCHAR,
    line BIGINT,
    reason VARCHAR
);
CREATE TABLE IF NOT EXISTS run_chunks (
    run_id VARCHAR NOT NULL,
    chunk INTEGER NOT NULL,
    n_read BIGINT,
    n_scored BIGINT,
    n_rejected BIGINT,
    fingerprint VARCHAR,                -- hash of the chunk's input: resume checks the data did not change
    n_generated BIGINT,
    n_cached BIGINT,
    tokens BIGINT,
    n_reused BIGINT,
    PRIMARY KEY (run_id, chunk)
);
CREATE TABLE IF NOT EXISTS token_scores (
    run_id VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    trait VARCHAR NOT NULL,
    tokens VARCHAR[],
    token_values DOUBLE[],
    PRIMARY KEY (run_id, sample_id, trait)
);
CREATE OR REPLACE VIEW flagged AS
    SELECT s.run_id, s.sample_id, s.trait, s.layer, s.delta, s.proj_response, s.proj_base,
           m.source, m.line, m.response, m.base_response, m.context
    FROM scores s JOIN samples m USING (run_id, sample_id)
    WHERE s.flagged;
CREATE OR REPLACE VIEW top_samples AS
    -- ranked by the score the run flags on: delta, or the raw projection for --baseline none
    SELECT s.run_id, s.trait, s.sample_id,
           row_number() OVER (PARTITION BY s.run_id, s.trait
                              ORDER BY CASE WHEN r.baseline = 'none' THEN s.proj_response ELSE s.delta END DESC NULLS LAST, s.sample_id) AS rank,
           s.delta, s.proj_response, s.proj_base, s.flagged, m.source, m.line, m.response
    FROM scores s JOIN samples m USING (run_id, sample_id) JOIN runs r USING (run_id);
CREATE OR REPLACE VIEW dataset_summary AS
    SELECT s.run_id, r.dataset, s.trait, any_value(s.layer) AS layer, count(*) AS n,
           avg(s.delta) AS mean_delta, avg(s.proj_response) AS mean_proj_response,
           sum(CASE WHEN s.flagged THEN 1 ELSE 0 END) AS n_flagged,
           avg(CASE WHEN s.flagged THEN 1.0 ELSE 0.0 END) AS flag_rate,
           max(s.delta) AS max_delta
    FROM scores s JOIN runs r USING (run_id)
    GROUP BY s.run_id, r.dataset, s.trait;
"""


# Version 1 databases gain the columns of version 2 (incremental scans); their runs have no
# reuse_key, so nothing of theirs is reused.
MIGRATIONS = {
    2: (
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS reuse_key VARCHAR",
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS n_reused BIGINT",
        "ALTER TABLE run_chunks ADD COLUMN IF NOT EXISTS n_reused BIGINT",
    )
}


def _is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


def open_db(path: str, read_only: bool = False, timeout: float = 60.0) -> Any:
    """A DuckDB connection; waits up to ``timeout`` s while another process holds the file."""
    import duckdb

    if read_only and not os.path.exists(path):
        raise StoreError(f"{path}: no such database; run audit scan first, or pass --db PATH")
    if not read_only:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.05
    noted = False
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.Error as e:
            if not _is_lock_error(e):
                raise StoreError(f"{path}: cannot open the database ({e})") from None
            if not noted and time.monotonic() - started > NOTE_AFTER:
                # A long wait would otherwise look like a hang (e.g. a duckdb CLI session holds the file).
                logging.getLogger("auditor").warning(
                    f"{path}: waiting for another process that holds the database (a duckdb session or a long query?); waiting up to {timeout:.0f} s"
                )
                noted = True
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"{path}: another process is using the database (a scan writing to it?); "
                    f"waited {timeout:.0f} s. Try again when it finishes, or use --db for a separate database"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


# Files this process already brought to the current schema. A scan opens the database
# twice per chunk; re-running every CREATE on each open held the file lock (which other
# scans and readers wait for) about three times longer than the write itself.
_SCHEMA_READY: set[tuple[str, int, int]] = set()


@contextmanager
def connect(path: str = DEFAULT_DB, read_only: bool = False, timeout: float = 60.0) -> Iterator[Any]:
    """Context-managed connection; writers get the schema created or migrated first."""
    con = open_db(path, read_only=read_only, timeout=timeout)
    try:
        if not read_only:
            try:
                st = os.stat(path)
                key = (os.path.realpath(path), st.st_dev, st.st_ino)
            except OSError:  # not a plain file (":memory:"): always check
                key = None
            if key is None or key not in _SCHEMA_READY or not _has_current_schema(con):
                ensure_schema(con)
                if key is not None:
                    _SCHEMA_READY.add(key)
        yield con
    finally:
        con.close()


def _has_current_schema(con: Any) -> bool:
    """Cheap check that the file still holds this version's schema (it may have been replaced)."""
    import duckdb

    try:
        return con.execute("SELECT max(version) FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
    except duckdb.Error:
        return False


def ensure_schema(con: Any) -> None:
    """Create the tables and views, or refuse a database written by a newer version."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(TABLES)
        row = con.execute("SELECT max(version) FROM schema_info").fetchone()
        version = row[0] if row else None
        if version is None:
            con.execute("INSERT INTO schema_info VALUES (?)", [SCHEMA_VERSION])
        elif version > SCHEMA_VERSION:
            raise StoreError(f"the database was written by a newer persona-audit (schema {version}, this one knows {SCHEMA_VERSION}); upgrade persona-audit")
        elif version < SCHEMA_VERSION:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(step, ()):
                    con.execute(statement)
            con.execute("UPDATE schema_info SET version = ?", [SCHEMA_VERSION])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def insert_arrow(con: Any, table: str, data: Any) -> None:
    """Insert a pyarrow Table whose columns are named as the table's (any order)."""
    if data.num_rows == 0:
        return
    name = f"_incoming_{table}"
    con.register(name, data)
    try:
        cols = ", ".join(f'"{c}"' for c in data.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {name}")
    finally:
        con.unregister(name)
