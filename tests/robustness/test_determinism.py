"""Determinism: the same input and settings give the same scores, run after run.

fp32: identical, bit for bit (fresh generation or from the cache). bf16: identical run to
run on the same machine, and its response projections within the documented tolerance of
fp32 (``BF16_ABS_TOL`` in tests/test_equivalence.py, README "Numerics") on the real
embedded model.
"""

from __future__ import annotations

import pytest
from conftest import SMALL_CHATS, make_vectors, write_jsonl
from test_equivalence import BF16_ABS_TOL

from auditor.pipeline import ScanConfig, scan_run


def _scan(tmp_path, lm, vectors, db: str, rows=SMALL_CHATS, **kw):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = dict(source=data, vectors=vectors, db=str(tmp_path / db), max_new_tokens=8, report=False, top_n=2, chunk_size=4)
    cfg.update(kw)
    result = scan_run(ScanConfig(**cfg), lm=lm)
    return result.scores.sort("sample_id")


def test_fp32_scores_are_identical_run_to_run(tmp_path, tiny_lm):
    vectors = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    first = _scan(tmp_path, tiny_lm, vectors, "one.duckdb")
    fresh = _scan(tmp_path, tiny_lm, vectors, "two.duckdb")  # a new database: base responses generated again
    cached = _scan(tmp_path, tiny_lm, vectors, "one.duckdb", reuse=False)  # the same database: base responses from the cache, scores computed again
    assert first.height == len(SMALL_CHATS)
    assert first["evil_delta"].null_count() == 0
    assert first.equals(fresh)
    assert first.equals(cached)


@pytest.mark.slow  # the real embedded model, as the project marks such tests
def test_bf16_identical_run_to_run_and_within_tolerance_of_fp32(tmp_path, embedded_lm_bf16, embedded_lm_fp32):
    lm16, lm32 = embedded_lm_bf16, embedded_lm_fp32
    vectors = make_vectors(tmp_path / "v", lm16.num_layers, lm16.hidden_size, fingerprint=lm16.fingerprint)
    # prompt-last: both projections come from the forward pass alone (greedy generation in
    # bf16 may pick other tokens than fp32, which the tolerance does not cover).
    rows = SMALL_CHATS[:4]  # the real model: keep it to a few samples
    a = _scan(tmp_path, lm16, vectors, "bf16-a.duckdb", rows, baseline="prompt-last")
    b = _scan(tmp_path, lm16, vectors, "bf16-b.duckdb", rows, baseline="prompt-last")
    assert a.equals(b) and a.height == 4
    ref = _scan(tmp_path, lm32, vectors, "fp32.duckdb", rows, baseline="prompt-last")
    # The documented tolerance covers response projections (a mean over the response's
    # tokens). A prompt-last projection reads one token's state and moves more in bf16:
    # printed here, not asserted against BF16_ABS_TOL.
    worst = max(float((a[f"{t}_proj_response"] - ref[f"{t}_proj_response"]).abs().max()) for t in ("evil", "sycophancy"))
    single = max(float((a[f"{t}_proj_base"] - ref[f"{t}_proj_base"]).abs().max()) for t in ("evil", "sycophancy"))
    print(f"bf16 vs fp32 scans: worst |response projection difference| = {worst:.4f} (tolerance {BF16_ABS_TOL}); prompt-last projection {single:.4f}")
    assert 0 < worst < BF16_ABS_TOL  # 0 would mean both ran in the same precision
