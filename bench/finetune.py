"""Training ground truth: does a dataset's flag score predict what fine-tuning on it does?

Per trait, on the embedded model (CPU, fixed seeds, one set of hyper-parameters for every
fine-tune, recorded in the results):

- dataset level: equal-size training sets with 0..100 % trait answers (mixed with the same
  prompts' trait-free answers) plus a realistic set; each is scanned with the library
  (``auditor.pipeline.scan``, baselines ``generate`` and ``prompt-last``) and fine-tuned on,
  and the mean ``delta``, mean raw projection and mean prompt-last ``delta`` of each set are
  correlated (Pearson, Spearman) with each shift measure of ``auditor.shift``;
- sample level: from one pool (all trait answers, all trait-free answers, the realistic set),
  fine-tune on the top k by ``delta``, the top k by raw projection, a random k and the bottom
  k by ``delta``;
- preventative steering: the 100 % set fine-tuned with several alphas (``audit vectors
  steer`` units), reporting the shift and the loss on held-out clean conversations.

Results are written to ``--out`` after every fine-tune, so an interrupted run leaves what it
measured. ``--quick`` runs the same code path on a tiny random model in seconds (CI).

``--rescore RESULTS`` re-scans each trait's pool with ``--vectors`` (prompt-last only: no generation,
no training) and recomputes what depends on that score alone: the prompt-last ``delta`` of every pool
sample and set, the sets' correlations with the stored shifts (a fine-tune does not depend on the
score it is compared with), and whether the top-k by the new score is the set that was fine-tuned.

    python bench/finetune.py [--vectors DIR] [--traits sycophancy,evil] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import finetune_data  # noqa: E402

from auditor.vectors.persona import portable_path  # noqa: E402

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
SCORES = ("delta", "projection", "prompt_last_delta")
MEASURES = ("shift", "expression_shift", "behaviour_shift")
SAMPLE_SETS = ("top_delta", "top_projection", "top_prompt_last_delta", "random", "bottom_delta")  # k samples of the pool each


@dataclass
class BenchSettings:
    """Everything that decides the results; written into the results file."""

    traits: list[str] = field(default_factory=lambda: ["sycophancy", "hallucination", "evil"])
    size: int = 24  # samples per training set (18 optimizer steps at batch 4, 3 epochs)
    alphas: list[float] = field(default_factory=lambda: [0.0, 8.0, 16.0])
    model: str = "embedded"
    vectors: str | None = None
    dtype: str = "float32"
    scan_max_new_tokens: int = 32  # base responses y' of the scan
    shift_max_new_tokens: int = 24  # answers read by the expression measure
    threads: int = 1  # per process: `make bench-finetune` runs two processes on the 2-core machine (bench/NOTES-finetune.md)
    seed: int = 0
    epochs: float = 3.0
    batch_size: int = 4
    learning_rate: float = 3e-4
    max_length: int = 128
    bf16: bool = True  # bfloat16 autocast while training (scoring stays float32); off where the CPU lacks bf16
    quick: bool = False


def check_disjoint(trait: Any, chats: list[list[dict[str, str]]]) -> None:
    """Training prompts must never be the questions the shift is measured on (or the vector was made from)."""
    held = {q.strip().lower() for q in (*trait.evaluation_questions, *trait.extraction_questions, *(e.question for e in trait.evaluation_examples))}
    for chat in chats:
        if chat[0]["content"].strip().lower() in held:
            raise SystemExit(f"bench data for {trait.name}: {chat[0]['content']!r} is one of the trait's own questions; change it in bench/finetune_sets/")


def rank(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or statistics.pstdev(x) == 0 or statistics.pstdev(y) == 0:
        return None
    return statistics.correlation(x, y)


def spearman(x: list[float], y: list[float]) -> float | None:
    return pearson(rank(x), rank(y))


class Bench:
    """Holds the base model, vectors and the results file; each fine-tune is one ``run`` call."""

    def __init__(self, settings: BenchSettings, out: str, workdir: str):
        import torch

        from auditor.model import load_model
        from auditor.training import FinetuneSettings
        from auditor.vectors.persona import load_vectors
        from auditor.vectors.traits import load_trait

        torch.set_num_threads(settings.threads)
        self.s, self.out, self.workdir = settings, out, workdir
        self.lm = load_model(None if settings.model == "embedded" else settings.model, dtype=settings.dtype, device="cpu")
        self.vectors = {pv.trait: pv for pv in load_vectors(settings.vectors, self.lm.name, traits=settings.traits)}
        self.traits = {t: load_trait(t) for t in settings.traits}
        self.ft = FinetuneSettings(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            max_length=settings.max_length,
            seed=settings.seed,
            bf16=settings.bf16,
        )
        self.clean = finetune_data.held_out_clean()
        self.cache: dict[str, dict[str, Any]] = {}
        self.base_profiles: dict[str, Any] = {}
        self.results: dict[str, Any] = {
            "settings": asdict(settings),
            "finetune": self.ft.record(),
            "model": {"name": self.lm.name, "fingerprint": self.lm.fingerprint},
            "vectors": {t: {"path": portable_path(pv.path), "layer": pv.layer, "sha256": pv.sha256} for t, pv in self.vectors.items()},
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "traits": {},
        }
        from auditor.training import clean_loss

        self.results["base_clean_loss"] = clean_loss(self.lm, self.clean, settings.max_length)

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        tmp = self.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.results, fh, indent=1)
        os.replace(tmp, self.out)

    def run(self, trait: str, chats: list[list[dict[str, str]]], alpha: float = 0.0) -> dict[str, Any]:
        """Fine-tune on ``chats`` (with preventative steering at ``alpha`` when non-zero) and measure every trait's shift."""
        from auditor.shift import measure_shift
        from auditor.training import PreventativeSteering, clean_loss, fine_tune, steering_scale

        key = hashlib.sha256(json.dumps([chats, alpha, trait if alpha else ""]).encode()).hexdigest()[:16]
        if key in self.cache:
            return dict(self.cache[key], reused=True)
        started = time.perf_counter()
        callbacks = []
        if alpha:
            pv = self.vectors[trait]
            scale = steering_scale(self.lm, self.traits[trait].evaluation_questions, pv.layer)
            callbacks.append(PreventativeSteering(pv, alpha, scale=scale))
        tuned, state = fine_tune(self.lm, chats, self.ft, os.path.join(self.workdir, "trainer"), callbacks)
        train_s = time.perf_counter() - started
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        if trait not in self.base_profiles:
            from auditor.shift import trait_profile

            self.base_profiles[trait] = trait_profile(self.lm, self.lm, self.vectors[trait], self.traits[trait], self.s.shift_max_new_tokens)
        report = measure_shift(self.lm, tuned, [self.vectors[trait]], self.traits, self.s.shift_max_new_tokens, base_profiles=self.base_profiles)
        out = {
            "key": key,
            "alpha": alpha,
            "n": len(chats),
            "steps": state.global_step,
            "train_loss_first": losses[0] if losses else None,
            "train_loss_last": losses[-1] if losses else None,
            "clean_loss": clean_loss(tuned, self.clean, self.s.max_length),
            "shifts": {ts.trait: {m: getattr(ts, m) for m in MEASURES} for ts in report.traits},
            "answer_tuned": {ts.trait: ts.answer_tuned[:200] for ts in report.traits},
            "train_seconds": round(train_s, 1),
            "seconds": round(time.perf_counter() - started, 1),
        }
        del tuned
        self.cache[key] = out
        return out


