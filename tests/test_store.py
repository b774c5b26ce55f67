"""What a scan writes reads back equal: Parquet, DuckDB, and the two agree."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pyarrow.parquet as pq
from conftest import SMALL_CHATS, write_jsonl

from auditor.pipeline import ScanConfig, scan_run


def test_parquet_and_duckdb_round_trip(tmp_path, tiny_lm, tiny_vectors):
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS + ['{"broken": ', {"prompt": "p", "response": " "}])
    db = str(tmp_path / "audit.duckdb")
    result = scan_run(
        ScanConfig(source=data, vectors=tiny_vectors, db=db, baseline="generate", max_new_tokens=6, on_error="skip", report=False, thresholds={"evil": 0.0}),
        lm=tiny_lm,
    )
    assert (result.n_read, result.n_scored, result.n_rejected) == (8, 6, 2)

    wide = pl.read_parquet(result.parquet_path)
    assert pq.read_schema(result.parquet_path).field("evil_delta").type == "double"
    con = duckdb.connect(db, read_only=True)
    run = con.execute(
        "SELECT status, n_read, n_scored, n_rejected, dataset, model_fingerprint, baseline FROM runs WHERE run_id = ?", [result.run_id]
    ).fetchone()
    assert run == ("complete", 8, 6, 2, data, tiny_lm.fingerprint, "generate")
    rejects = con.execute("SELECT line, reason FROM rejects WHERE run_id = ? ORDER BY line", [result.run_id]).fetchall()
    assert [r[0] for r in rejects] == [7, 8]
    assert "malformed JSON" in rejects[0][1] and "only whitespace" in rejects[1][1]

    # Samples keep the text so flagged samples can be read in SQL.
    stored = con.execute("SELECT sample_id, line, context, response, base_response FROM samples WHERE run_id = ? ORDER BY line", [result.run_id]).fetchall()
    for (_sid, _line, context, response, base), chat in zip(stored, SMALL_CHATS):
        assert json.loads(context) == chat["messages"][:-1]
        assert response == chat["messages"][-1]["content"]
        assert isinstance(base, str)
    # Long-form scores equal the wide Parquet values exactly.
    long = con.execute("SELECT sample_id, trait, proj_response, proj_base, delta, flagged FROM scores WHERE run_id = ?", [result.run_id]).fetchall()
    assert len(long) == 6 * 2
    by_id = {r["sample_id"]: r for r in wide.iter_rows(named=True)}
    for sid, trait, pr, pb, delta, flagged in long:
        row = by_id[sid]
        assert (pr, pb, delta, flagged) == (row[f"{trait}_proj_response"], row[f"{trait}_proj_base"], row[f"{trait}_delta"], row[f"{trait}_flagged"])
        if trait == "evil":
            assert flagged == (delta > 0.0)
    # Counts add up in the per-chunk ledger too.
    assert con.execute("SELECT sum(n_read), sum(n_scored), sum(n_rejected) FROM run_chunks WHERE run_id = ?", [result.run_id]).fetchone() == (8, 6, 2)
    # The views answer.
    summary = con.execute("SELECT trait, n FROM dataset_summary WHERE run_id = ? ORDER BY trait", [result.run_id]).fetchall()
    assert summary == [("evil", 6), ("sycophancy", 6)]


def test_on_error_fail_stops_with_the_first_bad_line(tmp_path, tiny_lm, tiny_vectors):
    import pytest

    from auditor.errors import InputError

    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:2] + [{"prompt": "p"}])
    with pytest.raises(InputError, match=r"d\.jsonl:3: unknown format"):
        scan_run(ScanConfig(source=data, vectors=tiny_vectors, db=str(tmp_path / "a.duckdb"), report=False), lm=tiny_lm)
    con = duckdb.connect(str(tmp_path / "a.duckdb"), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("failed",)]


def test_python_api_returns_polars(tmp_path, tiny_model_dir, tiny_vectors):
    import auditor

    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:3])
    df = auditor.scan(data, model=tiny_model_dir, vectors=tiny_vectors, baseline="none", db=str(tmp_path / "a.duckdb"), report=False)
    assert isinstance(df, pl.DataFrame) and df.height == 3
    assert df["sample_id"].to_list() == ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"]
