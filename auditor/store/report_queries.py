"""What the HTML report asks of the database (:mod:`auditor.report.data` turns the rows into
the page's records).

Every query has an explicit ``ORDER BY`` with a unique tie-breaker, and the report runs
them on a single-threaded connection (:func:`single_threaded`), so the same run gives the
same numbers to the last bit. Columns a database older than preference pairs lacks
(``margin``, ``proj_rejected``, the rejected heat map) are named only when ``pairs`` is
true; otherwise NULLs stand in for them.
"""

from __future__ import annotations

from typing import Any

# A preference run's extra columns for the ranked table; NULLs for other runs (whose database may predate them).
_PAIR_COLUMNS = "m.rejected_response, t.proj_rejected, t.margin, ts.rejected_tokens, ts.rejected_token_values, m.n_rejected_tokens"
_PAIR_NULLS = "NULL, NULL, NULL, NULL, NULL, NULL"
# Metadata values a breakdown groups by: scalars, not objects or lists.
_SCALAR_TYPES = "('VARCHAR', 'BIGINT', 'UBIGINT', 'BOOLEAN')"


def _margin_sql(pairs: bool, agg: str | None = None, alias: str = "") -> str:
    """``margin`` (or ``avg(margin)``) for a preference run; NULL otherwise, so older databases still answer."""
    col = f"{alias}margin" if pairs else "NULL::DOUBLE"
    return f"{agg}({col})" if agg else col


def single_threaded(con: Any) -> None:
    """One thread on ``con``: parallel aggregation may add floats in a different order from one call to the next."""
    con.execute("SET threads = 1")


def run_details(con: Any, run_id: str) -> tuple[Any, Any, str | None, str | None, str | None, Any, Any]:
    """(started_at, finished_at, model_fingerprint, dtype, device, timings, versions) of a run; JSON columns as stored."""
    return con.execute("SELECT started_at, finished_at, model_fingerprint, dtype, device, timings, versions FROM runs WHERE run_id = ?", [run_id]).fetchone()


def scored_traits(con: Any, run_id: str) -> list[str]:
    """The traits that have at least one score row in the run, by name."""
    return [t for (t,) in con.execute("SELECT DISTINCT trait FROM scores WHERE run_id = ? ORDER BY trait", [run_id]).fetchall()]


def trait_totals(con: Any, run_id: str, trait: str, column: str, pairs: bool) -> tuple[int, int, int, Any, Any, Any, Any, Any]:
    """(n, n with a ``column`` value, n flagged, mean delta, mean proj_response, mean proj_base, mean margin, layer) of a trait."""
    return con.execute(
        f"SELECT count(*), count({column}), count(*) FILTER (WHERE flagged), avg(delta), avg(proj_response), avg(proj_base), {_margin_sql(pairs, 'avg')}, min(layer) "
        "FROM scores WHERE run_id = ? AND trait = ?",
        [run_id, trait],
    ).fetchone()


def score_range(con: Any, run_id: str, trait: str, column: str) -> tuple[float | None, float | None]:
    """(min, max) of ``column`` over a trait's scores; (None, None) when no sample has one."""
    return con.execute(f"SELECT min({column}), max({column}) FROM scores WHERE run_id = ? AND trait = ?", [run_id, trait]).fetchone()


def histogram_counts(con: Any, run_id: str, trait: str, column: str, lo: float, width: float, bins: int) -> list[tuple[int, int]]:
    """(bin, count) of ``column`` in ``bins`` bins of ``width`` from ``lo`` (values outside go to the end bins); empty bins are absent."""
    return con.execute(
        f"SELECT least(greatest(floor(({column} - ?) / ?)::BIGINT, 0), ?) AS b, count(*) FROM scores "
        f"WHERE run_id = ? AND trait = ? AND {column} IS NOT NULL GROUP BY b ORDER BY b",
        [lo, width, bins - 1, run_id, trait],
    ).fetchall()


def top_sample_rows(con: Any, run_id: str, trait: str, top_n: int, pairs: bool) -> list[tuple]:
    """The ``top_n`` first rows of the ``top_samples`` view (ranked by the run's score), with each sample and its heat map.

    Each row: rank, sample_id, source, line, turn, delta, proj_response, proj_base, flagged,
    context, response, base_response, metadata, tokens, token_values, n_response_tokens,
    n_base_tokens, then rejected_response, proj_rejected, margin, rejected_tokens,
    rejected_token_values, n_rejected_tokens (NULL unless ``pairs``).
    """
    return con.execute(
        f"""SELECT t.rank, t.sample_id, m.source, m.line, m.turn, t.delta, t.proj_response, t.proj_base, t.flagged,
                  m.context, m.response, m.base_response, m.metadata, ts.tokens, ts.token_values,
                  m.n_response_tokens, m.n_base_tokens, {_PAIR_COLUMNS if pairs else _PAIR_NULLS}
           FROM top_samples t
           JOIN samples m ON m.run_id = t.run_id AND m.sample_id = t.sample_id
           LEFT JOIN token_scores ts ON ts.run_id = t.run_id AND ts.sample_id = t.sample_id AND ts.trait = t.trait
           WHERE t.run_id = ? AND t.trait = ? AND t.rank <= ?
           ORDER BY t.rank""",
        [run_id, trait, top_n],
    ).fetchall()


