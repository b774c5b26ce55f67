from conftest import SMALL_CHATS, write_jsonl


def test_tiny_scan_end_to_end(tmp_path, tiny_lm, tiny_vectors):
    from auditor.pipeline import ScanConfig, scan_run

    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    result = scan_run(ScanConfig(source=data, vectors=tiny_vectors, max_new_tokens=8, db=str(tmp_path / "a.duckdb")), lm=tiny_lm)
    assert result.n_scored == len(SMALL_CHATS)
    df = result.scores
    assert df.height == len(SMALL_CHATS)
    assert set(df.columns) >= {"evil_delta", "sycophancy_delta", "evil_proj_response", "evil_proj_base"}


def test_flag_on_projection_flags_by_the_raw_projection(tmp_path, tiny_lm, tiny_vectors):
    """--flag-on projection: flags compare proj_response with the threshold; delta is still computed and stored."""
    import duckdb

    from auditor.pipeline import ScanConfig, scan_run

    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    db = str(tmp_path / "a.duckdb")
    scan_run(ScanConfig(source=data, vectors=tiny_vectors, max_new_tokens=8, db=db, thresholds={"*": 0.0}, flag_on="projection", report=False), lm=tiny_lm)
    con = duckdb.connect(db, read_only=True)
    rows = con.execute("SELECT proj_response, delta, flagged FROM scores").fetchall()
    stored = con.execute("SELECT vectors FROM runs").fetchone()[0]
    con.close()
    assert rows and all(flagged == (proj > 0.0) for proj, _delta, flagged in rows)
    assert any((proj > 0.0) != (delta > 0.0) for proj, delta, _ in rows)  # the choice matters on this data
    assert '"score": "proj_response"' in stored


def test_auto_batch_sizes_resolve_per_device(tiny_lm):
    from dataclasses import replace

    from auditor.generation import CPU_GENERATION_BATCH
    from auditor.pipeline import ChunkScorer, ScanConfig
    from auditor.scoring import CPU_BATCH_TOKENS

    auto = ChunkScorer(ScanConfig(source="x.jsonl"), tiny_lm, [], run_id="")
    assert (auto.batch_tokens, auto.generation_batch_size) == (CPU_BATCH_TOKENS, CPU_GENERATION_BATCH)
    # A Ray driver holds no model: it gets the CPU values and never touches CUDA.
    driver = ChunkScorer(ScanConfig(source="x.jsonl"), replace(tiny_lm, model=None), [], run_id="")
    assert (driver.batch_tokens, driver.generation_batch_size) == (CPU_BATCH_TOKENS, CPU_GENERATION_BATCH)
    given = ChunkScorer(ScanConfig(source="x.jsonl", batch_tokens=512, generation_batch_size=3), tiny_lm, [], run_id="")
    assert (given.batch_tokens, given.generation_batch_size) == (512, 3)
