"""Steering check: does adding the vector make the model express the trait more?

For each ``alpha``, the model answers the trait's evaluation questions (greedy) while a
forward hook on decoder block ``l - 1`` adds ``alpha * s_l * v[l] / ||v[l]||`` to the
residual stream ``h[l]`` at every position, prompt and generated tokens alike. The scale
``s_l`` makes alpha comparable across layers and models: it is the median norm of
``h[l]`` over the evaluation prompts' tokens (the first token, an attention sink with an
outsized norm in many models, is left out) divided by :data:`ALPHA_UNIT`, so
``alpha = ALPHA_UNIT`` adds a vector as long as a typical residual state.

Expression of each answer is measured as:

- ``judge``: the judge's 0-100 trait score (when a judge is given);
- ``projection``: the answer's own projection on the vector, read WITHOUT steering
  (the answer is teacher-forced in the unsteered model, mean over its tokens at ``l``);
- ``preference`` (when the definition has written evaluation examples): the mean
  per-token log-likelihood of the eliciting example minus the suppressing one, under
  steering. It does not use the vector's own projection, so it checks the vector's
  effect on the model's output distribution independently.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from auditor.errors import VectorError
from auditor.vectors.judges import Judge, NoJudge
from auditor.vectors.persona import PersonaVector
from auditor.vectors.traits import Trait

DEFAULT_ALPHAS = (-8.0, -4.0, 0.0, 4.0, 8.0)
DEFAULT_MAX_NEW_TOKENS = 48  # each steered answer
ALPHA_UNIT = 32.0  # alpha 32 adds one median residual norm; alpha 8 a quarter of it


@dataclass
class AlphaResult:
    alpha: float
    added_norm: float
    projection: float  # mean over answers
    judge: float | None
    preference: float | None
    n_answers: int
    n_empty: int
    distinct: float  # mean share of distinct tokens per answer: low values flag degenerate loops
    example: str


@dataclass
class SteeringResult:
    trait: str
    layer: int
    scale: float  # s_l: the added norm per unit of alpha
    residual_norm: float
    rows: list[AlphaResult] = field(default_factory=list)
    measure: str = "projection"

    def values(self, measure: str | None = None) -> list[float | None]:
        m = measure or self.measure
        return [getattr(r, m) for r in self.rows]

    def rises(self, measure: str | None = None) -> bool:
        """True when the measure increases strictly from each alpha to the next."""
        vals = self.values(measure)
        if any(v is None or not math.isfinite(v) for v in vals):
            return False
        return all(b > a for a, b in zip(vals, vals[1:]))


@contextlib.contextmanager
def add_to_layer(model: Any, layer: int, delta: Any, layers_path: str | None = None) -> Iterator[None]:
    """Within the block, ``h[layer] += delta`` (delta: [d]) at every position.

    ``layer >= 1`` hooks the output of decoder block ``layer - 1``; ``layer == 0`` the
    embedding output. At ``layer == L`` the addition happens before the final norm.
    """
    from auditor.model.layers import decoder_layers

    if layer == 0:
        module = model.get_input_embeddings()
    else:
        blocks = decoder_layers(model, layers_path)
        if not 1 <= layer <= len(blocks):
            raise VectorError(f"layer {layer} is outside 0..{len(blocks)}")
        module = blocks[layer - 1]

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta.to(output[0].dtype),) + tuple(output[1:])
        return output + delta.to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def question_prompts(tokenizer: Any, questions: Sequence[str]) -> list[str]:
    """Chat prompts with no system message (the template's default applies, as in scan)."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in questions]


def residual_norm(lm: Any, prompts: Sequence[str], layer: int) -> float:
    """Median ``||h[layer][t]||`` over the prompts' tokens, first token excluded."""
    import torch

    from auditor.activations import EncodedRow, capture_hidden, pad_right

    tok = lm.tokenizer
    rows = [EncodedRow(tuple(ids), len(ids), len(ids)) for ids in (tok(p, add_special_tokens=False)["input_ids"] for p in prompts)]
    ids, mask = pad_right(rows, tok.pad_token_id)
    h = capture_hidden(lm.model, ids, mask, [layer], lm.layers_path)[layer].float()
    norms = h.norm(dim=-1)
    keep = mask.bool().clone()
    keep[:, 0] = False
    return float(torch.median(norms[keep.to(norms.device)]))


def preference(lm: Any, trait: Trait, batch_size: int = 8) -> float | None:
    """Mean over evaluation examples of (mean token log-prob of pos - of neg), under whatever hook is active."""
    import torch

    from auditor.activations import encode_pair, pad_right

    examples = trait.evaluation_examples
    if not examples:
        return None
    tok = lm.tokenizer
    prompts = question_prompts(tok, [e.question for e in examples])
    rows = []
    for p, e in zip(prompts, examples):
        rows += [encode_pair(tok, p, e.pos), encode_pair(tok, p, e.neg)]
    means: list[float] = []
    model = lm.model
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids, mask = pad_right(batch, tok.pad_token_id)
        with torch.inference_mode():
            hidden = model.base_model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False).last_hidden_state
            for j, r in enumerate(batch):
                h = hidden[j, r.start - 1 : r.end - 1]  # positions that predict the response tokens
                logp = torch.log_softmax(model.get_output_embeddings()(h).float(), dim=-1)
                target = torch.tensor(r.ids[r.start : r.end], device=logp.device)
                means.append(float(logp.gather(1, target[:, None]).mean()))
    return statistics.fmean(means[0::2]) - statistics.fmean(means[1::2])


