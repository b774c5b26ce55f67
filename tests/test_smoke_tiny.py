from conftest import SMALL_CHATS, write_jsonl


def test_tiny_scan_end_to_end(tmp_path, tiny_lm, tiny_vectors):
    from auditor.pipeline import ScanConfig, scan_run

    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    result = scan_run(ScanConfig(source=data, vectors=tiny_vectors, max_new_tokens=8, db=str(tmp_path / "a.duckdb")), lm=tiny_lm)
    assert result.n_scored == len(SMALL_CHATS)
    df = result.scores
    assert df.height == len(SMALL_CHATS)
    assert set(df.columns) >= {"evil_delta", "sycophancy_delta", "evil_proj_response", "evil_proj_base"}
