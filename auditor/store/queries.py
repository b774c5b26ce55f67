"""Questions the read-only commands (gate, filter, runs) ask of the database.

Every function takes an open DuckDB connection (usually ``connect(db, read_only=True)``)
so a caller decides how long the database stays open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from auditor.errors import StoreError
from auditor.score import ScoreMeaning


@dataclass
class RunInfo:
    """One row of ``runs``, with its JSON columns decoded."""

    run_id: str
    status: str
    dataset: str | None
    model: str | None
    baseline: str | None
    started_at: Any
    n_read: int | None
    n_scored: int | None
    n_rejected: int | None
    config: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)

    def score(self, trait: str | None = None) -> ScoreMeaning:
        """What the run's score means for ``trait`` (any trait when None): the one the run stored."""
        if trait is None:
            trait = next(iter(self.vectors), "")
        return ScoreMeaning.from_column(self.baseline, self.vectors.get(trait, {}).get("score"))

    def score_column(self, trait: str) -> str:
        """The column flags were based on for ``trait``: ``delta`` or ``proj_response``."""
        return self.score(trait).column

    @property
    def pairs(self) -> bool:
        """A run of preference pairs: its score is the margin."""
        return any(v.get("score") == "margin" for v in self.vectors.values())

    def threshold(self, trait: str) -> float | None:
        value = self.vectors.get(trait, {}).get("threshold")
        return None if value is None else float(value)

    def calibration_mean(self, trait: str) -> float | None:
        for entry in self.summary:
            if entry.get("trait") == trait:
                value = entry.get("calibration_mean")
                return None if value is None else float(value)
        return None


_RUN_COLUMNS = "run_id, status, dataset, model, baseline, started_at, n_read, n_scored, n_rejected, config, vectors, summary"


