"""``--generator vllm``: the plumbing around vLLM, checked on the CPU.

vLLM needs a CUDA GPU, so it cannot run on this project's CI machines. These tests check
everything on our side of the boundary: the clear error when vLLM is missing, what we ask
of vLLM (greedy, the cap, our own token ids, the model folder, a share of GPU memory), how
its output becomes ``(text, token count)`` with the end of sequence cut as for ``hf``, and
that base responses from the two generators never share a cache entry. The stand-in
engine below answers with the tiny model's own greedy tokens (plus an end-of-sequence
token, as vLLM reports it), so the scan must then equal an ``hf`` scan exactly.
"""

from __future__ import annotations

import sys
import types

import pytest
from click.testing import CliRunner

from auditor.cli import main
from auditor.errors import AuditorError
from auditor.generation import GenerationSettings, _eos_ids, generate_base, generate_greedy, generate_vllm


class _Output:
    def __init__(self, token_ids):
        self.outputs = [types.SimpleNamespace(token_ids=token_ids, text="(vLLM's own detokenisation, not used)")]


def fake_vllm(lm, calls):
    """A module named vllm whose engine answers with ``lm``'s greedy tokens, then an EOS."""
    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            calls.append(("LLM", kw))

        def generate(self, prompts, params, use_tqdm=True):
            calls.append(("generate", [p["prompt_token_ids"] for p in prompts], params.kw))
            eos = sorted(_eos_ids(lm))[0]
            out = []
            for p in prompts:
                text_ids = _greedy_ids(lm, p["prompt_token_ids"], params.kw["max_tokens"])
                out.append(_Output(text_ids + ([eos] if len(text_ids) < params.kw["max_tokens"] else [])))
            return out

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def _greedy_ids(lm, ids, max_new_tokens):
    from auditor.generation import _left_padded, greedy_decode

    input_ids, mask = _left_padded([ids], lm.tokenizer.pad_token_id)
    new = greedy_decode(lm.model, input_ids, mask, max_new_tokens, _eos_ids(lm))
    return new[0]


@pytest.fixture
def vllm_stub(monkeypatch, tiny_lm):
    import auditor.generation as generation

    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(tiny_lm, calls))
    monkeypatch.setattr(generation, "_VLLM_ENGINES", {})
    return calls


def _prompts(lm):
    tok = lm.tokenizer
    texts = [[{"role": "user", "content": "Say yes."}], [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]]
    return [tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"] for m in texts]


def test_missing_vllm_says_which_extra_to_install(monkeypatch, tiny_lm):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(AuditorError, match=r"pip install 'persona-audit\[vllm\]'.*--generator hf"):
        generate_vllm(tiny_lm, _prompts(tiny_lm), 8)


def test_unknown_generator_is_refused(tiny_lm):
    with pytest.raises(AuditorError, match="unknown --generator 'fast'"):
        generate_base(tiny_lm, _prompts(tiny_lm), 8, generator="fast")


def test_vllm_output_becomes_what_hf_gives(vllm_stub, tiny_lm):
    prompts = _prompts(tiny_lm)
    got = generate_base(tiny_lm, prompts, 12, generator="vllm")
    assert got == generate_greedy(tiny_lm, prompts, 12)
    (kind, engine_kw), (_, sent, params) = vllm_stub
    assert kind == "LLM" and engine_kw["model"] == tiny_lm.path and engine_kw["dtype"] == tiny_lm.dtype and engine_kw["trust_remote_code"] is False
    assert 0 < engine_kw["gpu_memory_utilization"] < 1
    assert sent == [list(p) for p in prompts]  # our token ids, never re-tokenized by vLLM
    assert params == {"temperature": 0.0, "max_tokens": 12}
    generate_base(tiny_lm, prompts, 12, generator="vllm")
    assert sum(1 for c in vllm_stub if c[0] == "LLM") == 1  # one engine per process


def test_generators_never_share_cache_entries():
    assert GenerationSettings(256, 512, "bfloat16", "hf").key() != GenerationSettings(256, 512, "bfloat16", "vllm").key()
    assert GenerationSettings(256, 512, "bfloat16").key() == GenerationSettings(256, 512, "bfloat16", "hf").key()  # old caches stay valid


def test_scan_with_generator_vllm_equals_hf_scan(vllm_stub, tiny_model_dir, tiny_vectors, small_dataset, tmp_path):
    import duckdb

    def scan(name, generator):
        db = tmp_path / f"{name}.duckdb"
        result = CliRunner().invoke(
            main,
            [
                "scan",
                small_dataset,
                "--baseline",
                "generate",
                "--model",
                tiny_model_dir,
                "--vectors",
                tiny_vectors,
                "--dtype",
                "float32",
                "--max-new-tokens",
                "10",
                "--generator",
                generator,
                "--db",
                str(db),
                "--out",
                str(tmp_path / name),
                "--no-report",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        con = duckdb.connect(str(db), read_only=True)
        rows = con.execute("SELECT sample_id, trait, proj_base, delta FROM scores ORDER BY sample_id, trait").fetchall()
        generated = con.execute("SELECT count(*) FROM base_responses").fetchone()[0]
        con.close()
        return rows, generated

    via_vllm, n_vllm = scan("vllm", "vllm")
    via_hf, n_hf = scan("hf", "hf")
    assert via_vllm == via_hf and n_vllm == n_hf > 0
    assert any(c[0] == "generate" for c in vllm_stub)
