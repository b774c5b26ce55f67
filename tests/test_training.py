"""auditor.training: preventative steering and the persona monitor inside a real transformers.Trainer."""

from __future__ import annotations

import copy

import pytest
import torch

CHATS = [
    [{"role": "user", "content": f"Question number {i}: is my plan good?"}, {"role": "assistant", "content": f"Answer {i}: yes, it is a wonderful plan."}]
    for i in range(8)
]


def _vector(lm, layer: int, seed: int = 0, trait: str = "sycophancy"):
    from auditor.vectors import PersonaVector

    g = torch.Generator().manual_seed(seed)
    return PersonaVector(trait, torch.randn(lm.num_layers + 1, lm.hidden_size, generator=g), layer)


def _ids(lm, text: str = "Hello there, how are you today?"):
    return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_chat_features_label_only_the_answer(tiny_lm):
    from auditor.training import chat_features

    (f,) = chat_features(tiny_lm.tokenizer, CHATS[:1])
    labelled = [t for t, lab in zip(f["input_ids"], f["labels"]) if lab != -100]
    assert f["labels"][: len(f["labels"]) - len(labelled)] == [-100] * (len(f["labels"]) - len(labelled))
    assert tiny_lm.tokenizer.decode(labelled).startswith("Answer 0: yes, it is a wonderful plan.<|im_end|>")


def test_chat_features_rejects_a_chat_without_final_answer(tiny_lm):
    from auditor.errors import AuditorError
    from auditor.training import chat_features

    with pytest.raises(AuditorError, match="conversation 1: the last message must be the assistant's"):
        chat_features(tiny_lm.tokenizer, [CHATS[0], CHATS[0][:1]])


def test_steering_adds_exactly_alpha_scale_unit_in_training_mode_only(tiny_lm):
    from auditor.activations import capture_hidden
    from auditor.training import PreventativeSteering

    model = copy.deepcopy(tiny_lm.model)
    layer = 2
    pv = _vector(tiny_lm, layer)
    ids = _ids(tiny_lm)
    mask = torch.ones_like(ids)
    plain = capture_hidden(model, ids, mask, [layer])[layer]
    steer = PreventativeSteering(pv, alpha=3.0, scale=0.5)
    with steer.applied(model):
        model.eval()
        in_eval = capture_hidden(model, ids, mask, [layer])[layer]
        model.train()
        in_train = capture_hidden(model, ids, mask, [layer])[layer]
    model.eval()
    expected = plain + 1.5 * pv.vector[layer] / pv.vector[layer].norm()
    assert torch.equal(in_eval, plain)
    assert torch.allclose(in_train, expected, atol=1e-5)
    assert not torch.allclose(in_train, plain, atol=1e-2)


def test_steering_removed_leaves_outputs_bit_identical(tiny_lm):
    from auditor.model.layers import decoder_layers
    from auditor.training import PreventativeSteering

    model = copy.deepcopy(tiny_lm.model)
    ids = _ids(tiny_lm)
    before = _logits(model, ids)
    # Hooks already on the blocks (the session's shared tiny model) are not the steering's own.
    hooks_before = [len(block._forward_hooks) for block in decoder_layers(model)]
    steer = PreventativeSteering(_vector(tiny_lm, 1), alpha=50.0)
    with steer.applied(model):
        model.train()
        during = _logits(model, ids)
        model.eval()
    after = _logits(model, ids)
    assert not torch.allclose(during, before)
    assert torch.equal(after, before)
    assert [len(block._forward_hooks) for block in decoder_layers(model)] == hooks_before


def _train(tiny_lm, tmp_path, callbacks, steps_epochs: float = 2.0):
    from auditor.training import FinetuneSettings, fine_tune

    return fine_tune(tiny_lm, CHATS, FinetuneSettings(epochs=steps_epochs, batch_size=2, learning_rate=1e-3), str(tmp_path / "trainer"), callbacks)


def test_steering_callback_in_a_trainer_changes_training_then_is_gone(tiny_lm, tmp_path):
    from transformers import LlamaForCausalLM

    from auditor.model.layers import decoder_layers
    from auditor.training import PreventativeSteering

    plain, _ = _train(tiny_lm, tmp_path, [])
    hooks_before = [len(block._forward_hooks) for block in decoder_layers(plain.model)]
    steer = PreventativeSteering(_vector(tiny_lm, 2), alpha=20.0)
    steered, state = _train(tiny_lm, tmp_path, [steer])
    assert state.global_step == 8
    assert [len(block._forward_hooks) for block in decoder_layers(steered.model)] == hooks_before
    ids = _ids(tiny_lm)
    assert not torch.allclose(_logits(plain.model, ids), _logits(steered.model, ids))  # the steering reached the gradients
    fresh = LlamaForCausalLM(steered.model.config)
    fresh.load_state_dict(steered.model.state_dict())
    fresh.eval()
    assert torch.equal(_logits(fresh, ids), _logits(steered.model, ids))  # nothing left on the trained model
    assert len(tiny_lm.model.state_dict()) and not any(p.requires_grad for p in tiny_lm.model.parameters())  # the base is untouched


def test_monitor_logs_shift_against_an_independent_computation(tiny_lm, tmp_path):
    from auditor.activations import full_hidden_states
    from auditor.shift import question_prompts
    from auditor.training import PersonaMonitor
    from auditor.vectors.traits import load_trait

    pv = _vector(tiny_lm, 3)
    trait = load_trait("sycophancy")
    monitor = PersonaMonitor(tiny_lm.tokenizer, [pv], {"sycophancy": trait}, every=3)
    tuned, state = _train(tiny_lm, tmp_path, [monitor])
    logged = [h for h in state.log_history if "persona_shift/sycophancy" in h]
    assert [h["step"] for h in logged] == [3, 6, 8]
    unit = pv.vector[3] / pv.vector[3].norm()

    def mean_last(model):
        vals = []
        for p in question_prompts(tiny_lm.tokenizer, trait.evaluation_questions):
            ids = torch.tensor([tiny_lm.tokenizer(p, add_special_tokens=False)["input_ids"]])
            vals.append(float(full_hidden_states(model, ids)[3][0, -1].float() @ unit))
        return sum(vals) / len(vals)

    expected = mean_last(tuned.model) - mean_last(tiny_lm.model)
    assert abs(expected) > 1e-3
    assert logged[-1]["persona_shift/sycophancy"] == pytest.approx(expected, abs=1e-4)


def test_monitor_refuses_a_vector_without_definition(tiny_lm):
    from auditor.errors import AuditorError
    from auditor.training import PersonaMonitor

    with pytest.raises(AuditorError, match="no trait definition for sycophancy"):
        PersonaMonitor(tiny_lm.tokenizer, [_vector(tiny_lm, 1)], {}, every=2)