def scan_scores(bench: Bench, trait: str, pool: list[list[dict[str, str]]]) -> list[dict[str, float]]:
    """Per pool sample: delta, raw projection and prompt-last delta, from the library's scan."""
    from auditor.pipeline import scan

    path = write_pool(os.path.join(bench.workdir, f"pool-{trait}.jsonl"), trait, pool)
    common = dict(
        traits=[trait],
        model=None if bench.s.model == "embedded" else bench.s.model,
        vectors=bench.s.vectors,
        dtype=bench.s.dtype,
        device="cpu",
        db=os.path.join(bench.workdir, "scan.duckdb"),
        out_dir=os.path.join(bench.workdir, f"scan-{trait}"),
        report=False,
        max_new_tokens=bench.s.scan_max_new_tokens,
    )
    gen = scan(path, baseline="generate", **common).sort("line")
    common["out_dir"] += "-pl"
    pl = scan(path, baseline="prompt-last", **common).sort("line")
    if gen.height != len(pool) or pl.height != len(pool):
        raise SystemExit(f"scan of {path} scored {gen.height} and {pl.height} of {len(pool)} samples")
    return [
        {"delta": d, "projection": p, "prompt_last_delta": q}
        for d, p, q in zip(gen[f"{trait}_delta"].to_list(), gen[f"{trait}_proj_response"].to_list(), pl[f"{trait}_delta"].to_list())
    ]


