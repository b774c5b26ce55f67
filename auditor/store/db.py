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
from auditor.store.schema import MIGRATIONS, TABLES

DEFAULT_DB = os.path.join("reports", "audit.duckdb")
NOTE_AFTER = 3.0  # seconds of waiting for a busy database before saying so on stderr
SCHEMA_VERSION = 3  # 2: preference pairs; 3: incremental scans (reuse_key, n_reused)


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
    """Create the tables and views, migrate an older file step by step, or refuse one written by a newer version."""
    with transaction(con):
        version = _schema_version(con)
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"the database was written by a newer persona-audit (schema {version}, this one knows {SCHEMA_VERSION}); upgrade persona-audit")
        if version is not None:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(step, ()):
                    con.execute(statement)  # before the views, which name the new columns
        con.execute(TABLES)
        if version is None or version < SCHEMA_VERSION:
            con.execute("INSERT INTO schema_info VALUES (?)", [SCHEMA_VERSION])


@contextmanager
def transaction(con: Any) -> Iterator[Any]:
    """``BEGIN`` ... ``COMMIT``, or ``ROLLBACK`` when anything (a Ctrl-C included) interrupts the block."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _schema_version(con: Any) -> int | None:
    """The file's schema version; None for a new file (asked without an error, which would end the transaction)."""
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_info' AND table_schema = 'main'").fetchone()[0]:
        return None
    row = con.execute("SELECT max(version) FROM schema_info").fetchone()
    return row[0] if row else None


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
