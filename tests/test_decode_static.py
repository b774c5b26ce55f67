"""The static-cache decoder (compiled decode step) against the current decoder and plain one-prompt generation.

Speed never changes results: ``greedy_decode_static`` must give the same tokens as
``greedy_decode`` (KV cache that drops finished rows) and as ``model.generate`` on one
unpadded prompt at a time, both with and without ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch
from test_speed_paths import GEN_PROMPTS, _prompt_ids, plain_tokens

from auditor.generation import _bucket, _eos_ids, _left_padded, _prefill_mask, generate_greedy, greedy_decode, greedy_decode_static

PROMPTS = GEN_PROMPTS + [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sea salty? Explain the chemistry and the geology."}],
    [{"role": "user", "content": "Translate 'good morning' into French, German, Spanish, Italian and Portuguese."}],
]


def _cut(tokens: list[int], stops: set[int]) -> list[int]:
    return tokens[: next((j for j, t in enumerate(tokens) if t in stops), len(tokens))]


@pytest.fixture(scope="module")
def varied_lm(tiny_lm):
    """A tiny random Llama with larger weights than conftest's (whose greedy output repeats one
    token), so that rows differ and can be made to end at different steps."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_lm.tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return SimpleNamespace(model=LlamaForCausalLM(config).eval(), tokenizer=tok)


# (row, step): the token the plain decoder emits there becomes an end of sequence, so rows 0, 3,
# 5, 7 and 8 of 9 end at steps 2, 5, 9, 3 and 6 (a batch of 16 compacts to 8, then to 4).
STOP_AT = ((0, 2), (3, 5), (5, 9), (7, 3), (8, 6))


def _stops_at_various_steps(lm, prompts, n):
    plain = [plain_tokens(lm, p, n, _eos_ids(lm)) for p in prompts]
    return _eos_ids(lm) | {plain[row][step] for row, step in STOP_AT}


def test_bucket_is_the_next_power_of_two():
    assert [_bucket(n) for n in (1, 2, 3, 4, 5, 17, 32, 33)] == [1, 2, 4, 4, 8, 32, 32, 64]


def test_prefill_mask_is_causal_over_real_tokens_only():
    mask = _prefill_mask(torch.tensor([[0, 1, 1], [1, 1, 1]]), 5)
    assert mask.shape == (2, 1, 3, 5)
    # row 0: position 0 is padding (sees itself only); positions 1, 2 see real tokens 1..q
    assert mask[0, 0].tolist() == [[True, False, False, False, False], [False, True, False, False, False], [False, True, True, False, False]]
    assert mask[1, 0].tolist() == [[True, False, False, False, False], [True, True, False, False, False], [True, True, True, False, False]]


# The compiled case is marked slow: torch.compile takes tens of seconds even for the tiny model.
@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_static_decoder_matches_current_and_plain_tiny(varied_lm, compile):
    lm = varied_lm
    n = 14
    prompts = sorted((_prompt_ids(lm, m)[1] for m in PROMPTS), key=len)
    eos = _stops_at_various_steps(lm, prompts, n)
    plain = [plain_tokens(lm, p, n, eos) for p in prompts]
    lengths = [len(t) for t in plain]
    # Rows end at several steps (so the batch compacts from 16 to 8 and 4) and at the cap.
    assert sorted(lengths) == [2, 3, 5, 6, 9, n, n, n, n]
    ids, mask = _left_padded(prompts, lm.tokenizer.pad_token_id)
    current = greedy_decode(lm.model, ids, mask, n, eos)
    static = greedy_decode_static(lm.model, ids, mask, n, eos, compile=compile)
    assert static == current
    assert static == plain


def test_static_decoder_odd_batches_and_one_row_tiny(varied_lm):
    lm = varied_lm
    prompts = sorted((_prompt_ids(lm, m)[1] for m in PROMPTS), key=len)
    eos = _eos_ids(lm)
    for chunk in (prompts[:1], prompts[:3], prompts[2:7]):
        ids, mask = _left_padded(chunk, lm.tokenizer.pad_token_id)
        want = [plain_tokens(lm, p, 9, eos) for p in chunk]
        assert greedy_decode_static(lm.model, ids, mask, 9, eos, compile=False) == want


def test_generate_greedy_static_option_tiny(varied_lm):
    lm = varied_lm
    prompts = [_prompt_ids(lm, m)[1] for m in PROMPTS]
    assert generate_greedy(lm, prompts, 10, 4, decoder="static") == generate_greedy(lm, prompts, 10, 4, decoder="dynamic")
    with pytest.raises(ValueError, match="decoder"):
        generate_greedy(lm, prompts, 10, 4, decoder="fast")


# The compiled step is checked on the tiny model above; on the embedded model its compile takes
# minutes on a 2-core CPU, so the real-model check runs the same static-cache decoder eagerly.
@pytest.mark.slow
def test_static_decoder_matches_plain_embedded_fp32(embedded_lm_fp32):
    lm = embedded_lm_fp32
    n = 40
    prompts = [_prompt_ids(lm, m)[1] for m in PROMPTS]
    eos = _eos_ids(lm)
    plain = [plain_tokens(lm, p, n, eos) for p in prompts]
    # Both ways a row leaves the batch: its own end, and the cap.
    assert any(len(t) < n for t in plain) and any(len(t) == n for t in plain)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    ids, mask = _left_padded([prompts[i] for i in order], lm.tokenizer.pad_token_id)
    static = greedy_decode_static(lm.model, ids, mask, n, eos, compile=False)
    current = greedy_decode(lm.model, ids, mask, n, eos)
    assert static == current
    assert static == [plain[i] for i in order]
