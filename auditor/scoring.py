"""Projection and projection difference (METHOD.md), batched over many rows.

``score_rows`` takes encoded rows (dataset responses and base responses alike),
runs them through the model in length-bucketed batches that hold at most
``batch_tokens`` padded tokens (``activations.forward_batches``), and returns, per row and per requested layer, the
mean hidden state over the response tokens, the hidden state at the last prompt
token, and (optionally) each response token's projection on each direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from auditor.activations import EncodedRow, forward_batches, length_batches, project  # noqa: F401 (length_batches: part of this module's API)
from auditor.model.loading import cuda_budget

# Padded tokens per forward on CPU. Rows of a few hundred tokens already fill the matrix
# units (AMX, AVX-512 BF16) one at a time, so larger batches only add padding; short rows still get
# grouped. Measured in bench/NOTES.md ("Throughput": 1,024-8,192 within noise, 16,384 slower).
CPU_BATCH_TOKENS = 4096


def default_batch_tokens(lm) -> int:
    """``batch_tokens`` for ``lm``'s device: from free memory on CUDA, ``CPU_BATCH_TOKENS`` elsewhere.

    On CUDA the estimate is the activation memory of one token while the forward runs
    (the residual stream of every captured layer plus one block's attention and MLP
    intermediates, doubled for the allocator's slack) against a quarter of the free memory.
    """
    budget = cuda_budget(lm)
    if budget is None:
        return CPU_BATCH_TOKENS
    available, cfg, element = budget
    d = int(cfg.hidden_size)
    intermediate = int(getattr(cfg, "intermediate_size", 4 * d) or 4 * d)
    per_token = 2 * element * (int(cfg.num_hidden_layers) * d + 8 * d + 3 * intermediate)
    return max(CPU_BATCH_TOKENS, min(available // per_token, 1 << 20) // 1024 * 1024)


def reference_point(last: torch.Tensor, direction: torch.Tensor, reference: tuple[torch.Tensor, float] | None) -> torch.Tensor:
    """last: [B, d] hidden states at the last prompt token -> [B] reference points of the prompt-last baseline:
    their projection on ``direction``, or, with a learned reference (weights, bias), ``weights . last + bias``."""
    if reference is None:
        return project(last, direction)
    weights, bias = reference
    return last.float() @ weights.to(last.device).float() + bias


def vector_targets(vectors) -> tuple[dict[str, tuple[int, torch.Tensor]], dict[str, tuple[torch.Tensor, float]]]:
    """``score_rows``' ``directions`` and ``references`` for persona vectors, each at its layer."""
    directions = {pv.trait: (pv.layer, pv.direction()) for pv in vectors}
    references = {pv.trait: ref for pv in vectors if (ref := pv.reference_at()) is not None}
    return directions, references


@dataclass
class RowScores:
    """Projections for one row: ``proj[name]`` (response mean) and ``prompt_last[name]`` (the reference point at the
    last prompt token: its projection, or a learned reference's prediction there)."""

    proj: dict[str, float]
    prompt_last: dict[str, float]
    token_values: dict[str, list[float]] | None = None


def score_rows(
    model,
    rows: Sequence[EncodedRow],
    directions: dict[str, tuple[int, torch.Tensor]],
    pad_id: int,
    batch_tokens: int = 8192,
    token_values_for: Sequence[bool] | None = None,
    layers_path: str | None = None,
    references: dict[str, tuple[torch.Tensor, float]] | None = None,
) -> list[RowScores]:
    """Project every row's response mean (and last prompt token) on each named direction.

    ``directions``: name -> (layer, unit direction [d]). ``token_values_for[i]`` asks
    for row i's per-token projections (the report's heat map). ``references``: name ->
    (weights [d], bias) of a vector's learned reference (``PersonaVector.reference_at``):
    that name's ``prompt_last`` is then ``weights . h_last + bias`` instead of the projection of ``h_last``.
    """
    references = references or {}
    out: list[RowScores | None] = [None] * len(rows)
    layers = sorted({layer for layer, _ in directions.values()})
    for fb in forward_batches(model, rows, layers, pad_id, batch_tokens, layers_path):
        batch, brows, hidden = fb.indices, fb.rows, fb.hidden
        means = fb.response_means()
        lasts = fb.at_positions([r.start - 1 for r in brows])
        proj = {name: project(means[layer], d).tolist() for name, (layer, d) in directions.items()}
        plast = {name: reference_point(lasts[layer], d, references.get(name)).tolist() for name, (layer, d) in directions.items()}
        want = [token_values_for is not None and token_values_for[i] for i in batch]
        tokvals = None
        if any(want):
            tokvals = {name: (hidden[layer].float() @ d.to(hidden[layer].device).float()).cpu() for name, (layer, d) in directions.items()}
        for j, i in enumerate(batch):
            tv = None
            if want[j] and tokvals is not None:
                r = brows[j]
                tv = {name: vals[j, r.start : r.end].tolist() for name, vals in tokvals.items()}
            out[i] = RowScores({n: v[j] for n, v in proj.items()}, {n: v[j] for n, v in plast.items()}, tv)
    return out  # type: ignore[return-value]
