"""The store's schemas side by side: DuckDB tables and views, and the Arrow tables a scan writes.

Adding a table: its ``CREATE TABLE IF NOT EXISTS`` here (existing databases gain it on
their next write), an Arrow schema below if the scan fills it, and the statements that
write it in :mod:`auditor.store.runs` inside a :func:`auditor.store.db.transaction`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from auditor.score import SQL_RUN_SCORE_COLUMN

TABLES = f"""
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
    rejected_response VARCHAR,          -- preference pairs: the rejected answer (response is the chosen one)
    n_rejected_tokens INTEGER,
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
    proj_rejected DOUBLE,               -- preference pairs: proj(rejected); proj_response is proj(chosen)
    margin DOUBLE,                      -- preference pairs: proj_response - proj_rejected, their flag score
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
    rejected_tokens VARCHAR[],          -- preference pairs: the rejected answer's heat map
    rejected_token_values DOUBLE[],
    PRIMARY KEY (run_id, sample_id, trait)
);
CREATE OR REPLACE VIEW flagged AS
    SELECT s.run_id, s.sample_id, s.trait, s.layer, s.delta, s.proj_response, s.proj_base,
           m.source, m.line, m.response, m.base_response, m.context, s.proj_rejected, s.margin, m.rejected_response
    FROM scores s JOIN samples m USING (run_id, sample_id)
    WHERE s.flagged;
CREATE OR REPLACE VIEW run_scores AS
    -- each score row with the run's flag score (auditor.score.ScoreMeaning): delta, or the
    -- raw projection for --flag-on projection and --baseline none
    SELECT s.*, CASE {SQL_RUN_SCORE_COLUMN} WHEN 'proj_response' THEN s.proj_response WHEN 'margin' THEN s.margin ELSE s.delta END AS score,
           {SQL_RUN_SCORE_COLUMN} AS score_column
    FROM scores s JOIN runs r USING (run_id);
CREATE OR REPLACE VIEW top_samples AS
    -- ranked by the score the run flags on, samples without one last, then by id
    SELECT s.run_id, s.trait, s.sample_id,
           row_number() OVER (PARTITION BY s.run_id, s.trait ORDER BY s.score DESC NULLS LAST, s.sample_id) AS rank,
           s.score, s.delta, s.proj_response, s.proj_base, s.flagged, m.source, m.line, m.response,
           s.proj_rejected, s.margin, m.rejected_response
    FROM run_scores s JOIN samples m USING (run_id, sample_id);
CREATE OR REPLACE VIEW dataset_summary AS
    SELECT s.run_id, r.dataset, s.trait, any_value(s.layer) AS layer, count(*) AS n,
           avg(s.delta) AS mean_delta, avg(s.proj_response) AS mean_proj_response,
           sum(CASE WHEN s.flagged THEN 1 ELSE 0 END) AS n_flagged,
           avg(CASE WHEN s.flagged THEN 1.0 ELSE 0.0 END) AS flag_rate,
           max(s.delta) AS max_delta, avg(s.margin) AS mean_margin, max(s.margin) AS max_margin
    FROM scores s JOIN runs r USING (run_id)
    GROUP BY s.run_id, r.dataset, s.trait;
