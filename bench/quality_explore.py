#!/usr/bin/env python3
"""Side experiments for issue 6 on the activations bench/quality.py keeps in bench/.cache.

Compares vector folders (e.g. the shipped provided-mode vectors with sampled-mode ones) and
a diagnostic direction fitted on the DEV split of the labelled sets (mean trait answer minus
mean clean answer, per layer): how well could any mean-difference direction in this model
separate the sets? Layers are always chosen on dev; every reported figure is on test.

usage: python bench/quality_explore.py [--vectors NAME=DIR ...] [--out bench/results/quality_explore.json]
Run bench/quality.py once first (it writes the activation cache).
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

from quality import TRAITS, auroc, load_records, projections  # noqa: E402


def load_acts(max_new_tokens: int):
    files = sorted((ROOT / "bench" / ".cache").glob(f"acts-*-{max_new_tokens}-*.npz"), key=lambda p: p.stat().st_mtime)
    if not files:
        sys.exit("no activation cache: run bench/quality.py first")
    with np.load(files[-1]) as z:
        return {n: tuple(z[f"{n}.{k}"] for k in ("resp", "base", "last", "empty")) for n in (*TRAITS, "clean")}


def meta(recs):
    return (
        np.array([r.get("label", 0) for r in recs]),
        np.array([r.get("set", "control") for r in recs]),
        np.array([r.get("split", "test") for r in recs]),
    )


def evaluate(vecs: dict[str, np.ndarray], acts, sets, clean) -> dict:
    """vecs: trait -> [L+1, d]. Per trait: dev-chosen layer (per score), test AUROC per set, specificity."""
    out: dict = {}
    L1 = next(iter(vecs.values())).shape[0]
    _, _, csplit = meta(clean)
    chosen: dict = {}
    for trait in TRAITS:
        label, subset, split = meta(sets[trait])
        resp, base, last, empty = acts[trait]
        v = vecs[trait]
        pr, pb, pl = projections(v, resp), projections(v, base), projections(v, last)
        sc = {"delta": np.where(empty[:, None], np.nan, pr - pb), "proj": pr, "delta_prompt_last": pr - pl}
        cr, cb, _, cempty = acts["clean"]
        cpr = projections(v, cr)
        csc = {"delta": np.where(cempty[:, None], np.nan, cpr - projections(v, cb)), "proj": cpr}
        e: dict = {}
        for kind in ("delta", "proj", "delta_prompt_last"):
            dev = [auroc(sc[kind][(split == "dev") & (label == 1), lay], sc[kind][(split == "dev") & (label == 0), lay]) for lay in range(L1)]
            layer = int(np.nanargmax(dev[1:]) + 1)
            row = {"dev_layer": layer, "dev_auroc": round(dev[layer], 4)}
            for s in ("explicit", "nonobvious"):
                m = (split == "test") & (subset == s)
                row[f"test_{s}"] = round(auroc(sc[kind][m & (label == 1), layer], sc[kind][m & (label == 0), layer]), 4)
                if kind in csc:
                    row[f"test_{s}_vs_controls"] = round(auroc(sc[kind][m & (label == 1), layer], csc[kind][csplit == "test", layer]), 4)
            e[kind] = row
        chosen[trait] = e["delta"]["dev_layer"]
        out[trait] = e
    for kind in ("delta", "proj"):
        table: dict = {}
        for vt in TRAITS:
            table[vt] = {}
            for data in TRAITS:
                label, subset, split = meta(sets[data])
                resp, base, _, empty = acts[data]
                lay = out[vt][kind]["dev_layer"]
                pr = projections(vecs[vt], resp)[:, lay]
                s = pr - projections(vecs[vt], base)[:, lay] if kind == "delta" else pr
                m = (split == "test") & (subset == "explicit")
                table[vt][data] = round(auroc(s[m & (label == 1)], s[m & (label == 0)]), 4)
        out[f"specificity_{kind}"] = table
    return out


def devfit_vectors(acts, sets) -> dict[str, np.ndarray]:
    """Diagnostic only: mean(trait answers) - mean(clean answers) on the dev split, per layer."""
    vecs = {}
    for trait in TRAITS:
        label, _, split = meta(sets[trait])
        resp = acts[trait][0]
        vecs[trait] = resp[(split == "dev") & (label == 1)].mean(0) - resp[(split == "dev") & (label == 0)].mean(0)
    return vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", action="append", default=[], help="NAME=DIR, a vector folder to compare (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality_explore.json"))
    args = ap.parse_args()
    from safetensors.numpy import load_file

    acts = load_acts(args.max_new_tokens)
    eval_dir = ROOT / "examples" / "eval"
    sets = {t: load_records(eval_dir / f"{t}.jsonl") for t in TRAITS}
    clean = load_records(eval_dir / "clean.jsonl")
    results: dict = {}
    folders = [("shipped", str(ROOT / "vectors" / "SmolLM2-135M-Instruct")), *(a.split("=", 1) for a in args.vectors)]
    for name, folder in folders:
        vecs = {}
        for t in TRAITS:
            f = load_file(str(Path(folder) / f"{t}.safetensors"))
            vecs[t] = next(iter(f.values())).astype(np.float32)
        results[name] = evaluate(vecs, acts, sets, clean)
    results["devfit_diagnostic"] = evaluate(devfit_vectors(acts, sets), acts, sets, clean)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results.items():
        print(f"\n== {name}")
        for t in TRAITS:
            for kind in ("delta", "proj", "delta_prompt_last"):
                row = r[t][kind]
                extra = "".join(f" {k}={v:.3f}" for k, v in row.items() if k.startswith("test_"))
                print(f"  {t:13s} {kind:17s} layer {row['dev_layer']:2d} dev {row['dev_auroc']:.3f}{extra}")
        for kind in ("delta", "proj"):
            print(f"  specificity {kind}: " + "; ".join(f"{v}: " + " ".join(f"{r[f'specificity_{kind}'][v][d]:.2f}" for d in TRAITS) for v in TRAITS))


if __name__ == "__main__":
    main()
