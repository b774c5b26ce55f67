"""audit shift: the finetuning shift, expression and behavioural measures, the CLI, the store and adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, make_vectors


def _perturbed_copy(model_dir: str, folder, scale: float = 0.05, seed: int = 1) -> str:
    """The tiny model with every weight nudged: a stand-in 'fine-tuned' model saved as a folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return str(folder)


def _mean_last(model, tokenizer, questions, layer, unit) -> float:
    """Reference path: the whole model with output_hidden_states, one prompt at a time."""
    from auditor.activations import full_hidden_states

    vals = []
    for q in questions:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        vals.append(float(full_hidden_states(model, ids)[layer][0, -1].float() @ unit))
    return sum(vals) / len(vals)


def _margin(model, tokenizer, examples) -> float:
    """Reference path: mean log-prob per answer token, pos minus neg, one example at a time."""
    out = []
    for e in examples:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": e.question}], tokenize=False, add_generation_prompt=True)
        means = []
        for answer in (e.pos, e.neg):
            p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            means.append(float(sum(logp[t - 1, ids[t]] for t in range(p, len(ids))) / (len(ids) - p)))
        out.append(means[0] - means[1])
    return sum(out) / len(out)


@pytest.fixture
def tuned_dir(tiny_model_dir, tmp_path):
    return _perturbed_copy(tiny_model_dir, tmp_path / "tuned")


def test_shift_matches_the_reference_path(tiny_lm, tuned_dir, tmp_path):
    from auditor.model import load_model
    from auditor.shift import measure_shift
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    tuned = load_model(tuned_dir, dtype="float32", device="cpu")
    vdir = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size, traits=("sycophancy",), layer=3)
    (pv,) = load_vectors(vdir, tiny_lm.name)
    trait = load_trait("sycophancy")
    report = measure_shift(tiny_lm, tuned, [pv], {"sycophancy": trait}, max_new_tokens=6)
    (ts,) = report.traits
    unit = pv.vector[3] / pv.vector[3].norm()
    expected_shift = _mean_last(tuned.model, tuned.tokenizer, trait.evaluation_questions, 3, unit) - _mean_last(
        tiny_lm.model, tiny_lm.tokenizer, trait.evaluation_questions, 3, unit
    )
    assert abs(expected_shift) > 1e-3
    assert ts.shift == pytest.approx(expected_shift, abs=1e-4)
    expected_behaviour = _margin(tuned.model, tuned.tokenizer, trait.evaluation_examples) - _margin(tiny_lm.model, tiny_lm.tokenizer, trait.evaluation_examples)
    assert ts.behaviour_shift == pytest.approx(expected_behaviour, abs=1e-4)
    assert ts.n_questions == len(trait.evaluation_questions) and ts.layer == 3


def test_shift_of_a_model_against_itself_is_zero(tiny_lm, tmp_path):
    from auditor.shift import measure_shift
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    vdir = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size, traits=("evil",), layer=2)
    report = measure_shift(tiny_lm, tiny_lm, load_vectors(vdir, tiny_lm.name), {"evil": load_trait("evil")}, max_new_tokens=6)
    (ts,) = report.traits
    assert (ts.shift, ts.behaviour_shift) == (0.0, 0.0)
    assert ts.expression_shift in (0.0, None)


class _Done:
    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def _audit(*args, cwd):
    """``audit ARGS`` in-process (cwd is the test's own folder already)."""
    from click.testing import CliRunner

    from auditor.cli import main

    return _Done(CliRunner().invoke(main, list(args)))


