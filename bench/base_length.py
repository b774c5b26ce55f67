#!/usr/bin/env python3
"""Base-response length: how much of the 256-token base response does ``proj_base`` need? (issue 16, item 4)

Generates each distinct prompt's greedy base response once, at the longest cap, in float32
(the CPU default, batch-invariant) and keeps the token ids. Greedy decoding is causal, so
the response generated with ``--max-new-tokens k`` is exactly the first k of those ids:
every shorter cap is that prefix, decoded to text and re-encoded as a scan does. Then,
with the scoring model in its default dtype (as ``audit scan`` runs it), for each cap:

- ``proj_base`` at each vector's layer against the full-length value: Pearson r and mean
  absolute difference, on the dev prompts of examples/eval/ and on examples/demo.jsonl;
- detection quality on the dev split: AUROC of delta (trait answer vs the clean answer to
  the same prompt, and vs the dev clean controls), per trait, at each vector's layer,
  with bench/quality.py's ``auroc``;
- generated tokens per prompt at each cap (the decoding time per cap is measured by
  bench/decode_speed.py).

usage: python bench/base_length.py [--caps 32,64,128,256] [--threads 1] [--out bench/results/base_length.json]
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
TRAITS = ("evil", "sycophancy", "hallucination")


def dev_sets(eval_dir: Path) -> dict[str, list[dict]]:
    from quality import load_records

    out = {name: [r for r in load_records(eval_dir / f"{name}.jsonl") if r.get("split") == "dev"] for name in (*TRAITS, "clean")}
    out["demo"] = load_records(ROOT / "examples" / "demo.jsonl")
    return out


def generate_ids(lm, prompts: dict[str, str], max_new_tokens: int, batch_size: int, cache_path: Path) -> dict[str, dict]:
    """prompt hash -> {"ids": generated ids, "batch_seconds": its batch's decode time, ...} (cached on disk)."""
    from auditor.generation import _eos_ids, _left_padded, greedy_decode, prompt_ids

    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    todo = sorted((h for h in prompts if h not in cache), key=lambda h: len(prompt_ids(lm, prompts[h], 512)))
    eos = _eos_ids(lm)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        ids, mask = _left_padded([prompt_ids(lm, prompts[h], 512) for h in chunk], lm.tokenizer.pad_token_id)
        t0 = time.perf_counter()
        new = greedy_decode(lm.model, ids, mask, max_new_tokens, eos)
        seconds = time.perf_counter() - t0
        longest = max(len(n) for n in new) or 1
        for h, n in zip(chunk, new):
            cache[h] = {"ids": n, "batch_seconds": seconds, "batch_steps": longest, "batch": len(chunk)}
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache))
        print(f"  {start + len(chunk)}/{len(todo)} prompts, batch of {len(chunk)} in {seconds:.0f} s", file=sys.stderr)
    return cache


