"""The writes of ``audit merge`` (:mod:`auditor.merge` checks the parts and calls these
inside one :func:`~auditor.store.db.transaction`): copy shard runs' rows under the merged
run's id, keep heat maps for the merged top N only, add the merged ``runs`` row.
"""

from __future__ import annotations

from typing import Any

from auditor.score import ScoreMeaning

# The tables whose rows belong to one run and are copied whole (run_id replaced).
RUN_TABLES = ("samples", "scores", "rejects", "token_scores")


def attach_read_only(con: Any, path: str, alias: str) -> None:
    """Make the database at ``path`` readable as ``alias.<table>`` on ``con`` (outside a transaction: DuckDB detaches only after commit)."""
    con.execute(f"ATTACH '{path}' AS {alias} (READ_ONLY)")


def copy_run_rows(con: Any, src: str, from_run_id: str, into_run_id: str, has_n_reused: bool) -> None:
    """Copy run ``from_run_id`` of database ``src`` (``main`` or an attached alias) into run ``into_run_id`` of ``main``:
    its samples, scores, rejects, heat maps and chunk ledger, and the base responses it cached.
    ``has_n_reused`` is false for a part written before incremental scans (no ``n_reused`` column)."""
    for table in RUN_TABLES:
        cols = [c[0] for c in con.execute(f"SELECT * FROM main.{table} LIMIT 0").description]
        select = ", ".join("? AS run_id" if c == "run_id" else f'"{c}"' for c in cols)
        con.execute(f"INSERT INTO main.{table} SELECT {select} FROM {src}.{table} WHERE run_id = ?", [into_run_id, from_run_id])
    ledger = "chunk, n_read, n_scored, n_rejected, fingerprint, n_generated, n_cached, tokens"
    if has_n_reused:
        ledger += ", n_reused"
    con.execute(
        f"INSERT INTO main.run_chunks (run_id, {ledger}) SELECT ? AS run_id, {ledger} FROM {src}.run_chunks WHERE run_id = ?",
        [into_run_id, from_run_id],
    )
    con.execute(f"INSERT INTO main.base_responses SELECT * FROM {src}.base_responses ON CONFLICT DO NOTHING")


def keep_top_heat_maps(con: Any, run_id: str, trait: str, meaning: ScoreMeaning, top_n: int) -> None:
    """Delete a trait's token scores (heat maps) but those of its ``top_n`` samples ranked as ``meaning`` ranks."""
    con.execute(
        f"""DELETE FROM token_scores t WHERE t.run_id = ? AND t.trait = ? AND NOT EXISTS (
        SELECT 1 FROM (SELECT sample_id, row_number() OVER (ORDER BY {meaning.order_by()}) AS rank
                       FROM scores WHERE run_id = ? AND trait = ?) s WHERE s.sample_id = t.sample_id AND s.rank <= ?)""",
        [run_id, trait, run_id, trait, top_n],
    )


def chunk_totals(con: Any, run_id: str) -> tuple[Any, Any, Any, Any]:
    """(n_read, n_scored, n_rejected, n_reused) summed over the run's chunk ledger (NULLs when it has no chunk)."""
    return con.execute("SELECT sum(n_read), sum(n_scored), sum(n_rejected), sum(n_reused) FROM run_chunks WHERE run_id = ?", [run_id]).fetchone()


def insert_complete_run(con: Any, row: dict[str, Any]) -> None:
    """Add a ``runs`` row with status complete; ``row`` maps the other columns to values (JSON columns as text)."""
    cols = ", ".join(row)
    con.execute(f"INSERT INTO runs (status, {cols}) VALUES ('complete', {', '.join('?' for _ in row)})", list(row.values()))


def sorted_scores_parquet(sources: list[str], dest: str) -> None:
    """One Parquet file at ``dest`` with the rows of ``sources`` in dataset order (source, line, turn)."""
    import duckdb

    mem = duckdb.connect()
    try:
        mem.execute(f"COPY (SELECT * FROM read_parquet(?) ORDER BY source, line, turn) TO '{dest}' (FORMAT PARQUET)", [sources])
    finally:
        mem.close()