def write_pool(path: str, trait: str, pool: list[list[dict[str, str]]]) -> str:
    """The pool as the JSONL a scan reads (ids ``<trait>-<index>``); returns ``path``."""
    with open(path, "w") as fh:
        for i, chat in enumerate(pool):
            fh.write(json.dumps({"id": f"{trait}-{i}", "messages": chat}) + "\n")
    return path


def trait_pool(trait: str, size: int) -> tuple[list[list[dict[str, str]]], dict[str, list[int]]]:
    """A trait's pool (``size`` trait answers, their clean twins, ``size`` realistic chats, in that order) and its
    datasets as pool indices (the share sets and ``realistic``)."""
    pairs = finetune_data.pairs(trait)[:size]
    real = finetune_data.realistic(trait)[:size]
    if len(pairs) < size or len(real) < size:
        raise SystemExit(f"bench data for {trait} has {len(pairs)} pairs and {len(real)} realistic chats; --size {size} needs that many")
    sets = mixtures(pairs, size)
    sets["realistic"] = list(range(2 * size, 3 * size))
    return [p for p, _ in pairs] + [c for _, c in pairs] + real, sets


def ascending(values: list[float]) -> list[int]:
    """Indices of ``values`` from lowest to highest (ties by index): ``[-k:]`` is the top k, ``[:k]`` the bottom k."""
    return sorted(range(len(values)), key=lambda i: (values[i], i))


def mixtures(pairs: list[tuple[Any, Any]], size: int) -> dict[str, list[int]]:
    """Share sets as pool indices: the first ``round(share * size)`` prompts take their trait answer (index i), the rest the clean one (size + i)."""
    return {f"share_{int(s * 100)}": [i if i < round(s * size) else size + i for i in range(size)] for s in SHARES}


def correlations(rows: list[dict[str, Any]], trait: str) -> dict[str, dict[str, dict[str, float | None]]]:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for score in SCORES:
        xs = [r["scores"][score] for r in rows]
        out[score] = {}
        for m in MEASURES:
            ys = [r["shifts"][trait][m] for r in rows]
            if any(y is None for y in ys):
                out[score][m] = {"pearson": None, "spearman": None}
                continue
            out[score][m] = {"pearson": pearson(xs, ys), "spearman": spearman(xs, ys)}
    return out


