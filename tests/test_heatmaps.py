"""The report's heat maps come from the scan's own forward pass (issue 16), not a second one.

Expected values are computed here, one sample at a time, with the plain reference: the
whole model with ``output_hidden_states=True`` (``full_hidden_states``), each response
token's hidden state projected on the unit vector. Which samples get a heat map is
worked out here too, from the stored scores (top ``top_n`` per trait by the run's score,
ties by sample id).
"""

from __future__ import annotations

import duckdb
import pytest
import torch
from conftest import chat, make_vectors, write_jsonl

from auditor.pipeline import ScanConfig, build_prompt, scan_run
from auditor.sources import iter_samples

N = 14


def chats(n: int = N) -> list[dict]:
    return [
        chat(f"Question {i}: how do I keep {i} plants alive?", f"Water them {'often' if i % 3 else 'rarely'}. " * (1 + i % 5) + f"({i})", id=f"q{i:02d}")
        for i in range(n)
    ]


class ForwardLog:
    """Token rows of every scoring forward of ``lm`` (generation's forwards, which use a KV cache, are left out)."""

    def __init__(self, lm):
        self.rows: list[tuple[int, ...]] = []
        self._handle = lm.model.base_model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs):
        if kwargs.get("use_cache") is False:
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.rows.extend(tuple(r) for r in ids.tolist())

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def vectors(tmp_path, tiny_lm):
    return make_vectors(tmp_path / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)


def stored(db: str, run_id: str, column: str = "delta") -> tuple[dict, dict]:
    """(heat maps by (sample, trait), the run's score ``column`` by (sample, trait))."""
    con = duckdb.connect(db, read_only=True)
    try:
        q = lambda sql: con.execute(sql, [run_id]).fetchall()  # noqa: E731
        heat = {(s, t): (tokens, values) for s, t, tokens, values in q("SELECT sample_id, trait, tokens, token_values FROM token_scores WHERE run_id = ?")}
        scores = {(s, t): v for s, t, v in q(f"SELECT sample_id, trait, {column} FROM scores WHERE run_id = ?")}
    finally:
        con.close()
    return heat, scores


def expected_top(scores: dict, top_n: int) -> set:
    """Top ``top_n`` per trait: highest score first, missing scores last, ties by sample id."""
    out = set()
    for trait in {t for _, t in scores}:
        ranked = sorted(((s, v) for (s, t), v in scores.items() if t == trait), key=lambda sv: (sv[1] is None, -(sv[1] or 0.0), sv[0]))
        out |= {(s, trait) for s, _ in ranked[:top_n]}
    return out


def plain_token_values(lm, vectors_dir: str, source: str, max_prompt_tokens: int = 512) -> dict:
    """(sample id, trait) -> (token pieces, per-token projections) with the whole model, one sample at a time."""
    from auditor.activations import encode_pair, full_hidden_states
    from auditor.vectors import load_vectors

    vecs = load_vectors(vectors_dir, lm.name, num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint)
    out = {}
    for sample in iter_samples(source):
        row = encode_pair(lm.tokenizer, build_prompt(lm.tokenizer, sample), sample.response, max_prompt_tokens)
        hidden = full_hidden_states(lm.model, torch.tensor([row.ids]))
        pieces = [lm.tokenizer.decode([i]) for i in row.ids[row.start : row.end]]
        for pv in vecs:
            d = pv.direction().float()
            values = (hidden[pv.layer][0, row.start : row.end].float() @ d).tolist()
            out[(sample.id, pv.trait)] = (pieces, values)
    return out


@pytest.mark.parametrize("batch_tokens", [1, 0], ids=["one-row-batches", "default-batches"])
@pytest.mark.parametrize("baseline,flag_on", [("generate", "delta"), ("none", "delta"), ("prompt-last", "projection")])
def test_heat_maps_come_from_the_scan_forward_and_equal_the_plain_computation(tmp_path, tiny_lm, vectors, batch_tokens, baseline, flag_on):
    data = write_jsonl(tmp_path / "d.jsonl", chats())
    db = str(tmp_path / "audit.duckdb")
    top_n = 5
    log = ForwardLog(tiny_lm)
    try:
        result = scan_run(
            ScanConfig(
                source=data,
                vectors=vectors,
                db=db,
                baseline=baseline,
                flag_on=flag_on,
                max_new_tokens=4,
                chunk_size=7,
                top_n=top_n,
                batch_tokens=batch_tokens,
                report=False,
            ),
            lm=tiny_lm,
        )
    finally:
        log.close()
    # One forward per response (and per base response): no second pass over the top samples.
    assert len(log.rows) == N * (2 if baseline == "generate" else 1)

    column = "proj_response" if baseline == "none" or flag_on == "projection" else "delta"
    heat, scores = stored(db, result.run_id, column)
    assert set(heat) == expected_top(scores, top_n)
    plain = plain_token_values(tiny_lm, vectors, data)
    for key, (tokens, values) in heat.items():
        want_tokens, want_values = plain[key]
        assert tokens == want_tokens, key
        assert values == pytest.approx(want_values, abs=1e-5), key
    # The heat map is the forward the score came from: its mean is the stored projection.
    con = duckdb.connect(db, read_only=True)
    proj = {(s, t): v for s, t, v in con.execute("SELECT sample_id, trait, proj_response FROM scores WHERE run_id = ?", [result.run_id]).fetchall()}
    con.close()
    for key, (_tokens, values) in heat.items():
        assert sum(values) / len(values) == pytest.approx(proj[key], abs=1e-5), key


