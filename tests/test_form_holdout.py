"""bench/form_holdout.py: the forms cover the shipped definitions' pairs, and a held-out form is scored by a
direction made without it (checked on planted activations whose answer is known)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

TRAITS = ("evil", "sycophancy", "hallucination")


@pytest.mark.parametrize("trait", TRAITS)
def test_the_forms_cover_every_written_pair_of_the_shipped_definition_once(trait):
    """A pair added to a definition without a form fails here, not silently outside every form."""
    import form_holdout

    from auditor.vectors.traits import load_trait

    n = len(load_trait(trait).extraction_examples)
    tagged = sorted(i for idx in form_holdout.FORMS[trait].values() for i in idx)
    assert tagged == list(range(n))


def test_check_forms_names_the_missing_and_doubled_pairs(monkeypatch):
    import form_holdout

    monkeypatch.setattr(form_holdout, "FORMS", {"evil": {"a": [0, 1, 1], "b": [3]}})
    with pytest.raises(SystemExit, match=r"evil: .*4 pairs once \(missing \[2\], twice \[1\]\)"):
        form_holdout.check_forms({"evil": 4})


def _planted(n_pairs: int, layers: int, d: int, shift: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """pos = neg + shift (per pair, [L+1, d]) on top of shared noise."""
    neg = rng.normal(size=(n_pairs, layers, d))
    return neg + shift, neg


def test_a_form_that_shares_the_direction_is_found_and_an_orthogonal_one_is_not(monkeypatch):
    """Two forms shift along e0, a third along e1 only: held out, the e0 forms are separated by a direction
    made from the rest (AUROC 1), the e1 form is not (its shift is orthogonal to the other forms' direction),
    while its own split-half direction finds it."""
    import form_holdout

    rng = np.random.default_rng(0)
    layers, d = 4, 16
    e0, e1 = np.zeros(d), np.zeros(d)
    e0[0], e1[1] = 6.0, 6.0
    parts = [_planted(10, layers, d, e0, rng), _planted(10, layers, d, e0, rng), _planted(10, layers, d, e1, rng)]
    pos = np.concatenate([p for p, _ in parts])
    neg = np.concatenate([n for _, n in parts])
    forms = {"first": list(range(0, 10)), "second": list(range(10, 20)), "orthogonal": list(range(20, 30))}
    monkeypatch.setattr(form_holdout, "FORMS", {"evil": forms})
    monkeypatch.setattr(form_holdout, "TRAITS", ("evil",))
    out = form_holdout.per_form({"evil": (pos, neg)}, num_layers=layers - 1)
    for layer_auroc in out["evil"]["first"]["auroc_by_layer"]["meandiff"]:
        assert layer_auroc == 1.0
    for layer_auroc in out["evil"]["orthogonal"]["auroc_by_layer"]["meandiff"]:
        assert 0.2 < layer_auroc < 0.8
    own = form_holdout.within_form({"evil": (pos, neg)}, num_layers=layers - 1, splits=5)
    assert min(own["evil"]["orthogonal"]) > 0.95
