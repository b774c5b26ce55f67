"""The base model's own responses ``y'``: greedy, batched, left-padded."""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from auditor.config import GENERATORS
from auditor.errors import AuditorError
from auditor.model.loading import LoadedModel, cuda_budget

# Prompts decoded together on CPU (bench/NOTES.md: 32 beat 16 and 64 on 2 cores with AVX-512 BF16).
CPU_GENERATION_BATCH = 32
MAX_GPU_GENERATION_BATCH = 256


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Everything that changes a base response; part of the cache key."""

    max_new_tokens: int
    max_prompt_tokens: int | None
    dtype: str
    generator: str = "hf"  # keys made before --generator existed had no generator: they are hf's

    def key(self) -> str:
        payload = json.dumps(
            {
                "max_new_tokens": self.max_new_tokens,
                "max_prompt_tokens": self.max_prompt_tokens,
                "dtype": self.dtype,
                "generator": self.generator,
                "greedy": True,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_generation_batch_size(lm: LoadedModel, max_new_tokens: int, max_prompt_tokens: int | None) -> int:
    """Prompts generated together: ``CPU_GENERATION_BATCH`` on CPU; on CUDA as many as the KV
    cache of full-length rows fits in a quarter of the free memory (16 to 256)."""
    budget = cuda_budget(lm)
    if budget is None:
        return CPU_GENERATION_BATCH
    available, cfg, element = budget
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    length = (max_prompt_tokens or 2048) + max_new_tokens
    per_row = 2 * int(cfg.num_hidden_layers) * heads * head_dim * length * element
    return max(16, min(MAX_GPU_GENERATION_BATCH, available // per_row))


def resolve_generation_dtype(requested: str, lm: LoadedModel) -> str:
    """``auto``: float32 on CPU, the scoring model's dtype elsewhere.

    Greedy decoding in bfloat16 is not batch-invariant: measured on the embedded model, only
    11 of 32 base responses (128 tokens) were the same generated 32 at a time as 8 at a
    time, against 32 of 32 in float32, at half the speed (bench/NOTES.md "Throughput"). A
    base response that changes with the batch size moves that sample's delta by up to ~10,
    so on CPU base responses are generated in float32 by default (the scoring forward stays
    bfloat16, within the documented tolerance). On a GPU a float32 copy of a large model
    costs too much memory; pass --generation-dtype float32 there to get the same guarantee.
    """
    if requested != "auto":
        return requested
    return "float32" if str(lm.device).startswith("cpu") else lm.dtype


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def prompt_ids(lm: LoadedModel, prompt: str, max_prompt_tokens: int | None) -> list[int]:
    """The prompt's tokens as scoring sees them (left-truncated to the cap)."""
    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        ids = ids[len(ids) - max_prompt_tokens :]
    return ids


def _eos_ids(lm: LoadedModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> input_ids [B, T], attention_mask [B, T], padded on the left so every row ends at T - 1."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def greedy_decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_ids: set[int],
) -> list[list[int]]:
    """Greedy decoding with a KV cache: input_ids, attention_mask [B, T] (left-padded) ->
    each row's new token ids, end of sequence excluded.

    The same tokens as ``model.generate(do_sample=False)``, computed with less waste: a row
    leaves the batch (and its KV cache rows are dropped) as soon as it ends, so finished
    rows cost nothing, only the last position's logits are computed, and the loop stops
    when no row is left.
    """
    device = model.device
    batch = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(batch)]
    mask = attention_mask.to(device)
    # Positions count real tokens only, as generate() computes them for left-padded rows.
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    alive = torch.arange(batch, device=device)
    parameters = inspect.signature(model.forward).parameters
    # Only the last position's logits are needed (the vocabulary projection is a large matmul).
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    # transformers 5.x calls the KV cache ``cache``; earlier releases ``past_key_values``.
    cache_arg = "cache" if "cache" in parameters else "past_key_values"
    with torch.inference_mode():
        out = model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=positions, use_cache=True, **last_only)
        cache = getattr(out, cache_arg)
        next_position = positions[:, -1:] + 1
        for step in range(max_new_tokens):
            chosen = out.logits[:, -1].float().argmax(dim=-1)
            chosen_list = chosen.tolist()
            alive_list = alive.tolist()
            keep = [j for j, t in enumerate(chosen_list) if t not in eos_ids]
            for j in keep:
                tokens[alive_list[j]].append(chosen_list[j])
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(alive_list):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_position, chosen, alive = mask[index], next_position[index], chosen[index], alive[index]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position, use_cache=True, **last_only, **{cache_arg: cache})
            next_position = next_position + 1
    return tokens