def steering_check(
    lm: Any,
    pv: PersonaVector,
    trait: Trait,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    judge: Judge | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    n_questions: int | None = None,
    layer: int | None = None,
    batch_size: int = 20,
) -> SteeringResult:
    """Answer the evaluation questions under ``alpha * s_l * unit(v[l])`` for each alpha; see the module docstring."""
    from auditor.activations import encode_pair
    from auditor.generation import generate_greedy
    from auditor.scoring import score_rows

    judge = judge or NoJudge()
    layer = pv.layer if layer is None else layer
    if pv.num_layers != lm.num_layers or pv.hidden_size != lm.hidden_size:
        raise VectorError(
            f"{pv.path or pv.trait}: shape [{pv.num_layers + 1}, {pv.hidden_size}] does not fit {lm.name} ([{lm.num_layers + 1}, {lm.hidden_size}])"
        )
    judge.check()
    questions = list(trait.evaluation_questions[: n_questions or None])
    tok = lm.tokenizer
    prompts = question_prompts(tok, questions)
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    direction = pv.direction(layer)
    norm = residual_norm(lm, prompts, layer)
    scale = norm / ALPHA_UNIT
    result = SteeringResult(trait.name, layer, scale, norm, measure="judge" if judge.enabled else "projection")
    for alpha in alphas:
        delta = (alpha * scale) * direction.to(lm.model.device)
        with add_to_layer(lm.model, layer, delta, lm.layers_path):
            answers = generate_greedy(lm, prompt_ids, max_new_tokens, batch_size)
            pref = preference(lm, trait)
        texts = [a for a, _ in answers]
        usable = [(p, q, a) for p, q, a in zip(prompts, questions, texts) if a.strip()]
        rows = [encode_pair(tok, p, a) for p, _, a in usable]
        rows = [r for r in rows if r.end > r.start]
        proj = [s.proj["v"] for s in score_rows(lm.model, rows, {"v": (layer, direction)}, tok.pad_token_id, layers_path=lm.layers_path)] if rows else []
        judged = [s for s in judge.score(trait.rubric, [(q, a) for _, q, a in usable]) if s is not None] if judge.enabled else []
        distinct = [len(set(ids)) / len(ids) for ids in (tok(a, add_special_tokens=False)["input_ids"] for _, _, a in usable) if ids]
        result.rows.append(
            AlphaResult(
                alpha=float(alpha),
                added_norm=abs(alpha) * scale,
                projection=statistics.fmean(proj) if proj else float("nan"),
                judge=statistics.fmean(judged) if judged else None,
                preference=pref,
                n_answers=len(usable),
                n_empty=len(texts) - len(usable),
                distinct=statistics.fmean(distinct) if distinct else 0.0,
                example=texts[0] if texts else "",
            )
        )
    return result
