"""Where results live: Parquet per run, one DuckDB database across runs."""

from auditor.store.db import DEFAULT_DB, SCHEMA_VERSION, connect, ensure_schema

__all__ = ["DEFAULT_DB", "SCHEMA_VERSION", "connect", "ensure_schema"]
