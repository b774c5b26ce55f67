"""Concurrency: two scans write one database at once while readers query it.

DuckDB lets one process hold a database file for writing; persona-audit opens it only
for the moment of a chunk commit and waits (with backoff) while another process holds
it, so both writers finish and readers get consistent snapshots in between.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from conftest import make_vectors, write_jsonl
from robust_helpers import audit_popen, audit_run, check_integrity, dataset, read_run, wait_for

from auditor.errors import StoreError


def test_two_writers_and_readers_on_one_database(tmp_path, tiny_model_dir, tiny_lm):
    from auditor.store.db import connect

    vectors = make_vectors(tmp_path / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    rows = dataset(16)
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", rows)  # a copy: both race for the same base-response cache rows
    db = tmp_path / "audit.duckdb"
    common = [
        "--baseline",
        "generate",
        "--model",
        tiny_model_dir,
        "--vectors",
        vectors,
        "--chunk-size",
        "2",
        "--max-new-tokens",
        "4",
        "--dtype",
        "float32",
        "--threshold",
        "0",
        "--top-n",
        "3",
        "--no-report",
        "-q",
        "--db",
        str(db),
    ]
    with connect(str(db)):  # the schema, so that a reader can hold the file before the scans start
        pass
    # A reader that keeps the file (a duckdb CLI session, a long export) until the test lets go.
    # It holds the file before the writers start and lets go only once both have said on stderr
    # that they wait, so no timing decides the outcome; the holder's own limit only ends a hang.
    release = tmp_path / "release"
    holder = hold_database(str(db), release)
    assert holder.stdout.readline().strip() == "holding", holder.communicate()
    writers = [audit_popen(["scan", src, *common, "--out", str(tmp_path / name)], cwd=tmp_path) for src, name in ((a, "run-a"), (b, "run-b"))]
    waiting = [threading.Event(), threading.Event()]
    stderr: list[list[str]] = [[], []]

    def drain(i: int) -> None:
        # Each writer's stderr as it comes, so the test learns the moment a writer waits.
        for line in writers[i].stderr:
            stderr[i].append(line)
            if f"{db}: waiting for another process that holds the database" in line:
                waiting[i].set()

    drains = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in drains:
        t.start()
    reads = []

    def read_snapshot() -> None:
        with connect(str(db), read_only=True) as con:
            # One snapshot: the ledger and the rows it accounts for agree (a chunk is all or nothing).
            ledger = con.execute("SELECT coalesce(sum(n_scored), 0) FROM run_chunks").fetchall()[0][0]
            stored = con.execute("SELECT count(*) FROM samples").fetchall()[0][0]
            reads.append((ledger, stored))

    try:
        for i, event in enumerate(waiting):
            assert event.wait(timeout=600), f"writer {i} did not report waiting for the held database: {''.join(stderr[i])}"
        read_snapshot()  # other readers still get in while writers wait
    finally:
        release.touch()
        holder.communicate(timeout=120)
    assert holder.returncode == 0

    # audit sql / audit runs processes beside the scans (each a new process: one round suffices).
    sql_runs = [
        audit_run(["sql", "SELECT count(*) FROM samples", "--db", str(db), "--format", "csv"], cwd=tmp_path),
        audit_run(["runs", "--db", str(db), "--json"], cwd=tmp_path),
    ]
    while any(w.poll() is None for w in writers):
        read_snapshot()
        time.sleep(0.1)
    read_snapshot()
    for w, t in zip(writers, drains):
        t.join()
        w.wait()
    for w, err in zip(writers, stderr):
        assert w.returncode == 0, "".join(err)

    assert all(ledger == stored for ledger, stored in reads), reads
    assert [r[1] for r in reads] == sorted(r[1] for r in reads)  # never goes backwards
    assert reads[0] == (0, 0) and reads[-1] == (2 * len(rows), 2 * len(rows)), reads
    assert all(r.returncode == 0 for r in sql_runs), [r.stderr for r in sql_runs if r.returncode]
    assert isinstance(json.loads(sql_runs[1].stdout), list), sql_runs[1].stdout  # a whole JSON document while runs are being written

    counts = check_integrity(str(db))
    assert counts["runs"] == 2 and counts["samples"] == 2 * len(rows)
    assert counts["base_responses"] == len({r["messages"][0]["content"] for r in rows})  # each prompt generated or cached once
    # Both runs scored the same samples in the same batches: identical values whichever wrote the cache first.
    with connect(str(db), read_only=True) as con:
        run_ids = [r for (r,) in con.execute("SELECT run_id FROM runs ORDER BY dataset").fetchall()]
    ra, rb = (read_run(str(db), r) for r in run_ids)
    assert ra["scores"] == rb["scores"]
    assert [s[7] for s in ra["samples"]] == [s[7] for s in rb["samples"]]  # base responses


def test_a_writer_blocked_too_long_fails_with_a_clear_message(tmp_path):
    """A process holding the file for writing beyond the wait: a clear error, not a hang or a traceback."""
    import duckdb

    from auditor.store.db import connect

    db = str(tmp_path / "audit.duckdb")
    with connect(db) as con:
        con.execute("SELECT 1").fetchall()
    holder = audit_popen_holder(db)
    try:
        assert wait_for(lambda: holder.stdout.readline().strip() == "holding", timeout=60)
        try:
            with connect(db, timeout=1.0):
                pass
            raise AssertionError("opened a database another process holds")
        except StoreError as e:
            # The message is written only once the wait has run out; no clock is read here.
            assert str(e) == (
                f"{db}: another process is using the database (a scan writing to it?); waited 1 s. "
                "Try again when it finishes, or use --db for a separate database"
            )
    finally:
        holder.kill()
        holder.communicate()
    with duckdb.connect(db, read_only=True) as con:  # released by the kill, still readable
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(0,)]


def hold_database(db: str, release: Path, guard: float = 600.0):
    """A process that opens ``db`` read-only (waiting its turn), prints ``holding`` and keeps it until ``release`` exists.

    ``guard`` seconds end the hold in any case, so a failing test cannot hang.
    """
    import subprocess
    import sys

    code = (
        "import os, time; from auditor.store.db import open_db; "
        f"c = open_db({db!r}, read_only=True); print('holding', flush=True); "
        f"end = time.monotonic() + {guard}\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < end: time.sleep(0.05)\n"
        "c.close()"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def audit_popen_holder(db: str):
    import subprocess
    import sys

    code = f"import duckdb, time; c = duckdb.connect({db!r}); print('holding', flush=True); time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