"""

# Schema version -> the statements that bring a database of the version before up to it.
# They run before the tables and views are (re)created, since the views name the new columns.
MIGRATIONS = {
    # 2: preference pairs (rejected answer, proj_rejected, margin); NULL for every earlier run.
    2: (
        "ALTER TABLE samples ADD COLUMN IF NOT EXISTS rejected_response VARCHAR",
        "ALTER TABLE samples ADD COLUMN IF NOT EXISTS n_rejected_tokens INTEGER",
        "ALTER TABLE scores ADD COLUMN IF NOT EXISTS proj_rejected DOUBLE",
        "ALTER TABLE scores ADD COLUMN IF NOT EXISTS margin DOUBLE",
        "ALTER TABLE token_scores ADD COLUMN IF NOT EXISTS rejected_tokens VARCHAR[]",
        "ALTER TABLE token_scores ADD COLUMN IF NOT EXISTS rejected_token_values DOUBLE[]",
    ),
    # 3: incremental scans; earlier runs have no reuse_key, so nothing of theirs is reused.
    3: (
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS reuse_key VARCHAR",
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS n_reused BIGINT",
        "ALTER TABLE run_chunks ADD COLUMN IF NOT EXISTS n_reused BIGINT",
    ),
}

# Columns of the samples table, in the order a chunk fills them.
SAMPLE_COLUMNS = (
    "run_id",
    "sample_id",
    "source",
    "line",
    "turn",
    "content_hash",
    "context",
    "response",
    "base_response",
    "n_prompt_tokens",
    "n_response_tokens",
    "n_base_tokens",
    "metadata",
    "rejected_response",
    "n_rejected_tokens",
)
SCORE_COLUMNS = ("run_id", "sample_id", "trait", "layer", "proj_response", "proj_base", "delta", "flagged", "proj_rejected", "margin")
# Per trait in scores.parquet: <trait>_<column> (a preference run adds PAIR_SCORE_COLUMNS).
WIDE_SCORE_COLUMNS = ("proj_response", "proj_base", "delta", "flagged")
PAIR_SCORE_COLUMNS = ("proj_rejected", "margin")
_INT32 = ("turn", "n_prompt_tokens", "n_response_tokens", "n_base_tokens", "n_rejected_tokens")


def wide_schema(traits: list[str], pairs: bool = False) -> Any:
    """scores.parquet: one row per sample, four columns per trait (six for preference pairs)."""
    import pyarrow as pa

    fields = [
        ("sample_id", pa.string()),
        ("source", pa.string()),
        ("line", pa.int64()),
        ("turn", pa.int32()),
        ("content_hash", pa.string()),
        ("n_prompt_tokens", pa.int32()),
        ("n_response_tokens", pa.int32()),
        ("n_base_tokens", pa.int32()),
    ]
    for t in traits:
        fields += [(f"{t}_proj_response", pa.float64()), (f"{t}_proj_base", pa.float64()), (f"{t}_delta", pa.float64()), (f"{t}_flagged", pa.bool_())]
        if pairs:
            fields += [(f"{t}_proj_rejected", pa.float64()), (f"{t}_margin", pa.float64())]
    if pairs:
        fields.insert(fields.index(("n_base_tokens", pa.int32())) + 1, ("n_rejected_tokens", pa.int32()))
    return pa.schema(fields)


@cache
def samples_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(k, pa.int64() if k == "line" else pa.int32() if k in _INT32 else pa.string()) for k in SAMPLE_COLUMNS])


@cache
def scores_schema() -> Any:
    import pyarrow as pa

    kinds = {"layer": pa.int32(), "flagged": pa.bool_(), **{k: pa.float64() for k in ("proj_response", "proj_base", "delta", "proj_rejected", "margin")}}
    return pa.schema([(k, kinds.get(k, pa.string())) for k in SCORE_COLUMNS])


@cache
def base_responses_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("model_fingerprint", pa.string()),
            ("settings_key", pa.string()),
            ("prompt_hash", pa.string()),
            ("response", pa.string()),
            ("n_tokens", pa.int32()),
            ("created_at", pa.timestamp("us")),
        ]
    )


@cache
def token_scores_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("sample_id", pa.string()),
            ("trait", pa.string()),
            ("tokens", pa.list_(pa.string())),
            ("token_values", pa.list_(pa.float64())),
            ("rejected_tokens", pa.list_(pa.string())),
            ("rejected_token_values", pa.list_(pa.float64())),
        ]
    )


@cache
def heat_part_schema() -> Any:
    """A chunk's heat-map candidates (auditor.heatmaps), kept beside its scores part until the run completes."""
    import pyarrow as pa

    return pa.schema([("sample_id", pa.string()), ("trait", pa.string()), ("token_ids", pa.list_(pa.int64())), ("token_values", pa.list_(pa.float64()))])
