"""Mismatches: vectors made for another model are refused before anything is scanned or stored."""

from __future__ import annotations

import pytest
from conftest import SMALL_CHATS, make_vectors, write_jsonl

from auditor.errors import VectorError
from auditor.pipeline import ScanConfig, scan_run

FIX = "extract vectors for this model with audit extract evil --model ..."


def _scan(tmp_path, lm, vectors):
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:2])
    scan_run(ScanConfig(source=data, vectors=vectors, traits=["evil"], db=str(tmp_path / "audit.duckdb"), max_new_tokens=2, report=False), lm=lm)


@pytest.mark.parametrize(
    "case,layers,hidden",
    [("hidden-size", None, 32), ("layer-count", 6, None), ("both", 2, 128)],
)
def test_vectors_with_other_shapes_are_refused(tmp_path, tiny_lm, case, layers, hidden):
    # The tiny model: 4 layers, hidden size 64 (tests/conftest.py).
    n_layers, size = layers or 4, hidden or 64
    folder = make_vectors(tmp_path / "v", n_layers, size, traits=("evil",), layer=1, fingerprint=tiny_lm.fingerprint)
    with pytest.raises(VectorError) as err:
        _scan(tmp_path, tiny_lm, folder)
    assert str(err.value) == (f"{folder}/evil.safetensors: made for a model with {n_layers} layers and hidden size {size}, but this model has 4 and 64; {FIX}")
    assert not (tmp_path / "audit.duckdb").exists()  # refused before a run was registered


def test_vectors_for_another_fingerprint_are_refused(tmp_path, tiny_lm):
    folder = make_vectors(tmp_path / "v", 4, 64, traits=("evil",), layer=1, fingerprint="0123456789abcdef")
    with pytest.raises(VectorError) as err:
        _scan(tmp_path, tiny_lm, folder)
    assert str(err.value) == (
        f"{folder}/evil.safetensors: made for model ? (fingerprint 0123456789abcdef), not this one ({tiny_lm.fingerprint}); "
        "extract vectors for this model with audit extract evil, or pass --vectors PATH"
    )
    assert not (tmp_path / "audit.duckdb").exists()


def test_vectors_that_fit_are_accepted(tmp_path, tiny_lm):
    """The control: the same check passes vectors that do fit (so the refusals above are about the mismatch)."""
    folder = make_vectors(tmp_path / "v", 4, 64, traits=("evil",), layer=1, fingerprint=tiny_lm.fingerprint)
    _scan(tmp_path, tiny_lm, folder)
    assert (tmp_path / "audit.duckdb").exists()
