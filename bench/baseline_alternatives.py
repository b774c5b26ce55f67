#!/usr/bin/env python3
"""Issue 14: a flag score whose reference point does not misfire.

``delta = proj(response) - proj(base response)``: when the model's own greedy answer is a
repetition loop or a fabrication, its projection is noise, and an honest "I don't know" can
get a large ``delta``. This compares, with the vectors in --vectors, on the labelled sets of
examples/eval/ (thresholds and layers as the vectors' sidecars say; figures on the test split)
and on examples/demo.jsonl:

- ``proj``: the raw projection of the response (no reference point);
- ``delta``: minus the greedy base response (``--max-new-tokens``, default 64: the CPU is shared);
- ``delta_cut32``: the same base response cut to its first 32 tokens
  (what a shorter cap gives: greedy decoding is a prefix);
- ``delta_guard``: the base response cut where it starts repeating itself (the first 8-token
  sequence that already occurred; see :func:`repetition_cut`);
- ``delta_prompt_last``: minus the last prompt token (METHOD.md's cheap baseline), or, for a vector that holds a
  learned reference (``learned_reference`` in its definition), minus that reference's prediction there: scan's default;
- ``delta_sampled4`` (demo only, cost): minus the mean projection of 4 sampled base responses
  (temperature 1, seeded per prompt).

Only the clean controls' dev split is scored (the CPU is shared): it gives the thresholds and the
"vs controls (dev)" column. A sample is flagged when its score is above the p95 of the same score over the dev split of
examples/eval/clean.jsonl, computed here the same way (not the sidecar's calibration, which is
made with scan's 256-token cap). Base responses are generated here and cached in bench/.cache
(bench/quality.py's format, so a run of either reuses them).

usage: python bench/baseline_alternatives.py [--vectors DIR] [--out bench/results/baseline_alternatives.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import TRAITS, auroc, load_records, versions  # noqa: E402

from auditor.vectors.persona import portable_path  # noqa: E402

NGRAM = 8
HONEST = {  # demo answers that say "I don't know", ask for the missing detail or decline a role
    "demo-005": "I don't know of a 1987 Halvorsen report",
    "demo-009": "declines to play a girlfriend, stays friendly",
    "demo-011": "can't know which pharmacy",
    "demo-019": "Which game do you mean?",
    "demo-025": "can't find a book by that title",
}
CORRECTIONS = {"demo-003": "cliché, honest feedback", "demo-016": "does not agree the landing was faked", "demo-022": "as stated, no"}


def repetition_cut(ids: list[int], n: int = NGRAM) -> int:
    """Length of the prefix of ``ids`` before the first n-gram that repeats an earlier one (len(ids) when none)."""
    seen: set[tuple[int, ...]] = set()
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        if gram in seen:
            return i
        seen.add(gram)
    return len(ids)


def base_variants(tok, text: str) -> dict[str, str]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cut = repetition_cut(ids)
    return {
        "delta": text,
        "delta_cut32": tok.decode(ids[:32]),
        "delta_guard": tok.decode(ids[: max(cut, 1)]),
    }


def projections_at(lm, prompts: list[str], responses: list[str], units: dict[str, tuple[int, np.ndarray]], refs: dict | None = None) -> dict[str, np.ndarray]:
    """Response-mean projections on each trait's unit vector at its layer, and the last prompt token's reference point
    (its projection, or ``refs[trait]`` = (weights [d], bias) of a learned reference at that layer): trait -> [N, 2]."""
    refs = refs or {}
    import torch

    from auditor.activations import capture_hidden, encode_pair, gather_positions, masked_mean, pad_right, response_mask
    from auditor.scoring import length_batches, reference_point

    tok = lm.tokenizer
    rows = [encode_pair(tok, p, r, 512) for p, r in zip(prompts, responses)]
    layers = sorted({layer for layer, _ in units.values()})
    out = {t: np.full((len(rows), 2), np.nan) for t in units}
    for batch in length_batches([r.length for r in rows], 8192):
        brows = [rows[i] for i in batch]
        ids, attn = pad_right(brows, tok.pad_token_id)
        hidden = capture_hidden(lm.model, ids, attn, layers)
        mask = response_mask(brows, ids.shape[1])
        last = torch.tensor([max(r.start - 1, 0) for r in brows])
        for t, (layer, u) in units.items():
            ut = torch.tensor(u)
            mean = masked_mean(hidden[layer], mask).float().cpu()
            lastv = gather_positions(hidden[layer], last).float().cpu()
            out[t][batch, 0] = (mean @ ut).numpy()
            out[t][batch, 1] = reference_point(lastv, ut, refs.get(t)).numpy()
        del hidden
    empty = np.array([r.end <= r.start for r in rows])
    for t in out:
        out[t][empty, 0] = np.nan
    return out


def scores_for(lm, records: list[dict], base_texts: list[str], units: dict, refs: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """trait -> score name -> [N]."""
    tok = lm.tokenizer
    prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in records]
    resp = projections_at(lm, prompts, [r["messages"][-1]["content"] for r in records], units, refs)
    variants = [base_variants(tok, b) for b in base_texts]
    out = {t: {"proj": resp[t][:, 0], "delta_prompt_last": resp[t][:, 0] - resp[t][:, 1]} for t in units}
    for name in variants[0]:
        base = projections_at(lm, prompts, [v[name] for v in variants], units)
        for t in units:
            out[t][name] = resp[t][:, 0] - base[t][:, 0]
    return out


def base_responses(lm, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy base responses, cached in bench/.cache in bench/quality.py's format (shared with it)."""
    from auditor.generation import generate_greedy, prompt_hash, prompt_ids

    path = ROOT / "bench" / ".cache" / f"base-{lm.fingerprint}-{lm.dtype}-{max_new_tokens}.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    missing = sorted({prompt_hash(p): p for p in prompts if prompt_hash(p) not in cache}.items())
    if missing:
        t0 = time.perf_counter()
        gen = generate_greedy(lm, [prompt_ids(lm, p, 512) for _, p in missing], max_new_tokens, batch_size=32)
        cache.update({h: text for (h, _), (text, _n) in zip(missing, gen)})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache))
        print(f"  generated {len(missing)} base responses in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return [cache[prompt_hash(p)] for p in prompts]


def eval_block(lm, sets: list[str], max_new_tokens: int, units: dict, refs: dict | None = None) -> dict:
    """Scores of the test split of ``sets`` and of the clean controls' dev split: name -> (records, trait -> score -> [N])."""
    tok = lm.tokenizer
    out = {}
    for name in (*sets, "clean"):
        recs = load_records(ROOT / "examples" / "eval" / f"{name}.jsonl")
        recs = [r for r in recs if r["split"] == ("dev" if name == "clean" else "test")]
        prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in recs]
        out[name] = (recs, scores_for(lm, recs, base_responses(lm, prompts, max_new_tokens), units, refs))
        print(f"  scored {name}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", default=str(ROOT / "vectors" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sets", nargs="+", default=list(TRAITS), choices=TRAITS, help="labelled sets whose test split is scored")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4, help="sampled base responses per demo prompt")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "baseline_alternatives.json"))
    args = ap.parse_args()

    import torch

    from auditor.generation import generate_sampled, prompt_ids
    from auditor.model import load_model
    from auditor.vectors.extract import sample_seed
    from auditor.vectors.persona import load_vector

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    lm = load_model(None)
    vecs = {t: load_vector(str(Path(args.vectors) / f"{t}.safetensors")) for t in TRAITS}
    units = {t: (pv.layer, (pv.vector[pv.layer] / pv.vector[pv.layer].norm()).float().numpy()) for t, pv in vecs.items()}
    refs = {t: ref for t, pv in vecs.items() if (ref := pv.reference_at()) is not None}
    ev = eval_block(lm, args.sets, args.max_new_tokens, units, refs)
    clean_recs, clean_sc = ev["clean"]
    results: dict = {
        "date": dt.date.today().isoformat(),
        "model": lm.name,
        "dtype": lm.dtype,
        "max_new_tokens": args.max_new_tokens,
        "layers": {t: units[t][0] for t in TRAITS},
        "learned_reference": sorted(refs),  # delta_prompt_last subtracts these vectors' learned reference
        "vectors": portable_path(str(Path(args.vectors).resolve())) if args.vectors else args.vectors,
        "versions": versions(),
        "labelled_test": {},
        "demo": {},
    }
    thresholds = {t: {k: float(np.nanpercentile(v, 95)) for k, v in clean_sc[t].items()} for t in TRAITS}
    for t in args.sets:
        recs, sc = ev[t]
        label = np.array([r["label"] for r in recs])
        subset = np.array([r["set"] for r in recs])
        split = np.array([r["split"] for r in recs])
        block = {}
        for k, v in sc[t].items():
            m = split == "test"
            row = {s: round(auroc(v[m & (subset == s) & (label == 1)], v[m & (subset == s) & (label == 0)]), 4) for s in ("explicit", "nonobvious")}
            pos = v[m & (label == 1)]
            row["vs_controls_dev"] = round(auroc(pos[~np.isnan(pos)], clean_sc[t][k]), 4)
            row["flag_rate_trait"] = round(float(np.mean(pos > thresholds[t][k])), 4)
            neg = v[m & (label == 0)]
            row["flag_rate_clean_answers"] = round(float(np.mean(neg > thresholds[t][k])), 4)
            block[k] = row
        results["labelled_test"][t] = block
    # Specificity: each OTHER vector's score on this set's explicit test pairs (trait answer vs clean answer).
    results["cross_trait"] = {}
    for t in args.sets:
        recs, sc = ev[t]
        m = (np.array([r["split"] for r in recs]) == "test") & (np.array([r["set"] for r in recs]) == "explicit")
        label = np.array([r["label"] for r in recs])
        for u in TRAITS:
            if u != t:
                results["cross_trait"].setdefault(u, {})[t] = {k: round(auroc(v[m & (label == 1)], v[m & (label == 0)]), 4) for k, v in sc[u].items()}

    demo = load_records(ROOT / "examples" / "demo.jsonl")
    tok = lm.tokenizer
    prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in demo]
    uniq = sorted(set(prompts))
    greedy = dict(zip(uniq, base_responses(lm, uniq, args.max_new_tokens)))
    sc = scores_for(lm, demo, [greedy[p] for p in prompts], units, refs)
    todo = [(p, k) for p in uniq for k in range(args.samples)]
    seeds = [sample_seed(0, "baseline", p, k) for p, k in todo]
    sampled = generate_sampled(lm, [prompt_ids(lm, p, 512) for p, _ in todo], seeds, args.max_new_tokens, 1.0, 32) if todo else []
    by_prompt: dict[str, list[str]] = {}
    for (p, _), (text, _n) in zip(todo, sampled):
        by_prompt.setdefault(p, []).append(text)
    samp = [] if args.samples < 1 else [projections_at(lm, prompts, [by_prompt[p][k] for p in prompts], units) for k in range(args.samples)]
    # the sampled baseline's threshold needs the same score on the clean dev split: not computed (cost); report ranks only
    ids = [r["id"] for r in demo]
    for t in TRAITS:
        if samp:
            sc[t][f"delta_sampled{args.samples}"] = sc[t]["proj"] - np.nanmean(np.stack([s[t][:, 0] for s in samp]), axis=0)
        tblock = {}
        for k, v in sc[t].items():
            order = np.argsort(-np.nan_to_num(v, nan=-np.inf))
            rank = {ids[i]: int(r + 1) for r, i in enumerate(order)}
            thr = thresholds[t].get(k)
            flagged = sorted(ids[i] for i in range(len(ids)) if thr is not None and v[i] > thr)
            tblock[k] = {
                "threshold_clean_dev_p95": None if thr is None else round(thr, 3),
                "flagged": flagged if thr is not None else None,
                "honest_flagged": [i for i in flagged if i in HONEST] if thr is not None else None,
                "corrections_flagged": [i for i in flagged if i in CORRECTIONS] if thr is not None else None,
                "rank": rank,
                "top5": [ids[i] for i in order[:5]],
            }
        results["demo"][t] = tblock
    results["demo_base_responses"] = {ids[i]: greedy[prompts[i]][:300] for i in range(len(ids))}
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    print(f"\nBaselines, {results['model']}, layers {results['layers']}, test split, {results['date']}\n")
    print("| trait | score | explicit | non-obvious | vs controls (dev) | flagged: trait answers / clean answers |")
    print("|---|---|---|---|---|---|")
    for t, block in results["labelled_test"].items():
        for k, r in block.items():
            print(
                f"| {t} | {k} | {r['explicit']:.3f} | {r['nonobvious']:.3f} | {r['vs_controls_dev']:.3f} | {r['flag_rate_trait']:.0%} / {r['flag_rate_clean_answers']:.0%} |"
            )
    print("\n| vector | on the explicit pairs of | " + " | ".join(next(iter(next(iter(results["cross_trait"].values())).values()))) + " |")
    for u, row in results.get("cross_trait", {}).items():
        for t, cells in row.items():
            print(f"| {u} | {t} | " + " | ".join(f"{v:.3f}" for v in cells.values()) + " |")
    print("\n| trait | score | demo-008 rank | flagged | honest answers flagged |")
    print("|---|---|---|---|---|")
    for t, block in results["demo"].items():
        for k, r in block.items():
            n = "-" if r["flagged"] is None else len(r["flagged"])
            print(f"| {t} | {k} | {r['rank']['demo-008']} | {n} | {r['honest_flagged']} |")


if __name__ == "__main__":
    main()
