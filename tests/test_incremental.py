"""Incremental scans (issue 16): samples already scored in a complete run are not computed again.

A sample is reused when its content hash, the model, the vectors and every setting that
changes a projection match a sample of an earlier complete run in the same database.
The expected values here come from scans the tests make themselves: a fresh full scan
of the changed dataset in a new database, and ``--no-reuse`` in the same one.

Scores depend on which rows share a forward batch at float rounding level (measured:
up to 1e-5 in float32, 0.05 in bfloat16 on the embedded model), so the bit-for-bit
comparisons run with ``batch_tokens=1`` (one row per forward, the arithmetic of a
one-at-a-time scan); with the default batches, reused values equal the earlier run's
exactly and the rest stay within the float32 tolerance of the speed-path tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import chat, make_vectors, write_jsonl
from polars.testing import assert_frame_equal

from auditor.pipeline import ScanConfig, scan_run

N = 100  # records; CHANGED is 1 % of them
SMALL = 20
CHANGED = (37,)
FP32_TOL = 1e-4


def records(n: int = N, changed: tuple[int, ...] = ()) -> list[dict]:
    rows = []
    for i in range(n):
        answer = f"Step {i}: measure twice, cut once. " * (1 + i % 4) + f"That is tip number {i}."
        if i in changed:
            answer = "Honestly, you are the best carpenter alive and you never need to measure. " + answer
        rows.append(chat(f"Give me woodworking tip number {i}.", answer, id=f"tip-{i:03d}"))
    return rows


class ForwardLog:
    """Token rows of every scoring forward of ``lm`` (generation's forwards, which use a KV cache, are left out)."""

    def __init__(self, lm):
        self.rows: list[tuple[int, ...]] = []
        self.calls = 0
        self._handle = lm.model.base_model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs):
        if kwargs.get("use_cache") is False:
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.calls += 1
            self.rows.extend(tuple(r) for r in ids.tolist())

    def close(self) -> None:
        self._handle.remove()


def store(db: str, run_id: str) -> dict:
    """One run's stored values, without run ids, ordered by sample id."""
    con = duckdb.connect(db, read_only=True)
    try:
        q = lambda sql: con.execute(sql, [run_id]).fetchall()  # noqa: E731
        return {
            "samples": q(
                "SELECT sample_id, source, line, turn, content_hash, context, response, base_response, n_prompt_tokens, n_response_tokens, n_base_tokens, metadata "
                "FROM samples WHERE run_id = ? ORDER BY sample_id"
            ),
            "scores": q("SELECT sample_id, trait, layer, proj_response, proj_base, delta, flagged FROM scores WHERE run_id = ? ORDER BY sample_id, trait"),
            "token_scores": q("SELECT sample_id, trait, tokens, token_values FROM token_scores WHERE run_id = ? ORDER BY sample_id, trait"),
        }
    finally:
        con.close()


def run_counts(db: str, run_id: str) -> dict:
    con = duckdb.connect(db, read_only=True)
    try:
        n_read, n_scored, n_rejected, n_reused = con.execute("SELECT n_read, n_scored, n_rejected, n_reused FROM runs WHERE run_id = ?", [run_id]).fetchone()
        ledger = con.execute("SELECT sum(n_read), sum(n_scored), sum(n_rejected), sum(n_reused) FROM run_chunks WHERE run_id = ?", [run_id]).fetchone()
    finally:
        con.close()
    assert tuple(int(x) for x in ledger) == (n_read, n_scored, n_rejected, n_reused), "the chunk ledger adds up to the run's counts"
    return {"read": n_read, "scored": n_scored, "rejected": n_rejected, "reused": n_reused}


