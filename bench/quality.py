#!/usr/bin/env python3
"""Detection quality: do the scores find trait-inducing data? (issue 6)

Scans the labelled sets in examples/eval/ once, keeping each sample's response-mean
activation at EVERY layer (and the same for the base model's own response, and the last
prompt token), then computes every figure from those arrays:

- sample-level AUROC per trait and set (explicit / nonobvious), trait-expressing vs the
  clean answers to the same prompts, for three scores: delta (generate baseline), the raw
  projection, and delta against the last prompt token; plus same-prompt pair accuracy;
- the same against the clean controls (examples/eval/clean.jsonl);
- a dataset-level curve: mixtures with 0..100 % trait samples (rest clean controls),
  dataset mean delta, Spearman's rho with the share;
- cross-trait specificity: each trait's vector on each trait's data (AUROC, 3x3);
- a layer sweep: AUROC per layer. Layers are chosen on the dev split and every reported
  figure is on the test split (the split field of each record).

usage: python bench/quality.py [--model M] [--vectors DIR] [--max-new-tokens N] [--out bench/results/quality.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRAITS = ("evil", "sycophancy", "hallucination")


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    # average ties
    xs = np.asarray(x)[order]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    ra, rb = rank(np.asarray(a, float)), rank(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def load_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def activations(lm, records: list[dict], max_new_tokens: int, cache_path: Path, batch_tokens: int = 8192):
    """Per record: response means [L+1, d], base-response means [L+1, d], last prompt token [L+1, d]."""
    from auditor.activations import encode_pair, forward_batches
    from auditor.generation import generate_greedy, prompt_hash, prompt_ids

    tok = lm.tokenizer
    prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in records]
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    missing = sorted({prompt_hash(p): p for p in prompts if prompt_hash(p) not in cache}.items())
    if missing:
        t0 = time.perf_counter()
        gen = generate_greedy(lm, [prompt_ids(lm, p, 512) for _, p in missing], max_new_tokens, batch_size=32)
        for (h, _), (text, _n) in zip(missing, gen):
            cache[h] = text
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache))
        print(f"  generated {len(missing)} base responses in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = [encode_pair(tok, p, r["messages"][-1]["content"], 512) for p, r in zip(prompts, records)]
    base_rows = [encode_pair(tok, p, cache[prompt_hash(p)], 512) for p in prompts]
    all_rows = rows + base_rows
    layers = list(range(lm.num_layers + 1))
    means = np.zeros((len(all_rows), len(layers), lm.hidden_size), np.float32)
    lasts = np.zeros_like(means)
    for fb in forward_batches(lm.model, all_rows, layers, tok.pad_token_id, batch_tokens):
        batch_means, batch_lasts = fb.response_means(), fb.at_positions([max(r.start - 1, 0) for r in fb.rows])
        for layer in layers:
            means[fb.indices, layer] = batch_means[layer].cpu().numpy()
            lasts[fb.indices, layer] = batch_lasts[layer].cpu().numpy()
    n = len(records)
    empty_base = np.array([r.end <= r.start for r in base_rows])
    return means[:n], means[n:], lasts[:n], empty_base


def projections(vec: np.ndarray, acts: np.ndarray) -> np.ndarray:
    """vec: [L+1, d], acts: [N, L+1, d] -> [N, L+1] projections on v[l]/|v[l]|."""
    unit = vec / np.linalg.norm(vec, axis=1, keepdims=True).clip(1e-12)
    return np.einsum("nld,ld->nl", acts, unit)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("persona-audit", "torch", "transformers", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--vectors", default=None, help="vector folder (default: vectors/<model>/)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-dir", default=str(ROOT / "examples" / "eval"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    ap.add_argument("--note", default=None, help="free text stored in the results (e.g. how the cached activations were made)")
    ap.add_argument("--no-acts-cache", action="store_true", help="recompute activations even if bench/.cache holds them")
    args = ap.parse_args()

    from auditor.model import load_model
    from auditor.vectors import load_vectors

    started = time.perf_counter()
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    vectors = {
        pv.trait: pv
        for pv in load_vectors(args.vectors, lm.name, traits=list(TRAITS), num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint)
    }
    eval_dir = Path(args.eval_dir)
    sets = {t: load_records(eval_dir / f"{t}.jsonl") for t in TRAITS}
    clean = load_records(eval_dir / "clean.jsonl")
    cache = ROOT / "bench" / ".cache" / f"base-{lm.fingerprint}-{lm.dtype}-{args.max_new_tokens}.json"
    # Activations depend only on the model, dtype, base-response length and the eval files, not on
    # the vectors: keep them so that --vectors DIR comparisons need no model pass.
    digest = hashlib.sha256(b"".join((eval_dir / f"{n}.jsonl").read_bytes() for n in (*TRAITS, "clean"))).hexdigest()[:16]
    acts_cache = ROOT / "bench" / ".cache" / f"acts-{lm.fingerprint}-{lm.dtype}-{args.max_new_tokens}-{digest}.npz"
    acts = {}
    from_cache = acts_cache.exists() and not args.no_acts_cache
    if from_cache:
        with np.load(acts_cache) as z:
            for name in (*TRAITS, "clean"):
                acts[name] = tuple(z[f"{name}.{k}"] for k in ("resp", "base", "last", "empty"))
        print(f"activations from {acts_cache}", file=sys.stderr)
    else:
        for name, records in [*sets.items(), ("clean", clean)]:
            print(f"scanning {name}: {len(records)} samples", file=sys.stderr)
            acts[name] = activations(lm, records, args.max_new_tokens, cache)
        acts_cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(acts_cache, **{f"{name}.{k}": a for name, v in acts.items() for k, a in zip(("resp", "base", "last", "empty"), v)})

    def scores(trait_vec: str, data: str):
        """-> dict score name -> [N, L+1]"""
        v = vectors[trait_vec].vector.numpy()
        resp, base, last, empty = acts[data]
        pr = projections(v, resp)
        pb = projections(v, base)
        pl = projections(v, last)
        delta = pr - pb
        delta[empty] = np.nan
        return {"delta": delta, "proj": pr, "delta_prompt_last": pr - pl}

    def meta(data: str):
        recs = clean if data == "clean" else sets[data]
        return (
            np.array([r.get("label", 0) for r in recs]),
            np.array([r.get("set", "control") for r in recs]),
            np.array([r.get("split", "test") for r in recs]),
            [r.get("pair") for r in recs],
        )

    results: dict = {
        "date": dt.date.today().isoformat(),
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "dtype": lm.dtype,
        "max_new_tokens": args.max_new_tokens,
        "versions": versions(),
        "activations_from_cache": from_cache,
        "note": args.note,
        "traits": {},
    }
    for trait in TRAITS:
        label, subset, split, pairs = meta(trait)
        sc = scores(trait, trait)
        _, _, csplit, _ = meta("clean")
        csc = scores(trait, "clean")
        entry = {"shipped_layer": vectors[trait].layer, "layer_sweep_dev": {}, "by_set": {}}
        # Layer sweep on dev (explicit + nonobvious, trait vs same-prompt clean) with delta and proj.
        for kind in ("delta", "proj", "delta_prompt_last"):
            per_layer = []
            for layer in range(lm.num_layers + 1):
                m = split == "dev"
                per_layer.append(auroc(sc[kind][m & (label == 1), layer], sc[kind][m & (label == 0), layer]))
            entry["layer_sweep_dev"][kind] = [round(x, 4) for x in per_layer]
        best = {kind: int(np.nanargmax(entry["layer_sweep_dev"][kind][1:]) + 1) for kind in entry["layer_sweep_dev"]}
        entry["best_dev_layer"] = best
        # Test split figures at the shipped layer and at the dev-chosen layer.
        for which, layer_of in (("shipped_layer", {k: vectors[trait].layer for k in best}), ("dev_chosen_layer", best)):
            block = {}
            for s in ("explicit", "nonobvious"):
                m = (split == "test") & (subset == s)
                row = {}
                for kind in ("delta", "proj", "delta_prompt_last"):
                    layer = layer_of[kind]
                    pos, neg = sc[kind][m & (label == 1), layer], sc[kind][m & (label == 0), layer]
                    # pair accuracy: trait answer outscores the clean answer to the same prompt
                    by_pair: dict = {}
                    for i in np.where(m)[0]:
                        by_pair.setdefault(pairs[i], {})[int(label[i])] = sc[kind][i, layer]
                    wins = [p[1] > p[0] for p in by_pair.values() if 0 in p and 1 in p]
                    cm = csplit == "test"
                    row[kind] = {
                        "layer": layer,
                        "auroc_vs_same_prompt_clean": round(auroc(pos, neg), 4),
                        "auroc_vs_clean_controls": round(auroc(pos, csc[kind][cm, layer]), 4),
                        "pair_accuracy": round(float(np.mean(wins)), 4) if wins else None,
                        "n_pos": int(len(pos)),
                        "n_neg": int(len(neg)),
                    }
                block[s] = row
            entry["by_set"][which] = block
        # Dataset-level curve on the test split: mixtures of trait samples with clean controls.
        # delta is the measure the paper validated; the raw projection is reported next to it.
        layer = vectors[trait].layer
        for kind, key in (("delta", "dataset_curve"), ("proj", "dataset_curve_proj")):
            rng = np.random.default_rng(0)
            pos = sc[kind][(split == "test") & (label == 1), layer]
            neg = csc[kind][csplit == "test", layer]
            pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
            size = min(len(pos), len(neg))
            shares, means = [], []
            for share in np.linspace(0, 1, 11):
                k = int(round(share * size))
                for _rep in range(5):
                    mix = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, size - k, replace=False)])
                    shares.append(share)
                    means.append(float(mix.mean()))
            curve = [round(float(np.mean([m for s2, m in zip(shares, means) if s2 == s])), 4) for s in np.linspace(0, 1, 11)]
            entry[key] = {
                "score": kind,
                "layer": layer,
                "mixture_size": size,
                "shares": [round(float(s), 1) for s in np.linspace(0, 1, 11)],
                f"mean_{kind}": curve,
                "spearman_rho": round(spearman(shares, means), 4),
                "auroc_trait_vs_clean_controls": round(auroc(pos, neg), 4),
            }
        results["traits"][trait] = entry
    # Cross-trait specificity (explicit test split, delta and proj at each vector's shipped layer).
    for kind in ("delta", "proj"):
        table = {}
        for vec_trait in TRAITS:
            table[vec_trait] = {}
            for data in TRAITS:
                label, subset, split, _ = meta(data)
                m = (split == "test") & (subset == "explicit")
                sc = scores(vec_trait, data)[kind][:, vectors[vec_trait].layer]
                table[vec_trait][data] = round(auroc(sc[m & (label == 1)], sc[m & (label == 0)]), 4)
        results[f"specificity_{kind}"] = table
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    print(f"\nDetection quality, {results['model']} ({results['dtype']}), test split, {results['date']}\n")
    print("| trait | set | layer | AUROC delta | AUROC proj | AUROC prompt-last | pair acc. delta | AUROC delta vs clean controls |")
    print("|---|---|---|---|---|---|---|---|")
    for trait, e in results["traits"].items():
        for s, row in e["by_set"]["shipped_layer"].items():
            print(
                f"| {trait} | {s} | {row['delta']['layer']} | {row['delta']['auroc_vs_same_prompt_clean']:.3f} | {row['proj']['auroc_vs_same_prompt_clean']:.3f} | "
                f"{row['delta_prompt_last']['auroc_vs_same_prompt_clean']:.3f} | {row['delta']['pair_accuracy']:.3f} | {row['delta']['auroc_vs_clean_controls']:.3f} |"
            )
    print("\n| trait | dataset-level Spearman rho, delta (0-100 % mixtures) | mean delta at 0 % | at 100 % | rho, raw projection |")
    print("|---|---|---|---|---|")
    for trait, e in results["traits"].items():
        c, cp = e["dataset_curve"], e.get("dataset_curve_proj", {})
        print(f"| {trait} | {c['spearman_rho']:.3f} | {c['mean_delta'][0]:+.3f} | {c['mean_delta'][-1]:+.3f} | {cp.get('spearman_rho', float('nan')):.3f} |")
    for kind in ("delta", "proj"):
        print(f"\nSpecificity ({kind}, explicit test split; rows: vector, columns: data)\n")
        print("| vector \\ data | " + " | ".join(TRAITS) + " |")
        print("|---" * (len(TRAITS) + 1) + "|")
        for v, row in results[f"specificity_{kind}"].items():
            print(f"| {v} | " + " | ".join(f"{row[d]:.3f}" for d in TRAITS) + " |")


if __name__ == "__main__":
    main()
