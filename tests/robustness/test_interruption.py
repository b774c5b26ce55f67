"""Interruption: a scan killed at any moment resumes to exactly the results of an uninterrupted run.

Real ``audit scan`` subprocesses (tiny model, 40 samples, 2 per chunk: 20 chunks) are
killed with SIGKILL at seeded random points, each resumed with ``--resume``; the final
store must equal, value for value, that of a run that was never interrupted.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import make_vectors, write_jsonl
from polars.testing import assert_frame_equal
from robust_helpers import audit_popen, audit_run, check_integrity, count_parts, dataset, read_run, wait_for

from auditor.errors import AuditorError, StoreError
from auditor.pipeline import ScanConfig, scan_run

N_SAMPLES, CHUNK = 40, 2
N_CHUNKS = N_SAMPLES // CHUNK + 1  # plus one chunk holding the bad line
# Other kill points: ROBUSTNESS_SEED=<n> python -m pytest tests/robustness/test_interruption.py
SEED = int(os.environ.get("ROBUSTNESS_SEED", "20240611"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, tiny_lm):
    """The dataset (with one malformed line, scanned with --on-error skip) and an uninterrupted run.

    The uninterrupted run is made in this process with the settings the CLI runs get (so
    the same result key): the comparisons also show the CLI and the Python API agree.
    """
    root = tmp_path_factory.mktemp("interrupt")
    vectors = make_vectors(root / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    rows = dataset(N_SAMPLES)
    rows.insert(17, '{"messages": [')  # a rejected line must survive resumes too (counts and rejects table)
    data = write_jsonl(root / "data.jsonl", rows)
    args = [
        "scan",
        data,
        "--model",
        tiny_model_dir,
        "--vectors",
        vectors,
        "--chunk-size",
        str(CHUNK),
        "--max-new-tokens",
        "4",
        "--dtype",
        "float32",
        "--on-error",
        "skip",
        "--threshold",
        "0",
        "--top-n",
        "3",
        "--no-report",
        "-q",
    ]
    found = {"root": root, "args": args, "model": tiny_model_dir, "data": data, "vectors": vectors}
    t0 = time.monotonic()
    scan_run(_config(found, root / "base"), lm=tiny_lm)
    found["seconds"] = time.monotonic() - t0
    found["base"] = read_run(str(root / "base" / "audit.duckdb"))
    found["base_parquet"] = pl.read_parquet(root / "base" / "run" / "scores.parquet")
    return found


def assert_same_results(setup, db: Path, out: Path) -> None:
    """Every stored value equals the uninterrupted run's; no duplicates, no leftovers."""
    got = read_run(str(db))
    base = setup["base"]
    for key in ("samples", "scores", "rejects", "chunks", "token_scores"):
        assert got[key] == base[key], key
    assert got["run"] == base["run"]  # status complete, same counts, same settings key
    assert got["run"][1:4] == (N_SAMPLES + 1, N_SAMPLES, 1)
    assert_frame_equal(pl.read_parquet(out / "scores.parquet"), setup["base_parquet"], check_exact=True)
    assert sorted(os.listdir(out)) == ["scores.parquet"]  # parts and every .tmp are gone
    counts = check_integrity(str(db))
    assert counts["runs"] == 1  # resuming never starts a second run


