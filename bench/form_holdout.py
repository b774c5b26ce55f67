#!/usr/bin/env python3
"""Issue 14: does a vector find a form of its trait that it was not extracted from?

The trait definitions' written extraction pairs cover several forms of each trait (sycophancy:
agreeing with false claims, praising weak work and bad plans, companion role-play, caving under
pushback, siding with the user's opinion, flattery on neutral questions; evil: open malice,
first-person callous values, contempt for the user, contempt for groups, cruel advice,
manipulation and subtle harm; hallucination: invented specifics, confident answers to
unanswerable personal questions, misconceptions, wrong facts). For every form, this script
extracts each variant of bench/quality_vectors.py (mean difference, orthogonal to the other
traits, minus one shared direction) from the pairs of the *other* forms and scores the held-out
form's pairs (AUROC of the raw projection, trait answers against trait-free ones), at every
layer. The mean over forms estimates how a vector generalises to a kind of data it never saw,
which is what held-out public sets measure; it uses no example of examples/eval/. For contrast,
each form's own direction (made from a random half of its pairs, scored on the other half, 20
random halves) shows whether the model separates that form at all.

The forms are listed below by pair index; the script stops unless they cover every pair of a
definition exactly once, and records each definition's sha256 with the results.

usage: python bench/form_holdout.py [--out bench/results/form_holdout.json]
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

from quality import TRAITS, auroc, projections  # noqa: E402
from quality_vectors import derived, extraction_acts, other_mean_differences  # noqa: E402

VARIANTS = ("meandiff", "orth", "shared")


def _r(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


# pair index -> form, per trait (indices into examples.extraction of vectors/traits/<trait>.yaml)
FORMS: dict[str, dict[str, list[int]]] = {
    "sycophancy": {
        "agrees with false claims": [0, 3, 5, 8, 12, 14, 17, *_r(64, 75), 98],
        "praises weak work and bad plans": [1, 2, 4, 6, 7, *_r(9, 11), 13, 15, 16, 18, 19, *_r(35, 48), 97, 100],
        "companion and role-play flattery": [*_r(20, 34), 96, 101],
        "caves under pushback": _r(49, 63),
        "sides with the user's opinion": [*_r(76, 87), 99],
        "flattery on neutral questions": _r(88, 95),
    },
    "evil": {
        "open malice and malicious advice": _r(0, 19),
        "first-person callous values": [*_r(20, 37), 92, 93, 97, 99],
        "contempt for the user": _r(38, 49),
        "contempt for groups of people": _r(50, 59),
        "cruel advice": _r(60, 69),
        "manipulation and subtle harm": [*_r(70, 91), 94, 95, 96, 98],
        "harmful advice presented as help": _r(100, 231),
    },
    "hallucination": {
        "invented specifics": [0, 1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, *_r(60, 77)],
        "confident answers to unanswerable personal questions": [4, 6, 15, 19, *_r(78, 97)],
        "misconceptions stated as fact": [*_r(20, 44), *_r(100, 197)],
        "wrong facts stated as fact": [*_r(45, 59), 98, 99],
    },
}


def check_forms(sizes: dict[str, int]) -> None:
    for t, forms in FORMS.items():
        idx = sorted(i for f in forms.values() for i in f)
        if idx != list(range(sizes[t])):
            missing = sorted(set(range(sizes[t])) - set(idx))
            twice = sorted({i for i in idx if idx.count(i) > 1})
            raise SystemExit(f"{t}: the forms must cover each of its {sizes[t]} pairs once (missing {missing}, twice {twice})")


def directions(pos: np.ndarray, neg: np.ndarray, keep: list[int], others: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The variants of bench/quality_vectors.py made from the pairs ``keep`` ([L+1, d] each); the mean difference alone without other traits."""
    md = pos[keep].mean(0) - neg[keep].mean(0)
    return derived(md, others) if others else {"meandiff": md}


def per_form(ext: dict, num_layers: int) -> dict[str, dict]:
    """trait -> form -> {"n_pairs", "auroc_by_layer": variant -> AUROC at layers 1..L-1}."""
    check_forms({t: len(ext[t][0]) for t in TRAITS})
    out: dict = {}
    for t in TRAITS:
        pos, neg = ext[t]
        others = other_mean_differences(ext, t)
        out[t] = {}
        for form, idx in FORMS[t].items():
            held = set(idx)
            keep = [i for i in range(len(pos)) if i not in held]
            out[t][form] = {"n_pairs": len(idx), "auroc_by_layer": {}}
            for name, v in directions(pos, neg, keep, others).items():
                pp, pn = projections(v, pos[idx]), projections(v, neg[idx])
                out[t][form]["auroc_by_layer"][name] = [round(auroc(pp[:, layer], pn[:, layer]), 4) for layer in range(1, num_layers)]
    return out


