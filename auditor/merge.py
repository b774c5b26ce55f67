"""``audit merge``: combine the runs of separately scanned shards into one run.

Parts must come from the same scan: same model fingerprint, vectors, baseline and every
other result-determining setting, with ``--num-shards N`` and each shard index 0..N-1
present exactly once. A part may live in another database file (a shard scanned on
another machine): name it ``path/to/audit.duckdb:RUN_ID``, or just the database path
when it holds one sharded run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from typing import Any

from auditor.errors import AuditorError, StoreError
from auditor.score import ScoreMeaning
from auditor.store.db import connect, transaction
from auditor.store.merging import attach_read_only, chunk_totals, copy_run_rows, insert_complete_run, keep_top_heat_maps, sorted_scores_parquet
from auditor.store.queries import has_run_id, run_rows, top_scores, trait_score_stats

_SHARD_FIELDS = ("num_shards", "shard_index", "out_dir", "report", "top_n", "db", "resume")


@dataclass
class Part:
    db: str
    run_id: str
    row: dict[str, Any]
    config: dict[str, Any]


def _parse_part(spec: str, default_db: str) -> tuple[str, str | None]:
    if ":" in spec and os.path.exists(spec.rsplit(":", 1)[0]):
        db, run_id = spec.rsplit(":", 1)
        return db, run_id
    if os.path.exists(spec) and spec.endswith((".duckdb", ".db")):
        return spec, None
    return default_db, spec


def _load_part(spec: str, default_db: str) -> list[Part]:
    db, run_id = _parse_part(spec, default_db)
    with connect(db, read_only=True) as con:
        rows = run_rows(con, run_id)
    if not rows:
        raise StoreError(
            f"{db}: no run {run_id!r}; list runs with audit runs --db {db}" if run_id else f"{db}: holds no sharded run; name the part as {db}:RUN_ID"
        )
    parts = []
    for row in rows:
        if row["status"] != "complete":
            raise AuditorError(f"part {row['run_id']} in {db} is {row['status']}, not complete; finish it with audit scan ... --resume first")
        parts.append(Part(db, row["run_id"], row, json.loads(row["config"])))
    return parts


def merge_runs(specs: list[str], db: str, into: str | None = None) -> dict[str, Any]:
    """Merge shard runs into one run in ``db``; returns a summary dict."""
    parts: list[Part] = []
    for spec in specs:
        parts += _load_part(spec, db)
    base = check_parts(parts)
    first = parts[0]
    run_id = into or f"{first.run_id.rsplit('-', 1)[0]}-merged"
    out_dir = os.path.join(os.path.dirname(db) or ".", "runs", run_id)
    os.makedirs(out_dir, exist_ok=True)
    totals = _write_merged(db, run_id, parts, dict(base, num_shards=1, shard_index=0), out_dir)
    return {
        "run_id": run_id,
        "parts": len(parts),
        "n_read": int(totals[0] or 0),
        "n_scored": int(totals[1] or 0),
        "n_rejected": int(totals[2] or 0),
        "parquet": _merged_parquet(parts, out_dir),
        "out_dir": out_dir,
    }


def check_parts(parts: list[Part]) -> dict[str, Any]:
    """Refuse parts that are not the shards 0..N-1 of one scan; returns the settings they share."""
    if not parts:
        raise AuditorError("no parts to merge; name the shard runs (RUN_ID, or DB.duckdb:RUN_ID)")
    first = parts[0]
    base = {k: v for k, v in first.config.items() if k not in _SHARD_FIELDS}
    n = int(first.config.get("num_shards", 1))
    for p in parts[1:]:
        mine = {k: v for k, v in p.config.items() if k not in _SHARD_FIELDS}
        diff = sorted(k for k in set(base) | set(mine) if base.get(k) != mine.get(k))
        if p.row["model_fingerprint"] != first.row["model_fingerprint"]:
            diff.insert(0, "model")
        if json.loads(p.row["vectors"]) != json.loads(first.row["vectors"]):
            diff.insert(0, "vectors")
        if int(p.config.get("num_shards", 1)) != n:
            diff.append("num_shards")
        if diff:
            raise AuditorError(f"cannot merge {p.run_id} with {first.run_id}: they differ in {', '.join(diff)}; merge only shards of one scan")
    indices = sorted(int(p.config.get("shard_index", 0)) for p in parts)
    if indices != list(range(n)):
        missing = sorted(set(range(n)) - set(indices))
        dupes = sorted({i for i in indices if indices.count(i) > 1})
        raise AuditorError(
            f"shards do not cover 0..{n - 1} exactly once (missing: {missing or 'none'}, repeated: {dupes or 'none'}); scan the missing shards with --shard-index"
        )
    return base


def _write_merged(db: str, run_id: str, parts: list[Part], config: dict[str, Any], out_dir: str) -> tuple:
    """Copy the parts' rows into run ``run_id`` of ``db`` in one transaction; returns (n_read, n_scored, n_rejected)."""
    first = parts[0]
    with connect(db) as con:
        if has_run_id(con, run_id):
            raise AuditorError(f"{db} already has a run {run_id!r}; choose another name with --into")
        # Other databases are attached read-only (outside the transaction: DuckDB detaches only after commit).
        sources: dict[str, str] = {}
        for i, p in enumerate(parts):
            if os.path.abspath(p.db) == os.path.abspath(db):
                sources[p.run_id] = "main"
            elif p.db not in sources:
                sources[p.db] = f"part{i}"
                attach_read_only(con, p.db, f"part{i}")
        # The copy, the heat-map trim and the runs row commit together, or not at all.
        with transaction(con):
            for p in parts:
                # databases before incremental scans have no n_reused
                copy_run_rows(con, sources.get(p.run_id) or sources[p.db], p.run_id, run_id, has_n_reused="n_reused" in p.row)
            # Keep the report's heat maps for the merged top N only.
            top_n = int(first.config.get("top_n", 50))
            # Ranked by the score the shards flagged on (they stored the same vectors, so the same meaning).
            stored_vectors = json.loads(first.row["vectors"] or "{}")
            meanings = {t: ScoreMeaning.from_column(first.row["baseline"], v.get("score")) for t, v in stored_vectors.items()}
            for trait, meaning in meanings.items():
                keep_top_heat_maps(con, run_id, trait, meaning, top_n)
            totals = chunk_totals(con, run_id)
            summary = _merged_summary(con, run_id, first, meanings)
            insert_complete_run(con, _merged_run_row(run_id, parts, config, out_dir, totals, summary))
    return totals