def decode_json(value: Any, default: Any) -> Any:
    """A JSON column as Python (DuckDB may hand back text); ``default`` when empty or unreadable."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return default
    return value


def _row_to_info(row: tuple) -> RunInfo:
    run_id, status, dataset, model, baseline, started_at, n_read, n_scored, n_rejected, config, vectors, summary = row
    return RunInfo(
        run_id=run_id,
        status=status,
        dataset=dataset,
        model=model,
        baseline=baseline,
        started_at=started_at,
        n_read=n_read,
        n_scored=n_scored,
        n_rejected=n_rejected,
        config=decode_json(config, {}),
        vectors=decode_json(vectors, {}),
        summary=decode_json(summary, []),
    )


def resolve_run(con: Any, spec: str, db_path: str = "the database", require_complete: bool = True) -> RunInfo:
    """``latest`` (the newest complete run), a full run id, or an unambiguous prefix of one."""
    if spec == "latest":
        where = "WHERE status = 'complete'" if require_complete else ""
        row = con.execute(f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT 1").fetchone()
        if row is None:
            raise StoreError(f"{db_path}: holds no {'complete ' if require_complete else ''}run; run audit scan first (audit runs lists what is there)")
        return _row_to_info(row)
    rows = con.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ? OR starts_with(run_id, ?) ORDER BY run_id", [spec, spec]).fetchall()
    exact = [r for r in rows if r[0] == spec]
    if exact:
        rows = exact
    if not rows:
        raise StoreError(f"{db_path}: no run {spec!r}; audit runs lists the runs (or pass latest)")
    if len(rows) > 1:
        ids = ", ".join(r[0] for r in rows[:5])
        raise StoreError(f"{db_path}: {spec!r} matches {len(rows)} runs ({ids}{', ...' if len(rows) > 5 else ''}); give more of the run id")
    info = _row_to_info(rows[0])
    if require_complete and info.status != "complete":
        raise StoreError(f"run {info.run_id} is {info.status}, not complete; finish it (audit scan ... --resume) or pick another run (audit runs)")
    return info


def run_exists(con: Any, spec: str) -> bool:
    """Whether ``spec`` names a run (``latest`` when any complete run exists, an id, or a unique prefix)."""
    if spec == "latest":
        return con.execute("SELECT count(*) FROM runs WHERE status = 'complete'").fetchone()[0] > 0
    return con.execute("SELECT count(*) FROM runs WHERE run_id = ? OR starts_with(run_id, ?)", [spec, spec]).fetchone()[0] >= 1


def list_runs(con: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """Runs newest first, with per-trait flagged counts taken from the scores table."""
    sql = f"""
        WITH flags AS (
            SELECT run_id, trait, sum(CASE WHEN flagged THEN 1 ELSE 0 END) AS n_flagged
            FROM scores GROUP BY run_id, trait
        ), flagged_samples AS (
            SELECT run_id, count(DISTINCT sample_id) AS n_flagged_samples FROM scores WHERE flagged GROUP BY run_id
        ), chunks AS (  -- a run still going (or stopped) has its counts only per stored chunk
            SELECT run_id, sum(n_read) AS n_read, sum(n_scored) AS n_scored, sum(n_rejected) AS n_rejected FROM run_chunks GROUP BY run_id
        )
        SELECT r.run_id, r.status, r.dataset, r.model, r.baseline,
               coalesce(r.n_read, c.n_read) AS n_read, coalesce(r.n_scored, c.n_scored) AS n_scored,
               coalesce(r.n_rejected, c.n_rejected) AS n_rejected, r.started_at, r.finished_at,
               coalesce(fs.n_flagged_samples, 0) AS n_flagged_samples,
               list(struct_pack(trait := f.trait, n_flagged := f.n_flagged) ORDER BY f.trait) FILTER (WHERE f.trait IS NOT NULL) AS flags
        FROM runs r
        LEFT JOIN flags f USING (run_id)
        LEFT JOIN flagged_samples fs USING (run_id)
        LEFT JOIN chunks c USING (run_id)
        GROUP BY ALL
        ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC
        {"LIMIT " + str(int(limit)) if limit else ""}
    """
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    out = []
    for row in cursor.fetchall():
        item = dict(zip(names, row, strict=True))
        item["flags"] = {f["trait"]: int(f["n_flagged"]) for f in (item["flags"] or [])}
        out.append(item)
    return out


def stream_batches(con: Any, sql: str, params: Any = None, rows_per_batch: int = 8192) -> Iterator[Any]:
    """The result of ``sql`` as pyarrow RecordBatches, one in memory at a time.

    Runs on its own cursor, so several streams (and other queries) can be open on ``con``
    at once. DuckDB 2.x names the streaming reader ``to_arrow_reader``, 1.x ``fetch_arrow_reader``.
    """
    cursor = con.cursor()
    try:
        relation = cursor.sql(sql, params=params) if params is not None else cursor.sql(sql)
        if relation is None:
            return
        method = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
        yield from method(rows_per_batch)
    finally:
        cursor.close()


def run_rows(con: Any, run_id: str | None = None) -> list[dict[str, Any]]:
    """Whole ``runs`` rows as dicts: the run ``run_id`` (exact id), or with None every sharded run, oldest first."""
    if run_id is not None:
        cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
    else:
        cur = con.execute("SELECT * FROM runs WHERE json_extract(config, '$.num_shards')::INT > 1 ORDER BY started_at")
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, values)) for values in cur.fetchall()]


def has_run_id(con: Any, run_id: str) -> bool:
    """Whether a run with exactly this id exists (no prefix matching, unlike :func:`run_exists`)."""
    return con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0] > 0


def trait_score_stats(con: Any, run_id: str) -> list[tuple[str, int, float | None, float | None, float | None, int, int]]:
    """Per trait of a run, by name: (trait, layer, mean delta, mean proj_response, mean margin, flagged samples, samples)."""
    out = []
    for trait, layer in con.execute("SELECT trait, any_value(layer) FROM scores WHERE run_id = ? GROUP BY trait ORDER BY trait", [run_id]).fetchall():
        mean_delta, mean_proj, mean_margin, n_flagged, n = con.execute(
            "SELECT avg(delta), avg(proj_response), avg(margin), count(*) FILTER (WHERE flagged), count(*) FROM scores WHERE run_id = ? AND trait = ?",
            [run_id, trait],
        ).fetchone()
        out.append((trait, layer, mean_delta, mean_proj, mean_margin, int(n_flagged or 0), int(n or 0)))
    return out


def top_scores(con: Any, run_id: str, trait: str, meaning: ScoreMeaning, limit: int = 5) -> list[tuple[str, float]]:
    """The ``limit`` highest (sample_id, score) of a trait, ranked as the run's score means."""
    col = meaning.column
    return con.execute(
        f"SELECT sample_id, {col} FROM scores WHERE run_id = ? AND trait = ? AND {col} IS NOT NULL ORDER BY {meaning.order_by()} LIMIT ?",
        [run_id, trait, limit],
    ).fetchall()


