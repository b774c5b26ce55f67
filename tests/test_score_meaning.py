"""One meaning per run's score: a --flag-on projection run is ranked, filtered, merged, gated
and reported by the projection everywhere, and a delta run by the delta.

The expected orders are computed here from the stored raw columns (plain Python sorts),
never by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from conftest import chat, make_vectors, write_jsonl

from auditor.pipeline import ScanConfig, scan_run
from auditor.score import ScoreMeaning

CHATS = [chat(f"Question {i}: what do you think about subject {i}?", f"Answer {i}: " + "quite " * (i % 5) + f"an opinion on subject {i}.") for i in range(12)]
TOP_N = 3


def _ranked(con, run_id: str, trait: str, column: str) -> list[str]:
    rows = con.execute("SELECT sample_id, " + column + " FROM scores WHERE run_id = ? AND trait = ?", [run_id, trait]).fetchall()
    return [sid for sid, v in sorted((r for r in rows if r[1] is not None), key=lambda r: (-r[1], r[0]))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_lm):
    folder = tmp_path_factory.mktemp("meaning")
    vectors = make_vectors(folder / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    data = write_jsonl(folder / "data.jsonl", CHATS)
    out = {"folder": folder, "data": data, "vectors": vectors}
    for flag_on in ("projection", "delta"):
        db = str(folder / f"{flag_on}.duckdb")
        cfg = ScanConfig(source=data, vectors=vectors, db=db, max_new_tokens=6, chunk_size=4, thresholds={"*": 0.0}, flag_on=flag_on, top_n=TOP_N)
        out[flag_on] = (scan_run(cfg, lm=tiny_lm), db)
    return out


def test_the_choice_matters_on_this_data(runs):
    """Projection and delta rank these samples differently, so every check below can fail."""
    result, db = runs["projection"]
    with duckdb.connect(db, read_only=True) as con:
        for trait in ("evil", "sycophancy"):
            assert _ranked(con, result.run_id, trait, "proj_response")[:TOP_N] != _ranked(con, result.run_id, trait, "delta")[:TOP_N]


@pytest.mark.parametrize("flag_on, column", [("projection", "proj_response"), ("delta", "delta")])
def test_store_ranking_summary_and_heat_maps_follow_the_score(runs, flag_on, column):
    result, db = runs[flag_on]
    with duckdb.connect(db, read_only=True) as con:
        for trait in ("evil", "sycophancy"):
            expected = _ranked(con, result.run_id, trait, column)
            view = [
                sid
                for (sid,) in con.execute("SELECT sample_id FROM top_samples WHERE run_id = ? AND trait = ? ORDER BY rank", [result.run_id, trait]).fetchall()
            ]
            assert view[: len(expected)] == expected
            heat = {sid for (sid,) in con.execute("SELECT sample_id FROM token_scores WHERE run_id = ? AND trait = ?", [result.run_id, trait]).fetchall()}
            assert heat == set(expected[:TOP_N])
            flags = con.execute(f"SELECT {column}, flagged FROM scores WHERE run_id = ? AND trait = ?", [result.run_id, trait]).fetchall()
            assert all(flagged == (v is not None and v > 0.0) for v, flagged in flags)
            summary = next(s for s in result.summaries if s.trait == trait)
            assert summary.score == column
            assert [t["sample_id"] for t in summary.top] == expected[:5]


def test_report_ranks_and_labels_by_projection(runs):
    from auditor.report.data import load_report_data
    from auditor.store.db import connect
    from auditor.store.queries import resolve_run

    result, db = runs["projection"]
    with connect(db, read_only=True) as con:
        run = resolve_run(con, result.run_id, db)
        data = load_report_data(con, run, top_n=TOP_N)
        for t in data.traits:
            assert [s.sample_id for s in t.top] == _ranked(con, result.run_id, t.trait, "proj_response")[:TOP_N]
            assert all(s.score == s.proj_response for s in t.top)
            assert t.mean_score == pytest.approx(t.mean_proj_response)
    html = Path(result.report_path).read_text(encoding="utf-8")
    assert "score proj response" in html and "score delta" not in html
    assert "mean proj" in html and "dataset \u0394" not in html
    delta_html = Path(runs["delta"][0].report_path).read_text(encoding="utf-8")
    assert "score delta" in delta_html and "dataset \u0394" in delta_html


def test_filter_drop_top_drops_the_highest_projection(runs, tmp_path):
    from auditor.filter import FilterRule, filter_dataset

    result, db = runs["projection"]
    out = str(tmp_path / "kept.jsonl")
    res = filter_dataset(runs["data"], out, FilterRule(drop_top="1", traits=["evil"]), run=result.run_id, db=db)
    with duckdb.connect(db, read_only=True) as con:
        top = _ranked(con, result.run_id, "evil", "proj_response")[0]
        line = con.execute("SELECT line FROM samples WHERE run_id = ? AND sample_id = ?", [result.run_id, top]).fetchone()[0]
    assert res.counts["dropped"] == 1
    kept = Path(out).read_text(encoding="utf-8").splitlines()
    expected = Path(runs["data"]).read_text(encoding="utf-8").splitlines()
    del expected[line - 1]
    assert kept == expected
    reason = json.loads(Path(res.rejects_path).read_text(encoding="utf-8").splitlines()[0])["reasons"][0]
    assert "proj_response=" in reason and "rank 1 of" in reason


def test_gate_measures_the_projection(runs):
    from auditor.cli import main

    result, db = runs["projection"]
    with duckdb.connect(db, read_only=True) as con:
        top = con.execute("SELECT max(proj_response) FROM scores WHERE run_id = ? AND trait = 'evil'", [result.run_id]).fetchone()[0]
        top_delta = con.execute("SELECT max(delta) FROM scores WHERE run_id = ? AND trait = 'evil'", [result.run_id]).fetchone()[0]
    assert top != top_delta
    run = CliRunner().invoke(main, ["gate", "--db", db, "--run", result.run_id, "--no-policy", "--json", "--max-sample-delta", "evil=-1000"])
    doc = json.loads(run.output)
    rule = doc["gates"][0]["rules"][0]
    assert rule["value"] == pytest.approx(top)
    text = CliRunner().invoke(main, ["gate", "--db", db, "--run", result.run_id, "--no-policy", "--max-sample-delta", "evil=-1000"]).output
    assert "with projection above" in text


def test_merge_keeps_the_projection_ranking(runs, tiny_lm):
    from auditor.merge import merge_runs

    folder = runs["folder"]
    dbs = []
    for i in range(2):
        db = str(folder / f"shard{i}.duckdb")
        cfg = ScanConfig(
            source=runs["data"],
            vectors=runs["vectors"],
            db=db,
            max_new_tokens=6,
            chunk_size=4,
            thresholds={"*": 0.0},
            flag_on="projection",
            top_n=TOP_N,
            report=False,
            num_shards=2,
            shard_index=i,
        )
        scan_run(cfg, lm=tiny_lm)
        dbs.append(db)
    merged_db = str(folder / "merged.duckdb")
    merge_runs(dbs, db=merged_db, into="merged")
    with duckdb.connect(merged_db, read_only=True) as con:
        summary = {s["trait"]: s for s in json.loads(con.execute("SELECT summary FROM runs WHERE run_id = 'merged'").fetchone()[0])}
        for trait in ("evil", "sycophancy"):
            expected = _ranked(con, "merged", trait, "proj_response")
            assert [t["sample_id"] for t in summary[trait]["top"]] == expected[:5]
            assert summary[trait]["score"] == "proj_response"
            heat = {sid for (sid,) in con.execute("SELECT sample_id FROM token_scores WHERE run_id = 'merged' AND trait = ?", [trait]).fetchall()}
            assert heat == set(expected[:TOP_N])
            view = [sid for (sid,) in con.execute("SELECT sample_id FROM top_samples WHERE run_id = 'merged' AND trait = ? ORDER BY rank", [trait]).fetchall()]
            assert view[:TOP_N] == expected[:TOP_N]


def test_score_meaning_rules():
    assert ScoreMeaning.of("none", "delta") == ScoreMeaning("none", "projection")
    assert ScoreMeaning.of("generate", "projection").column == "proj_response"
    assert ScoreMeaning.of("prompt-last").label == "delta (prompt-last)"
    assert ScoreMeaning.from_column("generate", None) == ScoreMeaning("generate", "delta")
    assert ScoreMeaning.from_column("generate", "proj_response").kind == "projection"
    cal = {"layer": 2, "scores": {"generate": {"delta": {"percentiles": [float(i) for i in range(201)]}, "proj_response": {"percentiles": [0.0] * 201}}}}
    assert ScoreMeaning.of("generate").threshold(cal, 2, 95) == 190.0
    assert ScoreMeaning.of("generate", "projection").threshold(cal, 2, 95) == 0.0
    assert ScoreMeaning.of("generate").threshold(cal, 3, 95) is None  # calibrated at another layer


def test_vectors_show_lists_the_projection_calibration():
    """A --flag-on projection scan thresholds on the projection: vectors show lists that calibration too."""
    from auditor.cli import main

    out = " ".join(CliRunner().invoke(main, ["vectors", "show", "evil"]).output.split())  # rich wraps long lines
    assert "calibration generate: delta mean" in out
    assert "calibration generate: proj_response mean" in out