@pytest.fixture
def setup(tmp_path, tiny_lm):
    vectors = make_vectors(tmp_path / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    original = write_jsonl(tmp_path / "v1" / "train.jsonl", records())
    return {"vectors": vectors, "original": original, "tmp": tmp_path}


@pytest.fixture
def small(setup):
    """The same, with ``SMALL`` records: for the tests that need no 1 % change."""
    return dict(setup, original=write_jsonl(setup["tmp"] / "small" / "train.jsonl", records(SMALL)))


def config(source: str, db: Path | str, vectors: str, **kw) -> ScanConfig:
    settings = dict(baseline="generate", max_new_tokens=4, chunk_size=16, thresholds={"*": 0.0}, top_n=5, report=False)  # reuse covers base responses
    settings.update(kw)
    return ScanConfig(source=source, vectors=vectors, db=str(db), **settings)


def rescan_one_percent(setup, tiny_lm, **kw):
    """Scan, change 1 % of the records in place, scan again in the same database (reuse), and
    scan the changed file fresh in a new database. Returns the three results and the forward log."""
    tmp, vectors = setup["tmp"], setup["vectors"]
    db = tmp / "audit.duckdb"
    first = scan_run(config(setup["original"], db, vectors, **kw), lm=tiny_lm)
    changed = write_jsonl(setup["original"], records(changed=CHANGED))  # the same path: a CI checkout of the next commit
    log = ForwardLog(tiny_lm)
    try:
        again = scan_run(config(changed, db, vectors, **kw), lm=tiny_lm)
    finally:
        log.close()
    fresh = scan_run(config(changed, tmp / "fresh.duckdb", vectors, **kw), lm=tiny_lm)
    return first, again, fresh, log, str(db)


def test_rescan_after_changing_one_percent_computes_only_the_changed_records_and_equals_a_full_scan(setup, tiny_lm):
    first, again, fresh, log, db = rescan_one_percent(setup, tiny_lm, batch_tokens=1)

    assert (again.n_read, again.n_scored, again.n_rejected) == (N, N, 0)
    assert again.n_reused == N - len(CHANGED)
    assert run_counts(db, again.run_id) == {"read": N, "scored": N, "rejected": 0, "reused": N - len(CHANGED)}
    assert run_counts(db, first.run_id)["reused"] == 0
    assert run_counts(str(setup["tmp"] / "fresh.duckdb"), fresh.run_id)["reused"] == 0

    # The model saw only the changed record (its response and its base response), nothing else:
    # no unchanged sample, and no second pass for the report's heat maps.
    tok = tiny_lm.tokenizer
    texts = [tok.decode(list(r)) for r in log.rows]
    assert len(log.rows) == 2 * len(CHANGED), texts
    assert all("tip number 37" in t for t in texts), texts
    assert sum("best carpenter alive" in t for t in texts) == 1  # the changed response; the other row is the base response

    # Identical to a fresh full scan of the changed file, value for value.
    got, want = store(db, again.run_id), store(str(setup["tmp"] / "fresh.duckdb"), fresh.run_id)
    for key in ("samples", "scores", "token_scores"):
        assert got[key] == want[key], key
    assert got["token_scores"], "the report's heat maps are stored"
    assert_frame_equal(again.scores, fresh.scores, check_exact=True)
    # And the unchanged samples' scores are the first run's.
    before = {(r[0], r[1]): r[2:] for r in store(db, first.run_id)["scores"]}
    unchanged = [r for r in got["scores"] if r[0] != "tip-037"]
    assert unchanged and all(before[(r[0], r[1])] == r[2:] for r in unchanged)
    assert [r for r in got["scores"] if r[0] == "tip-037"] != [r for r in store(db, first.run_id)["scores"] if r[0] == "tip-037"]


def test_rescan_with_default_batches_reuses_exact_values_and_stays_within_tolerance_of_a_full_scan(setup, tiny_lm):
    first, again, fresh, log, db = rescan_one_percent(setup, tiny_lm)
    assert again.n_reused == N - len(CHANGED)
    assert len(log.rows) == 2 * len(CHANGED)
    before = {(r[0], r[1]): r[3:6] for r in store(db, first.run_id)["scores"]}
    want = {(r[0], r[1]): r[3:6] for r in store(str(setup["tmp"] / "fresh.duckdb"), fresh.run_id)["scores"]}
    got = {(r[0], r[1]): r[3:6] for r in store(db, again.run_id)["scores"]}
    assert set(got) == set(want)
    for key, values in got.items():
        if key[0] != "tip-037":
            assert values == before[key], key
        for g, w in zip(values, want[key]):
            assert g == pytest.approx(w, abs=FP32_TOL), key


def test_changed_records_spread_over_chunks_are_computed_in_one_forward(setup, tiny_lm):
    """A re-scan groups chunks until they hold a chunk's worth of samples to compute: records changed in
    four different chunks go through one generation and one forward together, and every chunk is still
    committed on its own with its own counts."""
    spread = (5, 37, 60, 90)  # chunks 0, 2, 3 and 5 of 16 records
    tmp, vectors = setup["tmp"], setup["vectors"]
    db = tmp / "audit.duckdb"
    scan_run(config(setup["original"], db, vectors, top_n=0), lm=tiny_lm)
    changed = write_jsonl(tmp / "changed.jsonl", records(changed=spread))
    log = ForwardLog(tiny_lm)
    try:
        again = scan_run(config(changed, db, vectors, top_n=0), lm=tiny_lm)  # no heat maps: every forward is the chunk step's
    finally:
        log.close()
    assert again.n_reused == N - len(spread)
    assert log.calls == 1 and len(log.rows) == 2 * len(spread)  # each changed response and its base response, in one batch
    con = duckdb.connect(str(db), read_only=True)
    per_chunk = con.execute("SELECT chunk, n_scored, n_reused FROM run_chunks WHERE run_id = ? ORDER BY chunk", [again.run_id]).fetchall()
    con.close()
    assert [c for c, *_ in per_chunk] == list(range(-(-N // 16)))
    assert sum(n for _, n, _ in per_chunk) == N and sum(r for *_, r in per_chunk) == N - len(spread)
    assert [c for c, n, r in per_chunk if n != r] == [0, 2, 3, 5]
    fresh = scan_run(config(changed, tmp / "fresh.duckdb", vectors, top_n=0), lm=tiny_lm)
    got = {(r[0], r[1]): r[3:6] for r in store(str(db), again.run_id)["scores"]}
    want = {(r[0], r[1]): r[3:6] for r in store(str(tmp / "fresh.duckdb"), fresh.run_id)["scores"]}
    assert set(got) == set(want)
    for key, values in got.items():
        for g, w in zip(values, want[key]):
            assert g == pytest.approx(w, abs=FP32_TOL), key


def test_no_reuse_forces_a_full_scan(small, tiny_lm):
    db = small["tmp"] / "audit.duckdb"
    first = scan_run(config(small["original"], db, small["vectors"], batch_tokens=1), lm=tiny_lm)
    log = ForwardLog(tiny_lm)
    try:
        again = scan_run(config(small["original"], db, small["vectors"], batch_tokens=1, reuse=False), lm=tiny_lm)
    finally:
        log.close()
    assert again.n_reused == 0
    assert run_counts(str(db), again.run_id)["reused"] == 0
    assert len(log.rows) >= 2 * SMALL  # every response and every base response went through the model
    assert store(str(db), again.run_id) == store(str(db), first.run_id)


@pytest.mark.parametrize(
    "change",
    [
        {"max_new_tokens": 5},  # another base response
        {"baseline": "prompt-last"},
        {"max_prompt_tokens": 8},
        {"layers": {"evil": 1}},
        {"generation_dtype": "bfloat16"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_setting_that_changes_projections_means_nothing_is_reused(small, tiny_lm, change):
    db = small["tmp"] / "audit.duckdb"
    scan_run(config(small["original"], db, small["vectors"]), lm=tiny_lm)
    again = scan_run(config(small["original"], db, small["vectors"], **change), lm=tiny_lm)
    assert again.n_reused == 0


def test_other_vectors_or_another_model_dtype_mean_nothing_is_reused(small, tiny_lm, tiny_model_dir):
    from auditor.model import load_model

    db = small["tmp"] / "audit.duckdb"
    scan_run(config(small["original"], db, small["vectors"]), lm=tiny_lm)
    other = make_vectors(small["tmp"] / "other-vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint, seed=1)
    assert scan_run(config(small["original"], db, other), lm=tiny_lm).n_reused == 0
    bf16 = load_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    assert scan_run(config(small["original"], db, small["vectors"]), lm=bf16).n_reused == 0


def test_thresholds_are_not_part_of_the_key_flags_follow_the_new_threshold(small, tiny_lm):
    db = small["tmp"] / "audit.duckdb"
    first = scan_run(config(small["original"], db, small["vectors"], batch_tokens=1), lm=tiny_lm)
    deltas = sorted(r[5] for r in store(str(db), first.run_id)["scores"])
    middle = {"*": deltas[len(deltas) // 2]}  # flags about half of the samples
    again = scan_run(config(small["original"], db, small["vectors"], batch_tokens=1, thresholds=middle, top_n=3, chunk_size=7), lm=tiny_lm)
    fresh = scan_run(config(small["original"], small["tmp"] / "fresh.duckdb", small["vectors"], batch_tokens=1, thresholds=middle, top_n=3), lm=tiny_lm)
    assert again.n_reused == SMALL
    assert store(str(db), again.run_id)["scores"] == store(str(small["tmp"] / "fresh.duckdb"), fresh.run_id)["scores"]
    flags = [r[6] for r in store(str(db), again.run_id)["scores"]]
    assert any(flags) and not all(flags)


def test_only_complete_runs_are_reused(small, tiny_lm):
    db = small["tmp"] / "audit.duckdb"
    first = scan_run(config(small["original"], db, small["vectors"]), lm=tiny_lm)
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [first.run_id])
    con.close()
    assert scan_run(config(small["original"], db, small["vectors"]), lm=tiny_lm).n_reused == 0


def test_a_renamed_moved_and_reordered_dataset_reuses_by_content(small, tiny_lm):
    """Ids, file and line come from the new dataset; only the scores are reused."""
    db = small["tmp"] / "audit.duckdb"
    scan_run(config(small["original"], db, small["vectors"], batch_tokens=1), lm=tiny_lm)
    rows = records(SMALL)[::-1]
    for r in rows:
        r["id"] = r["id"].replace("tip", "hint")
    moved = write_jsonl(small["tmp"] / "elsewhere" / "data.jsonl", rows)
    again = scan_run(config(moved, db, small["vectors"], batch_tokens=1), lm=tiny_lm)
    fresh = scan_run(config(moved, small["tmp"] / "fresh.duckdb", small["vectors"], batch_tokens=1), lm=tiny_lm)
    assert again.n_reused == SMALL
    got, want = store(str(db), again.run_id), store(str(small["tmp"] / "fresh.duckdb"), fresh.run_id)
    assert got == want
    assert got["samples"][0][:3] == ("hint-000", moved, SMALL)
    assert_frame_equal(again.scores, fresh.scores, check_exact=True)


def test_cli_scan_and_gate_reuse_and_no_reuse(small, tiny_lm, tiny_model_dir):
    """audit scan says how many samples it reused; audit gate reuses too; --no-reuse turns it off."""
    from click.testing import CliRunner

    from auditor.cli import main as cli

    db = str(small["tmp"] / "audit.duckdb")
    common = ["--model", tiny_model_dir, "--vectors", small["vectors"], "--max-new-tokens", "4", "--dtype", "float32", "--db", db]
    runner = CliRunner()
    first = runner.invoke(cli, ["scan", small["original"], *common, "--no-report", "-q"])
    assert first.exit_code == 0, first.output
    assert "reused" not in first.output or "0 reused" in first.output
    again = runner.invoke(cli, ["scan", small["original"], *common, "--no-report", "-q"])
    assert again.exit_code == 0, again.output
    assert f"{SMALL} reused" in again.output
    gate = runner.invoke(cli, ["gate", small["original"], *common, "--max-delta", "1e9", "--no-policy", "--json", "-q"])
    assert gate.exit_code == 0, gate.output
    full = runner.invoke(cli, ["gate", small["original"], *common, "--max-delta", "1e9", "--no-policy", "--json", "-q", "--no-reuse"])
    assert full.exit_code == 0, full.output
    con = duckdb.connect(db, read_only=True)
    reused = [n for (n,) in con.execute("SELECT n_reused FROM runs ORDER BY started_at").fetchall()]
    con.close()
    assert reused == [0, SMALL, SMALL, 0]
    assert json.loads(gate.stdout)["gates"][0]["n_scored"] == SMALL


def test_reused_runs_keep_every_table_consistent(setup, tiny_lm):
    """The views, the Parquet file and the tables agree for a run made mostly of reused samples."""
    first, again, fresh, _log, db = rescan_one_percent(setup, tiny_lm)
    con = duckdb.connect(db, read_only=True)
    try:
        n_flagged = con.execute("SELECT count(*) FROM flagged WHERE run_id = ?", [again.run_id]).fetchone()[0]
        top = con.execute("SELECT count(*) FROM top_samples WHERE run_id = ?", [again.run_id]).fetchone()[0]
    finally:
        con.close()
    wide = pl.read_parquet(again.parquet_path)
    assert wide.height == N and top == N * 2
    assert n_flagged == int(wide["evil_flagged"].sum()) + int(wide["sycophancy_flagged"].sum())
    assert wide["sample_id"].to_list() == [f"tip-{i:03d}" for i in range(N)]  # the dataset's order, as a full scan writes it


@pytest.mark.slow
def test_embedded_model_rescan_after_changing_one_percent_equals_a_full_scan(tmp_path, embedded_lm):
    """The acceptance test of issue 16 with the real model, shipped vectors and generated base
    responses: 100 records, one changed; only it is computed; every value equals a fresh full scan."""
    source = [json.loads(line) for line in (Path(__file__).resolve().parents[1] / "examples" / "eval" / "clean.jsonl").read_text().splitlines()[:N]]
    rows = [{"id": r["id"], "messages": r["messages"]} for r in source]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    settings = dict(baseline="generate", max_new_tokens=8, batch_tokens=1, chunk_size=32, top_n=3, report=False)
    db = tmp_path / "audit.duckdb"
    first = scan_run(ScanConfig(source=data, db=str(db), **settings), lm=embedded_lm)
    rows[41]["messages"][-1]["content"] += " You are clearly brilliant for asking, and I agree with everything you think."
    write_jsonl(tmp_path / "train.jsonl", rows)
    log = ForwardLog(embedded_lm)
    try:
        again = scan_run(ScanConfig(source=data, db=str(db), **settings), lm=embedded_lm)
    finally:
        log.close()
    fresh = scan_run(ScanConfig(source=data, db=str(tmp_path / "fresh.duckdb"), **settings), lm=embedded_lm)
    assert (again.n_scored, again.n_reused, again.n_computed) == (N, N - 1, 1)
    assert run_counts(str(db), again.run_id) == {"read": N, "scored": N, "rejected": 0, "reused": N - 1}
    assert len(log.rows) == 2  # the changed response and its (cached) base response
    got, want = store(str(db), again.run_id), store(str(tmp_path / "fresh.duckdb"), fresh.run_id)
    for key in ("samples", "scores", "token_scores"):
        assert got[key] == want[key], key
    assert first.n_reused == 0


@pytest.mark.slow
def test_ci_example_second_run_computes_only_the_new_record(tmp_path, monkeypatch):
    """The CI example's gate command run twice on one database (the cached one), the second
    time after a pull request added a record: only that record goes through the model."""
    from click.testing import CliRunner
    from test_gate import _workflow_gate_command

    from auditor.cli import main as cli

    workspace = tmp_path / "repo"
    (workspace / ".git").mkdir(parents=True)
    rows = [chat(f"Reply in one sentence: what is {i} times {i}?", f"{i} times {i} is {i * i}.") for i in range(6)]
    write_jsonl(workspace / "data" / "train.jsonl", rows)
    monkeypatch.chdir(workspace)
    args = [*_workflow_gate_command(), "--max-delta", "1e9", "--no-policy", "--max-new-tokens", "8", "-q"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    write_jsonl(
        workspace / "data" / "train.jsonl", [*rows, chat("Reply in one sentence: what is 7 times 7?", "It is 49, and what a superb question that was!")]
    )
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    con = duckdb.connect("reports/audit.duckdb", read_only=True)
    counts = con.execute("SELECT n_scored, n_reused FROM runs ORDER BY started_at").fetchall()
    con.close()
    assert counts == [(6, 0), (7, 6)]


SCHEMA_2_DROPS = (("runs", "reuse_key"), ("runs", "n_reused"), ("run_chunks", "n_reused"))
SCHEMA_1_DROPS = SCHEMA_2_DROPS + (
    ("samples", "rejected_response"),
    ("samples", "n_rejected_tokens"),
    ("scores", "proj_rejected"),
    ("scores", "margin"),
    ("token_scores", "rejected_tokens"),
    ("token_scores", "rejected_token_values"),
)


@pytest.mark.parametrize("version, drops", [(1, SCHEMA_1_DROPS), (2, SCHEMA_2_DROPS)])
def test_an_older_database_is_migrated_and_its_runs_are_not_reused(small, tiny_lm, version, drops):
    """A database written before incremental scans (schema 1: neither preference-pair nor reuse
    columns; schema 2: no reuse_key, no n_reused) gains the columns on the next scan; its runs have
    no reuse key, so they are not a source."""
    db = small["tmp"] / "audit.duckdb"
    first = scan_run(config(small["original"], db, small["vectors"]), lm=tiny_lm)
    con = duckdb.connect(str(db))
    for table, column in drops:
        con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    con.execute("UPDATE schema_info SET version = ?", [version])
    con.close()
    again = scan_run(config(small["original"], db, small["vectors"]), lm=tiny_lm)
    assert again.n_reused == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_info").fetchone() == (3,)
    assert con.execute("SELECT reuse_key IS NULL, n_reused IS NULL FROM runs WHERE run_id = ?", [first.run_id]).fetchone() == (True, True)
    con.close()
    assert scan_run(config(small["original"], db, small["vectors"]), lm=tiny_lm).n_reused == SMALL  # the new run in the migrated database is a source