def test_one_row_batches_give_the_second_pass_values_exactly(tmp_path, tiny_lm, vectors):
    """With one row per forward the scan's heat maps are bit-identical to a separate
    one-sample forward (what the previous second pass computed for each top sample)."""
    from auditor.activations import encode_pair
    from auditor.scoring import score_rows
    from auditor.vectors import load_vectors

    data = write_jsonl(tmp_path / "d.jsonl", chats())
    db = str(tmp_path / "audit.duckdb")
    result = scan_run(ScanConfig(source=data, vectors=vectors, db=db, max_new_tokens=4, chunk_size=5, top_n=4, batch_tokens=1, report=False), lm=tiny_lm)
    heat, _scores = stored(db, result.run_id)
    vecs = load_vectors(vectors, tiny_lm.name, num_layers=tiny_lm.num_layers, hidden_size=tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    directions = {pv.trait: (pv.layer, pv.direction()) for pv in vecs}
    by_id = {s.id: s for s in iter_samples(data)}
    assert heat
    for (sid, trait), (_tokens, values) in heat.items():
        s = by_id[sid]
        row = encode_pair(tiny_lm.tokenizer, build_prompt(tiny_lm.tokenizer, s), s.response, 512)
        (alone,) = score_rows(tiny_lm.model, [row], directions, tiny_lm.tokenizer.pad_token_id, 1, [True])
        assert values == alone.token_values[trait], (sid, trait)


def test_resumed_run_has_the_heat_maps_of_an_uninterrupted_one(tmp_path, tiny_lm, vectors):
    """Chunks stored before an interruption keep their heat-map candidates on disk."""
    data = write_jsonl(tmp_path / "d.jsonl", chats())
    settings = dict(source=data, vectors=vectors, max_new_tokens=4, chunk_size=4, top_n=3, report=False)
    whole = scan_run(ScanConfig(db=str(tmp_path / "whole.duckdb"), **settings), lm=tiny_lm)

    class Stop(Exception):
        pass

    def stop_after_two(state):
        if state.get("chunks_done", 0) >= 2:
            raise Stop

    db = str(tmp_path / "resumed.duckdb")
    with pytest.raises(Stop):
        scan_run(ScanConfig(db=db, **settings), lm=tiny_lm, progress=stop_after_two)
    resumed = scan_run(ScanConfig(db=db, resume=True, **settings), lm=tiny_lm)
    assert resumed.resumed_chunks == 2
    assert stored(db, resumed.run_id)[0] == stored(str(tmp_path / "whole.duckdb"), whole.run_id)[0]


def test_no_heat_maps_when_top_n_is_zero(tmp_path, tiny_lm, vectors):
    data = write_jsonl(tmp_path / "d.jsonl", chats(6))
    db = str(tmp_path / "audit.duckdb")
    result = scan_run(ScanConfig(source=data, vectors=vectors, db=db, max_new_tokens=4, top_n=0, report=False), lm=tiny_lm)
    assert stored(db, result.run_id)[0] == {}


def test_chunk_candidates_are_the_top_n_in_the_stores_order():
    """The per-chunk selection keeps at most ``n`` per trait, in the order the store ranks by."""
    from auditor.heatmaps import top_candidates

    scored = [("b", 1.0), ("a", 1.0), ("c", None), ("d", 3.0), ("e", -2.0), ("f", float("nan")), ("g", None)]
    plain_order = ["f", "d", "a", "b", "e", "c", "g"]  # NaN sorts above every number in DuckDB; NULLs last; ties by id
    for n in range(len(scored) + 2):
        assert [scored[i][0] for i in top_candidates(scored, n)] == plain_order[:n]


def test_candidates_agree_with_duckdb_ordering():
    """The same ranking DuckDB gives ``ORDER BY score DESC NULLS LAST, sample_id``."""
    from auditor.heatmaps import top_candidates

    values = [0.5, -1.0, None, 2.25, 0.5, float("nan"), 1e-9, None, -0.0, 0.0]
    scored = [(f"s{i}", v) for i, v in enumerate(values)]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (sample_id VARCHAR, score DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [list(r) for r in scored])
    want = [s for (s,) in con.execute("SELECT sample_id FROM t ORDER BY score DESC NULLS LAST, sample_id").fetchall()]
    assert [scored[i][0] for i in top_candidates(scored, len(scored))] == want