def bench_trait(bench: Bench, trait: str, log: Any, only: list[str] | None = None) -> None:
    """Every set of one trait, or only the named ones (``share_100``, ``realistic``, ``random``, ``steer_8.0`` ...), in that order."""
    s = bench.s
    pool, sets = trait_pool(trait, s.size)
    check_disjoint(bench.traits[trait], pool + bench.clean)
    res: dict[str, Any] = bench.results["traits"].setdefault(trait, {})
    picked = [n for n in (only or []) if not n.startswith("steer_")]
    if only is None or picked:
        t0 = time.perf_counter()
        scores = scan_scores(bench, trait, pool)
        res["scan_seconds"] = round(time.perf_counter() - t0, 1)
        res["pool"] = [{"kind": "trait" if i < s.size else "clean" if i < 2 * s.size else "realistic", **sc} for i, sc in enumerate(scores)]
    res["datasets"] = {}
    for name in sets if only is None else [n for n in only if n in sets]:
        idx = sets[name]
        r = bench.run(trait, [pool[i] for i in idx])
        r["scores"] = {sc: statistics.fmean(scores[i][sc] for i in idx) for sc in SCORES}
        res["datasets"][name] = r
        res["correlations"] = correlations(list(res["datasets"].values()), trait)
        bench.save()
        log(f"{trait} {name}: shift {r['shifts'][trait]} ({r['seconds']} s)")
    k = s.size
    res["samples"] = {}
    wanted = SAMPLE_SETS if only is None else [n for n in only if n in SAMPLE_SETS]
    by = {sc: ascending([x[sc] for x in scores]) for sc in SCORES} if wanted else {}
    for name in wanted:
        picks = {
            "top_delta": by["delta"][-k:],
            "top_projection": by["projection"][-k:],
            "top_prompt_last_delta": by["prompt_last_delta"][-k:],
            "random": sorted(random.Random(s.seed).sample(range(len(pool)), k)),
            "bottom_delta": by["delta"][:k],
        }
        idx = picks[name]
        r = bench.run(trait, [pool[i] for i in sorted(idx)])
        r["kinds"] = {kind: sum(res["pool"][i]["kind"] == kind for i in idx) for kind in ("trait", "clean", "realistic")}
        res["samples"][name] = r
        bench.save()
        log(f"{trait} sample {name}: {r['kinds']} shift {r['shifts'][trait]} ({r['seconds']} s)")
    res["steering"] = {}
    full = [pool[i] for i in sets["share_100"]]
    for alpha in s.alphas if only is None else [float(n[6:]) for n in only if n.startswith("steer_")]:
        r = bench.run(trait, full, alpha)
        res["steering"][str(alpha)] = r
        bench.save()
        log(f"{trait} steering alpha {alpha}: shift {r['shifts'][trait]} clean loss {r['clean_loss']:.4f} ({r['seconds']} s)")


def rescore(path: str, traits: list[str] | None, vectors: str | None, out: str) -> dict[str, Any]:
    """``--rescore``: the prompt-last figures of a results file again, with ``vectors``' scoring (e.g. a learned reference)."""
    from auditor.pipeline import scan

    with open(path) as fh:
        results = json.load(fh)
    st = results["settings"]
    size = int(st["size"])
    for trait in traits or list(results["traits"]):
        res = results["traits"][trait]
        pool, sets = trait_pool(trait, size)
        if len(pool) != len(res["pool"]):
            raise SystemExit(f"{path}: {trait}'s pool has {len(res['pool'])} samples, the bench data gives {len(pool)}; rerun the bench instead")
        with tempfile.TemporaryDirectory(prefix="bench-rescore-") as work:
            data = write_pool(os.path.join(work, "pool.jsonl"), trait, pool)
            model = None if st.get("model", "embedded") == "embedded" else st["model"]
            dtype = st.get("dtype", "auto")
            df = scan(
                data,
                traits=[trait],
                model=model,
                vectors=vectors,
                dtype=dtype,
                device="cpu",
                db=os.path.join(work, "a.duckdb"),
                report=False,
                baseline="prompt-last",
            )
        new = df.sort("line")[f"{trait}_delta"].to_list()
        k = size
        old_pick = ascending([x["prompt_last_delta"] for x in res["pool"]])[-k:]
        for entry, value in zip(res["pool"], new):
            entry["prompt_last_delta_before_rescore"] = entry["prompt_last_delta"]
            entry["prompt_last_delta"] = value
        for name, r in res.get("datasets", {}).items():
            r["scores"]["prompt_last_delta"] = statistics.fmean(new[i] for i in sets[name])
        res["correlations"] = correlations(list(res["datasets"].values()), trait)
        new_pick = ascending(new)[-k:]
        res["rescored"] = {
            "vectors": portable_path(vectors) if vectors else "shipped",
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "top_prompt_last_delta_is_the_trained_set": sorted(old_pick) == sorted(new_pick),
            "top_prompt_last_delta_overlap": len(set(old_pick) & set(new_pick)),
            "note": "prompt-last scores and correlations re-scanned; every fine-tune, and every other score, is the original run's",
        }
        if sorted(old_pick) != sorted(new_pick) and "top_prompt_last_delta" in res.get("samples", {}):
            res["samples"]["top_prompt_last_delta"]["picked_by_the_score_before_rescore"] = True
    results["summary"] = summary(results)
    with open(out, "w") as fh:
        json.dump(results, fh, indent=1)
    return results