def test_cli_json_store_and_gate(tiny_model_dir, tuned_dir, tmp_path):
    from auditor.store.shifts import read_shifts

    vdir = make_vectors(tmp_path / "v", 4, 64, traits=("sycophancy", "evil"), layer=3)
    common = [tuned_dir, "--base", tiny_model_dir, "--vectors", vdir, "--max-new-tokens", "4", "--db", str(tmp_path / "a.duckdb")]
    first = _audit("shift", *common, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    shifts = {t["trait"]: t for t in data["traits"]}
    assert set(shifts) == {"sycophancy", "evil"} and data["passed"] is True and data["rules"] == []
    rows = read_shifts(str(tmp_path / "a.duckdb"))
    assert {r["trait"]: r["shift"] for r in rows} == pytest.approx({t: s["shift"] for t, s in shifts.items()})
    value = shifts["sycophancy"]["shift"]
    below, above = f"sycophancy={value - abs(value) - 1:.6f}", f"sycophancy={value + abs(value) + 1:.6f}"
    broken = _audit("shift", *common, "--max-shift", below, "--no-store", cwd=tmp_path)
    assert broken.returncode == 1, broken.stderr
    assert "FAIL max-shift sycophancy" in broken.stdout
    kept = _audit("shift", *common, "--max-shift", above, "--no-store", "--no-expression", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert "pass max-shift sycophancy" in kept.stdout
    # Unmeasurable rules fail instead of passing silently: no expression without generation.
    unmeasured = _audit("shift", *common, "--max-expression-shift", "100", "--no-store", "--no-expression", cwd=tmp_path)
    assert unmeasured.returncode == 1
    assert len(read_shifts(str(tmp_path / "a.duckdb"))) == 2  # --no-store wrote nothing


def test_cli_errors_exit_2(tiny_model_dir, tmp_path):
    vdir = make_vectors(tmp_path / "v", 4, 64, traits=("sycophancy",), layer=3)
    missing = _audit("shift", str(tmp_path / "nope"), "--base", tiny_model_dir, "--vectors", vdir, cwd=tmp_path)
    assert missing.returncode == 2
    assert "nope" in missing.stderr
    other = _audit("shift", "embedded", "--base", tiny_model_dir, "--vectors", vdir, "--no-store", cwd=tmp_path)
    assert other.returncode == 2
    assert "pass the base it was fine-tuned from with --base" in other.stderr


def test_peft_adapter_equals_its_merged_model(tiny_lm, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from auditor.model import load_model
    from auditor.shift import load_tuned, measure_shift
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    merged_dir = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged_dir)
    tiny_lm.tokenizer.save_pretrained(merged_dir)

    vdir = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size, traits=("sycophancy",), layer=2)
    pvs, traits = load_vectors(vdir, tiny_lm.name), {"sycophancy": load_trait("sycophancy")}
    via_adapter = measure_shift(tiny_lm, load_tuned(str(adapter_dir), tiny_lm), pvs, traits, expression=False).traits[0]
    via_merged = measure_shift(tiny_lm, load_model(str(merged_dir), dtype="float32", device="cpu"), pvs, traits, expression=False).traits[0]
    assert abs(via_merged.shift) > 1e-4
    assert via_adapter.shift == pytest.approx(via_merged.shift, abs=1e-5)
    assert via_adapter.behaviour_shift == pytest.approx(via_merged.behaviour_shift, abs=1e-5)
    assert not any("lora" in name for name, _ in tiny_lm.model.named_parameters())  # the base stays as it was


def test_adapter_without_peft_names_the_extra(tiny_lm, tmp_path, monkeypatch):
    from auditor.errors import MissingDependency
    from auditor.shift import load_tuned

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingDependency, match=r"pip install 'persona-audit\[peft\]'"):
        load_tuned(str(tmp_path / "adapter"), tiny_lm)


def test_gate_rules_fail_unmeasured_and_reject_unknown_measures():
    from auditor.errors import AuditorError
    from auditor.shift import ShiftReport, TraitShift, broken_rules

    report = ShiftReport("b", "t", "fb", "ft", [TraitShift("evil", 3, 5, 0.0, 1.5, 1.5, behaviour_shift=None)])
    results = broken_rules(report, {"shift": {"*": 1.0}, "behaviour": {"evil": 9.0}})
    assert [(r["rule"], r["passed"]) for r in results] == [("max-shift", False), ("max-behaviour", False)]
    assert broken_rules(report, {"shift": {"evil": 2.0}})[0]["passed"] is True
    with pytest.raises(AuditorError, match="unknown shift measure"):
        broken_rules(report, {"loss": {"*": 1.0}})


def test_bench_quick_mode_runs_the_whole_code_path(tmp_path):
    """CI runs the training bench's code path on the tiny random model (the full bench is not part of CI)."""
    out = tmp_path / "finetune.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "finetune.py"), "--quick", "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    syc = res["traits"]["sycophancy"]
    assert sorted(syc["datasets"]) == ["realistic", "share_0", "share_100", "share_25", "share_50", "share_75"]
    assert sorted(syc["samples"]) == ["bottom_delta", "random", "top_delta", "top_projection", "top_prompt_last_delta"]
    assert sorted(syc["steering"]) == ["0.0", "4.0"]
    assert {r["n"] for r in syc["datasets"].values()} == {4}
    # The share sets hold exactly their share of trait answers: their mean delta is the mean of those pool rows.
    pool = syc["pool"]
    half = [pool[0], pool[1], pool[6], pool[7]]
    assert syc["datasets"]["share_50"]["scores"]["delta"] == pytest.approx(sum(p["delta"] for p in half) / 4)
    assert syc["samples"]["top_delta"]["kinds"] == {
        k: sum(p["kind"] == k for p in sorted(pool, key=lambda p: p["delta"])[-4:]) for k in ("trait", "clean", "realistic")
    }
    assert set(res["summary"]["sycophancy"]["spearman_behaviour"]) == {"delta", "projection", "prompt_last_delta"}
    assert res["finetune"]["seed"] == 0 and res["settings"]["quick"] is True


