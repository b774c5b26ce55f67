"""The batched scanner against the plain, one-sample-at-a-time computation of METHOD.md.

The plain path: full model, ``output_hidden_states=True``, one sample per forward, mean
of ``h[l]`` over the response tokens, projection on ``v[l] / ||v[l]||``; base responses
generated one prompt at a time, decoded to text and re-encoded.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_CHATS, make_vectors, write_jsonl

from auditor.pipeline import ScanConfig, scan_run
from auditor.vectors import load_vectors

# Measured here (bf16 on an AMX CPU vs the plain fp32 path, random unit directions, layers
# 18-20, projections of magnitude ~1-10): the largest |difference| was 0.102; see README
# "Numerics". bf16 generation may also choose other greedy tokens than fp32, so the bf16
# check compares response projections, which do not depend on generation.
BF16_ABS_TOL = 0.15


def plain_projection(lm, messages, response, vector, layer):
    tok = lm.tokenizer
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt + response, return_tensors="pt", add_special_tokens=False).input_ids
    p = len(tok(prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    a = hs[layer][0, p:].float().mean(0)
    v = vector[layer].float()
    return float(a @ v / v.norm())


def plain_base_response(lm, messages, max_new_tokens):
    tok = lm.tokenizer
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        g = lm.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(g[0, ids.shape[1] :], skip_special_tokens=True)


def _scan(tmp_path, lm, vectors, **kw):
    data = write_jsonl(tmp_path / "data.jsonl", SMALL_CHATS)
    kw.setdefault("baseline", "generate")  # the plain path these tests compare with generates base responses
    cfg = ScanConfig(source=data, vectors=vectors, db=str(tmp_path / "audit.duckdb"), report=False, **kw)
    return scan_run(cfg, lm=lm)


@pytest.mark.slow
def test_batched_matches_plain_fp32(tmp_path, embedded_lm_fp32):
    lm = embedded_lm_fp32
    vec_dir = make_vectors(tmp_path / "v", lm.num_layers, lm.hidden_size, traits=("evil", "sycophancy", "shallow", "top"), fingerprint=lm.fingerprint)
    # Include layer 0 (embeddings) and L (after the final norm): the two edge cases of h[l].
    import json

    for trait, layer in (("shallow", 0), ("top", lm.num_layers)):
        side = tmp_path / "v" / f"{trait}.json"
        meta = json.loads(side.read_text())
        meta["layer"] = layer
        side.write_text(json.dumps(meta))
    vectors = {pv.trait: pv for pv in load_vectors(vec_dir, lm.name)}
    result = _scan(tmp_path, lm, vec_dir, max_new_tokens=24, batch_tokens=512)
    df = result.scores
    assert df.height == len(SMALL_CHATS)
    worst = 0.0
    for i, row in enumerate(df.iter_rows(named=True)):
        msgs = SMALL_CHATS[i]["messages"]
        base = plain_base_response(lm, msgs[:-1], 24)
        for trait, pv in vectors.items():
            pr = plain_projection(lm, msgs[:-1], msgs[-1]["content"], pv.vector, pv.layer)
            pb = plain_projection(lm, msgs[:-1], base, pv.vector, pv.layer)
            assert row[f"{trait}_proj_response"] == pytest.approx(pr, abs=1e-4)
            assert row[f"{trait}_proj_base"] == pytest.approx(pb, abs=1e-4)
            assert row[f"{trait}_delta"] == pytest.approx(pr - pb, abs=1e-4)
            worst = max(worst, abs(row[f"{trait}_delta"] - (pr - pb)))
    print(f"fp32 worst |delta difference| = {worst:.2e}")


@pytest.mark.slow
def test_bf16_within_documented_tolerance(tmp_path, embedded_lm_bf16, embedded_lm_fp32):
    lm = embedded_lm_bf16
    vec_dir = make_vectors(tmp_path / "v", lm.num_layers, lm.hidden_size, fingerprint=lm.fingerprint)
    vectors = {pv.trait: pv for pv in load_vectors(vec_dir, lm.name)}
    df = _scan(tmp_path, lm, vec_dir, baseline="prompt-last").scores
    worst = 0.0
    for i, row in enumerate(df.iter_rows(named=True)):
        msgs = SMALL_CHATS[i]["messages"]
        for trait, pv in vectors.items():
            pr = plain_projection(embedded_lm_fp32, msgs[:-1], msgs[-1]["content"], pv.vector, pv.layer)
            worst = max(worst, abs(row[f"{trait}_proj_response"] - pr))
    print(f"bf16 worst |proj difference| vs fp32 plain = {worst:.3f}")
    assert worst < BF16_ABS_TOL


@pytest.mark.slow
def test_second_scan_hits_the_cache(tmp_path, embedded_lm_fp32):
    lm = embedded_lm_fp32
    vec_dir = make_vectors(tmp_path / "v", lm.num_layers, lm.hidden_size, fingerprint=lm.fingerprint)
    first = _scan(tmp_path, lm, vec_dir, max_new_tokens=16)
    second = _scan(tmp_path, lm, vec_dir, max_new_tokens=16, reuse=False)  # compute the samples again (not their stored scores)
    assert first.n_generated == len(SMALL_CHATS) and first.n_cached == 0
    assert second.n_generated == 0 and second.n_cached == len(SMALL_CHATS)
    a, b = first.scores, second.scores
    assert a.equals(b)
    # Other generation settings are another cache key: nothing is reused wrongly.
    third = _scan(tmp_path, lm, vec_dir, max_new_tokens=17)
    assert third.n_generated == len(SMALL_CHATS)


def test_batched_matches_plain_tiny(tmp_path, tiny_lm, tiny_vectors):
    """Same check on the tiny model, every baseline, many batch shapes (fast, exact)."""
    vectors = {pv.trait: pv for pv in load_vectors(tiny_vectors, tiny_lm.name)}
    for batch_tokens in (1, 64, 100000):
        df = _scan(tmp_path, tiny_lm, tiny_vectors, baseline="none", batch_tokens=batch_tokens).scores
        for i, row in enumerate(df.iter_rows(named=True)):
            msgs = SMALL_CHATS[i]["messages"]
            for trait, pv in vectors.items():
                pr = plain_projection(tiny_lm, msgs[:-1], msgs[-1]["content"], pv.vector, pv.layer)
                assert row[f"{trait}_proj_response"] == pytest.approx(pr, abs=1e-5)
                assert row[f"{trait}_delta"] is None


def test_prompt_last_baseline_tiny(tmp_path, tiny_lm, tiny_vectors):
    vectors = {pv.trait: pv for pv in load_vectors(tiny_vectors, tiny_lm.name)}
    df = _scan(tmp_path, tiny_lm, tiny_vectors, baseline="prompt-last").scores
    tok = tiny_lm.tokenizer
    for i, row in enumerate(df.iter_rows(named=True)):
        msgs = SMALL_CHATS[i]["messages"]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            hs = tiny_lm.model(ids, output_hidden_states=True).hidden_states
        for trait, pv in vectors.items():
            v = pv.vector[pv.layer]
            expected = float(hs[pv.layer][0, -1] @ v / v.norm())
            assert row[f"{trait}_proj_base"] == pytest.approx(expected, abs=1e-5)
            assert row[f"{trait}_delta"] == pytest.approx(row[f"{trait}_proj_response"] - expected, abs=1e-5)


def test_generation_dtype_auto_is_float32_on_cpu(tiny_lm, embedded_lm_bf16):
    from auditor.generation import resolve_generation_dtype

    assert resolve_generation_dtype("auto", embedded_lm_bf16) == "float32"
    assert resolve_generation_dtype("bfloat16", embedded_lm_bf16) == "bfloat16"
    assert resolve_generation_dtype("auto", tiny_lm) == "float32"


@pytest.mark.slow
def test_bf16_scan_generates_the_plain_fp32_base_responses_whatever_the_batch(tmp_path, embedded_lm_bf16, embedded_lm_fp32):
    """Scoring in bf16, base responses in float32 (the CPU default): every base response is the
    plain one-prompt-at-a-time fp32 generation, at any generation batch size, so delta does not
    depend on how prompts were batched. (Greedy bf16 decoding changed 21 of 32 responses between
    batches of 8 and 32 here.)"""
    import duckdb

    lm = embedded_lm_bf16
    vec_dir = make_vectors(tmp_path / "v", lm.num_layers, lm.hidden_size, fingerprint=lm.fingerprint)
    runs = {}
    for size in (1, 6):
        sub = tmp_path / f"bs{size}"
        sub.mkdir()
        _scan(sub, lm, vec_dir, max_new_tokens=32, generation_batch_size=size)
        con = duckdb.connect(str(sub / "audit.duckdb"), read_only=True)
        runs[size] = (
            con.execute("SELECT sample_id, base_response FROM samples ORDER BY sample_id").fetchall(),
            con.execute("SELECT sample_id, trait, delta FROM scores ORDER BY sample_id, trait").fetchall(),
        )
        con.close()
    assert runs[1] == runs[6]
    bases = dict(runs[1][0])
    for i, chat in enumerate(SMALL_CHATS):
        assert bases[f"data.jsonl:{i + 1}"] == plain_base_response(embedded_lm_fp32, chat["messages"][:-1], 32)


@pytest.mark.parametrize("flag_on", ["delta", "projection"])
def test_generate_baseline_and_flags_match_plain_tiny(tmp_path, tiny_lm, tiny_vectors, flag_on):
    """Pins every stored number of a generate-baseline scan to the plain path: projections, delta and the flag.

    The restructure of the scan (issue 12) was checked bit for bit against recorded scans;
    this keeps the meaning pinned: base responses generated one prompt at a time, projections
    from a full unbatched forward, and flagged = (the run's score > threshold).
    """
    vectors = {pv.trait: pv for pv in load_vectors(tiny_vectors, tiny_lm.name)}
    df = _scan(
        tmp_path, tiny_lm, tiny_vectors, baseline="generate", max_new_tokens=10, chunk_size=4, batch_tokens=64, thresholds={"*": 0.0}, flag_on=flag_on
    ).scores
    assert df.height == len(SMALL_CHATS)
    for i, row in enumerate(df.iter_rows(named=True)):
        msgs = SMALL_CHATS[i]["messages"]
        base = plain_base_response(tiny_lm, msgs[:-1], 10)
        for trait, pv in vectors.items():
            pr = plain_projection(tiny_lm, msgs[:-1], msgs[-1]["content"], pv.vector, pv.layer)
            pb = plain_projection(tiny_lm, msgs[:-1], base, pv.vector, pv.layer)
            assert row[f"{trait}_proj_response"] == pytest.approx(pr, abs=1e-5)
            assert row[f"{trait}_proj_base"] == pytest.approx(pb, abs=1e-5)
            assert row[f"{trait}_delta"] == pytest.approx(pr - pb, abs=1e-5)
            score = pr if flag_on == "projection" else pr - pb
            if abs(score) > 1e-4:  # away from the threshold, the rounding cannot decide the flag
                assert row[f"{trait}_flagged"] is (score > 0.0)