def base_means(lm, prompts: list[str], texts: list[str], layers: list[int]) -> np.ndarray:
    """Response-mean hidden states [N, len(layers), d] of prompt + text (one scan-like forward)."""
    from auditor.activations import capture_hidden, encode_pair, masked_mean, pad_right, response_mask
    from auditor.scoring import CPU_BATCH_TOKENS, length_batches

    rows = [encode_pair(lm.tokenizer, p, t, 512) for p, t in zip(prompts, texts)]
    out = np.full((len(rows), len(layers), lm.hidden_size), np.nan, np.float32)
    for batch in length_batches([r.length for r in rows], CPU_BATCH_TOKENS):
        brows = [rows[i] for i in batch]
        ids, attn = pad_right(brows, lm.tokenizer.pad_token_id)
        hidden = capture_hidden(lm.model, ids, attn, sorted(set(layers)))
        mask = response_mask(brows, ids.shape[1])
        for j, layer in enumerate(layers):
            out[batch, j] = masked_mean(hidden[layer], mask).float().cpu().numpy()
    empty = np.array([r.end <= r.start for r in rows])
    out[empty] = np.nan
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default="32,64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "base_length.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from quality import auroc

    from auditor.generation import prompt_hash
    from auditor.model import load_model
    from auditor.vectors import load_vectors

    caps = sorted(int(c) for c in args.caps.split(","))
    sets = dev_sets(ROOT / "examples" / "eval")
    tok_lm = load_model(None, dtype="float32", device="cpu")
    prompt_of = {
        name: [tok_lm.tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in recs]
        for name, recs in sets.items()
    }
    unique = {prompt_hash(p): p for ps in prompt_of.values() for p in ps}
    cache_path = ROOT / "bench" / ".cache" / f"base-ids-{tok_lm.fingerprint}-float32-{caps[-1]}.json"
    t0 = time.perf_counter()
    gen = generate_ids(tok_lm, unique, caps[-1], args.batch_size, cache_path)
    print(f"generation: {len(unique)} prompts ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.generate_only:
        return
    del tok_lm
    lm = load_model(None, dtype="auto", device="cpu")
    vectors = {
        pv.trait: pv
        for pv in load_vectors(None, lm.name, traits=list(TRAITS), num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint)
    }
    layers = [vectors[t].layer for t in TRAITS]
    units = [(vectors[t].vector[vectors[t].layer] / vectors[t].vector[vectors[t].layer].norm()).float().numpy() for t in TRAITS]
    hashes = list(unique)
    prompts = [unique[h] for h in hashes]
    at = {h: i for i, h in enumerate(hashes)}
    # proj_base[cap]: [n_unique_prompts, trait]
    proj_base = {}
    for cap in caps:
        texts = [lm.tokenizer.decode(gen[h]["ids"][:cap], skip_special_tokens=True) for h in hashes]
        means = base_means(lm, prompts, texts, layers)
        proj_base[cap] = np.stack([means[:, j] @ units[j] for j in range(len(TRAITS))], axis=1)
        print(f"cap {cap}: base forward done", file=sys.stderr)
    # Trait/clean answers of the dev sets (independent of the cap).
    resp_proj = {}
    for name in (*TRAITS, "clean"):
        texts = [r["messages"][-1]["content"] for r in sets[name]]
        means = base_means(lm, prompt_of[name], texts, layers)
        resp_proj[name] = np.stack([means[:, j] @ units[j] for j in range(len(TRAITS))], axis=1)
    full = caps[-1]
    results: dict = {
        "date": dt.date.today().isoformat(),
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "scoring_dtype": lm.dtype,
        "generation_dtype": "float32",
        "generation_batch_size": args.batch_size,
        "threads": args.threads,
        "caps": caps,
        "layers": dict(zip(TRAITS, layers)),
        "n_prompts": {name: len({prompt_hash(p) for p in ps}) for name, ps in prompt_of.items()},
        "generated_tokens": {},
        "proj_base_vs_full": {},
        "dev_auroc_delta": {},
        "seconds_total": None,
    }
    lengths = np.array([len(gen[h]["ids"]) for h in hashes])
    for cap in caps:
        results["generated_tokens"][str(cap)] = {
            "mean": round(float(np.minimum(lengths, cap).mean()), 1),
            "share_reaching_cap": round(float((lengths >= cap).mean()), 3),
        }
    for group in ("eval_dev", "demo"):
        idx = sorted({at[prompt_hash(p)] for name, ps in prompt_of.items() if (name == "demo") == (group == "demo") for p in ps})
        block = {}
        for j, trait in enumerate(TRAITS):
            ref = proj_base[full][idx, j]
            row = {}
            for cap in caps[:-1]:
                x = proj_base[cap][idx, j]
                ok = ~np.isnan(x) & ~np.isnan(ref)
                row[str(cap)] = {
                    "pearson_r": round(float(np.corrcoef(x[ok], ref[ok])[0, 1]), 4),
                    "mean_abs_diff": round(float(np.abs(x[ok] - ref[ok]).mean()), 3),
                    "sd_full": round(float(ref[ok].std()), 3),
                    "n": int(ok.sum()),
                    "n_empty": int((~ok).sum()),
                }
            block[trait] = row
        results["proj_base_vs_full"][group] = block
    clean_base_idx = [at[prompt_hash(p)] for p in prompt_of["clean"]]
    for j, trait in enumerate(TRAITS):
        label = np.array([r["label"] for r in sets[trait]])
        base_idx = [at[prompt_hash(p)] for p in prompt_of[trait]]
        row = {}
        for cap in caps:
            delta = resp_proj[trait][:, j] - proj_base[cap][base_idx, j]
            cdelta = resp_proj["clean"][:, j] - proj_base[cap][clean_base_idx, j]
            pos = delta[label == 1]
            row[str(cap)] = {
                "auroc_vs_same_prompt_clean": round(auroc(pos[~np.isnan(pos)], (n := delta[label == 0])[~np.isnan(n)]), 4),
                "auroc_vs_clean_controls": round(auroc(pos[~np.isnan(pos)], cdelta[~np.isnan(cdelta)]), 4),
                "n_pos": int(len(pos)),
            }
        proj = resp_proj[trait][:, j]
        row["proj_only"] = {"auroc_vs_same_prompt_clean": round(auroc(proj[label == 1], proj[label == 0]), 4)}
        results["dev_auroc_delta"][trait] = row
    results["seconds_total"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("generated_tokens", "dev_auroc_delta")}, indent=1))


if __name__ == "__main__":
    main()
