"""Forward passes that capture hidden states, and the pure tensor maths on them.

:func:`forward_batches` is the one batched forward (length batches, right padding, capture
up to the deepest layer) that scanning (``scoring.score_rows``), extraction, calibration (a
scan of the reference set) and the bench scripts read activations from;
:func:`response_means` is its common use, each row's per-layer response mean.

Layer numbers are ``h[l]`` numbers (docs/METHOD.md): ``h[0]`` is the embedding
output, ``h[l]`` the residual stream after block ``l`` (block index ``l - 1``), and
``h[L]`` has the final norm applied, exactly as ``output_hidden_states=True`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from auditor.model.layers import decoder_layers, final_norm


class _StopForward(Exception):
    """Raised by the hook on the deepest needed block: nothing after it is computed."""


@dataclass(frozen=True, slots=True)
class EncodedRow:
    """Token ids of ``prompt + response`` and the response span ``[start, end)``."""

    ids: tuple[int, ...]
    start: int  # P: first response token
    end: int  # one past the last response token

    @property
    def length(self) -> int:
        return len(self.ids)


def encode_pair(tokenizer: Any, prompt: str, response: str, max_prompt_tokens: int | None = None) -> EncodedRow:
    """``ids = tokenize(prompt + response)``, ``P = len(tokenize(prompt))`` (METHOD.md).

    A prompt longer than ``max_prompt_tokens`` loses tokens from its start, so that
    the response and the base response are scored in the same truncated context.
    """
    ids = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if max_prompt_tokens is not None and p > max_prompt_tokens:
        cut = p - max_prompt_tokens
        ids, p = ids[cut:], max_prompt_tokens
    return EncodedRow(tuple(ids), p, len(ids))


def pad_right(rows: Sequence[EncodedRow], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows -> input_ids [B, T], attention_mask [B, T] (right padding keeps positions 0..n-1)."""
    width = max(r.length for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.length] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, : r.length] = 1
    return ids, mask


def response_mask(rows: Sequence[EncodedRow], width: int) -> torch.Tensor:
    """rows -> [B, T] float mask, 1 on response tokens ``start .. end-1``."""
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        mask[i, r.start : r.end] = 1.0
    return mask


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h: [B, T, d], mask: [B, T] -> [B, d] mean over masked positions, in float32."""
    m = mask.to(device=h.device, dtype=torch.float32)
    total = torch.einsum("btd,bt->bd", h.float(), m)
    return total / m.sum(dim=1, keepdim=True).clamp_min(1.0)


def unit(v: torch.Tensor) -> torch.Tensor:
    """v: [d] -> v / ||v|| in float32."""
    v = v.float()
    return v / v.norm()


def project(a: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """a: [B, d], direction: [d] (unit) -> [B] scalar projections ``a . v / ||v||``."""
    return a.float() @ direction.to(a.device).float()


def token_projections(h: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """h: [B, T, d], direction: [d] (unit) -> [B, T] each token's projection."""
    return h.float() @ direction.to(h.device).float()