def test_cached_base_profile_gives_the_same_report(tiny_lm, tuned_dir, tmp_path):
    """The bench's fast path (base side computed once) equals measuring both sides every time."""
    from auditor.model import load_model
    from auditor.shift import measure_shift, trait_profile
    from auditor.vectors.persona import load_vectors
    from auditor.vectors.traits import load_trait

    tuned = load_model(tuned_dir, dtype="float32", device="cpu")
    (pv,) = load_vectors(make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size, traits=("evil",), layer=2), tiny_lm.name)
    traits = {"evil": load_trait("evil")}
    plain = measure_shift(tiny_lm, tuned, [pv], traits, max_new_tokens=5).traits[0]
    cached = measure_shift(
        tiny_lm, tuned, [pv], traits, max_new_tokens=5, base_profiles={"evil": trait_profile(tiny_lm, tiny_lm, pv, traits["evil"], 5)}
    ).traits[0]
    assert cached == plain


def test_bench_rescore_recomputes_the_prompt_last_figures_from_a_plain_computation(tmp_path, tiny_lm, tiny_model_dir):
    """``bench/finetune.py --rescore``: each pool sample's prompt-last delta is the plain one (response mean minus
    last prompt token, projected), each set's score is the mean over its samples, and the correlations are taken
    against the stored shifts, which it leaves alone."""
    sys.path.insert(0, str(ROOT / "bench"))
    import finetune
    import finetune_data

    from auditor.vectors.persona import load_vector

    size = 4
    vectors = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size, traits=("sycophancy",), fingerprint=tiny_lm.fingerprint)
    pairs = finetune_data.pairs("sycophancy")[:size]
    pool = [p for p, _ in pairs] + [c for _, c in pairs] + finetune_data.realistic("sycophancy")[:size]
    shifts = {"share_0": 0.1, "share_25": 0.4, "share_50": 0.2, "share_75": 0.9, "share_100": 0.7, "realistic": 0.3}
    old = [float(i) for i in range(len(pool))]  # the stored scores: the last four are the trained top-k
    results = {
        "settings": {"size": size, "model": tiny_model_dir, "dtype": "float32"},
        "traits": {
            "sycophancy": {
                "pool": [{"kind": "x", "delta": 0.0, "projection": 0.0, "prompt_last_delta": v} for v in old],
                "datasets": {
                    n: {"scores": {"delta": s, "projection": s, "prompt_last_delta": 0.0}, "shifts": {"sycophancy": {m: s for m in finetune.MEASURES}}}
                    for n, s in shifts.items()
                },
                "samples": {"top_prompt_last_delta": {"shifts": {}}},
            }
        },
    }
    src = tmp_path / "results.json"
    src.write_text(json.dumps(results))
    out = finetune.rescore(str(src), None, vectors, str(tmp_path / "rescored.json"))
    pv = load_vector(os.path.join(vectors, "sycophancy.safetensors"))
    u = pv.vector[pv.layer] / pv.vector[pv.layer].norm()
    tok = tiny_lm.tokenizer
    plain = []
    for chat in pool:
        prompt = tok.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        a_ids = tok(chat[-1]["content"], add_special_tokens=False).input_ids
        with torch.no_grad():
            h = tiny_lm.model(torch.tensor([p_ids + a_ids]), output_hidden_states=True).hidden_states[pv.layer][0]
        plain.append(float(h[len(p_ids) :].mean(0) @ u) - float(h[len(p_ids) - 1] @ u))
    syc = out["traits"]["sycophancy"]
    assert [p["prompt_last_delta"] for p in syc["pool"]] == pytest.approx(plain, abs=1e-4)
    assert [p["prompt_last_delta_before_rescore"] for p in syc["pool"]] == old
    half = [0, 1, size + 2, size + 3]  # share_50: the first half of the prompts take their trait answer
    assert syc["datasets"]["share_50"]["scores"]["prompt_last_delta"] == pytest.approx(sum(plain[i] for i in half) / 4, abs=1e-4)
    xs = [syc["datasets"][n]["scores"]["prompt_last_delta"] for n in shifts]
    assert syc["correlations"]["prompt_last_delta"]["shift"]["spearman"] == pytest.approx(finetune.spearman(xs, list(shifts.values())))
    assert syc["datasets"]["share_50"]["shifts"]["sycophancy"]["shift"] == 0.2  # the fine-tunes are left alone
    top = sorted(range(len(pool)), key=lambda i: (plain[i], i))[-size:]
    assert syc["rescored"]["top_prompt_last_delta_overlap"] == len(set(top) & set(range(2 * size, 3 * size)))
    assert syc["rescored"]["top_prompt_last_delta_is_the_trained_set"] == (sorted(top) == list(range(2 * size, 3 * size)))