def make_tiny(folder: str, traits: list[str]) -> tuple[str, str]:
    """A random 2-layer Llama with the embedded tokenizer, and random vectors for it (the --quick path)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from auditor.model.loading import _embedded_dir
    from auditor.vectors import PersonaVector, save_vector

    tok = AutoTokenizer.from_pretrained(_embedded_dir()[0])
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model_dir, vec_dir = os.path.join(folder, "tiny-model"), os.path.join(folder, "tiny-vectors")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    for t in traits:
        save_vector(PersonaVector(t, torch.randn(3, 32, generator=g), 1, {}), vec_dir)
    return model_dir, vec_dir


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per trait: Spearman of each score with the behavioural shift, top-k / random-k ratios, steering trade-off."""
    out = {}
    for trait, res in results["traits"].items():
        row: dict[str, Any] = {}
        corr = res.get("correlations", {})
        row["spearman_behaviour"] = {sc: corr.get(sc, {}).get("behaviour_shift", {}).get("spearman") for sc in SCORES}
        row["spearman_shift"] = {sc: corr.get(sc, {}).get("shift", {}).get("spearman") for sc in SCORES}
        samples = res.get("samples", {})
        if "random" in samples:
            rnd = samples["random"]["shifts"][trait]
            row["topk_over_random"] = {
                name: {m: (r["shifts"][trait][m] / rnd[m]) if rnd[m] else None for m in MEASURES if r["shifts"][trait][m] is not None}
                for name, r in samples.items()
                if name != "random"
            }
        steer = res.get("steering", {})
        if "0.0" in steer:
            ref = steer["0.0"]
            row["steering"] = {
                a: {
                    "shift_cut": {m: 1 - r["shifts"][trait][m] / ref["shifts"][trait][m] if ref["shifts"][trait][m] else None for m in MEASURES},
                    "clean_loss_increase": r["clean_loss"] / ref["clean_loss"] - 1,
                }
                for a, r in steer.items()
            }
        out[trait] = row
    return out


