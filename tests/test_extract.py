"""Extraction: the maths, determinism, batched == plain, judging filter, CLI, and a real-model rebuild."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_traits import trait_dict, write_trait

from auditor.cli import main
from auditor.errors import JudgeError, VectorError
from auditor.vectors.extract import (
    ExtractSettings,
    Response,
    cohens_d,
    cosine_at,
    extract_vector,
    judge_and_pair,
    mean_difference,
    provided_responses,
    recommend_layer,
)
from auditor.vectors.judges import Judge, OpenAIJudge
from auditor.vectors.traits import load_trait

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "vectors" / "SmolLM2-135M-Instruct"


@pytest.fixture
def small_trait(tmp_path):
    return load_trait(write_trait(tmp_path / "traits", trait_dict()))


def test_cohens_d_by_hand():
    import torch

    pos = torch.tensor([2.0, 4.0, 6.0])  # mean 4, var 4
    neg = torch.tensor([0.0, 1.0, 2.0])  # mean 1, var 1
    assert cohens_d(pos, neg) == pytest.approx(3 / math.sqrt(2.5))
    assert math.isnan(cohens_d(pos[:1], neg))


def test_recommend_layer_skips_edges_and_nan():
    sep = [9.0, 1.0, float("nan"), 3.0, 2.0, 8.0]
    assert recommend_layer(sep) == 3
    assert recommend_layer(sep, exclude_edges=False) == 0
    assert recommend_layer([0.0, 5.0, 5.0, 1.0]) == 1  # ties: the earlier layer


def test_provided_mode_equals_a_plain_one_at_a_time_computation(tiny_lm, small_trait):
    """Batched, length-bucketed means at every layer == full_hidden_states per answer, averaged by hand."""
    import torch

    from auditor.activations import full_hidden_states

    pv, report = extract_vector(tiny_lm, small_trait, ExtractSettings(responses="provided", batch_tokens=300))
    tok = tiny_lm.tokenizer
    sums = {"pos": 0, "neg": 0}
    for ex in small_trait.extraction_examples:
        prompt = tok.apply_chat_template([{"role": "user", "content": ex.question}], tokenize=False, add_generation_prompt=True)
        p = len(tok(prompt, add_special_tokens=False)["input_ids"])
        for pole, answer in (("pos", ex.pos), ("neg", ex.neg)):
            ids = torch.tensor([tok(prompt + answer, add_special_tokens=False)["input_ids"]])
            hs = full_hidden_states(tiny_lm.model, ids)
            sums[pole] = sums[pole] + torch.stack([h[0, p:].float().mean(0) for h in hs])
    n = len(small_trait.extraction_examples)
    expected = sums["pos"] / n - sums["neg"] / n
    assert pv.vector.shape == (tiny_lm.num_layers + 1, tiny_lm.hidden_size)
    assert torch.allclose(pv.vector, expected, atol=1e-5)
    assert 1 <= pv.layer <= tiny_lm.num_layers - 1
    assert report.n_kept == n and pv.meta["counts"]["pairs"] == n and pv.meta["mode"] == "provided"
    assert len(pv.meta["separation"]) == tiny_lm.num_layers + 1
    assert pv.meta["settings"]["responses"] == "provided" and pv.meta["model_fingerprint"] == tiny_lm.fingerprint


def test_remove_directions_equals_plain_gram_schmidt():
    """The batched least-squares removal == orthonormalise the others and subtract, one layer at a time."""
    import torch

    from auditor.vectors.extract import remove_directions

    g = torch.Generator().manual_seed(0)
    v, others = torch.randn(5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    got = remove_directions(v, others)
    for layer in range(5):
        expected = v[layer].double().clone()
        basis = []
        for o in others[:, layer].double():
            for b in basis:
                o = o - (o @ b) * b
            basis.append(o / o.norm())
        for b in basis:
            expected = expected - (expected @ b) * b
        assert torch.allclose(got[layer].double(), expected, atol=1e-5)
        assert all(abs(float(got[layer] @ o)) < 1e-4 * float(o.norm() * v[layer].norm()) for o in others[:, layer])


def test_orthogonal_to_removes_the_other_traits_directions(tiny_lm, tmp_path, monkeypatch):
    """A definition with orthogonal_to gives its plain vector minus the other's written-pair direction."""
    import torch

    from auditor.vectors.extract import remove_directions

    folder = tmp_path / "traits"
    other = trait_dict("meanness")
    for ex in other["examples"]["extraction"]:
        ex["pos"], ex["neg"] = f"No. {ex['neg']} Go away.", f"Sure, happy to help: {ex['pos']}"
    write_trait(folder, other, name="meanness")
    plain = load_trait(write_trait(folder, trait_dict()))
    monkeypatch.setenv("PERSONA_AUDIT_TRAITS", str(folder))
    data = trait_dict()
    data["orthogonal_to"] = ["meanness"]
    orth = load_trait(write_trait(tmp_path / "orth", data))
    assert orth.orthogonal_to == ("meanness",)
    v_plain, _ = extract_vector(tiny_lm, plain, ExtractSettings())
    v_other, _ = extract_vector(tiny_lm, load_trait(folder / "meanness.yaml"), ExtractSettings())
    v_orth, _ = extract_vector(tiny_lm, orth, ExtractSettings())
    expected = remove_directions(v_plain.vector, v_other.vector.unsqueeze(0))
    assert torch.allclose(v_orth.vector, expected, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(v_orth.vector[1:], v_other.vector[1:], dim=1)
    assert cos.abs().max() < 1e-4
    assert v_orth.meta["orthogonal_to"] == {"meanness": load_trait(folder / "meanness.yaml").sha256}
    assert v_plain.meta["orthogonal_to"] == {}
    assert "orthogonal_pairs" not in v_orth.meta


def test_orthogonal_to_a_range_removes_only_those_pairs_direction(tiny_lm, tmp_path, monkeypatch):
    """{trait, pairs: "A-B"} removes the direction of the other's pairs A..B only, and the sidecar says which."""
    import torch

    from auditor.vectors.extract import remove_directions

    folder = tmp_path / "traits"
    other = trait_dict("meanness")
    for ex in other["examples"]["extraction"][:10]:
        ex["pos"], ex["neg"] = f"No. {ex['neg']} Go away.", f"Sure, happy to help: {ex['pos']}"
    write_trait(folder, other, name="meanness")
    monkeypatch.setenv("PERSONA_AUDIT_TRAITS", str(folder))
    plain = load_trait(write_trait(tmp_path / "plain", trait_dict()))
    data = trait_dict()
    data["orthogonal_to"] = [{"trait": "meanness", "pairs": "1-10"}]
    orth = load_trait(write_trait(tmp_path / "orth", data))
    settings = ExtractSettings()
    v_plain, _ = extract_vector(tiny_lm, plain, settings)
    v_orth, _ = extract_vector(tiny_lm, orth, settings)
    answers = provided_responses(load_trait(folder / "meanness.yaml"), "extraction", "none")
    pairs = [(answers[i], answers[i + 1]) for i in range(0, len(answers), 2)]
    first_ten = mean_difference(tiny_lm, pairs[:10], settings)
    assert torch.allclose(v_orth.vector, remove_directions(v_plain.vector, first_ten.unsqueeze(0)), atol=1e-5)
    every_pair = mean_difference(tiny_lm, pairs, settings)
    assert not torch.allclose(v_orth.vector, remove_directions(v_plain.vector, every_pair.unsqueeze(0)), atol=1e-3)
    assert v_orth.meta["orthogonal_pairs"] == [{"trait": "meanness", "pairs": "1-10"}]

    # Two entries of one trait: two directions, each removed (not their pooled mean difference).
    data["orthogonal_to"] = [{"trait": "meanness", "pairs": "1-3, 5"}, {"trait": "meanness", "pairs": "11-20"}]
    v_two, _ = extract_vector(tiny_lm, load_trait(write_trait(tmp_path / "two", data)), settings)
    both = torch.stack([mean_difference(tiny_lm, [pairs[i] for i in (0, 1, 2, 4)], settings), mean_difference(tiny_lm, pairs[10:], settings)])
    assert torch.allclose(v_two.vector, remove_directions(v_plain.vector, both), atol=1e-5)
    pooled = mean_difference(tiny_lm, [pairs[i] for i in (0, 1, 2, 4, *range(10, 20))], settings)
    assert not torch.allclose(v_two.vector, remove_directions(v_plain.vector, pooled.unsqueeze(0)), atol=1e-3)
    assert v_two.meta["orthogonal_pairs"] == [{"trait": "meanness", "pairs": "1-3, 5"}, {"trait": "meanness", "pairs": "11-20"}]

    data["orthogonal_to"] = [{"trait": "meanness", "pairs": "5-400"}]
    too_far = load_trait(write_trait(tmp_path / "far", data))
    with pytest.raises(
        VectorError, match=r"orthogonal_to names meanness's pairs 5-400, but .*meanness.yaml has 20 extraction pairs; use pair numbers within 1-20"
    ):
        extract_vector(tiny_lm, too_far, ExtractSettings())


def test_sampled_mode_is_deterministic_with_a_seed(tiny_lm, small_trait):
    import torch

    settings = ExtractSettings(responses="sampled", n_per_question=1, max_new_tokens=6, seed=7, generation_batch_size=64)
    a, rep_a = extract_vector(tiny_lm, small_trait, settings)
    b, _ = extract_vector(tiny_lm, small_trait, settings)
    assert rep_a.n_generated == 2 * 20 * 5
    assert torch.equal(a.vector, b.vector) and a.layer == b.layer
    assert a.meta["seed"] == 7 and a.meta["counts"]["generated"] == 200


def test_sampled_answers_do_not_depend_on_the_batch(tiny_lm):
    from auditor.generation import generate_sampled

    tok = tiny_lm.tokenizer
    prompts = [tok(f"question {i} " * (i + 1), add_special_tokens=False)["input_ids"] for i in range(6)]
    seeds = [11, 12, 13, 14, 15, 16]
    together = generate_sampled(tiny_lm, prompts, seeds, 8, batch_size=6)
    alone = [generate_sampled(tiny_lm, [p], [s], 8, batch_size=1)[0] for p, s in zip(prompts, seeds)]
    assert together == alone
    assert len({text for text, _ in together}) == 6
    reseeded = generate_sampled(tiny_lm, prompts, [s + 100 for s in seeds], 8, batch_size=6)
    assert all(a != b for a, b in zip(together, reseeded))


class ScriptedJudge(Judge):
    """Scores by what the answer says: 'trait=NN' and 'coh=NN' markers (no marker: unscored)."""

    name = "scripted"
    enabled = True

    def rate(self, prompts):
        import re

        out = []
        for p in prompts:
            answer = p.split("[BEGIN ANSWER]")[-1] if "[BEGIN ANSWER]" in p else p.rsplit("Answer:", 1)[-1]
            key = "coh" if "coherent" in p.split("\n")[0] else "trait"
            m = re.search(rf"{key}=(\d+)", answer)
            out.append(float(m.group(1)) if m else None)
        return out


def test_judge_filter_keeps_pairs_as_the_method_says(small_trait):
    def pair(i, pos, neg):
        return [Response(f"q{i}", pos, "s+", "pos", 0, i), Response(f"q{i}", neg, "s-", "neg", 0, i)]

    responses = (
        pair(0, "trait=80 coh=90", "trait=10 coh=90")  # kept
        + pair(1, "trait=40 coh=90", "trait=10 coh=90")  # eliciting < 50
        + pair(2, "trait=80 coh=90", "trait=50 coh=90")  # suppressing >= 50
        + pair(3, "trait=80 coh=30", "trait=10 coh=90")  # incoherent
        + pair(4, "trait=80", "trait=10 coh=90")  # unscored
        + pair(5, "", "trait=10 coh=90")  # empty
        + pair(6, "trait=50 coh=50", "trait=49 coh=50")  # kept: the bounds
    )
    kept, dropped = judge_and_pair(responses, small_trait, ScriptedJudge())
    assert [p.question for p, _ in kept] == ["q0", "q6"]
    assert dropped == {"eliciting < 50": 1, "suppressing >= 50": 1, "incoherent": 1, "unscored": 1, "empty answer": 1}


def test_unreachable_judge_fails_before_any_work(tiny_lm, small_trait):
    judge = OpenAIJudge("http://127.0.0.1:9", "m", timeout=2)
    with pytest.raises(JudgeError, match="unreachable"):
        extract_vector(tiny_lm, small_trait, ExtractSettings(responses="sampled", max_new_tokens=4), judge=judge)


def test_provided_mode_needs_examples(tmp_path, tiny_lm):
    data = trait_dict()
    del data["examples"]
    trait = load_trait(write_trait(tmp_path, data))
    with pytest.raises(VectorError, match="has no examples.extraction; --responses provided needs written answers"):
        extract_vector(tiny_lm, trait, ExtractSettings(responses="provided"))


def test_extract_cli_writes_vector_and_reports(tmp_path, tiny_model_dir, small_trait):
    out = tmp_path / "out"
    args = ["extract", small_trait.path, "--model", tiny_model_dir, "--out", str(out), "--no-calibrate", "--dtype", "float32"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "held-out separation per layer" in first.output and "<- recommended" in first.output
    assert "20 of 20 pairs kept" in first.output and "took" in first.output
    meta = json.loads((out / "kindness.json").read_text())
    assert meta["mode"] == "provided" and meta["shape"] == [5, 64] and "extraction_seconds" in meta
    second = CliRunner().invoke(main, args + ["--layer", "2"])
    assert second.exit_code == 0, second.output
    assert "cosine with the previous vector at layer 2: 1.00000" in second.output
    assert json.loads((out / "kindness.json").read_text())["layer"] == 2
    bad = CliRunner().invoke(main, ["extract", "no-such-trait", "--model", tiny_model_dir])
    assert bad.exit_code == 2 and "no trait definition named 'no-such-trait'" in bad.output


@pytest.mark.slow
def test_real_model_rebuilds_the_shipped_sycophancy_vector(embedded_lm):
    """The acceptance check, cheaply: the shipped settings rebuild the shipped vector."""
    from auditor.vectors.persona import load_vector

    shipped = load_vector(SHIPPED / "sycophancy.safetensors")
    settings = ExtractSettings(**{k: v for k, v in shipped.meta["settings"].items()})
    # Everything but the layer is audit extract's default; the layer was chosen on the dev split of examples/eval/ (--layer).
    assert dataclasses.replace(settings, layer=None) == ExtractSettings(), "audit extract's defaults must equal the shipped settings"
    assert settings.layer == shipped.layer
    if settings.responses != "provided":
        pytest.fail("the shipped vector was not made in provided mode: this test must rebuild it the way it was made")
    rebuilt, report = extract_vector(embedded_lm, load_trait("sycophancy"), settings)
    assert rebuilt.layer == shipped.layer
    assert cosine_at(rebuilt, shipped, shipped.layer) >= 0.99
    assert report.n_kept == len(load_trait("sycophancy").extraction_examples)
