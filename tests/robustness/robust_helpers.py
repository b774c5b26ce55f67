"""Shared pieces of the robustness suite: real ``audit`` subprocesses and full-store reads.

Expected values in these tests come from the test itself (the data it wrote, an
uninterrupted run it made), never from the code under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import chat

# `python -c` leaves argv as ["-c", *args]: the CLI sees the same arguments `audit` would.
_AUDIT = "import sys; from auditor.cli import main; sys.exit(main())"
TABLES = ("runs", "samples", "scores", "base_responses", "rejects", "run_chunks", "token_scores", "schema_info")
VIEWS = ("flagged", "top_samples", "dataset_summary")
# The primary key of each table (rejects has none): a duplicate would mean a chunk stored twice.
KEYS = {
    "runs": "run_id",
    "samples": "run_id, sample_id",
    "scores": "run_id, sample_id, trait",
    "base_responses": "model_fingerprint, settings_key, prompt_hash",
    "run_chunks": "run_id, chunk",
    "token_scores": "run_id, sample_id, trait",
}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


def audit_popen(args: list[str], cwd: Path, **kw: Any) -> subprocess.Popen:
    """A real ``audit`` process (its own process group, so signals reach only it)."""
    return subprocess.Popen(
        [sys.executable, "-c", _AUDIT, *args], cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def audit_run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _AUDIT, *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def dataset(n: int = 40) -> list[dict]:
    """``n`` chats; every fifth prompt repeats an earlier one, so the base-response cache is used mid-run."""
    rows = []
    for i in range(n):
        q = i - 3 if i % 5 == 4 else i
        rows.append(chat(f"Question {q}: what is {q} plus {q}?", f"It is {2 * q}. " * (1 + i % 3) + f"(answer {i})", id=f"s{i:02d}"))
    return rows


def count_parts(parts_dir: Path) -> int:
    try:
        return sum(1 for p in os.listdir(parts_dir) if p.endswith(".parquet"))
    except FileNotFoundError:
        return 0


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, step: float = 0.01) -> bool:
    """Poll until ``predicate()``; False if the process ended first or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(step)
    return False


def read_run(db: str, run_id: str | None = None) -> dict[str, Any]:
    """Every stored value of one run (the only one if ``run_id`` is None), in a stable order."""
    from auditor.store.db import connect

    with connect(db, read_only=True) as con:
        if run_id is None:
            (run_id,) = con.execute("SELECT run_id FROM runs").fetchone()
        q = lambda sql: con.execute(sql, [run_id]).fetchall()  # noqa: E731
        return {
            "run": q("SELECT status, n_read, n_scored, n_rejected, dataset, model_fingerprint, result_key FROM runs WHERE run_id = ?")[0],
            "samples": q(
                "SELECT sample_id, source, line, turn, content_hash, context, response, base_response, n_prompt_tokens, n_response_tokens, n_base_tokens, metadata "
                "FROM samples WHERE run_id = ? ORDER BY sample_id"
            ),
            "scores": q("SELECT sample_id, trait, layer, proj_response, proj_base, delta, flagged FROM scores WHERE run_id = ? ORDER BY sample_id, trait"),
            "rejects": q("SELECT source, line, reason FROM rejects WHERE run_id = ? ORDER BY source, line, reason"),
            "chunks": q("SELECT chunk, n_read, n_scored, n_rejected, fingerprint FROM run_chunks WHERE run_id = ? ORDER BY chunk"),
            "token_scores": q("SELECT sample_id, trait, tokens, token_values FROM token_scores WHERE run_id = ? ORDER BY sample_id, trait"),
        }


def check_integrity(db: str) -> dict[str, int]:
    """Read every table and view in full, check keys and per-run counts; returns row counts."""
    from auditor.store.db import connect

    counts = {}
    with connect(db, read_only=True) as con:
        con.execute("PRAGMA database_size").fetchall()
        for table in TABLES + VIEWS:
            counts[table] = len(con.execute(f"SELECT * FROM {table}").fetchall())
        for table, key in KEYS.items():
            dupes = con.execute(f"SELECT {key}, count(*) FROM {table} GROUP BY ALL HAVING count(*) > 1").fetchall()
            assert not dupes, f"duplicate keys in {table}: {dupes[:3]}"
        for run_id, status, n_read, n_scored, n_rejected in con.execute("SELECT run_id, status, n_read, n_scored, n_rejected FROM runs").fetchall():
            assert status == "complete", (run_id, status)
            assert n_read == n_scored + n_rejected, run_id
            ledger = con.execute(
                "SELECT sum(n_read), sum(n_scored), sum(n_rejected), count(*), max(chunk) FROM run_chunks WHERE run_id = ?", [run_id]
            ).fetchone()
            assert ledger[:3] == (n_read, n_scored, n_rejected), (run_id, ledger)
            assert ledger[3] == ledger[4] + 1, f"{run_id}: chunks are not 0..n-1"
            assert con.execute("SELECT count(*) FROM samples WHERE run_id = ?", [run_id]).fetchone()[0] == n_scored
            assert con.execute("SELECT count(*) FROM rejects WHERE run_id = ?", [run_id]).fetchone()[0] == n_rejected
            traits = con.execute("SELECT count(DISTINCT trait) FROM scores WHERE run_id = ?", [run_id]).fetchone()[0]
            assert con.execute("SELECT count(*) FROM scores WHERE run_id = ?", [run_id]).fetchone()[0] == n_scored * traits
    return counts