def _f(v: float | None, spec: str = "+.3f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(results: dict[str, Any]) -> str:
    """The tables of bench/NOTES-finetune.md from a results file."""
    lines = []
    for trait, res in results["traits"].items():
        lines += [
            f"### {trait}",
            "",
            "| set | mean delta | mean projection | mean prompt-last delta | finetuning shift | expression shift | behaviour shift | clean loss |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in res.get("datasets", {}).items():
            sh = r["shifts"][trait]
            sc = r["scores"]
            lines.append(
                f"| {name} | {_f(sc['delta'])} | {_f(sc['projection'])} | {_f(sc['prompt_last_delta'])} | {_f(sh['shift'])} | {_f(sh['expression_shift'])} | {_f(sh['behaviour_shift'])} | {_f(r['clean_loss'], '.4f')} |"
            )
        corr = res.get("correlations", {})
        if corr:
            lines += ["", "| score | vs finetuning shift (Pearson / Spearman) | vs expression shift | vs behaviour shift |", "|---|---|---|---|"]
            for sc in SCORES:
                cells = [f"{_f(corr[sc][m]['pearson'], '+.2f')} / {_f(corr[sc][m]['spearman'], '+.2f')}" for m in MEASURES]
                lines.append(f"| {sc} | " + " | ".join(cells) + " |")
        if res.get("samples"):
            lines += ["", "| sample-level set | trait / clean / realistic | finetuning shift | expression shift | behaviour shift |", "|---|---|---|---|---|"]
            for name, r in res["samples"].items():
                sh, k = r["shifts"][trait], r["kinds"]
                lines.append(
                    f"| {name} | {k['trait']} / {k['clean']} / {k['realistic']} | {_f(sh['shift'])} | {_f(sh['expression_shift'])} | {_f(sh['behaviour_shift'])} |"
                )
        if res.get("steering"):
            lines += ["", "| steering alpha | finetuning shift | expression shift | behaviour shift | clean loss |", "|---|---|---|---|---|"]
            for a, r in res["steering"].items():
                sh = r["shifts"][trait]
                lines.append(f"| {a} | {_f(sh['shift'])} | {_f(sh['expression_shift'])} | {_f(sh['behaviour_shift'])} | {_f(r['clean_loss'], '.4f')} |")
        lines.append("")
    return "\n".join(lines)


def merge(paths: list[str], out: str) -> dict[str, Any]:
    """Combine result files (e.g. one per set of the same trait): sets merge, correlations and the summary are recomputed."""
    merged: dict[str, Any] | None = None
    for path in paths:
        with open(path) as fh:
            one = json.load(fh)
        if merged is None:
            merged = dict(one, traits={}, parts=[])
        merged["parts"].append({"path": os.path.basename(path), "started_at": one.get("started_at"), "total_seconds": one.get("total_seconds")})
        for trait, res in one["traits"].items():
            into = merged["traits"].setdefault(trait, {})
            for key, value in res.items():
                if isinstance(value, dict) and key in ("datasets", "samples", "steering"):
                    into.setdefault(key, {}).update(value)
                elif key not in into or key == "pool":
                    into[key] = value
    if merged is None:
        raise SystemExit("nothing to merge")
    for trait, res in merged["traits"].items():
        order = [f"share_{int(x * 100)}" for x in SHARES] + ["realistic"]
        res["datasets"] = {n: res["datasets"][n] for n in order if n in res.get("datasets", {})}
        res["samples"] = {n: res["samples"][n] for n in SAMPLE_SETS if n in res.get("samples", {})}
        if "0.0" not in res.get("steering", {}) and "share_100" in res["datasets"]:  # the same run: 100 % set, alpha 0, same seed and settings
            res.setdefault("steering", {})["0.0"] = res["datasets"]["share_100"]
        res["steering"] = dict(sorted(res.get("steering", {}).items(), key=lambda kv: float(kv[0])))
        res["correlations"] = correlations(list(res["datasets"].values()), trait)
    merged["summary"] = summary(merged)
    with open(out, "w") as fh:
        json.dump(merged, fh, indent=1)
    print(json.dumps(merged["summary"], indent=1))
    return merged


def parse(argv: list[str] | None) -> tuple[BenchSettings, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", default=None, help="vector folder (default: the shipped vectors of the model)")
    ap.add_argument("--traits", default=None, help="comma-separated traits (default: sycophancy,hallucination,evil)")
    ap.add_argument("--size", type=int, default=None, help="samples per training set (default 24)")
    ap.add_argument("--alphas", default=None, help="preventative steering alphas in audit vectors steer units, comma-separated (default 0,8,16)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="traits benched in parallel processes (default 1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune.json"))
    ap.add_argument("--quick", action="store_true", help="tiny random model, 4-sample sets, 1 epoch: the code path in seconds (CI)")
    ap.add_argument("--sets", default=None, help="run only these sets of each trait, in this order (share_100,realistic,random,steer_8.0,...)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="PART", help="merge result files of the same settings into --out and exit")
    ap.add_argument(
        "--rescore",
        metavar="RESULTS",
        default=None,
        help="re-scan the pools of RESULTS with --vectors (prompt-last), recompute its prompt-last figures into --out and exit",
    )
    ap.add_argument("--tables", metavar="RESULTS", default=None, help="print the markdown tables of a results file (or .part file) and exit")
    args = ap.parse_args(argv)
    s = BenchSettings()
    if args.quick:
        s = BenchSettings(traits=["sycophancy"], size=4, alphas=[0.0, 4.0], scan_max_new_tokens=4, shift_max_new_tokens=4, epochs=1.0, bf16=False, quick=True)
    else:
        from auditor.model.loading import resolve_dtype

        s.bf16 = resolve_dtype("auto", "cpu") == "bfloat16"
    if args.traits:
        s.traits = [t.strip() for t in args.traits.split(",") if t.strip()]
    for name in ("size", "threads"):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    if args.alphas:
        s.alphas = [float(a) for a in args.alphas.split(",")]
    s.vectors = args.vectors
    return s, args


def run_parallel(argv: list[str], s: BenchSettings, args: argparse.Namespace) -> dict[str, Any]:
    """One process per trait (``--jobs``), then one results file with every trait."""
    import subprocess

    started = time.perf_counter()
    parts = {t: f"{args.out}.{t}.part" for t in s.traits}
    base, skip = [], False
    for a in argv:  # the children get every option but --jobs, --traits and --out
        if skip or a.split("=")[0] in ("--jobs", "--traits", "--out"):
            skip = not skip and "=" not in a
            continue
        base.append(a)
    running = []
    for trait, part in parts.items():
        while len([p for p in running if p.poll() is None]) >= args.jobs:
            time.sleep(5)
        running.append(subprocess.Popen([sys.executable, __file__, *base, "--traits", trait, "--out", part]))
    codes = [p.wait() for p in running]
    merged: dict[str, Any] | None = None
    for part in parts.values():
        if not os.path.exists(part):
            continue
        with open(part) as fh:
            one = json.load(fh)
        if merged is None:
            merged = dict(one, traits={})
        merged["traits"].update(one["traits"])
    if merged is None:
        raise SystemExit(f"no trait finished (exit codes {codes})")
    merged["settings"]["traits"] = s.traits
    merged["summary"] = summary(merged)
    merged["total_seconds"] = round(time.perf_counter() - started, 1)
    merged["jobs"] = args.jobs
    merged["exit_codes"] = codes
    with open(args.out, "w") as fh:
        json.dump(merged, fh, indent=1)
    for part in parts.values():
        if os.path.exists(part):
            os.remove(part)
    print(json.dumps(merged["summary"], indent=1))
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    s, args = parse(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.rescore:
        results = rescore(args.rescore, s.traits if args.traits else None, args.vectors, args.out)
        print(json.dumps(results["summary"], indent=1))
        return results
    if args.tables:
        with open(args.tables) as fh:
            print(markdown(json.load(fh)))
        return {}
    if args.jobs > 1 and len(s.traits) > 1:
        return run_parallel(argv, s, args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as work:
        if s.quick:
            s.model, quick_vectors = make_tiny(work, s.traits)
            s.vectors = s.vectors or quick_vectors
        bench = Bench(s, args.out, work)

        def log(msg: str) -> None:
            print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

        log(f"base clean loss {bench.results['base_clean_loss']:.4f}; settings {asdict(s)}")
        for trait in s.traits:
            bench_trait(bench, trait, log, args.sets.split(",") if args.sets else None)
            bench.results["summary"] = summary(bench.results)
            bench.results["total_seconds"] = round(time.perf_counter() - started, 1)
            bench.save()
    bench.results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    bench.save()
    log(f"done in {bench.results['total_seconds']} s; results in {args.out}")
    print(json.dumps(bench.results["summary"], indent=1))
    return bench.results


if __name__ == "__main__":
    main()
