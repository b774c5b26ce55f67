"""The base model's own responses ``y'``: greedy, batched, left-padded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from auditor.model.loading import LoadedModel


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Everything that changes a base response; part of the cache key."""

    max_new_tokens: int = 256
    max_prompt_tokens: int | None = 512
    dtype: str = "float32"
    generator: str = "hf"

    def key(self) -> str:
        payload = json.dumps({"max_new_tokens": self.max_new_tokens, "max_prompt_tokens": self.max_prompt_tokens, "dtype": self.dtype, "generator": self.generator, "greedy": True}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def prompt_ids(lm: LoadedModel, prompt: str, max_prompt_tokens: int | None) -> list[int]:
    """The prompt's tokens as scoring sees them (left-truncated to the cap)."""
    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        ids = ids[len(ids) - max_prompt_tokens :]
    return ids


def generate_greedy(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[tuple[str, int]]:
    """Greedy continuations of token-id prompts -> [(text, generated token count)], in input order.

    Prompts are sorted by length and left-padded in batches; generation stops for a
    batch as soon as every sequence has ended.
    """
    tok = lm.tokenizer
    pad_id = tok.pad_token_id
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = tok.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[str, int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
        with torch.inference_mode():
            generated = lm.model.generate(
                input_ids=ids.to(lm.model.device),
                attention_mask=mask.to(lm.model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos,
            )
        new = generated[:, width:].cpu()
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        for row, i in enumerate(chunk):
            tokens = new[row].tolist()
            n = len(tokens)
            for j, t in enumerate(tokens):
                if t in eos_ids:
                    n = j
                    break
            out[i] = (tok.decode(tokens[:n], skip_special_tokens=True), n)
    return out  # type: ignore[return-value]


class _PerRowSampler:
    """Logits processor that samples each row with its own ``torch.Generator``.

    Used with greedy decoding: it returns scores that are ``-inf`` everywhere except at
    the sampled token, so greedy's argmax takes it. Seeding per row (not one global
    seed per batch) makes a sample independent of which other prompts share its batch.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float):
        self.generators = generators
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Inverse-CDF sampling: one uniform draw per row from its own generator. (torch.multinomial
        # costs ~20 ms per call on a 50k vocabulary; this is one cumsum for the whole batch.)
        cdf = torch.softmax(scores.double() / self.temperature, dim=-1).cpu().cumsum(dim=-1)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        chosen = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_max(cdf.shape[1] - 1).to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen, 0.0)
        return out


def generate_sampled(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> list[tuple[str, int]]:
    """Sampled continuations (full distribution, no top-k/top-p) -> [(text, token count)], in input order.

    ``seeds[i]`` seeds prompt i's own generator, so results do not depend on the batch
    a prompt lands in (beyond float rounding of padded batches). Batching as in
    :func:`generate_greedy`: sorted by length, left-padded.
    """
    from transformers import LogitsProcessorList

    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not temperature > 0:
        raise ValueError("temperature must be > 0; use generate_greedy for temperature 0")
    tok = lm.tokenizer
    pad_id = tok.pad_token_id
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = tok.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    out: list[tuple[str, int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
        sampler = _PerRowSampler([torch.Generator().manual_seed(int(seeds[i])) for i in chunk], temperature)
        with torch.inference_mode():
            generated = lm.model.generate(
                input_ids=ids.to(lm.model.device),
                attention_mask=mask.to(lm.model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos,
                logits_processor=LogitsProcessorList([sampler]),
            )
        new = generated[:, width:].cpu()
        for row, i in enumerate(chunk):
            tokens = new[row].tolist()
            n = next((j for j, t in enumerate(tokens) if t in eos_ids), len(tokens))
            out[i] = (tok.decode(tokens[:n], skip_special_tokens=True), n)
    return out  # type: ignore[return-value]
