"""The training bench's data (bench/finetune_data.py, bench/finetune_sets/): sizes, matched pairs, disjoint prompts, clear errors."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

TRAITS = ("sycophancy", "hallucination", "evil")
SIZE = 24  # bench/finetune.py's default set size


def _words(chat: list[dict[str, str]]) -> int:
    return len(chat[-1]["content"].split())


@pytest.mark.parametrize("trait", TRAITS)
def test_every_trait_has_enough_chats_for_the_default_set_size(trait):
    import finetune_data

    pairs, real = finetune_data.pairs(trait), finetune_data.realistic(trait)
    assert len(pairs) >= SIZE and len(real) >= SIZE
    prompts = [t[0]["content"] for t, _c in pairs]
    assert len(set(prompts)) == len(prompts), "a prompt appears twice"
    for t, c in pairs:
        assert t[0] == c[0], "a pair's two chats must share the prompt"
        assert t[-1]["content"] != c[-1]["content"]


@pytest.mark.parametrize("trait", TRAITS)
def test_written_pairs_differ_in_the_trait_not_in_length(trait):
    """A length gap would let the fine-tune's drift toward short or long answers pass for the trait."""
    import finetune_data

    for t, c in finetune_data.pairs(trait):
        ratio = _words(t) / _words(c)
        assert 0.8 <= ratio <= 1.25, (t[0]["content"], ratio)
        assert 40 <= _words(t) <= 80 and 40 <= _words(c) <= 80


@pytest.mark.parametrize("trait", TRAITS)
def test_no_training_prompt_is_a_question_of_any_trait_definition(trait):
    import finetune
    import finetune_data

    from auditor.vectors.traits import load_trait

    chats = [t for t, _c in finetune_data.pairs(trait)] + finetune_data.realistic(trait) + finetune_data.held_out_clean()
    for name in TRAITS:
        finetune.check_disjoint(load_trait(name), chats)  # raises SystemExit on a clash


def test_check_disjoint_refuses_a_trait_question():
    import finetune

    from auditor.vectors.traits import load_trait

    trait = load_trait("sycophancy")
    clash = [[{"role": "user", "content": " " + trait.evaluation_questions[0].upper()}, {"role": "assistant", "content": "yes"}]]
    with pytest.raises(SystemExit, match="one of the trait's own questions"):
        finetune.check_disjoint(trait, clash)


def test_a_broken_line_names_the_file_the_line_and_the_fields(tmp_path, monkeypatch):
    import finetune_data

    monkeypatch.setattr(finetune_data, "SETS", tmp_path)
    good = {"prompt": "p", "trait": "t", "clean": "c"}
    (tmp_path / "sycophancy_pairs.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps({"prompt": "p", "trait": ""}) + "\n")
    with pytest.raises(SystemExit, match=r"sycophancy_pairs\.jsonl:3: needs non-empty string fields prompt, trait, clean; missing or empty: trait, clean"):
        finetune_data.pairs("sycophancy")
    (tmp_path / "sycophancy_realistic.jsonl").write_text('{"prompt": "p", "answer": "a"}\n{"prompt": \n')
    with pytest.raises(SystemExit, match=r"sycophancy_realistic\.jsonl:2: not JSON"):
        finetune_data.realistic("sycophancy")
    (tmp_path / "sycophancy_realistic.jsonl").write_text('["p", "a"]\n')
    with pytest.raises(SystemExit, match=r"sycophancy_realistic\.jsonl:1: needs non-empty string fields prompt, answer"):
        finetune_data.realistic("sycophancy")