def _merged_run_row(run_id: str, parts: list[Part], config: dict[str, Any], out_dir: str, totals: tuple, summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The merged run's ``runs`` columns: the first part's model and vectors, the earliest start, the summed counts."""
    first = parts[0]
    # Shards of one scan share the reuse key: the merged run is then a source for incremental scans too.
    reuse_keys = {p.row.get("reuse_key") for p in parts}
    return {
        "run_id": run_id,
        "started_at": min(p.row["started_at"] for p in parts),
        "finished_at": _dt.datetime.now(),
        "dataset": first.row["dataset"],
        "model": first.row["model"],
        "model_fingerprint": first.row["model_fingerprint"],
        "baseline": first.row["baseline"],
        "dtype": first.row["dtype"],
        "device": first.row["device"],
        "output_dir": out_dir,
        "config": json.dumps(config, sort_keys=True),
        "vectors": first.row["vectors"],
        "versions": first.row["versions"],
        "timings": json.dumps({"merged_from": [f"{p.db}:{p.run_id}" for p in parts]}),
        "n_read": totals[0],
        "n_scored": totals[1],
        "n_rejected": totals[2],
        "summary": json.dumps(summary),
        "result_key": None,
        "reuse_key": reuse_keys.pop() if len(reuse_keys) == 1 else None,
        "n_reused": totals[3],
    }


def _merged_parquet(parts: list[Part], out_dir: str) -> str:
    """One scores.parquet in dataset order (chunks interleave across shards); returns its path."""
    import pyarrow.parquet as pq

    parquet_path = os.path.join(out_dir, "scores.parquet")
    sources = [os.path.join(p.row["output_dir"], "scores.parquet") for p in parts]
    for path in sources:
        if not os.path.exists(path):
            raise AuditorError(f"{path} is missing: copy each shard's run folder next to its database before merging")
    sorted_scores_parquet(sources, parquet_path + ".tmp")
    os.replace(parquet_path + ".tmp", parquet_path)
    pq.read_metadata(parquet_path)  # fail here, not later, if the file is unreadable
    return parquet_path


def _merged_summary(con: Any, run_id: str, first: Part, meanings: dict[str, ScoreMeaning]) -> list[dict[str, Any]]:
    previous = {s["trait"]: s for s in json.loads(first.row["summary"] or "[]")}
    out = []
    for trait, layer, mean_delta, mean_proj, mean_margin, n_flagged, n in trait_score_stats(con, run_id):
        meaning = meanings.get(trait) or ScoreMeaning.of(first.row["baseline"])
        order = meaning.column
        top = top_scores(con, run_id, trait, meaning, 5)
        prev = previous.get(trait, {})
        out.append(
            {
                "trait": trait,
                "layer": layer,
                "score": prev.get("score", order),
                "threshold": prev.get("threshold"),
                "threshold_source": prev.get("threshold_source", ""),
                "mean_delta": mean_delta,
                "mean_proj_response": mean_proj,
                "mean_margin": mean_margin,
                "n_flagged": n_flagged,
                "n": n,
                "calibration_mean": prev.get("calibration_mean"),
                "top": [{"sample_id": s, "score": v} for s, v in top],
            }
        )
    return out
