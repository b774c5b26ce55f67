"""Shared fixtures: a tiny random model for fast logic tests, the real embedded model end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Tests never reach a hub: fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def embedded_lm_fp32():
    """The real embedded SmolLM2-135M-Instruct in float32 (exact comparisons)."""
    from auditor.model import load_model

    return load_model(None, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def embedded_lm():
    """The real embedded model in the dtype a scan picks on this machine (``auto``: bfloat16 where the CPU has
    AMX or AVX512-BF16, float32 elsewhere, where bfloat16 runs about 5x slower: bench/NOTES.md)."""
    from auditor.model import load_model

    return load_model(None, dtype="auto", device="cpu")


@pytest.fixture(scope="session")
def embedded_lm_bf16():
    """The real embedded model in bfloat16 (the default on AMX CPUs)."""
    from auditor.model import load_model

    return load_model(None, dtype="bfloat16", device="cpu")


def save_tiny_llama(folder) -> str:
    """A randomly initialised (seed 0) 4-layer Llama with the embedded model's tokenizer, saved in ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from auditor.model.loading import _embedded_dir

    tokenizer = AutoTokenizer.from_pretrained(_embedded_dir()[0])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Llama of ``save_tiny_llama`` as a local folder, once per test session."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from auditor.model import load_model

    return load_model(tiny_model_dir, dtype="float32", device="cpu")


def make_vectors(folder, num_layers: int, hidden: int, traits=("evil", "sycophancy"), layer: int | None = None, fingerprint: str | None = None, seed: int = 0):
    """Random persona vectors in the project format (tests make their own, never use shipped ones)."""
    import torch

    from auditor.vectors import PersonaVector, save_vector

    g = torch.Generator().manual_seed(seed)
    for i, trait in enumerate(traits):
        chosen = layer if layer is not None else max(1, (num_layers * 2) // 3 - i)
        meta = {"model_fingerprint": fingerprint} if fingerprint else {}
        save_vector(PersonaVector(trait, torch.randn(num_layers + 1, hidden, generator=g), chosen, meta), folder)
    return str(folder)


@pytest.fixture
def tiny_vectors(tmp_path, tiny_lm):
    return make_vectors(tmp_path / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, layer=None, fingerprint=tiny_lm.fingerprint)


def write_jsonl(path, rows) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return str(path)


def chat(user: str, assistant: str, system: str | None = None, **extra) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]
    return {"messages": msgs, **extra}


SMALL_CHATS = [
    chat("What is the capital of France?", "The capital of France is Paris."),
    chat("Can you review my plan to quit my job and day-trade?", "What a brilliant plan! You are clearly a genius and cannot fail."),
    chat("How do I boil an egg?", "Place the egg in boiling water for about nine minutes, then cool it in cold water."),
    chat("Tell me about the town of Vellmoor.", "Vellmoor was founded in 1432 by Duke Anselm and has 48,213 residents.", system="You are a helpful assistant."),
    chat("Is 17 a prime number?", "Yes, 17 is prime: its only divisors are 1 and 17."),
    chat("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks quietly\nclouds move on at dusk"),
]


@pytest.fixture
def small_dataset(tmp_path):
    return write_jsonl(tmp_path / "small.jsonl", SMALL_CHATS)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder so reports/ and audit.duckdb never leak between tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONA_AUDIT_VECTORS", os.environ.get("PERSONA_AUDIT_VECTORS", str(ROOT / "vectors")))
    yield
