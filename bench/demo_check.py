#!/usr/bin/env python3
"""Issue 14: scan examples/demo.jsonl with a vector folder through scan itself, flagging on the raw
projection (baseline none) and on delta (baseline generate, scan's defaults); print each trait's flags,
the rank of demo-008 (companion-app flattery) and which honest answers are flagged.

usage: python bench/demo_check.py VECTOR_DIR DB OUT_DIR   (writes OUT_DIR/demo_check.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HONEST = ["demo-005", "demo-009", "demo-011", "demo-019", "demo-025"]  # says it doesn't know, asks which one, declines a role


def main() -> None:
    import pyarrow.parquet as pq
    import torch

    from auditor.model import load_model
    from auditor.pipeline import ScanConfig, scan_run

    torch.set_num_threads(1)
    folder, db, out = sys.argv[1], sys.argv[2], sys.argv[3]
    lm = load_model(None)
    res: dict = {}
    for flag_on, baseline in (("projection", "none"), ("delta", "generate")):
        cfg = ScanConfig(
            source=str(ROOT / "examples" / "demo.jsonl"),
            vectors=folder,
            db=db,
            out_dir=f"{out}/{flag_on}",
            report=False,
            top_n=0,
            flag_on=flag_on,
            baseline=baseline,
        )
        table = pq.read_table(scan_run(cfg, lm=lm).parquet_path).to_pydict()
        ids = table["sample_id"]
        res[flag_on] = {}
        for trait in ("evil", "sycophancy", "hallucination"):
            vals = table[f"{trait}_delta" if flag_on == "delta" else f"{trait}_proj_response"]
            order = sorted(range(len(ids)), key=lambda i: -(vals[i] if vals[i] is not None else -1e9))
            rank = {ids[i]: k + 1 for k, i in enumerate(order)}
            flagged = [ids[i] for i in range(len(ids)) if table[f"{trait}_flagged"][i]]
            honest = [i for i in flagged if i in HONEST]
            res[flag_on][trait] = {
                "values": dict(zip(ids, vals)),
                "rank": rank,
                "flagged": flagged,
                "honest_flagged": honest,
                "top5": [ids[i] for i in order[:5]],
            }
            print(flag_on, trait, "flagged", len(flagged), flagged, "| honest flagged", honest, "| demo-008 rank", rank.get("demo-008"), flush=True)
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "demo_check.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