def sample_scores(con: Any, run_id: str, sample_ids: list[str], pairs: bool) -> list[tuple[str, str, Any, Any, Any, bool]]:
    """(sample_id, trait, delta, proj_response, margin, flagged) of every trait of these samples, by sample and trait."""
    return con.execute(
        f"SELECT sample_id, trait, delta, proj_response, {_margin_sql(pairs)}, flagged FROM scores WHERE run_id = ? AND sample_id IN (SELECT unnest(?)) ORDER BY sample_id, trait",
        [run_id, sample_ids],
    ).fetchall()


def count_multi_flagged(con: Any, run_id: str) -> int:
    """How many samples are flagged for two traits or more."""
    return con.execute(
        "SELECT count(*) FROM (SELECT sample_id FROM scores WHERE run_id = ? AND flagged GROUP BY sample_id HAVING count(*) >= 2)", [run_id]
    ).fetchone()[0]


def multi_flagged(con: Any, run_id: str, limit: int) -> list[tuple[str, int]]:
    """(sample_id, number of traits flagged) of the samples flagged for two traits or more, most first, at most ``limit``."""
    return con.execute(
        """SELECT s.sample_id, count(*) AS k FROM scores s WHERE s.run_id = ? AND s.flagged
           GROUP BY s.sample_id HAVING count(*) >= 2 ORDER BY k DESC, s.sample_id LIMIT ?""",
        [run_id, limit],
    ).fetchall()


def sample_places(con: Any, run_id: str, sample_ids: list[str]) -> list[tuple[str, str, int | None, Any]]:
    """(sample_id, source, line, context) of these samples; context as stored (JSON)."""
    return con.execute(
        "SELECT sample_id, source, line, context FROM samples WHERE run_id = ? AND sample_id IN (SELECT unnest(?)) ORDER BY sample_id",
        [run_id, sample_ids],
    ).fetchall()


def coflag_counts(con: Any, run_id: str) -> list[tuple[str, str, int]]:
    """(trait a, trait b, samples flagged for both) for every ordered pair of traits, the diagonal included."""
    return con.execute(
        """SELECT x.trait, y.trait, count(*) FROM scores x JOIN scores y ON x.run_id = y.run_id AND x.sample_id = y.sample_id
           WHERE x.run_id = ? AND x.flagged AND y.flagged GROUP BY x.trait, y.trait ORDER BY x.trait, y.trait""",
        [run_id],
    ).fetchall()


def by_source_rows(con: Any, run_id: str, pairs: bool) -> list[tuple]:
    """(source, trait, n, mean delta, mean proj_response, n flagged, mean margin) per source file and trait."""
    return con.execute(
        f"""SELECT m.source, s.trait, count(*), avg(s.delta), avg(s.proj_response), count(*) FILTER (WHERE s.flagged), {_margin_sql(pairs, "avg", "s.")}
           FROM scores s JOIN samples m ON m.run_id = s.run_id AND m.sample_id = s.sample_id
           WHERE s.run_id = ? GROUP BY m.source, s.trait ORDER BY m.source, s.trait""",
        [run_id],
    ).fetchall()


def category_keys(con: Any, run_id: str, max_values: int, max_keys: int) -> list[tuple[str, int]]:
    """(key, distinct values) of the metadata keys with 2..``max_values`` distinct scalar values, by key, at most ``max_keys``."""
    return con.execute(
        f"""SELECT j.key, count(DISTINCT j.value) AS k FROM samples m, json_each(m.metadata) j
           WHERE m.run_id = ? AND j.type IN {_SCALAR_TYPES}
           GROUP BY j.key HAVING count(DISTINCT j.value) BETWEEN 2 AND ? ORDER BY j.key LIMIT ?""",
        [run_id, max_values, max_keys],
    ).fetchall()


def by_metadata_rows(con: Any, run_id: str, key: str, pairs: bool) -> list[tuple]:
    """(value, trait, n, mean delta, mean proj_response, n flagged, mean margin) per value of metadata ``key`` and trait."""
    return con.execute(
        f"""WITH v AS (
               SELECT m.sample_id, j.value ->> '$' AS value FROM samples m, json_each(m.metadata) j
               WHERE m.run_id = ? AND j.key = ? AND j.type IN {_SCALAR_TYPES})
           SELECT v.value, s.trait, count(*), avg(s.delta), avg(s.proj_response), count(*) FILTER (WHERE s.flagged), {_margin_sql(pairs, "avg", "s.")}
           FROM scores s JOIN v ON v.sample_id = s.sample_id
           WHERE s.run_id = ? GROUP BY v.value, s.trait ORDER BY v.value, s.trait""",
        [run_id, key, run_id],
    ).fetchall()


def count_rejects(con: Any, run_id: str) -> int:
    """How many records the run rejected."""
    return con.execute("SELECT count(*) FROM rejects WHERE run_id = ?", [run_id]).fetchone()[0]


def first_rejects(con: Any, run_id: str, limit: int) -> list[tuple[str | None, int | None, str | None]]:
    """(source, line, reason) of the run's first ``limit`` rejects, by source and line."""
    return con.execute("SELECT source, line, reason FROM rejects WHERE run_id = ? ORDER BY source, line NULLS LAST, reason LIMIT ?", [run_id, limit]).fetchall()
