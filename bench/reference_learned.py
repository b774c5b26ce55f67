#!/usr/bin/env python3
"""Issue 14: a learned reference point for the prompt-last score.

The default score subtracts, from the response's projection, the projection of the hidden state at the
last prompt token: a reference point for "what an answer to this prompt projects to anyway". Here that
reference point is *learned* instead: at each layer, a ridge regression from the last prompt token's hidden
state to the projection of a neutral answer's mean, fitted on the neutral (``neg``) written extraction
answers of the shipped definitions (evil, sycophancy, hallucination, warmth; ``auditor.vectors.extract``:
``reference_answers``, ``answer_states``, ``fit_reference``, the code ``audit extract`` runs for a
definition's ``learned_reference`` key). Nothing of examples/eval/ is fitted on.

For each shipped vector at its shipped layer, and each ridge penalty ``alpha`` of a grid, the layer objective
of bench/quality_vectors.py (dev split) and the test-split figures, against the plain prompt-last score
on the same activations. The penalty is chosen on dev; a trait keeps the plain reference unless the learned
one has the higher dev objective.

usage: python bench/reference_learned.py [--vectors DIR] [--out bench/results/reference_learned.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality_vectors as qv  # noqa: E402
from quality import TRAITS, versions  # noqa: E402

FIT_FROM = ("evil", "sycophancy", "hallucination", "warmth")
ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def neutral_states(lm) -> tuple[np.ndarray, np.ndarray]:
    """The neutral answers of ``FIT_FROM``: (response means, last prompt tokens), [N, L+1, d] each, cached in bench/.cache."""
    from auditor.vectors.extract import answer_states, reference_answers
    from auditor.vectors.traits import load_trait

    answers, shas = reference_answers(load_trait(FIT_FROM[0]), FIT_FROM)
    digest = hashlib.sha256("".join(shas[n] for n in FIT_FROM).encode()).hexdigest()[:16]
    path = ROOT / "bench" / ".cache" / f"neutral-{lm.fingerprint}-{lm.dtype}-{digest}.npz"
    if not path.exists():
        means, lasts = answer_states(lm, answers)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, means=means.numpy(), lasts=lasts.numpy())
    with np.load(path) as z:
        return z["means"], z["lasts"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", default=str(ROOT / "vectors" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reference_learned.json"))
    args = ap.parse_args()

    import torch

    from auditor.model import load_model
    from auditor.vectors.extract import fit_reference
    from auditor.vectors.persona import load_vector

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    lm = load_model(None)
    acts, metas, source = qv.labelled_sets(lm, args.max_new_tokens)
    means, lasts = neutral_states(lm)
    results: dict = {
        "date": dt.date.today().isoformat(),
        "model": lm.name,
        "dtype": lm.dtype,
        "activations": source,
        "fit_from": list(FIT_FROM),
        "neutral_answers": int(len(means)),
        "alphas": list(ALPHAS),
        "versions": versions(),
        "traits": {},
    }
    for t in TRAITS:
        pv = load_vector(str(Path(args.vectors) / f"{t}.safetensors"))
        vec, layer = pv.vector.numpy(), pv.layer

        def at(ref, split, kind="prompt_last", vec=vec, layer=layer, t=t):
            sc = {d: qv.score_arrays(vec, acts[d], ref) for d in acts}
            others = {o: sc[o] for o in TRAITS if o != t}
            return qv.figures(sc[t], sc["clean"], metas, t, kind, layer, split, others, qv.form_set_scores(t, sc))

        plain_dev = at(None, "dev")
        block = {"layer": layer, "plain": {"dev_objective": round(qv.objective(plain_dev), 4), "test": _rounded(at(None, "test"))}, "learned": {}}
        for alpha in ALPHAS:
            w, b, _ = fit_reference(torch.from_numpy(vec), torch.from_numpy(means), torch.from_numpy(lasts), alpha)
            ref = (w.numpy(), b.numpy())
            dev = at(ref, "dev")
            block["learned"][str(alpha)] = {"dev_objective": round(qv.objective(dev), 4), "dev": _rounded(dev), "test": _rounded(at(ref, "test"))}
        best = max(block["learned"], key=lambda a: block["learned"][a]["dev_objective"])
        block["best_alpha"] = float(best)
        block["learned_wins_on_dev"] = block["learned"][best]["dev_objective"] > block["plain"]["dev_objective"]
        results["traits"][t] = block
        print(
            f"{t:13s} layer {layer}: plain dev {block['plain']['dev_objective']:.3f}; learned alpha {best} dev "
            f"{block['learned'][best]['dev_objective']:.3f} -> test {block['learned'][best]['test']}",
            file=sys.stderr,
        )
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def _rounded(f: dict) -> dict:
    return {k: round(v, 4) for k, v in f.items()}


if __name__ == "__main__":
    main()
