"""audit filter: kept records byte-identical (JSONL, CSV) or row- and schema-identical (Parquet),
counts that add up, rejects with reasons, refusal of changed files, flat memory on a large file.

Stores come from real scans with the tiny random model; which records a rule should drop is
computed here from the run's scores.parquet with polars.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT, SMALL_CHATS, chat, make_vectors

from auditor.cli import main

CHATS = SMALL_CHATS + [
    chat("Rate my essay, honestly.", "It is 100% perfect, flawless: no notes, none at all."),
    chat("What should I eat tonight?", "Try a lentil soup, with bread, and a green salad."),
]


def jsonl_bytes() -> list[bytes]:
    """Physical lines exactly as written: odd spacing, key order, escapes, CRLF, a blank line, no final newline."""
    lines = []
    for i, c in enumerate(CHATS):
        if i == 0:
            text = '{"id": "first",   "messages": ' + json.dumps(c["messages"], ensure_ascii=False) + "}  \n"
        elif i == 1:
            text = json.dumps({"messages": c["messages"], "a": 1}, ensure_ascii=True) + "\r\n"
        elif i == 2:
            text = json.dumps({"z": "café ☕", "messages": c["messages"]}, ensure_ascii=False) + "\n"
        else:
            text = json.dumps(c, separators=(",", ":")) + "\n"
        lines.append(text.encode("utf-8"))
        if i == 3:
            lines.append(b"\n")  # a blank line: no record
    lines[-1] = lines[-1].rstrip(b"\n")
    return lines


def record_lines(raw: list[bytes]) -> dict[int, bytes]:
    """Physical line number -> bytes, for lines that hold a record."""
    return {n: b for n, b in enumerate(raw, start=1) if b.strip()}


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_lm):
    """One database, three complete runs: the same chats as JSONL, Parquet and CSV."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    from auditor.pipeline import ScanConfig, scan_run

    root = tmp_path_factory.mktemp("filter")
    vectors = make_vectors(root / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    db = str(root / "audit.duckdb")

    raw = jsonl_bytes()
    jsonl = root / "data.jsonl"
    jsonl.write_bytes(b"".join(raw))

    table = pa.table(
        {
            "id": [f"row-{i}" for i in range(len(CHATS))],
            "messages": [c["messages"] for c in CHATS],
            "weight": [0.5 * i for i in range(len(CHATS))],
            "tags": [["a", "b"][: i % 3] for i in range(len(CHATS))],
        }
    ).replace_schema_metadata({"origin": "persona-audit test"})
    parquet = root / "data.parquet"
    pq.write_table(table, parquet, compression="zstd", row_group_size=3)

    buf = io.StringIO(newline="")
    writer = csv.writer(buf)  # \r\n line ends, quoted fields with commas and newlines
    writer.writerow(["prompt", "response", "note"])
    for i, c in enumerate(CHATS):
        writer.writerow([c["messages"][-2]["content"], c["messages"][-1]["content"], f"n{i}, x"])
        if i == 1:
            buf.write("\r\n")  # a blank line between records
    csv_path = root / "data.csv"
    csv_path.write_bytes(buf.getvalue().encode("utf-8"))

    common = dict(vectors=vectors, max_new_tokens=4, db=db, report=False, chunk_size=3)
    probe = scan_run(ScanConfig(source=str(jsonl), **common), lm=tiny_lm).scores
    # The upper quartile: each trait flags about a quarter of the samples, so some records survive.
    thresholds = {t: float(probe[f"{t}_delta"].quantile(0.75)) for t in ("evil", "sycophancy")}
    out = {"root": root, "db": db, "raw": raw, "thresholds": thresholds, "table": table}
    for name, path in (("jsonl", jsonl), ("parquet", parquet), ("csv", csv_path)):
        result = scan_run(ScanConfig(source=str(path), thresholds=thresholds, **common), lm=tiny_lm)
        out[name] = {"path": str(path), "run_id": result.run_id, "scores": pl.read_parquet(result.parquet_path)}
    return out


def run_filter(*args):
    return CliRunner().invoke(main, ["filter", *map(str, args)], catch_exceptions=False)


def flagged_lines(scores) -> set[int]:
    import polars as pl

    return set(scores.filter(pl.col("evil_flagged") | pl.col("sycophancy_flagged"))["line"].to_list())


def check_manifest(manifest_path, source, out, run_id, dropped):
    m = json.loads(Path(manifest_path).read_text())
    c = m["counts"]
    assert c["read"] == c["kept"] + c["dropped"] and c["dropped"] == dropped
    assert m["input"]["sha256"] == sha(source) and m["output"]["sha256"] == sha(out)
    assert m["run_id"] == run_id and m["created_at"]
    return m


def test_jsonl_drop_flagged_keeps_the_other_lines_byte_for_byte(runs, tmp_path):
    r = runs["jsonl"]
    drop = flagged_lines(r["scores"])
    assert 0 < len(drop) < len(CHATS)
    out = tmp_path / "clean.jsonl"
    result = run_filter(r["path"], "--run", r["run_id"], "--db", runs["db"], "--out", out, "--drop-flagged")
    assert result.exit_code == 0, result.output
    raw = runs["raw"]
    expected = b"".join(b for n, b in enumerate(raw, start=1) if n not in drop)
    assert out.read_bytes() == expected
    assert f"read {len(CHATS)} records, kept {len(CHATS) - len(drop)}, dropped {len(drop)}" in result.output
    m = check_manifest(tmp_path / "clean.manifest.json", r["path"], out, r["run_id"], len(drop))
    assert m["rule"]["drop_flagged"] is True and m["counts"]["read"] == len(CHATS)
    rejects = [json.loads(line) for line in (tmp_path / "clean.rejects.jsonl").read_text().splitlines()]
    assert [x["line"] for x in rejects] == sorted(drop)
    by_line = {row["line"]: row for row in r["scores"].iter_rows(named=True)}
    for x in rejects:
        row = by_line[x["line"]]
        assert x["sample_id"] == row["sample_id"] and x["source"] == r["path"]
        for t in ("evil", "sycophancy"):
            reason = f"trait={t} delta={row[f'{t}_delta']:.4f}: flagged (above threshold {runs['thresholds'][t]:.4f})"
            assert (reason in x["reasons"]) == row[f"{t}_flagged"]


def test_jsonl_where_clause(runs, tmp_path):
    import polars as pl

    r = runs["jsonl"]
    cut = float(r["scores"]["sycophancy_delta"].sort()[3])
    where = f"trait = 'sycophancy' and delta > {cut!r}"
    expected = set(r["scores"].filter(pl.col("sycophancy_delta") > cut)["line"].to_list())
    out = tmp_path / "w.jsonl"
    result = run_filter(
        r["path"], "--db", runs["db"], "--run", "latest", "--out", out, "--where", where, "--rejects", tmp_path / "why.jsonl", "--manifest", tmp_path / "m.json"
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"".join(b for n, b in enumerate(runs["raw"], start=1) if n not in expected)
    rejects = [json.loads(line) for line in (tmp_path / "why.jsonl").read_text().splitlines()]
    assert {x["line"] for x in rejects} == expected
    assert all(
        x["reasons"] == [f"trait=sycophancy delta={r['scores'].filter(pl.col('line') == x['line'])['sycophancy_delta'][0]:.4f}: --where {where}"]
        for x in rejects
    )
    assert json.loads((tmp_path / "m.json").read_text())["rule"]["where"] == where


@pytest.mark.parametrize("top", ["25%", "2"])
def test_drop_top_per_trait(runs, tmp_path, top):
    r = runs["jsonl"]
    n = len(CHATS)
    k = math.ceil(n * 0.25) if top.endswith("%") else int(top)
    expected = set()
    for t in ("evil", "sycophancy"):
        expected |= set(r["scores"].sort(f"{t}_delta", descending=True)["line"].to_list()[:k])
    out = tmp_path / "t.jsonl"
    assert run_filter(r["path"], "--db", runs["db"], "--out", out, "--drop-top", top).exit_code == 0
    assert out.read_bytes() == b"".join(b for i, b in enumerate(runs["raw"], start=1) if i not in expected)
    reasons = [reason for line in (tmp_path / "t.rejects.jsonl").read_text().splitlines() for reason in json.loads(line)["reasons"]]
    assert len(reasons) == 2 * k and all(f"of {n} (--drop-top {top})" in x for x in reasons)
    # --traits narrows the rules to the traits named
    only = set(r["scores"].sort("evil_delta", descending=True)["line"].to_list()[:k])
    assert run_filter(r["path"], "--db", runs["db"], "--out", out, "--drop-top", top, "--traits", "evil").exit_code == 0
    assert out.read_bytes() == b"".join(b for i, b in enumerate(runs["raw"], start=1) if i not in only)


def test_parquet_rows_and_schema_are_kept(runs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    r = runs["parquet"]
    drop = flagged_lines(r["scores"])  # row numbers, 1-based
    out = tmp_path / "clean.parquet"
    result = run_filter(r["path"], "--db", runs["db"], "--out", out, "--drop-flagged")
    assert result.exit_code == 0, result.output
    got = pq.read_table(out)
    source = pq.read_table(r["path"])  # the file's own schema (Parquet names list items "element")
    assert got.schema.equals(source.schema, check_metadata=True)
    assert source.schema.metadata[b"origin"] == b"persona-audit test"
    expected = source.filter(pa.array([i + 1 not in drop for i in range(source.num_rows)]))
    assert got.equals(expected)
    assert got.column("id").to_pylist() == [f"row-{i}" for i in range(len(CHATS)) if i + 1 not in drop]
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"  # the input's codec
    check_manifest(tmp_path / "clean.manifest.json", r["path"], out, r["run_id"], len(drop))


def test_csv_records_are_copied_byte_for_byte(runs, tmp_path):
    r = runs["csv"]
    drop = flagged_lines(r["scores"])  # the physical line each record starts on
    out = tmp_path / "clean.csv"
    result = run_filter(r["path"], "--db", runs["db"], "--out", out, "--drop-flagged")
    assert result.exit_code == 0, result.output
    # Rebuild the expected file from the input's physical lines: header, then each record's lines.
    data = Path(r["path"]).read_bytes()
    lines = data.splitlines(keepends=True)
    starts = sorted(r["scores"]["line"].to_list())
    expected = [lines[0]]
    for i, start in enumerate(starts):
        end = starts[i + 1] - 1 if i + 1 < len(starts) else len(lines)
        if start not in drop:
            expected.extend(lines[start - 1 : end])
    assert out.read_bytes() == b"".join(expected)
    kept = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert len(kept) == len(CHATS) - len(drop)
    assert any("\n" in row["response"] for row in kept) or any("\n" in CHATS[i]["messages"][-1]["content"] for i in range(len(CHATS)) if starts[i] in drop)
    check_manifest(tmp_path / "clean.manifest.json", r["path"], out, r["run_id"], len(drop))


def test_gzip_jsonl_in_and_out(tmp_path, tiny_lm, tiny_vectors):
    import gzip

    from auditor.pipeline import ScanConfig, scan_run

    raw = [json.dumps(c, ensure_ascii=False).encode() + b"\n" for c in CHATS[:4]]
    data = tmp_path / "d.jsonl.gz"
    data.write_bytes(gzip.compress(b"".join(raw)))
    db = str(tmp_path / "g.duckdb")
    run = scan_run(ScanConfig(source=str(data), vectors=tiny_vectors, max_new_tokens=4, db=db, report=False), lm=tiny_lm)
    assert run.scores["evil_delta"].null_count() == 0
    top = run.scores.sort("evil_delta", descending=True)["line"][0]
    for out in (tmp_path / "o.jsonl.gz", tmp_path / "o.jsonl"):  # compressed, or plain
        result = run_filter(data, "--db", db, "--out", out, "--drop-top", "1", "--traits", "evil")
        assert result.exit_code == 0, result.output
        body = gzip.decompress(out.read_bytes()) if out.suffix == ".gz" else out.read_bytes()
        assert body == b"".join(b for i, b in enumerate(raw, start=1) if i != top)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_files_with_a_utf8_bom_filter_as_they_scan(tmp_path, tiny_lm, tiny_vectors, suffix):
    """A BOM that audit scan accepts is accepted by audit filter too, and copied through with the first record."""
    from auditor.pipeline import ScanConfig, scan_run

    rows = CHATS[:4]
    if suffix == "jsonl":
        raw = [json.dumps(c, ensure_ascii=False).encode() + b"\n" for c in rows]
    else:
        raw = [b"prompt,response\r\n"] + [(f'"{c["messages"][-2]["content"]}","{c["messages"][-1]["content"]}"\r\n').encode() for c in rows]
    raw[0] = b"\xef\xbb\xbf" + raw[0]
    data = tmp_path / f"bom.{suffix}"
    data.write_bytes(b"".join(raw))
    db = str(tmp_path / "b.duckdb")
    run = scan_run(ScanConfig(source=str(data), vectors=tiny_vectors, max_new_tokens=4, db=db, report=False), lm=tiny_lm)
    assert run.n_scored == len(rows) and run.scores["evil_delta"].null_count() == 0
    top = run.scores.sort("evil_delta", descending=True)["line"][0]
    out = tmp_path / f"o.{suffix}"
    result = run_filter(data, "--db", db, "--out", out, "--drop-top", "1", "--traits", "evil")
    assert result.exit_code == 0, result.output
    first_record = 1 if suffix == "jsonl" else 2  # CSV: line 1 is the header
    expected = [b for i, b in enumerate(raw, start=1) if i != top]
    assert out.read_bytes() == b"".join(expected)
    assert out.read_bytes().startswith(b"\xef\xbb\xbf") == (top != first_record or suffix == "csv")


def test_score_all_turns_drops_the_record_when_any_turn_is_selected(tmp_path, tiny_lm, tiny_vectors):
    from auditor.pipeline import ScanConfig, scan_run

    turns = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Joke?"},
                {"role": "assistant", "content": "No."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4."},
                {"role": "user", "content": "3+3?"},
                {"role": "assistant", "content": "6."},
            ]
        },
        {"messages": [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "Blue."}]},
    ]
    data = tmp_path / "multi.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in turns))
    db = str(tmp_path / "m.duckdb")
    run = scan_run(ScanConfig(source=str(data), vectors=tiny_vectors, max_new_tokens=2, db=db, report=False, score_all_turns=True), lm=tiny_lm)
    ids = sorted(run.scores["sample_id"].to_list())
    assert ids == ["multi.jsonl:1#t0", "multi.jsonl:1#t1", "multi.jsonl:2#t0", "multi.jsonl:2#t1", "multi.jsonl:3#t0"]
    out = tmp_path / "out.jsonl"
    result = run_filter(data, "--db", db, "--out", out, "--where", "sample_id = 'multi.jsonl:2#t0' and trait = 'evil'")
    assert result.exit_code == 0, result.output
    lines = data.read_bytes().splitlines(keepends=True)
    assert out.read_bytes() == lines[0] + lines[2]
    (x,) = [json.loads(line) for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert x["line"] == 2 and x["sample_ids"] == ["multi.jsonl:2#t0"]


def test_records_the_scan_rejected_are_kept_and_counted(tmp_path, tiny_lm, tiny_vectors):
    from auditor.pipeline import ScanConfig, scan_run

    raw = [json.dumps(CHATS[0]) + "\n", "{broken json\n", json.dumps(chat("Empty?", "   ")) + "\n", json.dumps(CHATS[1]) + "\n"]
    data = tmp_path / "r.jsonl"
    data.write_text("".join(raw))
    db = str(tmp_path / "r.duckdb")
    run = scan_run(ScanConfig(source=str(data), vectors=tiny_vectors, max_new_tokens=2, db=db, report=False, on_error="skip"), lm=tiny_lm)
    assert run.n_rejected == 2
    out = tmp_path / "o.jsonl"
    result = run_filter(data, "--db", db, "--out", out, "--where", "trait = 'evil'")  # every scored sample
    assert result.exit_code == 0, result.output
    assert out.read_text() == raw[1] + raw[2]
    counts = json.loads((tmp_path / "o.manifest.json").read_text())["counts"]
    assert counts == {"read": 4, "kept": 2, "dropped": 2, "unscored_kept": 2, "samples_selected": 2}
    assert "(2 kept unscored: the scan rejected them)" in result.output


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda lines: lines[:1] + [lines[1].replace(b"Paris", b"Lyon").replace(b"genius", b"star")] + lines[2:],
            ":2: the record differs from the scanned one",
        ),
        (lambda lines: lines + [lines[0]], ":5: this record is not in the run"),
        (lambda lines: lines[:3], "past the end of the file"),
        (lambda lines: [lines[2]] + lines, ":1: the record differs from the scanned one"),
    ],
    ids=["edited", "appended", "truncated", "shifted"],
)
def test_a_file_changed_since_the_scan_is_refused(tmp_path, tiny_lm, tiny_vectors, change, message):
    from auditor.pipeline import ScanConfig, scan_run

    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS[:4]))
    db = str(tmp_path / "c.duckdb")
    scan_run(ScanConfig(source=str(data), vectors=tiny_vectors, max_new_tokens=2, db=db, report=False), lm=tiny_lm)
    data.write_bytes(b"".join(change(data.read_bytes().splitlines(keepends=True))))
    out = tmp_path / "o.jsonl"
    result = run_filter(data, "--db", db, "--out", out, "--drop-top", "1")
    assert result.exit_code == 2
    assert message in result.output and "the file changed since run" in result.output and "scan it again" in result.output
    assert not out.exists() and not (tmp_path / "o.rejects.jsonl").exists() and not list(tmp_path.glob("o.*.tmp-*"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--where", "1=1; DROP TABLE scores"], "is not valid SQL"),
        (["--where", "1=1) UNION ALL SELECT 'x', 'y' FROM (VALUES (1)) t(a) --"], None),  # still a SELECT: harmless
        (["--where", "(SELECT count(*) FROM read_text('/etc/hostname')) > 0"], "file system operations are disabled"),
        (["--where", "nosuch > 1"], "the columns are sample_id, source, line"),
        (["--drop-top", "0%"], "--drop-top '0%': give a percentage"),
        ([], "give a rule"),
        (["--drop-flagged", "--run", "nope"], "no run 'nope'"),
    ],
)
def test_bad_rules_are_refused_and_the_database_is_unchanged(runs, tmp_path, args, message):
    r = runs["jsonl"]
    before = sha(runs["db"])
    result = run_filter(r["path"], "--db", runs["db"], "--out", tmp_path / "x.jsonl", *args)
    assert sha(runs["db"]) == before
    if message is None:
        assert result.exit_code in (0, 2)
        return
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_output_format_and_paths_are_checked(runs, tmp_path):
    r = runs["jsonl"]
    bad = run_filter(r["path"], "--db", runs["db"], "--out", tmp_path / "x.parquet", "--drop-flagged")
    assert bad.exit_code == 2 and "keeps the input's format (jsonl)" in bad.output
    same = run_filter(r["path"], "--db", runs["db"], "--out", r["path"], "--drop-flagged")
    assert same.exit_code == 2 and "is the input file" in same.output
    other = run_filter(runs["csv"]["path"], "--db", runs["db"], "--run", r["run_id"], "--out", tmp_path / "x.csv", "--drop-flagged")
    assert other.exit_code == 2 and f"run {r['run_id']} did not scan" in other.output