def test_ctrl_c_then_sigkill_at_random_points_then_resume_gives_identical_scores(setup, tmp_path):
    """One scan stopped seven times: Ctrl-C first (exit 130, the resume command printed),
    then SIGKILL at five seeded random points and once during start-up, every restart
    being the printed command; the end result equals the uninterrupted run's."""
    rng = random.Random(SEED)
    db, out = tmp_path / "audit.duckdb", tmp_path / "run"
    args = [*setup["args"], "--db", str(db), "--out", str(out)]
    per_chunk = setup["seconds"] / N_CHUNKS
    # Stop points spread over the whole run: after the k-th stored part plus a random
    # fraction of a chunk's time (so kills land while generating, in the forward, while
    # writing a part and inside the database commit).
    targets = sorted(rng.sample(range(1, N_CHUNKS - 1), 6))

    def run_until(command, target):
        before = count_parts(out / "parts")
        proc = audit_popen(command, cwd=tmp_path)
        reached = wait_for(lambda: count_parts(out / "parts") >= max(target, before + 1), timeout=120, proc=proc)
        assert reached, proc.communicate()
        time.sleep(rng.uniform(0, per_chunk))
        return proc

    # Ctrl-C: a clean stop that says how to go on.
    proc = run_until(args, targets[0])
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert lines[-2] == "Interrupted. Every completed chunk is stored; to continue where the scan stopped, run the same command with --resume:"
    assert lines[-1] == "  audit " + shlex.join([*args, "--resume"])
    assert "Traceback" not in stderr
    assert read_run(str(db))["run"][0] == "interrupted"
    printed = shlex.split(lines[-1])
    assert printed[0] == "audit"
    resume = printed[1:]  # every restart below is the printed command, as printed

    kills = []
    for target in targets[1:]:
        proc = run_until(resume, target)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the scan ended before the kill: the test did not interrupt it"
        # After a SIGKILL the database replays its log on open (read-only too): every chunk
        # in the ledger has its Parquet part, and the run is not complete.
        state = read_run(str(db))
        stored = [c[0] for c in state["chunks"]]
        assert stored == list(range(len(stored))), "chunks are committed in order"
        assert all((out / "parts" / f"part-{c:06d}.parquet").exists() for c in stored)
        for part in (out / "parts").glob("*.parquet"):  # never half a part: written as .tmp, then renamed
            assert pq.read_table(part).num_rows > 0, part
        assert state["run"][0] == "running"
        kills.append(len(stored))
    # One more kill during start-up of a resume (imports / model load), before any chunk.
    proc = audit_popen(resume, cwd=tmp_path)
    time.sleep(rng.uniform(0.2, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    final = audit_run(resume, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert "chunks were already stored and were not scanned again" in final.stdout
    assert len(set(kills)) >= 3 and kills[-1] < N_CHUNKS, f"kills landed after {kills} stored chunks"
    print(f"SIGKILL after {kills} of {N_CHUNKS} chunks stored; baseline run {setup['seconds']:.1f} s")
    assert_same_results(setup, db, out)


# In-process cases: the crash is placed exactly where a kill could land by chance only.


def _config(setup, tmp_path, **kw):
    # The same settings as the CLI runs (same result key), the model already loaded.
    cfg = dict(
        source=setup["data"],
        model=setup["model"],
        vectors=setup["vectors"],
        dtype="float32",
        chunk_size=CHUNK,
        max_new_tokens=4,
        on_error="skip",
        thresholds={"*": 0.0},
        top_n=3,
        report=False,
        db=str(tmp_path / "audit.duckdb"),
        out_dir=str(tmp_path / "run"),
    )
    cfg.update(kw)
    return ScanConfig(**cfg)


def _interrupt_after(chunks: int):
    def progress(state):
        if state["chunks_done"] >= chunks:
            raise KeyboardInterrupt

    return progress


def test_crash_while_finishing_the_run_resumes(setup, tmp_path, tiny_lm, monkeypatch):
    """A crash after scores.parquet is written but before the run is marked complete."""
    import auditor.pipeline as pipeline

    real = pipeline.heat_map_tokens

    def crash(*a, **k):
        raise RuntimeError("simulated crash inside finalize_run")

    monkeypatch.setattr(pipeline, "heat_map_tokens", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        scan_run(_config(setup, tmp_path), lm=tiny_lm)
    assert (tmp_path / "run" / "scores.parquet").exists()
    monkeypatch.setattr(pipeline, "heat_map_tokens", real)
    result = scan_run(_config(setup, tmp_path, resume=True), lm=tiny_lm)
    assert result.resumed_chunks == N_CHUNKS
    assert_same_results(setup, tmp_path / "audit.duckdb", tmp_path / "run")


def test_a_changed_dataset_under_resume_is_detected(setup, tmp_path, tiny_lm):
    data = tmp_path / "data.jsonl"
    data.write_bytes(Path(setup["data"]).read_bytes())
    with pytest.raises(KeyboardInterrupt):
        scan_run(_config(setup, tmp_path, source=str(data)), lm=tiny_lm, progress=_interrupt_after(3))
    (run_id,) = _run_ids(tmp_path)
    lines = data.read_text().splitlines(keepends=True)

    # An edited record inside a stored chunk (line 3 is in chunk 1).
    lines[2] = lines[2].replace("Question 2", "Question 2, edited")
    data.write_text("".join(lines))
    with pytest.raises(AuditorError) as err:
        scan_run(_config(setup, tmp_path, source=str(data), resume=True), lm=tiny_lm)
    assert str(err.value) == f"{data} changed since run {run_id} was interrupted (chunk 1 differs); scan it again without --resume"

    # Cut short: the file now ends before chunk 2, which was stored.
    data.write_text("".join(setup_lines(setup)[:4]))  # chunks 0 and 1 unchanged
    with pytest.raises(AuditorError) as err:
        scan_run(_config(setup, tmp_path, source=str(data), resume=True), lm=tiny_lm)
    assert (
        str(err.value)
        == f"{data} changed since run {run_id} was interrupted (it now ends before chunk 2, which was already stored); scan it again without --resume"
    )

    # Nothing was stored by the refused resumes.
    assert len(read_run(str(tmp_path / "audit.duckdb"))["chunks"]) == 3


def test_resume_with_a_lost_part_and_with_nothing_to_resume(setup, tmp_path, tiny_lm):
    with pytest.raises(AuditorError) as err:
        scan_run(_config(setup, tmp_path, resume=True), lm=tiny_lm)
    assert (
        str(err.value)
        == f"nothing to resume in {tmp_path / 'audit.duckdb'}: no unfinished run with these settings and this model; run the scan without --resume"
    )
    with pytest.raises(KeyboardInterrupt):
        scan_run(_config(setup, tmp_path), lm=tiny_lm, progress=_interrupt_after(2))
    (run_id,) = _run_ids(tmp_path)
    part = tmp_path / "run" / "parts" / "part-000001.parquet"
    part.unlink()
    with pytest.raises(StoreError) as err:
        scan_run(_config(setup, tmp_path, resume=True), lm=tiny_lm)
    assert str(err.value) == f"run {run_id} cannot be resumed: {part} is missing; scan again without --resume"


def test_a_second_resume_of_the_same_run_is_refused_per_chunk(setup, tmp_path, tiny_lm):
    """Two processes resuming one run: the chunk the other already stored is refused, never duplicated."""
    from auditor.pipeline import ChunkScorer, commit_chunk, pending_chunks

    with pytest.raises(KeyboardInterrupt):
        scan_run(_config(setup, tmp_path), lm=tiny_lm, progress=_interrupt_after(2))
    (run_id,) = _run_ids(tmp_path)
    config = _config(setup, tmp_path)
    from auditor.vectors import load_vectors

    vectors = load_vectors(config.vectors, tiny_lm.name)
    scorer = ChunkScorer(config, tiny_lm, vectors, run_id=run_id)
    index, items = next(iter(pending_chunks(config, run_id, {})))  # chunk 0, already stored
    with pytest.raises(StoreError) as err:
        commit_chunk(config.db, run_id, str(tmp_path / "run" / "parts"), scorer.score(index, items))
    assert str(err.value) == (
        f"run {run_id}: chunk 0 was stored by another process meanwhile (is a second audit scan --resume of this run running?); let that one finish, then check audit runs"
    )
    assert len(read_run(str(tmp_path / "audit.duckdb"))["chunks"]) == 2


def _run_ids(tmp_path):
    from auditor.store.db import connect

    with connect(str(tmp_path / "audit.duckdb"), read_only=True) as con:
        return [r for (r,) in con.execute("SELECT run_id FROM runs").fetchall()]


def setup_lines(setup):
    return Path(setup["data"]).read_text().splitlines(keepends=True)


# About a second of work: long enough for the signal to land inside it. (With torch loaded,
# DuckDB notices the signal only when the query ends, then raises the same error.)
LONG_QUERY = "SELECT count(*) FROM range(300000000) t(x) WHERE x % 7 = 3"


def test_ctrl_c_inside_a_database_write_is_still_an_interruption(setup, tmp_path, tiny_lm, monkeypatch):
    """DuckDB turns Ctrl-C during a query into RuntimeError("Query interrupted"): still exit 130, run resumable."""
    import threading

    import auditor.pipeline as pipeline
    from auditor.cli.scan_cmd import interruptible
    from auditor.store.db import connect

    def ctrl_c_soon():
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()

    # The control: with Python's usual handler, DuckDB swallows the KeyboardInterrupt.
    def default_handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, default_handler)
    try:
        with connect(str(tmp_path / "probe.duckdb")) as con, pytest.raises(RuntimeError, match="^Query interrupted$"):
            ctrl_c_soon()
            con.execute(LONG_QUERY).fetchall()
    finally:
        signal.signal(signal.SIGINT, previous)

    real_commit = pipeline.commit_chunk
    calls = []

    def slow_commit(db, run_id, parts_dir, out):
        real_commit(db, run_id, parts_dir, out)
        calls.append(out.index)
        if len(calls) == 3:  # after the third commit: a long query inside an open transaction
            with connect(db) as con:
                con.execute("BEGIN TRANSACTION")
                ctrl_c_soon()
                try:
                    con.execute(LONG_QUERY).fetchall()
                finally:
                    con.execute("ROLLBACK")

    monkeypatch.setattr(pipeline, "commit_chunk", slow_commit)
    with pytest.raises(KeyboardInterrupt):
        interruptible(lambda: scan_run(_config(setup, tmp_path), lm=tiny_lm))
    state = read_run(str(tmp_path / "audit.duckdb"))
    assert state["run"][0] == "interrupted"
    assert [c[0] for c in state["chunks"]] == [0, 1, 2]
    assert all((tmp_path / "run" / "parts" / f"part-{c:06d}.parquet").exists() for c in (0, 1, 2))
