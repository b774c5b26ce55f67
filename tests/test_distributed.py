"""Scale-out: shards that merge into the unsharded run, and a Ray engine identical to local."""

from __future__ import annotations

import json

import duckdb
import pytest
from conftest import chat, write_jsonl

from auditor.errors import AuditorError
from auditor.pipeline import ScanConfig, scan_run

CHATS = [chat(f"Question {i}: tell me something about topic number {i}.", f"Answer {i}: here is a fact about topic {i}, stated plainly.") for i in range(14)]


def _rows(df):
    cols = [c for c in df.columns if c.endswith(("_proj_response", "_proj_base", "_delta", "_flagged"))]
    return df.select(["sample_id", *cols]).sort("sample_id").rows()


def _cfg(tmp_path, vectors, db, **kw):
    return _cfg_for(write_jsonl(tmp_path / "data.jsonl", CHATS), vectors, db, **kw)


def _cfg_for(data, vectors, db, **kw):
    kw.setdefault("baseline", "generate")  # shards must carry base responses too
    return ScanConfig(source=data, vectors=vectors, db=str(db), max_new_tokens=6, chunk_size=3, report=False, thresholds={"*": 0.0}, **kw)


def test_three_shards_merge_into_the_unsharded_run(tmp_path, tiny_lm, tiny_vectors):
    from auditor.merge import merge_runs

    whole = scan_run(_cfg(tmp_path, tiny_vectors, tmp_path / "whole.duckdb"), lm=tiny_lm)
    shard_dbs = []
    for i in range(3):
        db = tmp_path / f"shard{i}.duckdb"
        part = scan_run(_cfg(tmp_path, tiny_vectors, db, num_shards=3, shard_index=i), lm=tiny_lm)
        assert 0 < part.n_scored < len(CHATS)
        shard_dbs.append(str(db))
    merged = merge_runs(shard_dbs, db=str(tmp_path / "merged.duckdb"), into="merged")
    assert (merged["n_read"], merged["n_scored"], merged["n_rejected"]) == (len(CHATS), len(CHATS), 0)

    import polars as pl

    # Same rows, same order (dataset order), same numbers as the unsharded scan.
    assert pl.read_parquet(merged["parquet"]).equals(whole.scores)
    a = duckdb.connect(str(tmp_path / "whole.duckdb"), read_only=True)
    b = duckdb.connect(str(tmp_path / "merged.duckdb"), read_only=True)
    q = "SELECT sample_id, trait, proj_response, proj_base, delta, flagged FROM scores WHERE run_id = ? ORDER BY sample_id, trait"
    assert a.execute(q, [whole.run_id]).fetchall() == b.execute(q, ["merged"]).fetchall()
    # The merged database also holds every base response: its cache serves a later scan.
    assert b.execute("SELECT count(*) FROM base_responses").fetchone()[0] == len(CHATS)
    summary = json.loads(b.execute("SELECT summary FROM runs WHERE run_id = 'merged'").fetchone()[0])
    whole_summary = json.loads(a.execute("SELECT summary FROM runs WHERE run_id = ?", [whole.run_id]).fetchone()[0])
    for s, w in zip(summary, whole_summary):
        assert (s["trait"], s["n"], s["n_flagged"]) == (w["trait"], w["n"], w["n_flagged"])
        assert s["mean_delta"] == pytest.approx(w["mean_delta"], abs=1e-12)


def test_merge_refuses_mismatched_or_incomplete_parts(tmp_path, tiny_lm, tiny_vectors):
    from auditor.merge import merge_runs

    dbs = []
    for i, tokens in ((0, 6), (1, 7)):  # shard 1 made with other generation settings
        db = tmp_path / f"s{i}.duckdb"
        cfg = _cfg(tmp_path, tiny_vectors, db, num_shards=2, shard_index=i)
        cfg.max_new_tokens = tokens
        scan_run(cfg, lm=tiny_lm)
        dbs.append(str(db))
    with pytest.raises(AuditorError, match="they differ in max_new_tokens; merge only shards of one scan"):
        merge_runs(dbs, db=str(tmp_path / "m.duckdb"))
    with pytest.raises(AuditorError, match=r"shards do not cover 0..1 exactly once \(missing: \[1\]"):
        merge_runs(dbs[:1], db=str(tmp_path / "m.duckdb"))


def test_ray_engine_matches_local(tmp_path, tiny_model_dir, tiny_lm, tiny_vectors):
    import ray  # the ray extra: make install installs it

    from auditor.distributed import scan_run_ray

    local = scan_run(_cfg(tmp_path, tiny_vectors, tmp_path / "local.duckdb"), lm=tiny_lm)
    cfg = _cfg(tmp_path, tiny_vectors, tmp_path / "ray.duckdb", model=tiny_model_dir, dtype="float32", device="cpu")
    changed = [dict(c) for c in CHATS]
    for i in (1, 10):  # chunks 0 and 3: a re-scan groups them into one piece of work for one actor
        changed[i]["messages"] = [*changed[i]["messages"][:-1], {"role": "assistant", "content": f"Honestly, you are brilliant to ask about topic {i}."}]
    try:
        distributed = scan_run_ray(cfg, workers=2)
        write_jsonl(tmp_path / "data.jsonl", changed)
        again = scan_run_ray(cfg, workers=2)
    finally:
        ray.shutdown()
    assert (distributed.n_read, distributed.n_scored) == (local.n_read, local.n_scored)
    assert distributed.scores.equals(local.scores)
    con = duckdb.connect(str(tmp_path / "ray.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM token_scores").fetchone()[0] > 0
    con.close()

    # Incremental on Ray: the unchanged samples are reused, and the result is a local full scan's.
    assert (again.n_scored, again.n_reused) == (len(CHATS), len(CHATS) - 2)
    fresh = scan_run(_cfg_for(cfg.source, tiny_vectors, tmp_path / "fresh.duckdb"), lm=tiny_lm)
    got, want = _rows(again.scores), _rows(fresh.scores)
    assert [r[0] for r in got] == [r[0] for r in want]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)
    assert got != _rows(distributed.scores)  # the two changed samples did change