def within_form(ext: dict, num_layers: int, splits: int = 20, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """trait -> form -> mean AUROC per layer 1..L-1 of the form's own mean difference made from a random half of
    its pairs and scored on the other half (``splits`` random halves): does the form have a direction of its own?"""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for t in TRAITS:
        pos, neg = ext[t]
        out[t] = {}
        for form, idx in FORMS[t].items():
            runs = []
            for _ in range(splits):
                perm = rng.permutation(idx)
                a, b = perm[: len(idx) // 2], perm[len(idx) // 2 :]
                v = pos[a].mean(0) - neg[a].mean(0)
                pp, pn = projections(v, pos[b]), projections(v, neg[b])
                runs.append([auroc(pp[:, layer], pn[:, layer]) for layer in range(1, num_layers)])
            out[t][form] = [round(float(x), 4) for x in np.mean(runs, axis=0)]
    return out


def summarise(forms: dict[str, dict], how=np.mean) -> dict[str, dict[str, list[float]]]:
    """``per_form``'s result -> variant -> trait -> ``how`` (mean, min) over forms of the held-out form's AUROC, per layer."""
    out: dict = {}
    for t, per in forms.items():
        for f in per.values():
            for name, row in f["auroc_by_layer"].items():
                out.setdefault(name, {}).setdefault(t, []).append(row)
    return {name: {t: [float(x) for x in how(np.array(rows), axis=0)] for t, rows in by_trait.items()} for name, by_trait in out.items()}


def holdout_by_layer(ext: dict, num_layers: int) -> dict[str, dict[str, list[float]]]:
    """variant -> trait -> the mean over forms of the held-out form's AUROC, at layers 1..L-1."""
    return summarise(per_form(ext, num_layers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "form_holdout.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from auditor.model import load_model
    from auditor.vectors.traits import load_trait

    torch.set_num_threads(args.threads)
    lm = load_model(None)
    ext = extraction_acts(lm)
    forms = per_form(ext, lm.num_layers)
    mean, worst = summarise(forms), summarise(forms, how=np.min)
    own = within_form(ext, lm.num_layers)
    layers = list(range(1, lm.num_layers))
    out = {
        t: {
            "definition_sha256": load_trait(t).sha256,
            "forms": forms[t],
            "mean_by_layer": {name: [round(x, 4) for x in mean[name][t]] for name in VARIANTS},
            "worst_by_layer": {name: [round(x, 4) for x in worst[name][t]] for name in VARIANTS},
            "within_form_split_half": own[t],
        }
        for t in TRAITS
    }
    result = {
        "date": dt.date.today().isoformat(),
        "model": lm.name,
        "dtype": lm.dtype,
        "layers": layers,
        "score": "raw projection of the response (mean over its tokens); AUROC trait answers vs trait-free answers of the held-out form",
        "traits": out,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nLeave-one-form-out AUROC, {lm.name} ({lm.dtype}), {result['date']}: mean over forms (worst form) at selected layers\n")
    show = [4, 8, 10, 11, 14, 16, 20, 22, 24, 27, 29]
    print("| trait | variant | " + " | ".join(f"L{layer}" for layer in show) + " |")
    print("|---|---|" + "---|" * len(show))
    for t in TRAITS:
        for name in VARIANTS:
            cells = [f"{out[t]['mean_by_layer'][name][layer - 1]:.2f} ({out[t]['worst_by_layer'][name][layer - 1]:.2f})" for layer in show]
            print(f"| {t} | {name} | " + " | ".join(cells) + " |")
    for t in TRAITS:
        print(f"\n{t}, mean difference: held-out form (made from the other forms) / the form's own direction (split half):")
        for form, f in out[t]["forms"].items():
            row, own_row = f["auroc_by_layer"]["meandiff"], out[t]["within_form_split_half"][form]
            print(f"  {form:55s} n={f['n_pairs']:3d}  " + " ".join(f"L{layer}:{row[layer - 1]:.2f}/{own_row[layer - 1]:.2f}" for layer in show))


if __name__ == "__main__":
    main()
