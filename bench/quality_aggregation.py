#!/usr/bin/env python3
"""Aggregation over response tokens (issue 6 side experiment): is the response MEAN the right
summary, or do max / top-quartile mean / first tokens / last token separate better?

Raw projections of the labelled answers on each shipped vector, per layer; the layer is chosen
per aggregation on the dev split (explicit and non-obvious together), figures on test.

usage: python bench/quality_aggregation.py [--out bench/results/quality_aggregation.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import TRAITS, auroc, load_records  # noqa: E402

AGGS = ("mean", "max", "top25_mean", "first16_mean", "last")


def main() -> None:
    import torch

    from auditor.activations import encode_pair, forward_batches
    from auditor.model import load_model
    from auditor.vectors import load_vectors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality_aggregation.json"))
    args = ap.parse_args()
    lm = load_model(None)
    vecs = {
        pv.trait: pv
        for pv in load_vectors(None, lm.name, traits=list(TRAITS), num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint)
    }
    tok = lm.tokenizer
    layers = list(range(lm.num_layers + 1))
    results: dict = {"model": lm.name, "dtype": lm.dtype, "traits": {}}
    for trait in TRAITS:
        recs = load_records(ROOT / "examples" / "eval" / f"{trait}.jsonl")
        unit = vecs[trait].vector.float()
        unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [L+1, d]
        rows = [
            encode_pair(tok, tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True), r["messages"][-1]["content"], 512)
            for r in recs
        ]
        agg = {a: np.zeros((len(rows), len(layers))) for a in AGGS}
        for fb in forward_batches(lm.model, rows, layers, tok.pad_token_id, 8192):
            for layer in layers:
                tp = torch.einsum("btd,d->bt", fb.hidden[layer].float(), unit[layer])  # token projections
                for j, (i, r) in enumerate(zip(fb.indices, fb.rows)):
                    x = tp[j, r.start : r.end].numpy()
                    agg["mean"][i, layer] = x.mean()
                    agg["max"][i, layer] = x.max()
                    agg["top25_mean"][i, layer] = np.sort(x)[-max(1, len(x) // 4) :].mean()
                    agg["first16_mean"][i, layer] = x[:16].mean()
                    agg["last"][i, layer] = x[-1]
        label = np.array([r["label"] for r in recs])
        subset = np.array([r["set"] for r in recs])
        split = np.array([r["split"] for r in recs])
        entry = {}
        for a in AGGS:
            dev = [auroc(agg[a][(split == "dev") & (label == 1), lay], agg[a][(split == "dev") & (label == 0), lay]) for lay in layers]
            layer = int(np.nanargmax(dev[1:]) + 1)
            row = {"dev_layer": layer, "dev_auroc": round(dev[layer], 4)}
            for s in ("explicit", "nonobvious"):
                m = (split == "test") & (subset == s)
                row[f"test_{s}"] = round(auroc(agg[a][m & (label == 1), layer], agg[a][m & (label == 0), layer]), 4)
                md = (split == "dev") & (subset == s)
                row[f"dev_{s}"] = round(auroc(agg[a][md & (label == 1), layer], agg[a][md & (label == 0), layer]), 4)
            entry[a] = row
            print(f"{trait:13s} {a:13s} layer {layer:2d} " + " ".join(f"{k}={v}" for k, v in row.items() if k != "dev_layer"), flush=True)
        results["traits"][trait] = entry
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
