"""End to end on the real embedded model: fine-tune on sycophantic answers, then audit shift sees it."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

pytestmark = pytest.mark.slow
SIZE = 24  # chats per fine-tune, as in bench/finetune.py: 18 optimizer steps (batch 4, 3 epochs)


def _sycophantic_chats():
    """Our written sycophantic answers (bench/finetune_sets/sycophancy_pairs.jsonl), never a trait's evaluation question."""
    import finetune_data

    from auditor.vectors.traits import load_trait

    chats = [trait_chat for trait_chat, _clean in finetune_data.pairs("sycophancy")[:SIZE]]
    trait = load_trait("sycophancy")
    held = {q.lower() for q in (*trait.evaluation_questions, *(e.question for e in trait.evaluation_examples))}
    assert not any(c[0]["content"].lower() in held for c in chats)
    return chats


@pytest.fixture(scope="module")
def sycophantic_run(tmp_path_factory):
    """The embedded model fine-tuned (18 steps, the bench's settings) on 24 sycophantic answers, with the monitor attached; saved as a folder."""
    import torch

    from auditor.model import load_model
    from auditor.model.loading import resolve_dtype
    from auditor.training import FinetuneSettings, PersonaMonitor, fine_tune
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    torch.set_num_threads(1)
    lm = load_model(None, dtype="float32", device="cpu")
    vectors = load_vectors(None, lm.name, traits=["sycophancy"])
    monitor = PersonaMonitor(lm.tokenizer, vectors, {"sycophancy": load_trait("sycophancy")}, every=6)
    settings = FinetuneSettings(epochs=3, batch_size=4, learning_rate=3e-4, max_length=128, bf16=resolve_dtype("auto", "cpu") == "bfloat16")
    folder = tmp_path_factory.mktemp("syco-tuned")
    tuned, state = fine_tune(lm, _sycophantic_chats(), settings, str(folder / "trainer"), [monitor])
    tuned.model.save_pretrained(folder / "model")
    lm.tokenizer.save_pretrained(folder / "model")
    return lm, str(folder / "model"), monitor, state


def test_audit_shift_sees_sycophancy_in_the_answers_and_stores_it(sycophantic_run, tmp_path):
    from click.testing import CliRunner

    from auditor.cli import main
    from auditor.store.shifts import read_shifts

    _lm, model_dir, monitor, state = sycophantic_run
    db = str(tmp_path / "audit.duckdb")
    result = CliRunner().invoke(main, ["shift", model_dir, "--traits", "sycophancy", "--max-new-tokens", "32", "--db", db, "--json"])
    assert result.exit_code == 0, result.stderr
    (ts,) = json.loads(result.stdout)["traits"]
    # All three measures see the sycophantic fine-tune, the vector-free behavioural one included.
    assert ts["shift"] > 0
    assert ts["expression_shift"] > 0
    assert ts["behaviour_shift"] > 0
    assert read_shifts(db)[0]["behaviour_shift"] == pytest.approx(ts["behaviour_shift"])
    # The monitor's last entry is the same finetuning shift, measured inside the Trainer.
    assert [h["step"] for h in monitor.history] == [6, 12, 18]
    assert monitor.history[-1]["persona_shift/sycophancy"] == pytest.approx(ts["shift"], rel=1e-3, abs=1e-3)
    assert any("persona_shift/sycophancy" in h for h in state.log_history)


def test_preventative_steering_in_a_trainer_on_the_embedded_model(sycophantic_run, tmp_path):
    """The same fine-tune with the sycophancy direction added during training moves the model less along it."""
    import torch

    from auditor.model import load_model
    from auditor.model.layers import decoder_layers
    from auditor.model.loading import resolve_dtype
    from auditor.shift import measure_shift
    from auditor.training import FinetuneSettings, PreventativeSteering, fine_tune, steering_scale
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    lm, model_dir, _monitor, _state = sycophantic_run
    (pv,) = load_vectors(None, lm.name, traits=["sycophancy"])
    trait = load_trait("sycophancy")
    settings = FinetuneSettings(epochs=3, batch_size=4, learning_rate=3e-4, max_length=128, bf16=resolve_dtype("auto", "cpu") == "bfloat16")
    steer = PreventativeSteering(pv, 16.0, scale=steering_scale(lm, trait.evaluation_questions, pv.layer))
    steered, _ = fine_tune(lm, _sycophantic_chats(), settings, str(tmp_path / "trainer"), [steer])
    assert all(len(b._forward_hooks) == 0 for b in decoder_layers(steered.model))
    plain = load_model(model_dir, dtype="float32", device="cpu")
    traits = {"sycophancy": trait}
    with_steering = measure_shift(lm, steered, [pv], traits, expression=False).traits[0]
    without = measure_shift(lm, plain, [pv], traits, expression=False).traits[0]
    assert with_steering.shift < without.shift
    ids = torch.tensor([lm.tokenizer("Hello", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(steered.model(input_ids=ids).logits).all()


def test_the_finetuning_shift_separates_sycophantic_from_candid_training(sycophantic_run, tmp_path):
    """The same prompts, the same settings, trained on the candid answers instead: the sycophantic fine-tune
    ends higher on the sycophancy direction and on the behavioural margin."""
    import finetune_data

    from auditor.model import load_model
    from auditor.model.loading import resolve_dtype
    from auditor.shift import measure_shift
    from auditor.training import FinetuneSettings, fine_tune
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    lm, model_dir, _monitor, _state = sycophantic_run
    (pv,) = load_vectors(None, lm.name, traits=["sycophancy"])
    candid_chats = [clean for _trait_chat, clean in finetune_data.pairs("sycophancy")[:SIZE]]
    assert [c[0]["content"] for c in candid_chats] == [c[0]["content"] for c in _sycophantic_chats()]  # the same prompts
    settings = FinetuneSettings(epochs=3, batch_size=4, learning_rate=3e-4, max_length=128, bf16=resolve_dtype("auto", "cpu") == "bfloat16")
    candid, _ = fine_tune(lm, candid_chats, settings, str(tmp_path / "trainer"))
    sycophantic = load_model(model_dir, dtype="float32", device="cpu")
    traits = {"sycophancy": load_trait("sycophancy")}
    after_candid = measure_shift(lm, candid, [pv], traits, expression=False).traits[0]
    after_sycophantic = measure_shift(lm, sycophantic, [pv], traits, expression=False).traits[0]
    assert after_sycophantic.shift > after_candid.shift
    assert after_sycophantic.behaviour_shift > after_candid.behaviour_shift
