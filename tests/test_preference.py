"""Preference runs, field mapping and previews through scan, store, report, gate, filter and sql.

The tiny random model checks the logic exactly (margins against the plain one-pair-at-a-time
projections); one slow test does the same with the real embedded model on the shipped
DPO-style example.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT, chat, make_vectors, write_jsonl
from datagen import conversation_records, messages_records, question_answer_records, write_parquet
from test_equivalence import plain_projection

from auditor.cli import main
from auditor.pipeline import ScanConfig, scan_run
from auditor.vectors import load_vectors

PAIRS = EXAMPLES / "formats" / "preference.jsonl"
TRAITS = ("evil", "sycophancy")


def read_pairs(path=PAIRS) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_lm):
    """One database with a complete preference run of the shipped example (tiny model)."""
    import polars as pl

    root = tmp_path_factory.mktemp("pairs")
    vectors = make_vectors(root / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    db = str(root / "audit.duckdb")
    data = root / "pairs.jsonl"
    data.write_bytes(PAIRS.read_bytes())
    common = dict(source=str(data), vectors=vectors, db=db, baseline="none", top_n=3)
    probe = scan_run(ScanConfig(report=False, **common), lm=tiny_lm).scores
    # The upper quartile of each trait's margin: about a quarter of the pairs are flagged.
    thresholds = {t: float(probe[f"{t}_margin"].quantile(0.75)) for t in TRAITS}
    result = scan_run(ScanConfig(thresholds=thresholds, chunk_size=7, **common), lm=tiny_lm)
    return {
        "root": root,
        "db": db,
        "path": str(data),
        "vectors": vectors,
        "result": result,
        "scores": pl.read_parquet(result.parquet_path),
        "thresholds": thresholds,
    }


def plain_projections(lm, messages, response, vectors) -> dict[str, float]:
    """METHOD.md's projection of one response for every trait, by the plain one-sample path of test_equivalence."""
    return {trait: plain_projection(lm, messages, response, pv.vector, pv.layer) for trait, pv in vectors.items()}


def test_margin_is_the_difference_of_the_plain_per_response_projections(pair_run, tiny_lm):
    vectors = {pv.trait: pv for pv in load_vectors(pair_run["vectors"], tiny_lm.name)}
    records = {r["id"]: r for r in read_pairs()}
    df = pair_run["scores"]
    assert df.height == len(records) >= 40
    for row in df.iter_rows(named=True):
        rec = records[row["sample_id"]]
        context = [{"role": "user", "content": rec["prompt"]}]
        plain_chosen = plain_projections(tiny_lm, context, rec["chosen"], vectors)
        plain_rejected = plain_projections(tiny_lm, context, rec["rejected"], vectors)
        for trait in vectors:
            chosen, rejected = plain_chosen[trait], plain_rejected[trait]
            assert row[f"{trait}_proj_response"] == pytest.approx(chosen, abs=1e-5)
            assert row[f"{trait}_proj_rejected"] == pytest.approx(rejected, abs=1e-5)
            assert row[f"{trait}_margin"] == pytest.approx(chosen - rejected, abs=1e-5)
            assert row[f"{trait}_flagged"] == (row[f"{trait}_margin"] > pair_run["thresholds"][trait])
            assert row[f"{trait}_delta"] is None and row[f"{trait}_proj_base"] is None  # --baseline none
    assert {s.score for s in pair_run["result"].summaries} == {"margin"}


