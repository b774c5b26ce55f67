"""Are a refactor's scores bit-identical? Record fixed scans at one commit, record again at another, compare.

    python bench/score_identity.py record OUT [--embedded]   # at commit A (a worktree of it), then at B
    python bench/score_identity.py compare OUT_A OUT_B

``record`` runs, with one torch thread, every file of ``examples/formats/`` and a small chat
set through a tiny random Llama (seeded, built here) with each baseline and both ``--flag-on``
scores, and with ``--embedded`` the demo on the embedded model (two settings); it keeps each
run's ``scores.parquet``, its heat-map rows and its base responses. ``compare`` says which
files differ: scores and base responses must be identical; heat-map values are compared
value by value (they come from differently shaped forward batches after the one-pass change,
so they may move at float rounding level) and the largest difference is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record(out: Path, embedded: bool) -> None:
    import duckdb
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import SMALL_CHATS, make_vectors, save_tiny_llama, write_jsonl

    from auditor.model import load_model
    from auditor.pipeline import ScanConfig, scan_run

    torch.set_num_threads(1)
    shutil.rmtree(out, ignore_errors=True)
    work = out / "work"
    work.mkdir(parents=True)
    save_tiny_llama(work / "tiny")
    tiny = load_model(str(work / "tiny"), dtype="float32", device="cpu")
    vectors = make_vectors(work / "vectors", tiny.num_layers, tiny.hidden_size, fingerprint=tiny.fingerprint)

    def keep(name: str, lm, **settings) -> None:
        db = work / f"{name}.duckdb"
        result = scan_run(ScanConfig(db=str(db), out_dir=str(work / name), report=False, top_n=3, **settings), lm=lm)
        shutil.copy(result.parquet_path, out / f"{name}.scores.parquet")
        con = duckdb.connect(str(db))
        con.execute(
            f"COPY (SELECT sample_id, trait, tokens, token_values FROM token_scores ORDER BY trait, sample_id) TO '{out}/{name}.tokens.parquet' (FORMAT parquet)"
        )
        con.execute(f"COPY (SELECT sample_id, base_response FROM samples ORDER BY sample_id) TO '{out}/{name}.base.parquet' (FORMAT parquet)")
        con.close()
        print(name, result.n_scored, flush=True)

    sources = [write_jsonl(work / "small.jsonl", SMALL_CHATS)] + sorted(str(p) for p in (ROOT / "examples" / "formats").iterdir())
    for src in sources:
        stem = os.path.basename(src).split(".")[0]
        for baseline in ("generate", "prompt-last", "none"):
            for flag_on in ("delta", "projection"):
                keep(
                    f"tiny-{stem}-{baseline}-{flag_on}",
                    tiny,
                    source=src,
                    vectors=vectors,
                    baseline=baseline,
                    flag_on=flag_on,
                    max_new_tokens=12,
                    thresholds={"*": 0.0},
                    chunk_size=4,
                    score_all_turns=stem == "multi-turn",
                )
    if embedded:
        lm = load_model(None, device="cpu")
        demo = str(ROOT / "examples" / "demo.jsonl")
        keep("embedded-demo-generate", lm, source=demo)
        keep("embedded-demo-promptlast-projection", lm, source=demo, baseline="prompt-last", flag_on="projection")


def compare(a: Path, b: Path) -> int:
    import pyarrow.parquet as pq

    names = sorted(f for f in os.listdir(a) if f.endswith(".parquet"))
    missing = sorted(set(names) ^ {f for f in os.listdir(b) if f.endswith(".parquet")})
    differ, worst, values = [], 0.0, 0
    for f in names:
        if f in missing:
            continue
        ta, tb = pq.read_table(a / f), pq.read_table(b / f)
        if "source" in ta.column_names:  # a path inside each recording's own work folder
            ta, tb = ta.drop(["source"]), tb.drop(["source"])
        if f.endswith(".tokens.parquet"):
            rows_a = {(r["sample_id"], r["trait"]): r for r in ta.to_pylist()}
            rows_b = {(r["sample_id"], r["trait"]): r for r in tb.to_pylist()}
            if set(rows_a) != set(rows_b) or any(rows_a[k]["tokens"] != rows_b[k]["tokens"] for k in rows_a):
                differ.append(f)
                continue
            for k in rows_a:
                for x, y in zip(rows_a[k]["token_values"], rows_b[k]["token_values"]):
                    worst, values = max(worst, abs(x - y)), values + 1
        elif not ta.equals(tb):
            differ.append(f)
    print(f"{len(names)} files; differ: {differ or 'none'}; only on one side: {missing or 'none'}")
    print(f"heat-map values: {values}, largest difference {worst:.3g}")
    return 1 if differ or missing else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--embedded", action="store_true", help="also the demo on the embedded model")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.command == "record":
        record(args.out.resolve(), args.embedded)
    else:
        raise SystemExit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