def gather_positions(h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """h: [B, T, d], positions: [B] -> [B, d] (e.g. the last prompt token, ``P - 1``)."""
    return h[torch.arange(h.shape[0], device=h.device), positions.to(h.device)]


def causal_mask_suffices(attention_mask: torch.Tensor) -> bool:
    """attention_mask: [B, T] -> True when every row is ones then zeros (right padding, or none).

    With right padding a real token only sees earlier positions, which are all real, so
    the causal mask alone gives the same ``h[l]`` on real tokens; the forward can then
    skip the padding mask and use the faster causal attention kernel.
    """
    m = attention_mask.to(torch.int64)
    return bool((m[:, 1:] <= m[:, :-1]).all()) and bool((m[:, 0] == 1).all())


@contextmanager
def recording_hidden(
    model: Any,
    layers: Sequence[int],
    sink: Callable[[int, torch.Tensor], None],
    layers_path: str | None = None,
) -> Iterator[None]:
    """Hooks that pass ``(l, h[l] [B, T, d])`` to ``sink`` on every forward inside the block.

    ``h[L]`` gets the final norm applied, as ``output_hidden_states=True`` returns it. The hook
    on the deepest layer then raises :class:`_StopForward`, so nothing after it (later blocks,
    the final norm, the logits) is computed: the caller catches it.
    """
    blocks = decoder_layers(model, layers_path)
    n_blocks = len(blocks)
    wanted = sorted(set(int(x) for x in layers))
    if wanted and (wanted[0] < 0 or wanted[-1] > n_blocks):
        raise ValueError(f"layer {wanted[-1] if wanted[-1] > n_blocks else wanted[0]} is outside 0..{n_blocks}")
    deepest = wanted[-1] if wanted else -1
    norm = final_norm(model, layers_path) if deepest == n_blocks else None

    def _output(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, (tuple, list)) else out

    handles = []
    if 0 in wanted:
        handles.append(model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: sink(0, _output(out))))
    for layer in wanted:
        if layer == 0:
            continue

        def hook(_m, _i, out, layer=layer):
            h = _output(out)
            if layer == n_blocks and norm is not None:
                h = norm(h)
            sink(layer, h)
            if layer == deepest:
                raise _StopForward

        handles.append(blocks[layer - 1].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture_hidden(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    layers_path: str | None = None,
) -> dict[int, torch.Tensor]:
    """Run the decoder up to the deepest requested layer; return ``{l: h[l] [B, T, d]}``.

    No logits are computed and blocks after the deepest layer never run. Positions the
    attention mask marks as padding hold unspecified values.
    """
    wanted = sorted(set(int(x) for x in layers))
    if not wanted:
        return {}
    captured: dict[int, torch.Tensor] = {}
    # Right padding (what pad_right makes) needs no padding mask: see causal_mask_suffices.
    mask = None if causal_mask_suffices(attention_mask) else attention_mask.to(model.device)
    with recording_hidden(model, wanted, captured.__setitem__, layers_path):
        try:
            with torch.inference_mode():
                if wanted[-1] == 0:
                    model.get_input_embeddings()(input_ids.to(model.device))
                else:
                    model.base_model(input_ids=input_ids.to(model.device), attention_mask=mask, use_cache=False)
        except _StopForward:
            pass
    return captured


def full_hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The plain reference: the whole model with ``output_hidden_states=True`` -> (h[0], ..., h[L])."""
    with torch.inference_mode():
        out = model(
            input_ids=input_ids.to(model.device), attention_mask=None if attention_mask is None else attention_mask.to(model.device), output_hidden_states=True
        )
    return out.hidden_states


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Indices grouped so that ``len(batch) * longest <= batch_tokens`` (one row minimum), sorted by length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # ascending order: the newest row is the longest
        if current and ((len(current) + 1) * longest > batch_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class ForwardBatch:
    """One length batch of a :func:`forward_batches` pass.

    ``indices``: the rows' positions in the caller's sequence; ``rows``: those rows;
    ``hidden``: ``l -> h[l] [B, T, d]`` for each requested layer (T: the longest row).
    """

    indices: list[int]
    rows: list[EncodedRow]
    hidden: dict[int, torch.Tensor]

    def response_means(self) -> dict[int, torch.Tensor]:
        """``l -> [B, d]`` each row's mean of ``h[l]`` over its response tokens, float32."""
        if not self.hidden:
            return {}
        width = next(iter(self.hidden.values())).shape[1]
        mask = response_mask(self.rows, width)
        return {layer: masked_mean(h, mask) for layer, h in self.hidden.items()}

    def at_positions(self, positions: Sequence[int]) -> dict[int, torch.Tensor]:
        """positions: one per row -> ``l -> [B, d]`` ``h[l]`` at that token, float32."""
        index = torch.tensor(list(positions))
        return {layer: gather_positions(h, index).float() for layer, h in self.hidden.items()}


def forward_batches(
    model: Any,
    rows: Sequence[EncodedRow],
    layers: Sequence[int],
    pad_id: int,
    batch_tokens: int,
    layers_path: str | None = None,
) -> Iterator[ForwardBatch]:
    """The batched forward: rows in length batches of at most ``batch_tokens`` padded tokens.

    Yields one :class:`ForwardBatch` per batch, shortest rows first. Its ``hidden`` tensors
    are dropped when the next batch is requested, so at most one batch's activations are
    held: take what you need (means, positions, token projections) before asking for more.
    """
    for batch in length_batches([r.length for r in rows], batch_tokens):
        brows = [rows[i] for i in batch]
        ids, attn = pad_right(brows, pad_id)
        hidden = capture_hidden(model, ids, attn, layers, layers_path)
        yield ForwardBatch(batch, brows, hidden)
        hidden.clear()


def response_means(
    model: Any, rows: Sequence[EncodedRow], layers: Sequence[int], pad_id: int, batch_tokens: int, layers_path: str | None = None
) -> torch.Tensor:
    """rows -> [N, len(layers), d] each row's mean hidden state over its response tokens, float32 on the CPU.

    ``out[i, k]`` is row ``i``'s mean of ``h[layers[k]]``.
    """
    return _response_states(model, rows, layers, pad_id, batch_tokens, layers_path, with_last=False)[0]


def response_means_and_last(
    model: Any, rows: Sequence[EncodedRow], layers: Sequence[int], pad_id: int, batch_tokens: int, layers_path: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """rows -> ([N, len(layers), d] response means, [N, len(layers), d] hidden states at the last prompt token), float32 on the CPU."""
    means, lasts = _response_states(model, rows, layers, pad_id, batch_tokens, layers_path, with_last=True)
    assert lasts is not None
    return means, lasts


def _response_states(
    model: Any, rows: Sequence[EncodedRow], layers: Sequence[int], pad_id: int, batch_tokens: int, layers_path: str | None, with_last: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one batched loop of :func:`response_means` and :func:`response_means_and_last`: the response means and,
    ``with_last``, the last prompt token's states (not gathered or held without it)."""
    means = torch.zeros(len(rows), len(layers), model.get_input_embeddings().embedding_dim, dtype=torch.float32)
    lasts = torch.zeros_like(means) if with_last else None
    for fb in forward_batches(model, rows, layers, pad_id, batch_tokens, layers_path):
        m = fb.response_means()
        at = fb.at_positions([r.start - 1 for r in fb.rows]) if lasts is not None else {}
        for k, layer in enumerate(layers):
            means[fb.indices, k] = m[layer].cpu()
            if lasts is not None:
                lasts[fb.indices, k] = at[layer].cpu()
    return means, lasts
