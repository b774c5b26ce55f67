#!/usr/bin/env python3
"""Which extraction mode gives the embedded model better persona vectors? (issue 3)

For each trait, builds vectors in several ways and measures each one the same way:

- ``sep_examples``: held-out separation (Cohen's d of projections at the vector's
  recommended layer) between the written eliciting and suppressing answers to the
  EVALUATION questions, read with no system prompt (as scan reads a dataset);
- ``sep_sampled``: the same on answers the model itself sampled to the evaluation
  questions under the eliciting / suppressing instructions (n=1 per question and pair);
- ``auroc_dev``: raw-projection AUROC, trait vs clean answers, on the dev split of
  examples/eval/<trait>.jsonl (the test split is left to bench/quality.py);
- steering (``audit vectors check``): the answers' projection and the preference for the
  written eliciting answer over the suppressing one, at alpha -8..8; do they rise?

Also scores the ``self`` judge (the 135M model reading the rubric) on the written
evaluation answers: AUROC of its trait scores, eliciting vs suppressing.

usage: python bench/extraction_mode.py [--traits evil,sycophancy] [--n-per-question 1] [--max-new-tokens 64] [--out bench/results/extraction_mode.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def auroc(pos, neg) -> float:
    import numpy as np

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def dev_auroc(lm, trait: str, pv) -> dict[str, float]:
    """Raw projection AUROC (trait vs clean answer) per set on the dev split of the labelled file."""
    from auditor.activations import encode_pair
    from auditor.scoring import score_rows

    path = ROOT / "examples" / "eval" / f"{trait}.jsonl"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.open() if line.strip()]
    records = [r for r in records if r.get("split") == "dev"]
    tok = lm.tokenizer
    rows = []
    for r in records:
        prompt = tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        rows.append(encode_pair(tok, prompt, r["messages"][-1]["content"], 512))
    scores = score_rows(lm.model, rows, {"v": (pv.layer, pv.direction())}, tok.pad_token_id)
    out = {}
    for name in sorted({r["set"] for r in records}):
        pos = [s.proj["v"] for s, r in zip(scores, records) if r["set"] == name and r["label"] == 1]
        neg = [s.proj["v"] for s, r in zip(scores, records) if r["set"] == name and r["label"] == 0]
        out[name] = round(auroc(pos, neg), 4)
    return out


def main() -> None:
    import torch

    from auditor.model import load_model
    from auditor.vectors.extract import ExtractSettings, extract_vector, heldout_responses, layer_separation, response_means
    from auditor.vectors.judges import NoJudge, SelfJudge
    from auditor.vectors.steering import steering_check
    from auditor.vectors.traits import load_trait

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traits", default="evil,sycophancy,hallucination")
    ap.add_argument("--n-per-question", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--steer-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "extraction_mode.json"))
    args = ap.parse_args()

    lm = load_model(None, dtype=args.dtype, device="cpu")
    results = {"model": lm.name, "dtype": lm.dtype, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(), "traits": {}}
    judge = SelfJudge(lm)
    for name in args.traits.split(","):
        trait = load_trait(name)
        entry: dict = {}
        # Shared held-out sets.
        base = ExtractSettings(responses="sampled", n_per_question=args.n_per_question, max_new_tokens=args.max_new_tokens)
        t0 = time.perf_counter()
        _, sampled_eval = heldout_responses(lm, trait, ExtractSettings(**{**base.__dict__, "heldout": "sampled"}), NoJudge())
        entry["sampled_eval_seconds"] = round(time.perf_counter() - t0, 1)
        _, written_eval = heldout_responses(lm, trait, ExtractSettings(heldout="examples"), NoJudge())
        acts = {}
        for kind, pairs in (("examples", written_eval), ("sampled", sampled_eval)):
            acts[kind] = (response_means(lm, [p for p, _ in pairs]), response_means(lm, [n for _, n in pairs]))
        # The self judge on the written answers.
        t0 = time.perf_counter()
        qa_pos = [(p.question, p.answer) for p, _ in written_eval]
        qa_neg = [(n.question, n.answer) for _, n in written_eval]
        sp, sn = judge.score(trait.rubric, qa_pos), judge.score(trait.rubric, qa_neg)
        ok = [(a, b) for a, b in zip(sp, sn) if a is not None and b is not None]
        entry["self_judge"] = {
            "auroc_written": round(auroc([a for a, _ in ok], [b for _, b in ok]), 3) if ok else None,
            "scored": len(ok),
            "of": len(sp),
            "scoring": judge.describe()["scoring"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        variants = {
            "provided": ExtractSettings(responses="provided", context="none"),
            "provided+instructions": ExtractSettings(responses="provided", context="instructions"),
            f"sampled n={args.n_per_question}": base,
        }
        for label, settings in variants.items():
            pv, rep = extract_vector(lm, trait, settings)
            row = {"seconds": round(rep.seconds, 1), "layer": rep.layer, "kept": rep.n_kept}
            for kind, (pos, neg) in acts.items():
                sep = layer_separation(pos, neg, pv.vector)
                row[f"sep_{kind}"] = round(sep[rep.layer], 3)
                row[f"sep_{kind}_best"] = [int(max(range(1, len(sep) - 1), key=lambda i: sep[i])), round(max(sep[1:-1]), 3)]
            row["auroc_dev"] = dev_auroc(lm, name, pv)
            t0 = time.perf_counter()
            steer = steering_check(lm, pv, trait, max_new_tokens=args.steer_tokens)
            row["steering"] = {
                "alphas": [r.alpha for r in steer.rows],
                "projection": [round(r.projection, 3) for r in steer.rows],
                "preference": [round(r.preference, 4) for r in steer.rows],
                "distinct": [round(r.distinct, 3) for r in steer.rows],
                "projection_rises": steer.rises("projection"),
                "preference_rises": steer.rises("preference"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            row["vector_norm"] = round(float(pv.vector[rep.layer].norm()), 3)
            entry[label] = row
            entry.setdefault("_vectors", {})[label] = pv.vector
            print(name, label, json.dumps(row), flush=True)
        vecs = entry.pop("_vectors")
        labels = list(vecs)
        entry["cosines"] = {
            f"{a} vs {b}": round(float(torch.nn.functional.cosine_similarity(vecs[a][entry[a]["layer"]], vecs[b][entry[a]["layer"]], dim=0)), 4)
            for i, a in enumerate(labels)
            for b in labels[i + 1 :]
        }
        results["traits"][name] = entry
        print(name, "self judge", entry["self_judge"], "cosines", entry["cosines"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
