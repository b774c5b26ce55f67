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
