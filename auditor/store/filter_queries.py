"""What ``audit filter`` asks of the database (:mod:`auditor.filter` holds the rule and the file side).

The selection is one read-only query: per sample of one source file, in line order, the
reasons a rule selects it. The user's ``--where`` clause is pasted into it as SQL, so the
connection is first cut off from files (:func:`forbid_file_access`) and the filter checks
that the whole text is one ``SELECT``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from auditor.store.queries import RunInfo, stream_batches

# How a score is printed in a reason: 4 decimals, "null" when the sample has none.
_SCORE_TEXT = "coalesce(printf('%.4f', score), 'null')"


def forbid_file_access(con: Any) -> None:
    """No reading or writing of files from SQL on ``con`` (a --where clause runs inside the selection)."""
    con.execute("SET enable_external_access = false")


def run_sources(con: Any, run_id: str) -> list[str]:
    """The source names a run stored, scored or rejected, sorted."""
    rows = con.execute(
        "SELECT DISTINCT source FROM samples WHERE run_id = ? UNION SELECT DISTINCT source FROM rejects WHERE run_id = ? AND source IS NOT NULL",
        [run_id, run_id],
    ).fetchall()
    return sorted(r[0] for r in rows if r[0] is not None)


def rejected_lines(con: Any, run_id: str, source: str) -> Iterator[int]:
    """The lines of ``source`` the run rejected, ascending, streamed."""
    batches = stream_batches(
        con,
        "SELECT DISTINCT line FROM rejects WHERE run_id = $run_id AND source = $source AND line IS NOT NULL ORDER BY line",
        {"run_id": run_id, "source": source},
    )
    for batch in batches:
        yield from batch.column(0).to_pylist()


def _thresholds_cte(run: RunInfo, params: dict[str, Any]) -> str:
    """The run's (trait, threshold) pairs as a VALUES table; their values go into ``params``."""
    thresholds = [(t, run.threshold(t)) for t in list(run.vectors)]
    if not thresholds:
        return "SELECT NULL::VARCHAR AS trait, NULL::DOUBLE AS threshold WHERE false"
    values = ", ".join(f"($trait_{i}, $threshold_{i})" for i in range(len(thresholds)))
    for i, (t, th) in enumerate(thresholds):
        params[f"trait_{i}"] = t
        params[f"threshold_{i}"] = th
    return f"SELECT * FROM (VALUES {values}) AS t(trait, threshold)"


def _selecting_parts(
    where: str | None, drop_flagged: bool, top: tuple[str, float] | None, top_text: str | None, traits: list[str] | None, params: dict[str, Any]
) -> list[str]:
    """One ``SELECT sample_id, reason FROM v ...`` per part of the rule; their values go into ``params``."""
    trait_cond = ""
    if traits:
        trait_cond = " AND trait IN (SELECT unnest($traits))"
        params["traits"] = list(traits)
    parts: list[str] = []
    if where:
        params["where_text"] = where
        parts.append(
            f"SELECT sample_id, printf('trait=%s %s=%s: --where %s', trait, $score_name, {_SCORE_TEXT}, $where_text) AS reason FROM v WHERE ({where}\n){trait_cond}"
        )
    if drop_flagged:
        parts.append(
            f"SELECT sample_id, printf('trait=%s %s=%s: flagged (above threshold %s)', trait, $score_name, {_SCORE_TEXT}, coalesce(printf('%.4f', threshold), '?')) AS reason "
            f"FROM v LEFT JOIN thresholds USING (trait) WHERE flagged{trait_cond}"
        )
    if top is not None:
        kind, amount = top
        params["top_amount"] = amount
        params["top_text"] = top_text
        limit = "ceil(n * $top_amount / 100.0)" if kind == "percent" else "$top_amount"
        parts.append(
            "SELECT sample_id, printf('trait=%s %s=%s: rank %d of %d (--drop-top %s)', trait, $score_name, "
            + _SCORE_TEXT
            + ", rk, n, $top_text) AS reason FROM ("
            "SELECT *, row_number() OVER (PARTITION BY trait ORDER BY score DESC, sample_id) AS rk, count(*) OVER (PARTITION BY trait) AS n "
            f"FROM v WHERE score IS NOT NULL{trait_cond}) WHERE rk <= {limit}"
        )
    return parts


def selection_sql(
    run: RunInfo,
    stored_source: str,
    where: str | None = None,
    drop_flagged: bool = False,
    top: tuple[str, float] | None = None,
    top_text: str | None = None,
    traits: list[str] | None = None,
) -> tuple[str, dict[str, Any]] | None:
    """SQL and its parameters giving, per sample of ``stored_source`` in line order: line, turn,
    sample_id, content_hash, reasons (NULL: kept); None when no part of the rule is given.

    The parts: ``where`` (an SQL boolean over the columns of ``v``, see
    ``auditor.filter.WHERE_COLUMNS``), ``drop_flagged``, and ``top`` (``("percent", 5.0)`` or
    ``("count", 10)`` per trait by the run's score; ``top_text`` is how the user wrote it);
    ``traits`` limits every part to those traits.
    """
    score = run.score().column
    # A database older than preference pairs has no such columns: name them only for a pair run.
    pair_columns = "s.proj_rejected, s.margin" if run.pairs else "NULL::DOUBLE AS proj_rejected, NULL::DOUBLE AS margin"
    params: dict[str, Any] = {"run_id": run.run_id, "source": stored_source, "score_name": score}
    threshold_cte = _thresholds_cte(run, params)
    parts = _selecting_parts(where, drop_flagged, top, top_text, traits, params)
    if not parts:
        return None
    selected = "\n    UNION ALL\n    ".join(parts)
    sql = f"""
WITH thresholds AS ({threshold_cte}),
v AS (
    SELECT m.sample_id, m.source, m.line, m.turn, s.trait, s.layer, s.delta, s.proj_response, s.proj_base, s.flagged,
           s.{score} AS score, m.response, {pair_columns}
    FROM scores s JOIN samples m ON m.run_id = s.run_id AND m.sample_id = s.sample_id
    WHERE s.run_id = $run_id
),
selected AS (
    {selected}
),
reasons AS (SELECT sample_id, list(DISTINCT reason ORDER BY reason) AS reasons FROM selected GROUP BY sample_id)
SELECT m.line, m.turn, m.sample_id, m.content_hash, r.reasons
FROM samples m LEFT JOIN reasons r USING (sample_id)
WHERE m.run_id = $run_id AND m.source = $source
ORDER BY m.line, m.turn
"""
    return sql, params
