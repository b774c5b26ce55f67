"""Opt-in vectors (``vectors/<model>/extra/``) and sidecars without absolute paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT, SMALL_CHATS, make_vectors, write_jsonl

from auditor.cli import main


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def _folder(tmp_path, lm) -> Path:
    folder = tmp_path / "vectors" / "tiny"
    make_vectors(folder, lm.num_layers, lm.hidden_size, traits=("evil", "sycophancy"), fingerprint=lm.fingerprint)
    make_vectors(folder / "extra", lm.num_layers, lm.hidden_size, traits=("politeness", "humor"), fingerprint=lm.fingerprint, seed=1)
    return folder


def test_a_default_scan_does_not_use_opt_in_vectors(tmp_path, tiny_lm):
    from auditor.pipeline import ScanConfig, scan_run

    folder = _folder(tmp_path, tiny_lm)
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:3])
    run = scan_run(ScanConfig(source=data, vectors=str(folder), db=str(tmp_path / "a.duckdb"), report=False, baseline="none"), lm=tiny_lm)
    assert sorted(s.trait for s in run.summaries) == ["evil", "sycophancy"]
    assert not any(c.startswith(("politeness", "humor")) for c in run.scores.columns)


def test_opt_in_by_trait_name_or_by_folder(tmp_path, tiny_lm, tiny_model_dir):
    folder = _folder(tmp_path, tiny_lm)
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:3])
    common = ["scan", data, "--model", tiny_model_dir, "--baseline", "none", "--no-report", "--quiet", "--json", "--db", str(tmp_path / "a.duckdb")]
    by_name = CliRunner().invoke(main, [*common, "--vectors", str(folder), "--traits", "evil,politeness"])
    assert by_name.exit_code == 0, by_name.output
    assert sorted(t["trait"] for t in json.loads(by_name.stdout)["traits"]) == ["evil", "politeness"]
    by_folder = CliRunner().invoke(main, [*common, "--vectors", str(folder / "extra")])
    assert by_folder.exit_code == 0, by_folder.output
    assert sorted(t["trait"] for t in json.loads(by_folder.stdout)["traits"]) == ["humor", "politeness"]
    # The same politeness vector either way: the same scores.
    import polars as pl

    a, b = (pl.read_parquet(json.loads(r.stdout)["scores_path"]) for r in (by_name, by_folder))
    assert a["politeness_proj_response"].to_list() == b["politeness_proj_response"].to_list()
    missing = CliRunner().invoke(main, [*common, "--vectors", str(folder), "--traits", "apathy"])
    assert missing.exit_code == 2 and "opt-in: humor, politeness" in missing.output


def test_vectors_list_shows_the_opt_in_folder(tmp_path, tiny_lm):
    folder = _folder(tmp_path, tiny_lm)
    result = CliRunner().invoke(main, ["vectors", "list", "--vectors", str(folder.parent)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tiny/extra" in result.output and "politeness" in result.output


def test_shipped_default_set_is_the_three_main_traits():
    from auditor.vectors import load_vectors

    default = load_vectors(None, "SmolLM2-135M-Instruct")
    assert sorted(pv.trait for pv in default) == ["evil", "hallucination", "sycophancy"]


def test_a_fresh_sidecar_has_no_absolute_path(tmp_path, monkeypatch):
    import torch

    from auditor.vectors import PersonaVector, save_vector

    outside = tmp_path / "elsewhere" / "my-model"
    meta = {
        "trait_file": str(ROOT / "vectors" / "traits" / "evil.yaml"),
        "model_source": str(outside),
        "calibration": {"reference": str(ROOT / "examples" / "eval" / "clean.jsonl"), "layer": 1},
        "model": "my-model",
    }
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    save_vector(PersonaVector("evil", torch.randn(3, 4), 1, meta), tmp_path / "out")
    written = json.loads((tmp_path / "out" / "evil.json").read_text())
    assert written["trait_file"] == "vectors/traits/evil.yaml"
    assert written["calibration"]["reference"] == "examples/eval/clean.jsonl"
    assert written["model_source"] == "my-model"  # relative to the working directory
    assert not [s for s in strings(written) if os.path.isabs(s)]
    assert meta["trait_file"].startswith("/")  # the caller's dict is left alone


@pytest.mark.parametrize("sidecar", sorted((ROOT / "vectors").rglob("*.json")), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_sidecars_have_no_absolute_path(sidecar):
    meta = json.loads(sidecar.read_text())
    assert not [s for s in strings(meta) if os.path.isabs(s) or s.startswith("~")]
    if "trait_file" in meta:
        assert (ROOT / meta["trait_file"]).is_file()


EXTRA_TRAITS = ("apathy", "humor", "optimism", "politeness", "warmth")


def test_shipped_opt_in_traits_are_made_for_the_embedded_model_from_our_definitions():
    import hashlib

    from auditor.vectors import load_vectors

    folder = ROOT / "vectors" / "SmolLM2-135M-Instruct"
    embedded = json.loads((folder / "evil.json").read_text())
    loaded = load_vectors(None, "SmolLM2-135M-Instruct", traits=list(EXTRA_TRAITS))
    assert sorted(pv.trait for pv in loaded) == sorted(EXTRA_TRAITS)
    for pv in loaded:
        assert Path(pv.path).parent == folder / "extra"
        assert pv.meta["model_fingerprint"] == embedded["model_fingerprint"] and pv.meta["mode"] == embedded["mode"] == "provided"
        assert list(pv.vector.shape) == embedded["shape"] and 1 <= pv.layer <= embedded["shape"][0] - 2
        definition = ROOT / pv.meta["trait_file"]
        assert definition == ROOT / "vectors" / "traits" / f"{pv.trait}.yaml"
        assert hashlib.sha256(definition.read_bytes()).hexdigest() == pv.meta["trait_sha256"]  # made from the definition as shipped
        assert pv.meta["sha256"] == pv.sha256  # the tensor is the one the sidecar describes
