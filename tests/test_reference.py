"""The learned prompt-last reference: the ridge fit, extraction, the vector file, and scan's use of it,
each checked against a plain computation written here."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL_CHATS, write_jsonl
from test_traits import trait_dict, write_trait

from auditor.errors import VectorError
from auditor.pipeline import ScanConfig, scan_run
from auditor.vectors.extract import ExtractSettings, extract_vector, fit_reference
from auditor.vectors.persona import PersonaVector, load_vector, save_vector
from auditor.vectors.traits import load_trait


def _linear_data(n: int = 200, d: int = 6, layers: int = 3, seed: int = 0):
    """Last-token states and response means whose projection on each layer's unit direction is an exact linear
    function of the state: y = x . w_true + b_true."""
    g = torch.Generator().manual_seed(seed)
    vector = torch.randn(layers, d, generator=g)
    lasts = torch.randn(n, layers, d, generator=g)
    w_true = torch.randn(layers, d, generator=g)
    b_true = torch.randn(layers, generator=g)
    y = torch.einsum("nld,ld->nl", lasts, w_true) + b_true
    unit = vector / vector.norm(dim=1, keepdim=True)
    # response means: y along the unit direction plus noise orthogonal to it (does not change the projection)
    noise = torch.randn(n, layers, d, generator=g)
    noise = noise - torch.einsum("nld,ld->nl", noise, unit).unsqueeze(-1) * unit
    means = y.unsqueeze(-1) * unit + noise
    return vector, means, lasts, w_true, b_true


def test_fit_reference_recovers_an_exact_linear_map():
    vector, means, lasts, w_true, b_true = _linear_data()
    weights, bias, r2 = fit_reference(vector, means, lasts, alpha=1e-9)
    assert torch.allclose(weights, w_true, atol=1e-4)
    assert torch.allclose(bias, b_true, atol=1e-4)
    assert min(r2) > 0.999999


def test_fit_reference_with_a_large_penalty_predicts_the_mean():
    vector, means, lasts, _, _ = _linear_data()
    weights, bias, r2 = fit_reference(vector, means, lasts, alpha=1e9)
    unit = vector / vector.norm(dim=1, keepdim=True)
    mean_projection = torch.einsum("nld,ld->nl", means, unit).mean(0)
    assert weights.abs().max() < 1e-6
    assert torch.allclose(bias, mean_projection, atol=1e-4)
    assert max(r2) < 1e-3


def test_fit_reference_leaves_a_zero_layer_at_zero():
    vector, means, lasts, _, _ = _linear_data()
    vector[1] = 0
    weights, bias, r2 = fit_reference(vector, means, lasts, alpha=1.0)
    assert weights[1].abs().max() == 0 and float(bias[1]) == 0 and r2[1] == 0.0
    assert weights[0].abs().max() > 0


def _plain_states(lm, question: str, answer: str):
    """Response mean and last prompt token of one chat, every layer, one forward with output_hidden_states."""
    tok = lm.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    a_ids = tok(answer, add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids + a_ids])
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    start = len(p_ids)
    return torch.stack([h[0, start:].float().mean(0) for h in hs]), torch.stack([h[0, start - 1].float() for h in hs])


def test_extract_fits_the_reference_on_the_named_definitions_neutral_answers(tiny_lm, tmp_path, monkeypatch):
    folder = tmp_path / "traits"
    other = trait_dict("meanness")
    write_trait(folder, other, name="meanness")
    monkeypatch.setenv("PERSONA_AUDIT_TRAITS", str(folder))
    data = trait_dict()
    data["learned_reference"] = {"from": ["kindness", "meanness"], "alpha": 2.0}
    trait = load_trait(write_trait(folder, data))
    pv, report = extract_vector(tiny_lm, trait, ExtractSettings())
    # plain: every neg answer of both definitions, one at a time
    neg = [(ex["question"], ex["neg"]) for d in (data, other) for ex in d["examples"]["extraction"]]
    states = [_plain_states(tiny_lm, q, a) for q, a in neg]
    means = torch.stack([m for m, _ in states])
    lasts = torch.stack([last for _, last in states])
    weights, bias, _ = fit_reference(pv.vector, means, lasts, 2.0)
    assert pv.reference is not None and pv.reference.shape == pv.vector.shape
    assert torch.allclose(pv.reference, weights, atol=1e-3, rtol=1e-3)
    assert torch.allclose(pv.reference_bias, bias, atol=1e-3, rtol=1e-3)
    entry = pv.meta["learned_reference"]
    assert entry["answers"] == len(neg) and entry["alpha"] == 2.0
    assert entry["from"] == {"kindness": trait.sha256, "meanness": load_trait(folder / "meanness.yaml").sha256}
    assert "reference" in report.timings
    plain, _ = extract_vector(tiny_lm, load_trait(write_trait(tmp_path / "plain", trait_dict())), ExtractSettings())
    assert plain.reference is None and "learned_reference" not in plain.meta
    assert torch.equal(plain.vector, pv.vector), "the reference must not change the direction"


def test_reference_from_a_definition_without_examples_fails_clearly(tiny_lm, tmp_path, monkeypatch):
    folder = tmp_path / "traits"
    bare = trait_dict("meanness")
    del bare["examples"]
    write_trait(folder, bare, name="meanness")
    monkeypatch.setenv("PERSONA_AUDIT_TRAITS", str(folder))
    data = trait_dict()
    data["learned_reference"] = {"from": ["meanness"], "alpha": 1}
    trait = load_trait(write_trait(folder, data))
    with pytest.raises(VectorError, match=r"learned_reference.from names meanness, but .*meanness.yaml has no written examples"):
        extract_vector(tiny_lm, trait, ExtractSettings())


def _vector_with_reference(num_layers: int, d: int, layer: int, seed: int = 0) -> PersonaVector:
    g = torch.Generator().manual_seed(seed)
    pv = PersonaVector("evil", torch.randn(num_layers + 1, d, generator=g), layer)
    pv.reference = torch.randn(num_layers + 1, d, generator=g)
    pv.reference_bias = torch.randn(num_layers + 1, generator=g)
    return pv


def test_the_file_keeps_the_reference(tmp_path):
    pv = _vector_with_reference(4, 8, 2)
    path = save_vector(pv, tmp_path)
    back = load_vector(path)
    assert torch.equal(back.reference, pv.reference) and torch.equal(back.reference_bias, pv.reference_bias)
    w, b = back.reference_at()
    assert torch.equal(w, pv.reference[2]) and b == pytest.approx(float(pv.reference_bias[2]))
    assert back.reference_at(3)[1] == pytest.approx(float(pv.reference_bias[3]))
    plain = load_vector(save_vector(PersonaVector("sycophancy", torch.randn(5, 8), 2), tmp_path))
    assert plain.reference is None and plain.reference_at() is None


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"reference": torch.zeros(5, 8)}, "without its 'reference_bias' tensor"),
        ({"reference_bias": torch.zeros(5)}, "without its 'reference' tensor"),
        ({"reference": torch.zeros(5, 7), "reference_bias": torch.zeros(5)}, "the learned reference has shape [5, 7] and bias [5], expected [5, 8] and [5]"),
    ],
)
def test_a_broken_reference_is_refused(tmp_path, tensors, message):
    from safetensors.torch import save_file

    path = tmp_path / "evil.safetensors"
    save_file({"vector": torch.zeros(5, 8), **tensors}, str(path))
    (tmp_path / "evil.json").write_text(json.dumps({"layer": 2}))
    with pytest.raises(VectorError) as e:
        load_vector(path)
    assert str(e.value).startswith(f"{path}:") and message in str(e.value) and "run audit extract again" in str(e.value)


def test_scan_subtracts_the_learned_reference_at_the_last_prompt_token(tmp_path, tiny_lm):
    """prompt-last with a learned reference: proj_base = w . h_last + b, each sample computed plainly here; a vector
    without one in the same scan keeps the last token's own projection."""
    folder = tmp_path / "v"
    learned = _vector_with_reference(tiny_lm.num_layers, tiny_lm.hidden_size, 3)
    learned.meta = {"model_fingerprint": tiny_lm.fingerprint}
    save_vector(learned, folder)
    plain = PersonaVector("sycophancy", torch.randn(tiny_lm.num_layers + 1, tiny_lm.hidden_size, generator=torch.Generator().manual_seed(1)), 2)
    plain.meta = {"model_fingerprint": tiny_lm.fingerprint}
    save_vector(plain, folder)
    data = write_jsonl(tmp_path / "data.jsonl", SMALL_CHATS)
    cfg = ScanConfig(source=data, vectors=str(folder), db=str(tmp_path / "audit.duckdb"), report=False, baseline="prompt-last")
    df = scan_run(cfg, lm=tiny_lm).scores
    tok = tiny_lm.tokenizer
    assert df.height == len(SMALL_CHATS)
    for i, row in enumerate(df.iter_rows(named=True)):
        prompt = tok.apply_chat_template(SMALL_CHATS[i]["messages"][:-1], tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            hs = tiny_lm.model(ids, output_hidden_states=True).hidden_states
        expected = float(hs[3][0, -1].float() @ learned.reference[3]) + float(learned.reference_bias[3])
        assert row["evil_proj_base"] == pytest.approx(expected, abs=1e-4)
        assert row["evil_delta"] == pytest.approx(row["evil_proj_response"] - expected, abs=1e-4)
        v = plain.vector[2]
        assert row["sycophancy_proj_base"] == pytest.approx(float(hs[2][0, -1] @ v / v.norm()), abs=1e-4)


def test_vectors_show_says_what_the_reference_was_learned_from(tmp_path):
    from click.testing import CliRunner

    from auditor.cli import main

    pv = _vector_with_reference(4, 8, 2)
    pv.meta = {"learned_reference": {"from": {"evil": "a" * 64, "warmth": "b" * 64}, "alpha": 3.0, "answers": 123, "r2": [0.0, 0.1, 0.42, 0.5, 0.6]}}
    save_vector(pv, tmp_path)
    out = CliRunner().invoke(main, ["vectors", "show", "evil", "--vectors", str(tmp_path)], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "learned from the neutral answers of evil, warmth (123 answers, alpha 3.0, R^2 0.42 at layer 2)" in " ".join(out.output.split())
    plain = PersonaVector("sycophancy", torch.randn(5, 8), 2)
    save_vector(plain, tmp_path)
    out = CliRunner().invoke(main, ["vectors", "show", "sycophancy", "--vectors", str(tmp_path)], terminal_width=200)
    assert out.exit_code == 0 and "learned from" not in out.output


def test_the_vector_hash_covers_the_reference(tmp_path):
    """A rescan reuses stored scores by the vector's sha256 and layer: a new reference must change it."""
    import hashlib

    pv = _vector_with_reference(4, 8, 2)
    other = _vector_with_reference(4, 8, 2)
    other.vector = pv.vector.clone()
    other.reference_bias = pv.reference_bias + 1.0
    other.reference = pv.reference.clone()
    assert pv.sha256 != other.sha256
    plain = PersonaVector("evil", pv.vector.clone(), 2)
    assert plain.sha256 == hashlib.sha256(pv.vector.float().contiguous().numpy().tobytes()).hexdigest() != pv.sha256
    back = load_vector(save_vector(pv, tmp_path))
    assert back.meta["sha256"] == back.sha256 == pv.sha256
