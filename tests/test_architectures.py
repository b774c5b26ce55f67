"""Other architectures end to end, on tiny random models built from configs (no download):
Qwen2, Gemma 2, Gemma 3, Mistral, Phi-3 and OLMo-2.

Each model gets the embedded model's tokenizer with a chat template in its family's style
(written here: role markers, a default system prompt, a template that rejects system
messages, ...). For each one: a vector is extracted (``audit extract``), a dataset is
scanned and every projection is checked against the plain computation (the whole model
with ``output_hidden_states=True``, one sample at a time, ``model.generate`` for the base
answer) at layers 0, a middle one and L, and a published-style ``.pt`` vector is imported
and used by a scan.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import SMALL_CHATS, chat, make_vectors, write_jsonl

from auditor.cli import main

TEMPLATES = {
    # ChatML with a default system prompt when the conversation has none.
    "qwen2": (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # No system role at all (the template raises), strict alternation, 'model' for the assistant.
    "gemma2": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    # The system message folded into the first user turn.
    "gemma3": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}"
        "{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
        "{% for m in rest %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
        "{% if loop.first %}{{ first }}{% endif %}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    # [INST] blocks, the system message in front of the first instruction.
    "mistral": (
        "{{ bos_token }}{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
        "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}[INST] {% if loop.first and sys %}{{ sys }}\n\n{% endif %}"
        "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    ),
    "phi3": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
    ),
    "olmo2": (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
}
ARCHITECTURES = list(TEMPLATES)
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def tiny_config(arch: str, tokenizer):
    import transformers as tf

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "qwen2":
        return tf.Qwen2Config(**SIZES, **ids, tie_word_embeddings=True), tf.Qwen2ForCausalLM
    if arch == "gemma2":
        # A sliding window shorter than the samples, and both soft-caps, as in the real models.
        cfg = tf.Gemma2Config(**SIZES, **ids, head_dim=16, query_pre_attn_scalar=16, sliding_window=24, attn_implementation="eager")
        return cfg, tf.Gemma2ForCausalLM
    if arch == "gemma3":
        cfg = tf.Gemma3TextConfig(**SIZES, **ids, head_dim=16, query_pre_attn_scalar=16, sliding_window=24, attn_implementation="eager")
        return cfg, tf.Gemma3ForCausalLM
    if arch == "mistral":
        return tf.MistralConfig(**SIZES, **ids, sliding_window=None), tf.MistralForCausalLM
    if arch == "phi3":
        return tf.Phi3Config(**SIZES, **ids), tf.Phi3ForCausalLM
    if arch == "olmo2":
        return tf.Olmo2Config(**SIZES, **ids), tf.Olmo2ForCausalLM
    raise AssertionError(arch)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_model(request, tmp_path_factory):
    """(architecture, folder) of a tiny random model with a tokenizer and a chat template."""
    from transformers import AutoTokenizer

    from auditor.model.loading import _embedded_dir

    arch = request.param
    folder = tmp_path_factory.mktemp(f"tiny-{arch}")
    tokenizer = AutoTokenizer.from_pretrained(_embedded_dir()[0])
    tokenizer.chat_template = TEMPLATES[arch]
    config, cls = tiny_config(arch, tokenizer)
    torch.manual_seed(0)
    model = cls(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return arch, str(folder)


@pytest.fixture(scope="module")
def arch_lm(arch_model):
    from auditor.model import load_model

    return load_model(arch_model[1], dtype="float32", device="cpu")


# Short chats plus a system message, a multi-turn conversation and a long answer (past
# Gemma's 24-token sliding window in the tiny config).
DATA = SMALL_CHATS[2:5] + [
    {
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Green."},
            {"role": "user", "content": "And another one?"},
            {"role": "assistant", "content": "Blue, like the sea on a calm day."},
        ]
    },
    chat("Explain photosynthesis briefly.", " ".join(["Plants turn light, water and carbon dioxide into sugar and oxygen."] * 4)),
]


def plain_scores(lm, messages: list[dict], response: str, vector: torch.Tensor, layer: int) -> float:
    """The plain computation: whole model, output_hidden_states=True, one sample."""
    tok = lm.tokenizer
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt + response, return_tensors="pt", add_special_tokens=False).input_ids
    start = len(tok(prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        states = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    v = vector[layer].float()
    return float(states[layer][0, start:].float().mean(0) @ (v / v.norm()))


def plain_base(lm, messages: list[dict], max_new_tokens: int) -> str:
    tok = lm.tokenizer
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_scan_matches_the_plain_computation(arch_model, arch_lm, tmp_path):
    arch, folder = arch_model
    lm = arch_lm
    L = lm.num_layers
    vectors = tmp_path / "v"
    for trait, layer in (("edge0", 0), ("middle", 2), ("top", L)):
        make_vectors(vectors, L, lm.hidden_size, traits=(trait,), layer=layer, fingerprint=lm.fingerprint, seed=layer)
    data = write_jsonl(tmp_path / "d.jsonl", DATA)
    from auditor.pipeline import ScanConfig, scan_run
    from auditor.vectors import load_vectors

    config = ScanConfig(
        source=data, vectors=str(vectors), db=str(tmp_path / "a.duckdb"), report=False, baseline="generate", max_new_tokens=4, dtype="float32", on_error="skip"
    )
    result = scan_run(config, lm=lm)
    scores = result.scores.sort("line")
    rejected = {r.line: r.reason for r in result.rejects}
    pvs = {pv.trait: pv for pv in load_vectors(str(vectors), lm.name)}
    checked = 0
    for line, record in enumerate(DATA, 1):
        context = record["messages"][:-1]
        if line in rejected:
            # Only a template that refuses system messages may reject a sample, and it says so.
            assert arch == "gemma2" and context[0]["role"] == "system", rejected[line]
            assert "chat template" in rejected[line] and "System role not supported" in rejected[line]
            assert "merge it into the first user message" in rejected[line]
            continue
        row = scores.filter(scores["line"] == line).row(0, named=True)
        base = plain_base(lm, context, 4)
        for trait, pv in pvs.items():
            expected = plain_scores(lm, context, record["messages"][-1]["content"], pv.vector, pv.layer)
            assert row[f"{trait}_proj_response"] == pytest.approx(expected, abs=1e-4), (arch, line, trait)
            if base.strip():
                expected_base = plain_scores(lm, context, base, pv.vector, pv.layer)
                assert row[f"{trait}_proj_base"] == pytest.approx(expected_base, abs=1e-4), (arch, line, trait, base)
                assert row[f"{trait}_delta"] == pytest.approx(expected - expected_base, abs=2e-4)
            checked += 1
    assert checked >= 3 * (len(DATA) - 1)


def test_extract_and_scan_with_the_cli(arch_model, arch_lm, tmp_path):
    arch, folder = arch_model
    out = tmp_path / "vectors"
    result = CliRunner().invoke(main, ["extract", "evil", "--model", folder, "--dtype", "float32", "--out", str(out), "--no-calibrate", "--quiet"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "evil.json").read_text())
    assert meta["shape"] == [arch_lm.num_layers + 1, arch_lm.hidden_size]
    assert 1 <= meta["layer"] <= arch_lm.num_layers - 1
    assert meta["model_fingerprint"] == arch_lm.fingerprint
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:3])
    args = ["scan", data, "--model", folder, "--vectors", str(out), "--dtype", "float32", "--max-new-tokens", "4", "--db", str(tmp_path / "s.duckdb")]
    scan = CliRunner().invoke(main, [*args, "--no-report", "--quiet", "--json"])
    assert scan.exit_code == 0, scan.output
    doc = json.loads(scan.stdout)
    assert doc["n_scored"] == 3 and doc["traits"][0]["trait"] == "evil" and doc["traits"][0]["layer"] == meta["layer"]


def test_published_pt_import_then_scan(arch_model, arch_lm, tmp_path):
    arch, folder = arch_model
    lm = arch_lm
    g = torch.Generator().manual_seed(7)
    tensor = torch.randn(lm.num_layers + 1, lm.hidden_size, generator=g)
    pt = tmp_path / "evil_response_avg_diff.pt"
    torch.save(tensor, pt)
    out = tmp_path / "imported"
    result = CliRunner().invoke(main, ["vectors", "import", str(pt), "--trait", "evil", "--layer", "3", "--model", folder, "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:2])
    from auditor.pipeline import ScanConfig, scan_run

    run = scan_run(
        ScanConfig(source=data, vectors=str(out), db=str(tmp_path / "a.duckdb"), report=False, baseline="none", dtype="float32"),
        lm=lm,
    )
    scores = run.scores.sort("line")
    for line, record in enumerate(SMALL_CHATS[:2], 1):
        expected = plain_scores(lm, record["messages"][:-1], record["messages"][-1]["content"], tensor, 3)
        assert scores["evil_proj_response"][line - 1] == pytest.approx(expected, abs=1e-4)
    assert Path(out / "evil.safetensors").is_file()