def run_output_dir(con: Any, run_id: str) -> str | None:
    """The folder a run wrote its files to (None when the row names none)."""
    row = con.execute("SELECT output_dir FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return row[0] if row and row[0] else None


def complete_run_ids(con: Any) -> list[str]:
    """The ids of the complete runs, newest first (the order ``latest`` picks in)."""
    return [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'complete' ORDER BY started_at DESC NULLS LAST, run_id DESC").fetchall()]


def example_query(view: str, run_id: str) -> str:
    """A query a user can paste into ``audit sql`` to see a run's rows of a table or view (``flagged``, ``rejects``)."""
    return f"SELECT * FROM {view} WHERE run_id = '{run_id}'"


# ---------------------------------------------------------------- the gate's questions


def gate_trait_rows(con: Any, run_id: str, pairs: bool) -> list[tuple]:
    """Per trait, by name: (trait, layer, n, mean delta, mean proj_response, n with a delta, n flagged,
    max delta, max proj_response, mean margin, max margin); margin is NULL unless ``pairs``."""
    margin = "margin" if pairs else "NULL::DOUBLE"  # older databases have no margin column
    return con.execute(
        f"""SELECT trait, any_value(layer), count(*), avg(delta), avg(proj_response), count(delta),
                  sum(CASE WHEN flagged THEN 1 ELSE 0 END), max(delta), max(proj_response), avg({margin}), max({margin})
           FROM scores WHERE run_id = ? GROUP BY trait ORDER BY trait""",
        [run_id],
    ).fetchall()


def highest_samples(
    con: Any, run_id: str, trait: str, meaning: ScoreMeaning, limit: int, above: float | None = None, flagged_only: bool = False
) -> list[tuple[str, str, int | None, int, float, str | None]]:
    """(sample_id, source, line, turn, score, response) of a trait's highest-scoring samples, ranked as ``meaning`` ranks;
    only those whose score is above ``above`` when given, only flagged ones with ``flagged_only``."""
    score = meaning.column
    cond = ""
    params: list[Any] = [run_id, trait]
    if above is not None:
        cond += f" AND s.{score} > ?"
        params.append(above)
    if flagged_only:
        cond += " AND s.flagged"
    params.append(limit)
    return con.execute(
        f"""SELECT m.sample_id, m.source, m.line, m.turn, s.{score}, m.response
            FROM scores s JOIN samples m USING (run_id, sample_id)
            WHERE s.run_id = ? AND s.trait = ? AND s.{score} IS NOT NULL{cond}
            ORDER BY {meaning.order_by("s")} LIMIT ?""",
        params,
    ).fetchall()


def count_above(con: Any, run_id: str, trait: str, column: str, limit: float) -> int:
    """How many samples of a trait have ``column`` strictly above ``limit``."""
    return con.execute(f"SELECT count(*) FROM scores WHERE run_id = ? AND trait = ? AND {column} > ?", [run_id, trait, limit]).fetchone()[0]