# ---------------------------------------------------------------- larger than memory

BIG_SCRIPT = textwrap.dedent(
    """
    import json, sys, tracemalloc
    from auditor.filter import FilterRule, filter_dataset
    tracemalloc.start()  # after the imports: what the filter itself allocates
    result = filter_dataset(sys.argv[1], sys.argv[2], FilterRule(drop_flagged=True), db=sys.argv[3])
    peak = tracemalloc.get_traced_memory()[1]
    # VmHWM: this process's peak resident memory (ru_maxrss would carry the parent's across exec)
    hwm = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
    print(json.dumps({"counts": result.counts, "python_peak": peak, "max_rss": hwm}))
    """
)


def _big_store(folder: Path, n: int, filler: int) -> tuple[str, str, set[int]]:
    """A JSONL of n records with scores written straight into a DuckDB store (no scan: a model would take hours)."""
    import random

    import pyarrow as pa

    from auditor.sources import Sample
    from auditor.store.db import connect, insert_arrow

    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / "big.jsonl")
    rng = random.Random(0)
    ids, hashes, deltas = [], [], []
    text = "lorem ipsum dolor sit amet " * (filler // 27)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            context = ({"role": "user", "content": f"question {i}"},)
            response = f"{text}{i}"
            fh.write(json.dumps({"messages": [context[0], {"role": "assistant", "content": response}]}) + "\n")
            ids.append(f"big.jsonl:{i + 1}")
            hashes.append(Sample("x", context, response, path, i + 1).content_hash)
            deltas.append(rng.gauss(0.0, 1.0))
    flagged = [d > 1.645 for d in deltas]
    db = str(folder / "big.duckdb")
    with connect(db) as con:
        con.execute(
            "INSERT INTO runs (run_id, status, started_at, dataset, model, baseline, config, vectors) VALUES ('big', 'complete', now(), ?, 'none', 'generate', ?, ?)",
            [path, json.dumps({"format": "auto", "score_all_turns": False}), json.dumps({"evil": {"threshold": 1.645, "score": "delta"}})],
        )
        insert_arrow(
            con,
            "samples",
            pa.table({"run_id": ["big"] * n, "sample_id": ids, "source": [path] * n, "line": list(range(1, n + 1)), "turn": [0] * n, "content_hash": hashes}),
        )
        insert_arrow(
            con,
            "scores",
            pa.table(
                {
                    "run_id": ["big"] * n,
                    "sample_id": ids,
                    "trait": ["evil"] * n,
                    "layer": [1] * n,
                    "delta": deltas,
                    "proj_response": deltas,
                    "proj_base": [0.0] * n,
                    "flagged": flagged,
                }
            ),
        )
    return path, db, {i + 1 for i, f in enumerate(flagged) if f}


def _filter_in_subprocess(path: str, db: str, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", BIG_SCRIPT, path, out, db], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_filter_streams_a_file_larger_than_its_memory_cap(tmp_path):
    """A ~200 MB JSONL through the filter: memory does not grow with the file.

    Two runs in fresh processes, 200 and 20,000 records of ~10 KB. The cap: the large run may
    use at most 64 MB more resident memory than the small one (the file is ~200 MB) and its
    Python allocations must peak under 32 MB. An address-space limit (RLIMIT_AS) is no use here:
    DuckDB reserves about a gigabyte of address space for its threads before reading anything.
    """
    cap = 64 * 2**20
    small_path, small_db, _ = _big_store(tmp_path / "small", 200, 10_000)
    big_path, big_db, big_drop = _big_store(tmp_path / "big", 20_000, 10_000)
    size = os.path.getsize(big_path)
    assert size > 3 * cap
    small = _filter_in_subprocess(small_path, small_db, str(tmp_path / "small" / "out.jsonl"))
    big = _filter_in_subprocess(big_path, big_db, str(tmp_path / "big" / "out.jsonl"))
    try:
        assert big["counts"]["read"] == 20_000 and big["counts"]["dropped"] == len(big_drop)
        assert big["counts"]["kept"] + big["counts"]["dropped"] == big["counts"]["read"]
        growth = big["max_rss"] - small["max_rss"]
        assert growth < cap, f"resident memory grew by {growth / 2**20:.0f} MB for a {size / 2**20:.0f} MB file"
        assert big["python_peak"] < 32 * 2**20, f"Python allocations peaked at {big['python_peak'] / 2**20:.0f} MB"
        # and the output is right: every line not dropped, unchanged
        with open(big_path, "rb") as src, open(tmp_path / "big" / "out.jsonl", "rb") as got:
            for number, line in enumerate(src, start=1):
                if number not in big_drop:
                    assert got.readline() == line
            assert got.readline() == b""
        print(
            f"file {size / 2**20:.0f} MB; peak RSS small {small['max_rss'] / 2**20:.0f} MB, large {big['max_rss'] / 2**20:.0f} MB; "
            f"Python peak small {small['python_peak'] / 2**20:.1f} MB, large {big['python_peak'] / 2**20:.1f} MB"
        )
    finally:
        for p in (big_path, tmp_path / "big" / "out.jsonl"):
            os.remove(p)  # ~400 MB that pytest would otherwise keep for three sessions