def test_batch_shapes_and_layouts_do_not_change_a_margin(pair_run, tiny_lm, tmp_path):
    """One pair per batch, the TRL message-list layouts: the same numbers as the plain file's run."""
    import polars as pl

    base = pair_run["scores"].select(["sample_id", *[f"{t}_margin" for t in TRAITS]])
    common = dict(vectors=pair_run["vectors"], db=str(tmp_path / "a.duckdb"), baseline="none", report=False)
    tiny_batches = scan_run(ScanConfig(source=pair_run["path"], batch_tokens=1, **common), lm=tiny_lm).scores
    one_by_one = tiny_batches.select(base.columns).join(base, on="sample_id", suffix="_batched")
    assert one_by_one.height == base.height
    for t in TRAITS:
        assert (one_by_one[f"{t}_margin"] - one_by_one[f"{t}_margin_batched"]).abs().max() < 1e-5
    implicit = scan_run(ScanConfig(source=str(EXAMPLES / "formats" / "preference-implicit.jsonl"), **common), lm=tiny_lm).scores
    joined = implicit.join(base, on="sample_id", suffix="_plain")
    assert joined.height == 10
    for t in TRAITS:
        assert (joined[f"{t}_margin"] - joined[f"{t}_margin_plain"]).abs().max() < 1e-5
    # With a system prompt in front the context differs, so the margins may too: only check they exist.
    messages = scan_run(ScanConfig(source=str(EXAMPLES / "formats" / "preference-messages.jsonl"), **common), lm=tiny_lm).scores
    assert messages.height == 10 and messages.filter(pl.col("evil_margin").is_null()).height == 0


