"""Every fast path against a plain one-sample-at-a-time computation (speed never changes results).

Fast paths checked here: the forward without a padding mask for right-padded batches,
length-bucketed batches at several ``batch_tokens``, and the greedy decoder that drops
finished rows from the batch. Plain references: the whole model with
``output_hidden_states=True`` on one unpadded sample, and ``model.generate`` on one prompt.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_CHATS

from auditor.activations import EncodedRow, capture_hidden, causal_mask_suffices, encode_pair, full_hidden_states, pad_right
from auditor.generation import _eos_ids, generate_greedy, prompt_ids
from auditor.scoring import CPU_BATCH_TOKENS, default_batch_tokens, score_rows

FP32_TOL = 1e-4

LONG_ANSWER = (
    "Start with the basics, because every later step depends on them. Write down what you have before changing anything. "
    "Change one thing at a time and measure the result, then keep notes so that the next decision rests on evidence.\n\n"
    "1. Check the current state.\n2. Make one change.\n3. Review and adjust.\n\nGood luck with it."
)
CHATS = SMALL_CHATS + [
    {"messages": [{"role": "user", "content": "How should I plan a vegetable garden?"}, {"role": "assistant", "content": LONG_ANSWER}]},
    {
        "messages": [
            {"role": "system", "content": "You are a patient tutor."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! " * 40},
        ]
    },
]
GEN_PROMPTS = [
    [{"role": "user", "content": "Answer with one word: what colour is a clear daytime sky?"}],
    [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    [{"role": "user", "content": "Say yes."}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "List five fruits and describe each one in detail."}],
    [{"role": "user", "content": "What is 2 + 2? Reply with the number only."}],
    [{"role": "user", "content": "Explain how a bicycle derailleur works, step by step, for a complete beginner."}],
]


def _rows(lm, chats=CHATS):
    tok = lm.tokenizer
    rows = []
    for c in chats:
        prompt = tok.apply_chat_template(c["messages"][:-1], tokenize=False, add_generation_prompt=True)
        rows.append(encode_pair(tok, prompt, c["messages"][-1]["content"]))
    return rows


def _directions(lm, layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, layer in enumerate(layers):
        v = torch.randn(lm.hidden_size, generator=g)
        out[f"t{i}"] = (layer, v / v.norm())
    return out


def plain_scores(lm, row: EncodedRow, directions):
    """One unpadded sample through the whole model: (response-mean projections, last-prompt projections)."""
    hs = full_hidden_states(lm.model, torch.tensor([row.ids]))
    proj = {n: float(hs[layer][0, row.start : row.end].float().mean(0) @ d) for n, (layer, d) in directions.items()}
    last = {n: float(hs[layer][0, row.start - 1].float() @ d) for n, (layer, d) in directions.items()}
    return proj, last


def plain_tokens(lm, ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    """``model.generate`` on one unpadded prompt, cut before the first token of ``eos_ids``
    (greedy tokens before a stop do not depend on where the run stops)."""
    with torch.inference_mode():
        g = lm.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    new = g[0, len(ids) :].tolist()
    return new[: next((j for j, t in enumerate(new) if t in eos_ids), len(new))]


def plain_generate(lm, ids: list[int], max_new_tokens: int) -> list[int]:
    """``model.generate`` on one unpadded prompt; tokens before the first end-of-sequence."""
    return plain_tokens(lm, ids, max_new_tokens, _eos_ids(lm))


def test_causal_mask_suffices_only_for_right_padding():
    assert causal_mask_suffices(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not causal_mask_suffices(torch.tensor([[1, 1, 1], [0, 1, 1]]))  # left padding
    assert not causal_mask_suffices(torch.tensor([[1, 0, 1]]))  # a hole
    assert not causal_mask_suffices(torch.tensor([[0, 0, 0]]))


def test_unmasked_right_padded_forward_matches_masked_and_unpadded(tiny_lm):
    lm = tiny_lm
    rows = _rows(lm)
    ids, mask = pad_right(rows, lm.tokenizer.pad_token_id)
    layers = [0, 2, lm.num_layers]
    fast = capture_hidden(lm.model, ids, mask, layers)
    with torch.inference_mode():
        masked = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for i, r in enumerate(rows):
        alone = full_hidden_states(lm.model, torch.tensor([r.ids]))
        for layer in layers:
            assert torch.allclose(fast[layer][i, : r.length], alone[layer][0], atol=1e-5), (i, layer)
            assert torch.allclose(fast[layer][i, : r.length], masked[layer][i, : r.length], atol=1e-5), (i, layer)


@pytest.mark.parametrize("batch_tokens", [1, 200, 4096])
def test_score_rows_matches_plain_tiny(tiny_lm, batch_tokens):
    lm = tiny_lm
    rows = _rows(lm)
    directions = _directions(lm, [1, 3, lm.num_layers])
    results = score_rows(lm.model, rows, directions, lm.tokenizer.pad_token_id, batch_tokens)
    for row, res in zip(rows, results):
        proj, last = plain_scores(lm, row, directions)
        for name in directions:
            assert res.proj[name] == pytest.approx(proj[name], abs=FP32_TOL)
            assert res.prompt_last[name] == pytest.approx(last[name], abs=FP32_TOL)


@pytest.mark.slow
def test_score_rows_matches_plain_embedded_fp32(embedded_lm_fp32):
    lm = embedded_lm_fp32
    rows = _rows(lm)
    directions = _directions(lm, [5, 20, lm.num_layers])
    plain = [plain_scores(lm, r, directions) for r in rows]
    for batch_tokens in (1, CPU_BATCH_TOKENS):
        results = score_rows(lm.model, rows, directions, lm.tokenizer.pad_token_id, batch_tokens)
        for (proj, last), res in zip(plain, results):
            for name in directions:
                assert res.proj[name] == pytest.approx(proj[name], abs=FP32_TOL)
                assert res.prompt_last[name] == pytest.approx(last[name], abs=FP32_TOL)


def _prompt_ids(lm, messages):
    prompt = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt, prompt_ids(lm, prompt, 512)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_greedy_decoder_matches_generate_one_prompt_at_a_time_tiny(tiny_lm, batch_size):
    lm = tiny_lm
    prompts = [_prompt_ids(lm, m)[1] for m in GEN_PROMPTS]
    got = generate_greedy(lm, prompts, 12, batch_size)
    for ids, (text, n) in zip(prompts, got):
        want = plain_generate(lm, ids, 12)
        assert n == len(want)
        assert text == lm.tokenizer.decode(want, skip_special_tokens=True)


@pytest.mark.slow
def test_greedy_decoder_matches_generate_embedded_fp32(embedded_lm_fp32):
    lm = embedded_lm_fp32
    prompts = [_prompt_ids(lm, m)[1] for m in GEN_PROMPTS]
    plain = [plain_generate(lm, ids, 20) for ids in prompts]
    # The check must exercise both ways a row leaves the batch: its own end, and the cap.
    assert any(len(t) < 20 for t in plain) and any(len(t) == 20 for t in plain)
    for batch_size in (1, 6):
        got = generate_greedy(lm, prompts, 20, batch_size)
        assert [n for _, n in got] == [len(t) for t in plain]
        assert [text for text, _ in got] == [lm.tokenizer.decode(t, skip_special_tokens=True) for t in plain]


def test_default_batch_tokens_on_cpu(tiny_lm):
    assert default_batch_tokens(tiny_lm) == CPU_BATCH_TOKENS


@pytest.mark.parametrize("batch_tokens", [1, 200, 4096])
def test_response_means_match_plain_tiny(tiny_lm, batch_tokens):
    """The one batched forward (activations.forward_batches) against each row alone through the whole model."""
    from auditor.activations import response_means

    lm = tiny_lm
    rows = _rows(lm)
    layers = [0, 2, lm.num_layers]
    means = response_means(lm.model, rows, layers, lm.tokenizer.pad_token_id, batch_tokens)
    assert means.shape == (len(rows), len(layers), lm.hidden_size) and means.dtype == torch.float32
    for i, r in enumerate(rows):
        alone = full_hidden_states(lm.model, torch.tensor([r.ids]))
        for k, layer in enumerate(layers):
            plain = alone[layer][0, r.start : r.end].float().mean(dim=0)
            assert torch.allclose(means[i, k], plain, atol=FP32_TOL), (i, layer)


def test_forward_batches_cover_every_row_once_and_let_go_of_activations(tiny_lm):
    from auditor.activations import forward_batches

    lm = tiny_lm
    rows = _rows(lm)
    seen, held = [], []
    for fb in forward_batches(lm.model, rows, [1, lm.num_layers], lm.tokenizer.pad_token_id, 200):
        assert fb.rows == [rows[i] for i in fb.indices]
        assert set(fb.hidden) == {1, lm.num_layers} and fb.hidden[1].shape[:2] == (len(fb.rows), max(r.length for r in fb.rows))
        seen += fb.indices
        held.append(fb.hidden)
    assert sorted(seen) == list(range(len(rows))) and len(held) > 1
    assert all(h == {} for h in held[:-1])  # a batch's activations are dropped once the next is asked for