def generate_greedy(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[tuple[str, int]]:
    """Greedy continuations of token-id prompts -> [(text, generated token count)], in input order.

    Prompts are sorted by length and left-padded in batches of ``batch_size``; the tokens are
    those of ``generate(do_sample=False)`` (:func:`greedy_decode`).
    """
    tok = lm.tokenizer
    eos_ids = _eos_ids(lm)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[str, int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = _left_padded([prompts[i] for i in chunk], tok.pad_token_id)
        new = greedy_decode(lm.model, ids, mask, max_new_tokens, eos_ids)
        for row, i in enumerate(chunk):
            out[i] = (tok.decode(new[row], skip_special_tokens=True), len(new[row]))
    return out  # type: ignore[return-value]


# Share of GPU memory vLLM may take: the scoring model and its batches need the rest.
VLLM_MEMORY_SHARE = 0.5
_VLLM_ENGINES: dict[str, Any] = {}


def generate_base(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    generator: str = "hf",
    trust_remote_code: bool = False,
) -> list[tuple[str, int]]:
    """Base responses with the chosen generator: ``hf`` (:func:`generate_greedy`) or ``vllm``."""
    if generator == "vllm":
        return generate_vllm(lm, prompts, max_new_tokens, trust_remote_code)
    if generator != "hf":
        raise AuditorError(f"unknown --generator {generator!r}; use one of {', '.join(GENERATORS)}")
    return generate_greedy(lm, prompts, max_new_tokens, batch_size)


def generate_vllm(lm: LoadedModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, trust_remote_code: bool = False) -> list[tuple[str, int]]:
    """Greedy continuations with vLLM (``persona-audit[vllm]``, a CUDA GPU); the same contract as
    :func:`generate_greedy`: ``[(text, generated token count)]`` in input order, the end of
    sequence excluded.

    vLLM loads its own copy of the weights from ``lm.path`` (for the embedded model: the
    converted safetensors copy) beside the scoring model, so it gets only part of the GPU
    memory; the engine is made once per process. Its kernels are not transformers', so a
    greedy token may differ here and there: the generator is part of the base-response
    cache key, and scores are computed from the text exactly as for ``hf``.
    """
    try:
        import vllm
    except ImportError as e:
        raise AuditorError(
            "--generator vllm needs vLLM, which is not installed: pip install 'persona-audit[vllm]' on a machine with a CUDA GPU, or use --generator hf"
        ) from e
    if not lm.path:
        raise AuditorError(f"--generator vllm needs the model as a folder on disk; {lm.source} was not loaded from one: pass --model /path/to/model")
    engine = _VLLM_ENGINES.get(lm.path)
    if engine is None:
        engine = vllm.LLM(
            model=lm.path, tokenizer=lm.path, dtype=lm.dtype, seed=0, gpu_memory_utilization=VLLM_MEMORY_SHARE, trust_remote_code=trust_remote_code
        )
        _VLLM_ENGINES[lm.path] = engine
    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    outputs = engine.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
    eos_ids = _eos_ids(lm)
    result = []
    for o in outputs:
        ids = list(o.outputs[0].token_ids)
        n = next((j for j, t in enumerate(ids) if t in eos_ids), len(ids))
        result.append((lm.tokenizer.decode(ids[:n], skip_special_tokens=True), n))
    return result


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
