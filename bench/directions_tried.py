#!/usr/bin/env python3
"""Issue 14: directions tried beside the shipped definitions, and what each did (dev chooses, test reports).

Each variant changes one thing in one trait's vector as ``audit extract`` makes it (the definition's
written pairs, mean difference, its ``orthogonal_to`` directions removed at every layer), and is
scored with the default score (prompt-last ``delta``) by bench/quality_vectors.py's figures and
layer objective (without the form hold-out term, so the shipped definition's row is comparable):

- ``without warmth``: sycophancy without its ``warmth`` entry (its definition before 2026-12-02);
- ``+ orthogonal to X``: one more written-pair direction removed, from a file of bench/untried/
  (``self_reference_pairs``: the same correct answer with and without "I";
  ``specificity_pairs``: the same correct answer with and without concrete numbers and names);
- ``+ 0.5 x (fabricated - real specifics)``: hallucination's unit vector plus half the unit direction
  from the confident correct answers of ``specificity_pairs`` to the definition's fabricated
  answers (pairs 1-100): an unpaired contrast, different prompts on each side;
- ``+ N pairs``: evil with bench/untried/evil_harmful_help_more_pairs.jsonl added (all, or one domain);
- ``form-balanced``: the mean of each form's mean difference (bench/form_holdout.py's forms)
  instead of the mean over all pairs;
- ``reference x beta``: the shipped vector, score = projection(response) - beta x projection(last
  prompt token) (beta 1 is the default score).

Writes bench/results/directions_tried.json and prints a table. Needs the caches of
bench/quality.py and bench/quality_vectors.py (computed on first use: minutes).

    python bench/directions_tried.py [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality_vectors as qv  # noqa: E402
from quality import TRAITS  # noqa: E402

UNTRIED = ROOT / "bench" / "untried"
KIND = "prompt_last"
BETAS = (0.0, 0.5, 0.8, 1.0, 1.25)


def pair_means(lm, path: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(pos means, neg means [n, L+1, d], rows) of a file of {question, pos, neg} pairs (cached in bench/.cache)."""
    import hashlib

    from auditor.vectors.extract import Response, response_means

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cache = ROOT / "bench" / ".cache" / f"pairs-{lm.fingerprint}-{lm.dtype}-{digest}.npz"
    if not cache.exists():
        responses = [r for p in rows for r in (Response(p["question"], p["pos"], None, "pos", -1, 0), Response(p["question"], p["neg"], None, "neg", -1, 0))]
        means = response_means(lm, responses).numpy()
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, pos=means[0::2], neg=means[1::2])
    with np.load(cache) as z:
        return z["pos"], z["neg"], rows


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def scored(trait: str, scores: dict, metas: dict, num_layers: int, layer: int) -> dict:
    """Dev objective per layer, the best layer, and dev/test figures at the best and at ``layer``."""
    others = {o: scores[o] for o in TRAITS if o != trait}
    form_set = qv.form_set_scores(trait, scores)
    dev = [qv.figures(scores[trait], scores["clean"], metas, trait, KIND, k, "dev", others, form_set) for k in range(num_layers + 1)]
    objective = [qv.objective(f) if 1 <= k < num_layers else float("-inf") for k, f in enumerate(dev)]
    best = int(np.argmax(objective))
    rnd = lambda f: {k: round(v, 4) for k, v in f.items()}  # noqa: E731
    return {
        "best_layer": best,
        "dev_objective_by_layer": [round(x, 4) if np.isfinite(x) else None for x in objective],
        "at_best": {
            "dev_objective": round(objective[best], 4),
            "dev": rnd(dev[best]),
            "test": rnd(qv.figures(scores[trait], scores["clean"], metas, trait, KIND, best, "test", others, form_set)),
        },
        "at_shipped_layer": {
            "layer": layer,
            "dev_objective": round(objective[layer], 4),
            "test": rnd(qv.figures(scores[trait], scores["clean"], metas, trait, KIND, layer, "test", others, form_set)),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "directions_tried.json"))
    args = ap.parse_args()

    import torch
    from form_holdout import FORMS

    from auditor.model import load_model
    from auditor.vectors.persona import load_vector

    torch.set_num_threads(args.threads)
    lm = load_model(None)
    acts, metas, _ = qv.labelled_sets(lm, 128)
    sets = tuple(qv.FORM_SETS.values())
    ext = qv.extraction_acts(lm)
    vectors = {t: load_vector(str(ROOT / "vectors" / "SmolLM2-135M-Instruct" / f"{t}.safetensors")) for t in TRAITS}
    layers = {t: pv.layer for t, pv in vectors.items()}
    shipped = {t: pv.vector.numpy() for t, pv in vectors.items()}
    md = {t: ext[t][0].mean(0) - ext[t][1].mean(0) for t in TRAITS}
    removed = {t: qv.other_mean_differences(ext, t) for t in TRAITS}

    sr_pos, sr_neg, _ = pair_means(lm, UNTRIED / "self_reference_pairs.jsonl")
    sp_pos, sp_neg, _ = pair_means(lm, UNTRIED / "specificity_pairs.jsonl")
    hh_pos, hh_neg, hh_rows = pair_means(lm, UNTRIED / "evil_harmful_help_more_pairs.jsonl")
    self_reference, specificity = sr_pos.mean(0) - sr_neg.mean(0), sp_pos.mean(0) - sp_neg.mean(0)
    hal_pos = ext["hallucination"][0][:100]  # invented specifics and confident answers to unanswerable questions
    fabricated_vs_real = hal_pos.mean(0) - sp_pos.mean(0)

    def orth(trait: str, v: np.ndarray, extra: list[np.ndarray] = ()) -> np.ndarray:
        return qv.remove_components(v, [*removed[trait], *extra])

    variants: list[tuple[str, str, np.ndarray]] = []
    for t in TRAITS:
        variants.append((t, "definition as shipped", orth(t, md[t])))
        pos, neg = ext[t]
        variants.append((t, "form-balanced mean", orth(t, np.mean([pos[i].mean(0) - neg[i].mean(0) for i in FORMS[t].values()], axis=0))))
    # other_mean_differences keeps the entries whose trait it has activations for: leave warmth's out
    without_warmth = qv.other_mean_differences({k: v for k, v in ext.items() if k != "warmth"}, "sycophancy")
    variants.append(("sycophancy", "without warmth (the definition before 2026-12-02)", qv.remove_components(md["sycophancy"], without_warmth)))
    for t in ("sycophancy", "hallucination"):
        variants.append((t, "+ orthogonal to self-reference", orth(t, md[t], [self_reference])))
    variants.append(("hallucination", "+ orthogonal to specificity", orth("hallucination", md["hallucination"], [specificity])))
    variants.append(
        ("hallucination", "+ 0.5 x (fabricated - real specifics)", orth("hallucination", unit(md["hallucination"]) + 0.5 * unit(fabricated_vs_real)))
    )
    domains = np.array([r["domain"] for r in hh_rows])
    for label, keep in [
        (f"all {len(hh_rows)}", np.ones(len(hh_rows), bool)),
        *[(f"{d} only, {int((domains == d).sum())}", domains == d) for d in ("code", "calculation", "money")],
    ]:
        pos = np.concatenate([ext["evil"][0], hh_pos[keep]])
        neg = np.concatenate([ext["evil"][1], hh_neg[keep]])
        variants.append(("evil", f"+ more harmful-help pairs ({label})", orth("evil", pos.mean(0) - neg.mean(0))))

    results = []
    for trait, name, v in variants:
        scores = {d: qv.score_arrays(v, acts[d]) for d in acts}
        results.append({"trait": trait, "variant": name, **scored(trait, scores, metas, lm.num_layers, layers[trait])})
    for t in TRAITS:
        resp = {d: qv.projections(shipped[t], acts[d][0]) for d in acts}
        last = {d: qv.projections(shipped[t], acts[d][2]) for d in acts}
        for beta in BETAS:
            scores = {d: {KIND: resp[d] - beta * last[d]} for d in acts}
            results.append({"trait": t, "variant": f"shipped vector, reference x {beta}", **scored(t, scores, metas, lm.num_layers, layers[t])})

    out = {
        "date": dt.date.today().isoformat(),
        "model": lm.name,
        "dtype": lm.dtype,
        "score": "prompt-last delta",
        "objective": "bench/quality_vectors.py's, without the form hold-out term",
        "versions": qv.versions(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(
        "| trait | variant | best layer | dev objective | at shipped layer | test: explicit / non-obvious / vs controls / form set | honest flagged (test) | worst off-diagonal (test) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        f = r["at_best"]["test"]
        form = next((f"{f[n]:.3f}" for n in sets if n in f), "-")
        off = max(v for k, v in f.items() if k.startswith("on_"))
        print(
            f"| {r['trait']} | {r['variant']} | {r['best_layer']} | {r['at_best']['dev_objective']:.3f} | {r['at_shipped_layer']['dev_objective']:.3f} (layer {r['at_shipped_layer']['layer']}) |"
            f" {f['explicit']:.3f} / {f['nonobvious']:.3f} / {f['vs_controls']:.3f} / {form} | {f['honest_flag_rate']:.0%} | {off:.3f} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
