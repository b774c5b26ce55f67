"""A run's life in the store: register or resume, commit chunks, look up cached base
responses, mark a stop, complete. Every statement a scan writes is here, each write in one
:func:`~auditor.store.db.transaction`, so a run is always either resumable or complete.

The pipeline (:mod:`auditor.pipeline`) calls these functions; it holds no SQL.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

from auditor.errors import StoreError
from auditor.store.db import connect, insert_arrow, transaction

# A scan waits this long for a reader to let go of the database before a chunk write fails:
# long enough to outlast a big export or filter, instead of losing a scored chunk.
WRITE_WAIT = 600.0
_CHUNK_TOTALS = ("n_read", "n_scored", "n_rejected", "n_generated", "n_cached", "tokens", "n_reused")


def part_path(out_dir: str, chunk: int) -> str:
    """Where chunk ``chunk`` of a run keeps its Parquet part until the run completes."""
    return os.path.join(out_dir, "parts", f"part-{chunk:06d}.parquet")


def heat_part_path(parts_dir: str, chunk: int) -> str:
    """Where chunk ``chunk`` keeps its heat-map candidates until the run completes (a folder of
    their own: the parts folder holds one scores part per stored chunk, nothing else)."""
    return os.path.join(parts_dir, "heat", f"heat-{chunk:06d}.parquet")


def find_resumable(db: str, key: str) -> tuple[str, str] | None:
    """(run_id, output_dir) of the newest unfinished run with this result key, if any."""
    if not os.path.exists(db):
        return None
    with connect(db) as con:
        row = con.execute(
            "SELECT run_id, output_dir FROM runs WHERE result_key = ? AND status <> 'complete' ORDER BY started_at DESC LIMIT 1", [key]
        ).fetchone()
    return (row[0], row[1]) if row else None


def resume_run(db: str, run_id: str, out_dir: str) -> dict[int, str]:
    """Mark an unfinished run running again; returns its committed chunks (index -> input fingerprint)."""
    with connect(db) as con:
        done = dict(con.execute("SELECT chunk, fingerprint FROM run_chunks WHERE run_id = ?", [run_id]).fetchall())
        # The final scores.parquet is built from the parts: a stored chunk without one cannot be finished.
        lost = [c for c in sorted(done) if not os.path.exists(part_path(out_dir, c))]
        if lost:
            raise StoreError(
                f"run {run_id} cannot be resumed: {part_path(out_dir, lost[0])} is missing"
                + (f" (and {len(lost) - 1} more parts)" if len(lost) > 1 else "")
                + "; scan again without --resume"
            )
        con.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [run_id])
    return done


def register_run(db: str, row: dict[str, Any]) -> None:
    """Insert a new run (status running); ``row`` maps runs columns to values (JSON columns as text)."""
    cols = ", ".join(row)
    # Waits as long as a chunk write does: the model is loaded by now, and a reader holding the
    # file (an export, a duckdb session) should delay the scan, not fail it.
    with connect(db, timeout=WRITE_WAIT) as con:
        con.execute(f"INSERT INTO runs (status, {cols}) VALUES ('running', {', '.join('?' for _ in row)})", list(row.values()))


def lookup_base(db: str, fingerprint: str, settings_key: str, hashes: list[str]) -> dict[str, tuple[str, int]]:
    """Cached base responses for these prompt hashes: prompt hash -> (response, n_tokens)."""
    if not hashes:
        return {}
    with connect(db, timeout=WRITE_WAIT) as con:
        found = con.execute(
            "SELECT prompt_hash, response, n_tokens FROM base_responses WHERE model_fingerprint = ? AND settings_key = ? AND prompt_hash IN (SELECT unnest(?))",
            [fingerprint, settings_key, hashes],
        ).fetchall()
    return {h: (r, n) for h, r, n in found}


def commit_chunk(db: str, run_id: str, parts_dir: str, out: Any) -> None:
    """Write the chunk's Parquet part, then everything else in one database transaction.

    ``out`` is an :class:`auditor.pipeline.ChunkOutput` (its Arrow tables follow
    :mod:`auditor.store.schema`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = os.path.join(parts_dir, f"part-{out.index:06d}.parquet")
    if not os.path.isdir(parts_dir):
        raise StoreError(f"run {run_id}: {parts_dir} is gone: another process finished this run meanwhile, or the folder was deleted; see audit runs")
    if out.heat is not None and out.heat.num_rows:  # the chunk's heat-map candidates (auditor.heatmaps), before the part that marks it written
        heat = heat_part_path(parts_dir, out.index)
        os.makedirs(os.path.dirname(heat), exist_ok=True)
        pq.write_table(out.heat, heat + ".tmp")
        os.replace(heat + ".tmp", heat)
    pq.write_table(out.wide, part + ".tmp")
    os.replace(part + ".tmp", part)  # a reader sees the old part or the new one, never half of one
    with connect(db, timeout=WRITE_WAIT) as con, transaction(con):
        if con.execute("SELECT count(*) FROM run_chunks WHERE run_id = ? AND chunk = ?", [run_id, out.index]).fetchall()[0][0]:
            raise StoreError(
                f"run {run_id}: chunk {out.index} was stored by another process meanwhile (is a second audit scan --resume of this run running?); "
                "let that one finish, then check audit runs"
            )
        if out.new_base.num_rows:
            con.register("_incoming_cache", out.new_base)
            con.execute("INSERT INTO base_responses SELECT * FROM _incoming_cache ON CONFLICT DO NOTHING")
            con.unregister("_incoming_cache")
        insert_arrow(con, "samples", out.samples)
        insert_arrow(con, "scores", out.scores)
        if out.rejects:
            rejects = {
                "run_id": [run_id] * len(out.rejects),
                "source": [r.source for r in out.rejects],
                "line": pa.array([r.line for r in out.rejects], pa.int64()),
                "reason": [r.reason for r in out.rejects],
            }
            insert_arrow(con, "rejects", pa.table(rejects))
        con.execute(
            "INSERT INTO run_chunks (run_id, chunk, n_read, n_scored, n_rejected, fingerprint, n_generated, n_cached, tokens, n_reused) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, out.index, out.n_read, out.n_scored, out.n_rejected, out.fingerprint, out.n_generated, out.n_cached, out.tokens, out.n_reused],
        )


def mark_stopped(db: str, run_id: str, status: str) -> None:
    """Record that a run stopped (``interrupted`` or ``failed``); best effort: the database may be what failed."""
    try:
        with connect(db, timeout=10) as con:
            con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", [status, _dt.datetime.now(), run_id])
    except Exception:
        pass


def committed_chunks(db: str, run_id: str) -> tuple[list[int], dict[str, int]]:
    """The run's stored chunks in order, and its totals over them (n_read, n_scored, ... tokens)."""
    sums = ", ".join(f"coalesce(sum({c}),0)" for c in _CHUNK_TOTALS)
    with connect(db) as con:
        chunks = [c for (c,) in con.execute("SELECT chunk FROM run_chunks WHERE run_id = ? ORDER BY chunk", [run_id]).fetchall()]
        totals = con.execute(f"SELECT {sums} FROM run_chunks WHERE run_id = ?", [run_id]).fetchone()
    return chunks, {c: int(v) for c, v in zip(_CHUNK_TOTALS, totals)}


def trait_totals(db: str, run_id: str, trait: str, top: int = 5) -> dict[str, Any]:
    """A trait's summary numbers, and its ``top`` samples by the run's flag score (the top_samples view)."""
    with connect(db) as con:
        mean_delta, mean_proj, mean_margin, n_flagged, n = con.execute(
            "SELECT avg(delta), avg(proj_response), avg(margin), count(*) FILTER (WHERE flagged), count(*) FROM scores WHERE run_id = ? AND trait = ?",
            [run_id, trait],
        ).fetchone()
        ranked = con.execute(
            "SELECT sample_id, score FROM top_samples WHERE run_id = ? AND trait = ? AND score IS NOT NULL ORDER BY rank LIMIT ?", [run_id, trait, top]
        ).fetchall()
    return {
        "mean_delta": mean_delta,
        "mean_proj_response": mean_proj,
        "mean_margin": mean_margin,
        "n_flagged": int(n_flagged or 0),
        "n": int(n or 0),
        "top": [{"sample_id": sid, "score": s} for sid, s in ranked],
    }


def heat_map_candidates(db: str, run_id: str, top_n: int) -> list[tuple[str, str, str, str, str | None, str]]:
    """(trait, sample_id, context JSON, response, rejected response, content hash) of each trait's ``top_n`` samples, as the report ranks them."""
    with connect(db) as con:
        return con.execute(
            """SELECT s.trait, m.sample_id, m.context, m.response, m.rejected_response, m.content_hash FROM top_samples s
               JOIN samples m ON m.run_id = s.run_id AND m.sample_id = s.sample_id
               WHERE s.run_id = ? AND s.rank <= ? ORDER BY s.trait, s.rank""",
            [run_id, top_n],
        ).fetchall()


def complete_run(db: str, run_id: str, token_table: Any, fields: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    """Store the heat maps and mark the run complete in one transaction; returns its rejects (source, line, reason)."""
    sets = ", ".join(f"{k} = ?" for k in fields)
    with connect(db) as con:
        with transaction(con):
            con.execute("DELETE FROM token_scores WHERE run_id = ?", [run_id])
            insert_arrow(con, "token_scores", token_table)
            con.execute(f"UPDATE runs SET status = 'complete', finished_at = ?, {sets} WHERE run_id = ?", [_dt.datetime.now(), *fields.values(), run_id])
        return con.execute("SELECT source, line, reason FROM rejects WHERE run_id = ? ORDER BY source, line", [run_id]).fetchall()