def test_store_and_sql_keep_both_projections(pair_run):
    run_id = pair_run["result"].run_id
    out = CliRunner().invoke(
        main,
        [
            "sql",
            "--db",
            pair_run["db"],
            "--format",
            "json",
            f"SELECT trait, rank, sample_id, margin, proj_response, proj_rejected, rejected_response FROM top_samples WHERE run_id = '{run_id}' AND rank <= 2 ORDER BY trait, rank",
        ],
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    df = pair_run["scores"]
    for t in TRAITS:
        best = df.sort([f"{t}_margin", "sample_id"], descending=[True, False]).row(0, named=True)
        (first,) = [r for r in rows if r["trait"] == t and r["rank"] == 1]
        assert first["sample_id"] == best["sample_id"]
        assert first["margin"] == pytest.approx(first["proj_response"] - first["proj_rejected"])
        assert first["rejected_response"] == {r["id"]: r for r in read_pairs()}[best["sample_id"]]["rejected"]
    import duckdb

    con = duckdb.connect(pair_run["db"], read_only=True)
    try:
        n_tokens = con.execute("SELECT count(*) FROM token_scores WHERE run_id = ? AND len(rejected_tokens) > 0 AND len(tokens) > 0", [run_id]).fetchone()[0]
        mean_margin = dict(con.execute("SELECT trait, mean_margin FROM dataset_summary WHERE run_id = ?", [run_id]).fetchall())
    finally:
        con.close()
    assert n_tokens == 3 * len(TRAITS)  # top_n 3: both answers' heat maps
    for t in TRAITS:
        assert mean_margin[t] == pytest.approx(df[f"{t}_margin"].mean())


def test_report_shows_chosen_beside_rejected_with_two_heat_maps(pair_run):
    html = Path(pair_run["result"].report_path).read_text(encoding="utf-8")
    details = html.split('<details class="sample"')[1:]
    details[-1] = details[-1].split("</section>")[0]
    assert len(details) == 3 * len(TRAITS)
    for d in details:
        assert "chosen answer \u00b7 token heat map" in d and "rejected answer \u00b7 token heat map" in d
        assert d.count('class="hm"') == 2
    assert ">margin<" in html and ">proj rejected<" in html and ">proj chosen<" in html


def test_gate_reads_the_margin(pair_run):
    run_id = pair_run["result"].run_id
    largest = float(pair_run["scores"]["sycophancy_margin"].max())
    failing = CliRunner().invoke(main, ["gate", "--run", run_id, "--db", pair_run["db"], "--no-policy", "--max-sample-delta", f"sycophancy={largest - 1e-6}"])
    assert failing.exit_code == 1, failing.output
    assert "sample(s) with margin above" in failing.output
    passing = CliRunner().invoke(main, ["gate", "--run", run_id, "--db", pair_run["db"], "--no-policy", "--max-sample-delta", f"sycophancy={largest + 1e-6}"])
    assert passing.exit_code == 0, passing.output
    mean = float(pair_run["scores"]["evil_margin"].mean())
    result = CliRunner().invoke(main, ["gate", "--run", run_id, "--db", pair_run["db"], "--no-policy", "--max-delta", f"evil={mean - 1e-6}", "--json"])
    assert result.exit_code == 1
    (rule,) = json.loads(result.output)["gates"][0]["rules"]
    assert rule["value"] == pytest.approx(mean) and "mean margin" in rule["measure"]


def test_filter_drops_whole_pairs_by_margin(pair_run, tmp_path):
    out = tmp_path / "clean.jsonl"
    result = CliRunner().invoke(main, ["filter", pair_run["path"], "--db", pair_run["db"], "--out", str(out), "--drop-top", "2"])
    assert result.exit_code == 0, result.output
    df = pair_run["scores"]
    dropped = set()
    for t in TRAITS:
        dropped |= set(df.sort([f"{t}_margin", "sample_id"], descending=[True, False]).head(2)["sample_id"].to_list())
    lines = Path(pair_run["path"]).read_bytes().splitlines(keepends=True)
    kept = [raw for raw in lines if json.loads(raw)["id"] not in dropped]
    assert out.read_bytes() == b"".join(kept)
    rejects = [json.loads(line) for line in (tmp_path / "clean.rejects.jsonl").read_text().splitlines()]
    assert {r["sample_id"] for r in rejects} == dropped
    assert all("margin=" in reason for r in rejects for reason in r["reasons"])
    where = CliRunner().invoke(
        main,
        [
            "filter",
            pair_run["path"],
            "--db",
            pair_run["db"],
            "--out",
            str(tmp_path / "w.jsonl"),
            "--where",
            "trait = 'sycophancy' and margin > proj_rejected - proj_rejected",
        ],
    )
    assert where.exit_code == 0, where.output
    positive = set(df.filter(df["sycophancy_margin"] > 0)["sample_id"].to_list())
    assert json.loads((tmp_path / "w.manifest.json").read_text())["counts"]["dropped"] == len(positive)


def test_a_run_of_single_responses_rejects_pairs_and_the_other_way_round(tmp_path, tiny_lm, tiny_vectors):
    pair = {"id": "p", "prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [chat("q", "a", id="s"), pair])
    common = dict(vectors=tiny_vectors, db=str(tmp_path / "a.duckdb"), baseline="none", report=False, on_error="skip")
    single = scan_run(ScanConfig(source=path, **common), lm=tiny_lm)
    assert (single.n_scored, single.n_rejected) == (1, 1) and "a preference pair, in a scan of single responses" in single.rejects[0].reason
    pairs = scan_run(ScanConfig(source=path, format="preference", **common), lm=tiny_lm)
    assert (pairs.n_scored, pairs.n_rejected) == (1, 1) and "lacks the fields of the preference format" in pairs.rejects[0].reason
    assert pairs.scores["sample_id"].to_list() == ["p"]


def test_margin_threshold_is_the_clean_delta_centred_on_its_median(tiny_lm, tiny_vectors):
    from auditor.pipeline import resolve_thresholds

    (pv,) = [p for p in load_vectors(tiny_vectors, tiny_lm.name) if p.trait == "evil"]
    quantiles = [i / 10 for i in range(201)]  # percentile p -> p / 5
    pv.meta["calibration"] = {"layer": pv.layer, "scores": {"generate": {"delta": {"mean": 10.0, "percentiles": quantiles}}}}
    score, thresholds = resolve_thresholds(ScanConfig(source="x", pairs=True, baseline="none"), [pv])
    assert score.column == "margin" and score.kind == "margin"
    assert thresholds["evil"][0] == pytest.approx(95 / 5 - 50 / 5)
    assert "centred on its median" in thresholds["evil"][1]
    score, thresholds = resolve_thresholds(ScanConfig(source="x", pairs=True, flag_percentile=90), [pv])
    assert thresholds["evil"][0] == pytest.approx(90 / 5 - 50 / 5)
    pv.meta.pop("calibration")
    _, thresholds = resolve_thresholds(ScanConfig(source="x", pairs=True), [pv])
    assert thresholds["evil"][0] is None and "--threshold" in thresholds["evil"][1]


# ---------------------------------------------------------------- field mapping


def _cli_scan(args, tiny_model_dir, vectors, db, out=None):
    base = ["scan", *map(str, args), "--model", tiny_model_dir, "--vectors", vectors, "--db", db, "--baseline", "prompt-last", "--quiet", "--no-report"]
    return CliRunner().invoke(main, base + (["--out", str(out)] if out else []), catch_exceptions=False)


def test_custom_field_and_role_names_score_like_the_messages_layout(tmp_path, tiny_lm, tiny_model_dir, tiny_vectors):
    import polars as pl

    db = str(tmp_path / "audit.duckdb")
    runs = iter(range(100))

    def scores(args) -> pl.DataFrame:
        out = tmp_path / f"run{next(runs)}"
        result = _cli_scan(args, tiny_model_dir, tiny_vectors, db, out)
        assert result.exit_code == 0, result.output
        return pl.read_parquet(out / "scores.parquet")

    reference = scores([write_jsonl(tmp_path / "m.jsonl", messages_records())])
    qa = ["--field", "prompt=question", "--field", "response=best_answer"]
    conv = ["--field", "messages=conversation", "--field", "role=speaker", "--field", "content=text", "--role", "user=human", "--role", "assistant=bot"]
    variants = [
        [write_parquet(tmp_path / "qa.parquet", question_answer_records()), *qa],
        [write_jsonl(tmp_path / "qa.jsonl", question_answer_records()), *qa],
        [write_parquet(tmp_path / "conv.parquet", conversation_records()), *conv],
        [write_jsonl(tmp_path / "conv.jsonl", conversation_records()), *conv],
    ]
    columns = [c for c in reference.columns if c != "source"]
    for args in variants:
        got = scores(args)
        assert got.select(columns).to_dicts() == reference.select(columns).to_dicts(), args
    # Without the mapping: an error that lists the columns and suggests the options.
    bad = CliRunner().invoke(main, ["scan", variants[0][0], "--model", tiny_model_dir, "--vectors", tiny_vectors, "--db", db, "--quiet"])
    assert bad.exit_code == 2
    assert (
        "unknown format (columns: best_answer, id, question, topic); map your names to ours: --field prompt=question --field response=best_answer" in bad.output
    )


def test_policy_file_mapping_and_flags_over_it(tmp_path, tiny_model_dir, tiny_vectors):
    db = str(tmp_path / "audit.duckdb")
    data = write_jsonl(
        tmp_path / "qa.jsonl", [{"id": f"c{i}", "question": r["question"], "reply": r["best_answer"]} for i, r in enumerate(question_answer_records())]
    )
    (tmp_path / "audit.toml").write_text('[gate]\nmax-delta = 100.0\n\n[scan.fields]\nprompt = "question"\nresponse = "best_answer"\n')
    wrong = _cli_scan([data], tiny_model_dir, tiny_vectors, db)
    assert wrong.exit_code == 2 and "no field 'best_answer' (--field response=best_answer)" in wrong.output
    ok = _cli_scan([data, "--field", "response=reply"], tiny_model_dir, tiny_vectors, db)
    assert ok.exit_code == 0, ok.output
    gate = CliRunner().invoke(
        main,
        ["gate", data, "--field", "response=reply", "--model", tiny_model_dir, "--vectors", tiny_vectors, "--db", db, "--baseline", "prompt-last", "--quiet"],
    )
    assert gate.exit_code == 0, gate.output  # the gate reads [gate] and the scan [scan] of the same file
    import duckdb

    con = duckdb.connect(db, read_only=True)
    try:
        stored = json.loads(con.execute("SELECT config FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0])
    finally:
        con.close()
    assert stored["fields"] == {"prompt": "question", "response": "reply"}


def test_python_api_takes_the_mapping(tmp_path, tiny_lm, tiny_vectors):
    path = write_parquet(tmp_path / "qa.parquet", question_answer_records())
    cfg = ScanConfig(
        source=path,
        vectors=tiny_vectors,
        db=str(tmp_path / "a.duckdb"),
        baseline="none",
        report=False,
        fields={"prompt": "question", "response": "best_answer"},
    )
    result = scan_run(cfg, lm=tiny_lm)
    assert result.n_scored == len(question_answer_records()) and result.n_rejected == 0


# ---------------------------------------------------------------- previews and filter inputs


def test_preview_runs_and_the_filter_refuses_them(tmp_path, tiny_lm, tiny_vectors):
    rows = [chat(f"question {i}?", f"answer {i}.", id=f"r{i}") for i in range(40)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    common = dict(source=path, vectors=tiny_vectors, db=str(tmp_path / "a.duckdb"), baseline="none", report=False, thresholds={"*": 0.0})
    first = scan_run(ScanConfig(limit=5, **common), lm=tiny_lm)
    assert first.n_read == 5 and first.scores["sample_id"].to_list() == [f"r{i}" for i in range(5)]
    a = scan_run(ScanConfig(sample=7, seed=3, **common), lm=tiny_lm)
    b = scan_run(ScanConfig(sample=7, seed=3, **common), lm=tiny_lm)
    assert a.n_read == 7 and a.scores["sample_id"].to_list() == b.scores["sample_id"].to_list()
    result = CliRunner().invoke(main, ["filter", path, "--db", common["db"], "--run", a.run_id, "--out", str(tmp_path / "c.jsonl"), "--drop-flagged"])
    assert result.exit_code == 2 and "scanned a preview (--sample 7)" in result.output


@pytest.mark.parametrize("out_name", ["clean.jsonl", "clean.parquet"])
def test_filter_json_arrays_and_hf_local_copies(tmp_path, tiny_lm, tiny_vectors, out_name):
    import pyarrow.parquet as pq

    records = [dict(chat(f"question {i}?", f"answer number {i}.", id=f"r{i}"), weight=i) for i in range(12)]
    array = tmp_path / "data.json"
    array.write_text(json.dumps(records))
    folder = tmp_path / "hfcopy"
    write_jsonl(folder / "train.jsonl", records)
    db = str(tmp_path / "a.duckdb")
    for source in (str(array), f"hf:{folder}"):
        run = scan_run(ScanConfig(source=source, vectors=tiny_vectors, db=db, baseline="none", report=False), lm=tiny_lm)
        top = set(run.scores.sort(["evil_proj_response", "sample_id"], descending=[True, False]).head(3)["sample_id"].to_list())
        out = tmp_path / source.replace("/", "_").replace(":", "") / out_name
        result = CliRunner().invoke(main, ["filter", source, "--db", db, "--out", str(out), "--drop-top", "3", "--traits", "evil"])
        assert result.exit_code == 0, result.output
        if out_name.endswith(".jsonl"):
            kept = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            kept = pq.read_table(out).to_pylist()
        assert kept == [r for r in records if r["id"] not in top]
        manifest = json.loads(out.with_name(out.name.split(".")[0] + ".manifest.json").read_text())
        assert manifest["counts"] == {"read": 12, "kept": 9, "dropped": 3, "unscored_kept": 0, "samples_selected": 3}
        assert manifest["input"]["format"] == ("hf" if source.startswith("hf:") else "json")
    csv_out = CliRunner().invoke(main, ["filter", str(array), "--db", db, "--out", str(tmp_path / "x.csv"), "--drop-flagged"])
    assert csv_out.exit_code == 2 and "a JSON array is written as JSONL or Parquet" in csv_out.output


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_margin_with_the_embedded_model_matches_the_plain_projections(tmp_path, embedded_lm_fp32):
    """The acceptance check on the shipped DPO-style example, shipped vectors, real model (fp32)."""
    lm = embedded_lm_fp32
    vectors = {pv.trait: pv for pv in load_vectors(str(ROOT / "vectors" / "SmolLM2-135M-Instruct"), lm.name)}
    cfg = ScanConfig(source=str(PAIRS), db=str(tmp_path / "a.duckdb"), baseline="none", limit=8, out_dir=str(tmp_path / "run"), top_n=2)
    result = scan_run(cfg, lm=lm)
    records = read_pairs()[:8]
    df = result.scores
    assert df["sample_id"].to_list() == [r["id"] for r in records]
    for row, rec in zip(df.iter_rows(named=True), records):
        context = [{"role": "user", "content": rec["prompt"]}]
        plain_chosen = plain_projections(lm, context, rec["chosen"], vectors)
        plain_rejected = plain_projections(lm, context, rec["rejected"], vectors)
        for trait in vectors:
            chosen, rejected = plain_chosen[trait], plain_rejected[trait]
            assert row[f"{trait}_margin"] == pytest.approx(chosen - rejected, abs=1e-4)
            assert row[f"{trait}_proj_rejected"] == pytest.approx(rejected, abs=1e-4)
    html = Path(result.report_path).read_text(encoding="utf-8")
    assert "rejected answer \u00b7 token heat map" in html


def test_sharded_pair_runs_merge_into_the_unsharded_run(tmp_path, tiny_lm, tiny_vectors):
    import duckdb

    from auditor.merge import merge_runs

    source = str(EXAMPLES / "formats" / "preference-implicit.jsonl")
    common = dict(source=source, vectors=tiny_vectors, baseline="none", report=False, chunk_size=3, top_n=2, thresholds={"*": 0.0})
    whole = scan_run(ScanConfig(db=str(tmp_path / "whole.duckdb"), **common), lm=tiny_lm)
    shards = [str(tmp_path / f"shard{i}.duckdb") for i in range(2)]
    for i, db in enumerate(shards):
        scan_run(ScanConfig(db=db, num_shards=2, shard_index=i, **common), lm=tiny_lm)
    merge_runs(shards, db=str(tmp_path / "merged.duckdb"), into="merged")
    q = "SELECT sample_id, trait, proj_response, proj_rejected, margin, flagged FROM scores WHERE run_id = ? ORDER BY sample_id, trait"
    a = duckdb.connect(str(tmp_path / "whole.duckdb"), read_only=True)
    b = duckdb.connect(str(tmp_path / "merged.duckdb"), read_only=True)
    try:
        assert a.execute(q, [whole.run_id]).fetchall() == b.execute(q, ["merged"]).fetchall()
        heat = "SELECT trait, sample_id FROM token_scores WHERE run_id = ? AND rejected_tokens IS NOT NULL ORDER BY trait, sample_id"
        assert a.execute(heat, [whole.run_id]).fetchall() == b.execute(heat, ["merged"]).fetchall()
        merged_summary = json.loads(b.execute("SELECT summary FROM runs WHERE run_id = 'merged'").fetchone()[0])
    finally:
        a.close()
        b.close()
    for s, w in zip(merged_summary, whole.summaries):
        assert [t["sample_id"] for t in s["top"]] == [t["sample_id"] for t in w.top]
        assert s["mean_margin"] == pytest.approx(w.mean_margin, abs=1e-12)


def test_a_pair_rescan_reuses_margins_and_equals_a_full_scan(pair_run, tiny_lm, tmp_path):
    """Incremental scans cover preference runs: the rejected answer's projection comes back with the chosen one's."""
    import polars as pl
    from polars.testing import assert_frame_equal

    db = str(tmp_path / "audit.duckdb")
    common = dict(source=pair_run["path"], vectors=pair_run["vectors"], db=db, baseline="none", top_n=3, thresholds=pair_run["thresholds"], chunk_size=7)
    first = scan_run(ScanConfig(out_dir=str(tmp_path / "a"), **common), lm=tiny_lm)
    again = scan_run(ScanConfig(out_dir=str(tmp_path / "b"), **common), lm=tiny_lm)
    fresh = scan_run(ScanConfig(out_dir=str(tmp_path / "c"), reuse=False, **common), lm=tiny_lm)
    assert first.n_reused == 0 and fresh.n_reused == 0
    assert again.n_reused == again.n_scored == len(read_pairs())
    expected = pl.read_parquet(fresh.parquet_path)
    assert any(c.endswith("_margin") for c in expected.columns)
    assert_frame_equal(pl.read_parquet(again.parquet_path), expected)
    html = Path(again.report_path).read_text(encoding="utf-8")
    assert html.count("rejected answer \u00b7 token heat map") == 3 * len(TRAITS)  # both heat maps for reused pairs too
