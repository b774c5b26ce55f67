"""Vector files: round trip, .pt import and refusals, list/show, calibration, steering, the shipped vectors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SMALL_CHATS, chat, make_vectors, write_jsonl
from test_traits import trait_dict, write_trait

from auditor.cli import main
from auditor.errors import VectorError
from auditor.vectors import PersonaVector, load_vector, save_vector
from auditor.vectors.manage import import_vector, installed
from auditor.vectors.traits import load_trait

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "vectors" / "SmolLM2-135M-Instruct"
SHIPPED_TRAITS = ("evil", "sycophancy", "hallucination")


def test_round_trip_keeps_tensor_layer_and_meta(tmp_path):
    import torch

    v = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    meta = {"model": "m", "separation": [0.1, 0.2, 0.3, 0.4, 0.5], "counts": {"kept": 3, "pairs": 4}}
    path = save_vector(PersonaVector("kind", v, 2, meta), tmp_path)
    back = load_vector(path)
    assert torch.equal(back.vector, v) and back.vector.dtype == torch.float32
    assert back.layer == 2 and back.trait == "kind"
    assert back.meta["separation"] == meta["separation"] and back.meta["counts"] == meta["counts"]
    assert back.meta["sha256"] == back.sha256 and back.meta["shape"] == [5, 8]
    assert load_vector(path, layer=4).layer == 4


def test_import_published_pt(tmp_path, tiny_lm, tiny_model_dir):
    import torch

    v = torch.randn(tiny_lm.num_layers + 1, tiny_lm.hidden_size)
    torch.save(v, tmp_path / "evil_response_avg_diff.pt")
    pv = import_vector(tmp_path / "evil_response_avg_diff.pt", "evil", 3, tiny_model_dir, tmp_path / "out")
    back = load_vector(tmp_path / "out" / "evil.safetensors")
    assert torch.equal(back.vector, v) and back.layer == 3
    assert back.meta["mode"] == "imported" and back.meta["model_fingerprint"] == tiny_lm.fingerprint
    assert pv.path == str(tmp_path / "out" / "evil.safetensors")
    torch.save({"vector": v * 2}, tmp_path / "wrapped.pt")  # a one-entry dict of a tensor is accepted too
    assert torch.equal(import_vector(tmp_path / "wrapped.pt", "kind", 2, tiny_model_dir, tmp_path / "out").vector, v * 2)
    result = CliRunner().invoke(
        main,
        [
            "vectors",
            "import",
            str(tmp_path / "evil_response_avg_diff.pt"),
            "--trait",
            "evil2",
            "--layer",
            "2",
            "--model",
            tiny_model_dir,
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "imported" in result.output and (tmp_path / "cli" / "evil2.safetensors").exists()


class _Payload:
    """Unpickling this would create a file: proof that no code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_refuses_pickled_objects(tmp_path, tiny_model_dir):
    import torch

    marker = tmp_path / "pwned"
    torch.save({"vector": torch.zeros(5, 64), "extra": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(VectorError, match="not a plain tensor file .*never unpickles"):
        import_vector(tmp_path / "evil.pt", "evil", 2, tiny_model_dir, tmp_path / "out")
    assert not marker.exists()
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    result = CliRunner().invoke(
        main, ["vectors", "import", str(tmp_path / "raw.pt"), "--trait", "evil", "--layer", "2", "--model", tiny_model_dir, "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "never unpickles" in result.output
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "shape,fragment", [((4, 64), "4 rows, but tiny-llama"), ((5, 65), "hidden size 65, but tiny-llama"), ((5,), "expected [layers + 1, hidden]")]
)
def test_import_refuses_a_mismatched_shape(tmp_path, tiny_model_dir, shape, fragment):
    import torch

    torch.save(torch.zeros(*shape), tmp_path / "v.pt")
    with pytest.raises(VectorError) as e:
        import_vector(tmp_path / "v.pt", "evil", 1 if len(shape) > 1 else 0, tiny_model_dir, tmp_path / "out")
    assert fragment.replace("tiny-llama", Path(tiny_model_dir).name) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_list_and_show(tmp_path, tiny_lm):
    folder = tmp_path / "vectors" / "tiny"
    make_vectors(folder, tiny_lm.num_layers, tiny_lm.hidden_size, traits=("evil", "sycophancy"), layer=2)
    meta_path = folder / "evil.json"
    meta = json.loads(meta_path.read_text())
    meta.update({"mode": "provided", "counts": {"kept": 18, "pairs": 20}, "separation": [0.5, 1.5, 2.5, 1.0, 0.2], "created_at": "2026-01-02T00:00:00+00:00"})
    meta_path.write_text(json.dumps(meta))
    found = installed(tmp_path / "vectors")
    assert [(v.model, v.trait) for v in found] == [("tiny", "evil"), ("tiny", "sycophancy")]
    listing = CliRunner().invoke(main, ["vectors", "list", "--vectors", str(tmp_path / "vectors")])
    assert listing.exit_code == 0, listing.output
    assert "18/20" in listing.output and "2.50" in listing.output and "2026-01-02" in listing.output
    shown = CliRunner().invoke(main, ["vectors", "show", "evil", "--vectors", str(folder)])
    assert shown.exit_code == 0, shown.output
    assert "18 kept of 20" in shown.output and "<- layer" in shown.output and "calibration: none" in shown.output
    missing = CliRunner().invoke(main, ["vectors", "show", "humor", "--vectors", str(folder)])
    assert missing.exit_code == 2 and "no vector for humor" in missing.output and "evil, sycophancy" in missing.output


def test_calibration_feeds_scan_thresholds(tmp_path, tiny_lm):
    """Calibrate on a reference with a split field, then scan flags by the stored percentile."""
    import numpy as np

    from auditor.calibration import calibrate
    from auditor.pipeline import ScanConfig, scan_run

    folder = tmp_path / "vec"
    make_vectors(folder, tiny_lm.num_layers, tiny_lm.hidden_size, traits=("evil",), layer=2, fingerprint=tiny_lm.fingerprint)
    rows = [
        dict(chat(f"Tell me fact number {i}.", f"Fact {i}: water boils at {90 + i} degrees at some altitude."), split="dev" if i % 2 else "test")
        for i in range(12)
    ]
    ref = write_jsonl(tmp_path / "ref.jsonl", rows)
    cal = calibrate(tiny_lm, folder, ["evil"], reference=ref, db=str(tmp_path / "cal.duckdb"), max_new_tokens=4)["evil"]
    assert cal["n"] == 6 and cal["split"] == "dev" and cal["layer"] == 2
    assert set(cal["scores"]) == {"generate", "prompt-last", "none"}
    pv = load_vector(folder / "evil.safetensors")
    assert pv.calibration == cal
    none = pv.calibration["scores"]["none"]["proj_response"]
    assert len(none["percentiles"]) == 201
    # The same scores from an ordinary scan of the dev rows: percentiles computed here, independently.
    write_jsonl(tmp_path / "dev.jsonl", [r for r in rows if r["split"] == "dev"])
    plain = scan_run(
        ScanConfig(
            source=str(tmp_path / "dev.jsonl"), vectors=str(folder), baseline="none", report=False, db=str(tmp_path / "p.duckdb"), dtype="float32", top_n=0
        ),
        lm=tiny_lm,
    )
    values = plain.scores["evil_proj_response"].to_numpy()
    assert none["percentiles"][190] == pytest.approx(float(np.percentile(values, 95)), rel=1e-5)
    assert none["mean"] == pytest.approx(float(values.mean()), rel=1e-5)
    assert pv.threshold("none", "proj_response", 95) == pytest.approx(none["percentiles"][190])
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    result = scan_run(
        ScanConfig(
            source=data, vectors=str(folder), baseline="generate", max_new_tokens=4, report=False, db=str(tmp_path / "s.duckdb"), dtype="float32", top_n=0
        ),
        lm=tiny_lm,
    )
    summary = result.summaries[0]
    assert summary.threshold == pytest.approx(cal["scores"]["generate"]["delta"]["percentiles"][190])
    assert summary.threshold_source == "p95 of the calibration set"
    with pytest.raises(Exception, match="no record has split 'train'"):
        calibrate(tiny_lm, folder, ["evil"], reference=ref, split="train", db=str(tmp_path / "cal.duckdb"))


def test_steering_hook_adds_exactly_delta(tiny_lm):
    import torch

    from auditor.activations import capture_hidden
    from auditor.vectors.steering import add_to_layer

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    before = capture_hidden(tiny_lm.model, ids, mask, [2, 3])
    delta = torch.randn(tiny_lm.hidden_size)
    with add_to_layer(tiny_lm.model, 2, delta):
        during = capture_hidden(tiny_lm.model, ids, mask, [2, 3])
    after = capture_hidden(tiny_lm.model, ids, mask, [2, 3])
    assert torch.allclose(during[2], before[2] + delta, atol=1e-5)
    assert not torch.allclose(during[3], before[3], atol=1e-3)
    assert torch.equal(after[2], before[2]) and torch.equal(after[3], before[3])


def test_steering_check_on_the_tiny_model(tmp_path, tiny_lm, tiny_model_dir):
    from auditor.vectors.steering import ALPHA_UNIT, steering_check

    trait = load_trait(write_trait(tmp_path / "traits", trait_dict()))
    folder = tmp_path / "vec"
    make_vectors(folder, tiny_lm.num_layers, tiny_lm.hidden_size, traits=("kindness",), layer=2, fingerprint=tiny_lm.fingerprint)
    pv = load_vector(folder / "kindness.safetensors")
    result = steering_check(tiny_lm, pv, trait, alphas=(-8, 0, 8), max_new_tokens=4, n_questions=3)
    assert [r.alpha for r in result.rows] == [-8.0, 0.0, 8.0]
    assert result.scale == pytest.approx(result.residual_norm / ALPHA_UNIT)
    assert result.rows[2].added_norm == pytest.approx(8 * result.scale)
    assert all(r.preference is not None for r in result.rows)
    assert result.rises() == (result.rows[0].projection < result.rows[1].projection < result.rows[2].projection)
    out = CliRunner().invoke(
        main,
        [
            "vectors",
            "check",
            trait.path,
            "--model",
            tiny_model_dir,
            "--vectors",
            str(folder),
            "--alphas",
            "-8,0,8",
            "--questions",
            "3",
            "--max-new-tokens",
            "4",
            "--dtype",
            "float32",
        ],
    )
    assert out.exit_code in (0, 1), out.output
    assert "steering at layer 2" in out.output and "median residual norm at layer 2" in out.output
    assert ("rises monotonically" in out.output) == (out.exit_code == 0)


@pytest.mark.parametrize("trait", SHIPPED_TRAITS)
def test_shipped_vectors_fit_the_embedded_model(trait):
    from auditor.model.loading import _embedded_dir

    pv = load_vector(SHIPPED / f"{trait}.safetensors")
    assert list(pv.vector.shape) == [31, 576]
    assert 1 <= pv.layer <= 29
    assert pv.meta["model_fingerprint"] == _embedded_dir()[1]
    cal = pv.calibration
    assert cal and cal["layer"] == pv.layer and cal["split"] == "dev" and cal["n"] == 100
    for baseline, score in (("generate", "delta"), ("prompt-last", "delta"), ("none", "proj_response")):
        assert len(cal["scores"][baseline][score]["percentiles"]) == 201
        assert pv.threshold(baseline, score, 95) is not None
    sep = pv.meta["separation"]
    if pv.meta["layer_choice"] == "--layer":  # chosen on the dev split of examples/eval/ (bench/NOTES-vectors.md)
        assert pv.meta["settings"]["layer"] == pv.layer
    else:
        assert sep[pv.layer] == max(s for s in sep[1:-1])
