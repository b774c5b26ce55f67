"""Make a persona vector from a trait definition (METHOD.md, "Extraction").

Two ways to get the eliciting and suppressing responses:

- ``sampled`` (the paper's way): for every extraction question and instruction pair,
  sample ``n_per_question`` answers with the eliciting instruction as the system prompt
  and as many with the suppressing one (temperature 1, each sample seeded on its own),
  optionally judge them and keep the pairs METHOD.md keeps.
- ``provided``: teacher-force the definition's written example answers. For models too
  small to follow role instructions. The written answers are read with no system
  prompt (``context="none"``: the chat template's default applies, exactly as ``scan``
  reads a dataset sample without one), so the direction comes from the answers' content
  and not from the instructions; ``context="instructions"`` puts instruction pair
  ``i mod n`` in front of question ``i`` instead.

Either way the vector is ``v[l] = mean a_l(pos) - mean a_l(neg)`` at every layer, where
``a_l`` is the mean of ``h[l]`` over the response tokens in the context they were made in.

The recommended layer is the one whose direction best separates held-out responses to
the EVALUATION questions: Cohen's d between the projections of eliciting and suppressing
responses. Layers 0 and L are not recommended by default: ``h[0]`` is the token
embedding (it separates by word choice alone and cannot be steered through a decoder
block), and ``h[L]`` has the final norm applied, so its scale is not the residual
stream's that ``scan``'s other layers and ``vectors check``'s steering hook work in.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from auditor.errors import VectorError
from auditor.vectors.judges import COHERENCE_RUBRIC, Judge, NoJudge
from auditor.vectors.persona import PersonaVector
from auditor.vectors.traits import Trait

RESPONSE_MODES = ("sampled", "provided")
CONTEXTS = ("none", "instructions")
HELDOUT = ("auto", "examples", "sampled")
TRAIT_THRESHOLD = 50.0  # METHOD.md: eliciting >= 50, suppressing < 50
COHERENCE_THRESHOLD = 50.0  # both coherent: >= 50


@dataclass(frozen=True)
class ExtractSettings:
    """Everything that determines a vector; stored in the sidecar and the defaults of ``audit extract``."""

    responses: str = "provided"
    n_per_question: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0
    context: str = "none"  # provided mode: "none" or "instructions"
    heldout: str = "auto"  # held-out set for the layer choice: written evaluation examples when present, else sampled answers
    n_heldout_per_question: int = 1  # sampled held-out answers per evaluation question and instruction pair
    batch_tokens: int = 8192
    generation_batch_size: int = 32
    exclude_edge_layers: bool = True
    layer: int | None = None  # fixed layer instead of the argmax

    def validate(self) -> None:
        if self.responses not in RESPONSE_MODES:
            raise VectorError(f"unknown --responses {self.responses!r}; use sampled or provided")
        if self.context not in CONTEXTS:
            raise VectorError(f"unknown context {self.context!r}; use none or instructions")
        if self.heldout not in HELDOUT:
            raise VectorError(f"unknown --heldout {self.heldout!r}; use auto, examples or sampled")
        for name in ("n_per_question", "max_new_tokens", "batch_tokens", "generation_batch_size", "n_heldout_per_question"):
            if getattr(self, name) < 1:
                raise VectorError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.temperature > 0:
            raise VectorError("--temperature must be above 0 (the method samples at 1)")


@dataclass
class Response:
    """One eliciting or suppressing answer and the context it was made in."""

    question: str
    answer: str
    system: str | None
    pole: str  # "pos" or "neg"
    pair: int  # instruction pair index, or -1 without instructions
    sample: int
    trait_score: float | None = None
    coherence: float | None = None

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return system + [{"role": "user", "content": self.question}]


@dataclass
class ExtractReport:
    """What an extraction did, for the CLI's table and the sidecar."""

    trait: str
    mode: str
    layer: int
    separation: list[float]  # Cohen's d per layer h[0..L] on the held-out responses
    heldout_kind: str
    n_generated: int
    n_pairs: int
    n_kept: int
    n_heldout: tuple[int, int]
    dropped: dict[str, int]
    norms: list[float]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def sample_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed for one sample, independent of batching and order."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def cohens_d(pos: Any, neg: Any) -> float:
    """pos: [n1], neg: [n2] -> (mean_pos - mean_neg) / pooled standard deviation."""
    n1, n2 = int(pos.numel()), int(neg.numel())
    if n1 < 2 or n2 < 2:
        return float("nan")
    pooled = ((n1 - 1) * pos.var() + (n2 - 1) * neg.var()) / (n1 + n2 - 2)
    sd = float(pooled.sqrt())
    diff = float(pos.mean() - neg.mean())
    return diff / sd if sd > 0 else (math.copysign(float("inf"), diff) if diff else 0.0)


def layer_separation(pos_means: Any, neg_means: Any, vector: Any) -> list[float]:
    """pos_means: [n1, L+1, d], neg_means: [n2, L+1, d], vector: [L+1, d] -> Cohen's d per layer."""
    import torch

    unit = vector.float() / vector.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    pos_proj = torch.einsum("nld,ld->nl", pos_means.float(), unit)
    neg_proj = torch.einsum("nld,ld->nl", neg_means.float(), unit)
    return [cohens_d(pos_proj[:, layer], neg_proj[:, layer]) for layer in range(vector.shape[0])]


def recommend_layer(separation: Sequence[float], exclude_edges: bool = True) -> int:
    """argmax of the separation (over 1..L-1 when ``exclude_edges``; NaN never wins)."""
    n = len(separation)
    candidates = range(1, n - 1) if exclude_edges and n > 2 else range(n)
    scored = [(s if math.isfinite(s) else -math.inf, -layer) for layer, s in ((layer, separation[layer]) for layer in candidates)]
    best = max(scored)
    return -best[1]


def build_prompts(tokenizer: Any, responses: Sequence[Response]) -> list[str]:
    return [tokenizer.apply_chat_template(r.messages(), tokenize=False, add_generation_prompt=True) for r in responses]


def response_means(lm: Any, responses: Sequence[Response], batch_tokens: int = 8192) -> Any:
    """Each response's mean hidden state over its tokens at every layer: [N, L+1, d] float32.

    Batched by length (``activations.response_means``); ``h[L]`` includes the final norm.
    """
    from auditor.activations import encode_pair
    from auditor.activations import response_means as batched_response_means

    tok = lm.tokenizer
    prompts = build_prompts(tok, responses)
    rows = [encode_pair(tok, p, r.answer) for p, r in zip(prompts, responses)]
    for r, row in zip(responses, rows):
        if row.end <= row.start:
            raise VectorError(f"the answer to {r.question[:60]!r} tokenizes to zero tokens; it has no activation")
    return batched_response_means(lm.model, rows, list(range(lm.num_layers + 1)), tok.pad_token_id, batch_tokens, lm.layers_path)


def sample_responses(lm: Any, trait: Trait, questions: Sequence[str], n: int, settings: ExtractSettings, split: str) -> list[Response]:
    """Answers under each instruction pair: n per question, pair and pole, each with its own seed."""
    from auditor.generation import generate_sampled

    tok = lm.tokenizer
    todo: list[Response] = []
    seeds: list[int] = []
    for qi, q in enumerate(questions):
        for pi, (pos, neg) in enumerate(trait.instructions):
            for k in range(n):
                for pole, system in (("pos", pos), ("neg", neg)):
                    todo.append(Response(q, "", system, pole, pi, k))
                    seeds.append(sample_seed(settings.seed, trait.name, split, qi, pi, k, pole))
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in build_prompts(tok, todo)]
    answers = generate_sampled(lm, prompts, seeds, settings.max_new_tokens, settings.temperature, settings.generation_batch_size)
    for r, (text, _n) in zip(todo, answers):
        r.answer = text
    return todo


def provided_responses(trait: Trait, part: str, context: str) -> list[Response]:
    """The written examples as responses (``part``: extraction or evaluation)."""
    examples = trait.extraction_examples if part == "extraction" else trait.evaluation_examples
    if not examples:
        raise VectorError(
            f"{trait.path}: has no examples.{part}; --responses provided needs written answers (see vectors/traits/README.md), or use --responses sampled"
        )
    out = []
    for i, ex in enumerate(examples):
        pair = i % len(trait.instructions) if context == "instructions" else -1
        pos_sys, neg_sys = trait.instructions[pair] if pair >= 0 else (None, None)
        out.append(Response(ex.question, ex.pos, pos_sys, "pos", pair, 0))
        out.append(Response(ex.question, ex.neg, neg_sys, "neg", pair, 0))
    return out


def provided_pairs(trait: Trait, part: str) -> list[tuple[Response, Response]]:
    """The written examples of ``part`` as (pos, neg) pairs, read with no system prompt (the way scan reads a dataset)."""
    responses = provided_responses(trait, part, "none")
    return [(responses[i], responses[i + 1]) for i in range(0, len(responses), 2)]


def judge_and_pair(responses: list[Response], trait: Trait, judge: Judge) -> tuple[list[tuple[Response, Response]], dict[str, int]]:
    """Pairs (pos, neg) of the same question, pair and sample that pass METHOD.md's filter."""
    if judge.enabled:
        qa = [(r.question, r.answer) for r in responses]
        for r, s in zip(responses, judge.score(trait.rubric, qa)):
            r.trait_score = s
        for r, s in zip(responses, judge.score(COHERENCE_RUBRIC, qa)):
            r.coherence = s
    by_key: dict[tuple[str, int, int], dict[str, Response]] = {}
    for r in responses:
        by_key.setdefault((r.question, r.pair, r.sample), {})[r.pole] = r
    kept, dropped = [], {"empty answer": 0, "unscored": 0, "eliciting < 50": 0, "suppressing >= 50": 0, "incoherent": 0}
    for poles in by_key.values():
        pos, neg = poles["pos"], poles["neg"]
        if not pos.answer.strip() or not neg.answer.strip():
            dropped["empty answer"] += 1
        elif not judge.enabled:
            kept.append((pos, neg))
        elif None in (pos.trait_score, neg.trait_score, pos.coherence, neg.coherence):
            dropped["unscored"] += 1
        elif pos.trait_score < TRAIT_THRESHOLD:
            dropped["eliciting < 50"] += 1
        elif neg.trait_score >= TRAIT_THRESHOLD:
            dropped["suppressing >= 50"] += 1
        elif pos.coherence < COHERENCE_THRESHOLD or neg.coherence < COHERENCE_THRESHOLD:
            dropped["incoherent"] += 1
        else:
            kept.append((pos, neg))
    return kept, {k: v for k, v in dropped.items() if v}


def mean_difference(lm: Any, kept: list[tuple[Response, Response]], settings: ExtractSettings) -> Any:
    """kept pairs -> v: [L+1, d] float32 = mean a_l(pos) - mean a_l(neg)."""
    pos = response_means(lm, [p for p, _ in kept], settings.batch_tokens)
    neg = response_means(lm, [n for _, n in kept], settings.batch_tokens)
    return pos.mean(dim=0) - neg.mean(dim=0)


def fit_reference(vector: Any, means: Any, lasts: Any, alpha: float) -> tuple[Any, Any, list[float]]:
    """The learned prompt-last reference: at every layer, ridge regression from the last prompt token's hidden state
    (``lasts`` [N, L+1, d]) to the projection of the neutral answer's mean (``means`` [N, L+1, d]) on the unit
    direction of ``vector`` [L+1, d]. The penalty is ``alpha`` times the mean eigenvalue of the centred states'
    scatter matrix, so ``alpha`` does not depend on the layer's scale. Returns (weights [L+1, d], bias [L+1], R^2 per
    layer on the fitted answers); a layer where the vector is zero gets zero weights and bias, one where every prompt's
    state is the same gets zero weights and the mean as bias."""
    import torch

    n_layers, d = vector.shape
    weights = torch.zeros(n_layers, d, dtype=torch.float64)
    bias = torch.zeros(n_layers, dtype=torch.float64)
    r2 = []
    for layer in range(n_layers):
        norm = vector[layer].double().norm()
        if not float(norm) > 0:
            r2.append(0.0)
            continue
        y = means[:, layer].double() @ (vector[layer].double() / norm)
        x = lasts[:, layer].double()
        x_mean, y_mean = x.mean(0), y.mean()
        xc = x - x_mean
        scatter = xc.T @ xc
        spread = float(scatter.trace())
        if not spread > 0:  # every prompt ends in the same state here (layer 0 is the token embedding): the mean is the fit
            bias[layer] = y_mean
            r2.append(0.0)
            continue
        w = torch.linalg.solve(scatter + alpha * spread / d * torch.eye(d, dtype=torch.float64), xc.T @ (y - y_mean))
        weights[layer], bias[layer] = w, y_mean - x_mean @ w
        residual = y - (x @ w + bias[layer])
        total = float(((y - y_mean) ** 2).sum())
        r2.append(1.0 - float((residual**2).sum()) / total if total > 0 else 0.0)
    return weights.float(), bias.float(), r2


def reference_answers(trait: Trait, names: Sequence[str]) -> tuple[list[Response], dict[str, str]]:
    """The neutral (``neg``) written extraction answers of the definitions ``names`` (``trait`` itself may be one),
    as read with no system prompt; and name -> definition sha256."""
    from auditor.vectors.traits import load_trait

    answers: list[Response] = []
    shas: dict[str, str] = {}
    for name in names:
        other = trait if name == trait.name else load_trait(name)
        if not other.extraction_examples:
            raise VectorError(
                f"{trait.path}: learned_reference.from names {name}, but {other.path} has no written examples; "
                "list definitions with examples.extraction (their neg answers train the reference)"
            )
        answers += [r for r in provided_responses(other, "extraction", "none") if r.pole == "neg"]
        shas[name] = other.sha256
    return answers, shas


def answer_states(lm: Any, answers: Sequence[Response], batch_tokens: int = 8192) -> tuple[Any, Any]:
    """Each answer's response mean and its last prompt token's hidden state at every layer: ([N, L+1, d], [N, L+1, d])."""
    from auditor.activations import encode_pair, response_means_and_last

    tok = lm.tokenizer
    rows = [encode_pair(tok, p, r.answer) for p, r in zip(build_prompts(tok, answers), answers)]
    return response_means_and_last(lm.model, rows, list(range(lm.num_layers + 1)), tok.pad_token_id, batch_tokens, lm.layers_path)


def learned_reference(lm: Any, trait: Trait, vector: Any, settings: ExtractSettings) -> tuple[Any, Any, dict[str, Any]]:
    """``trait``'s ``learned_reference`` key made: :func:`fit_reference` on the neutral answers of the definitions it names.
    Returns (weights, bias, sidecar entry)."""
    spec = trait.reference
    assert spec is not None
    answers, shas = reference_answers(trait, spec.from_traits)
    means, lasts = answer_states(lm, answers, settings.batch_tokens)
    weights, bias, r2 = fit_reference(vector, means, lasts, spec.alpha)
    return weights, bias, {"from": shas, "alpha": spec.alpha, "answers": len(answers), "r2": [round(x, 4) for x in r2]}


def remove_directions(vector: Any, others: Any) -> Any:
    """vector: [L+1, d], others: [k, L+1, d] -> [L+1, d]: at every layer, ``vector`` minus its least-squares fit on the k others.

    The result is orthogonal to every other direction at every layer (to float precision).
    """
    import torch

    v = vector.double()
    basis = others.double().permute(1, 2, 0)  # [L+1, d, k]
    coef = torch.linalg.lstsq(basis, v.unsqueeze(-1)).solution  # [L+1, k, 1]
    return (v - (basis @ coef).squeeze(-1)).to(vector.dtype)


def other_directions(lm: Any, trait: Trait, settings: ExtractSettings) -> tuple[Any, dict[str, str], list[dict[str, str]]]:
    """The written-pair directions of ``trait``'s ``orthogonal_to`` entries: ([k, L+1, d], name -> definition
    sha256, the entries restricted to some pairs as ``{"trait", "pairs"}`` with the pairs as written)."""
    import torch

    from auditor.vectors.traits import load_trait

    dirs, shas, used = [], {}, []
    for entry in trait.orthogonal:
        other = load_trait(entry.trait)
        pairs = provided_pairs(other, "extraction")
        if entry.pairs is not None:
            if entry.pairs[-1] >= len(pairs):
                raise VectorError(
                    f"{trait.path}: orthogonal_to names {entry.trait}'s pairs {entry.spec}, but {other.path} has {len(pairs)} extraction pairs;"
                    f" use pair numbers within 1-{len(pairs)}"
                )
            pairs = [pairs[i] for i in entry.pairs]
            used.append({"trait": entry.trait, "pairs": entry.spec})
        dirs.append(mean_difference(lm, pairs, settings))
        shas[entry.trait] = other.sha256
    return torch.stack(dirs), shas, used


def heldout_responses(lm: Any, trait: Trait, settings: ExtractSettings, judge: Judge) -> tuple[str, list[tuple[Response, Response]]]:
    """Eliciting/suppressing answers to the evaluation questions: (kind, pairs)."""
    kind = settings.heldout
    if kind == "auto":
        kind = "examples" if trait.evaluation_examples else "sampled"
    if kind == "examples":
        return kind, provided_pairs(trait, "evaluation")
    responses = sample_responses(lm, trait, trait.evaluation_questions, settings.n_heldout_per_question, settings, "evaluation")
    kept, _ = judge_and_pair(responses, trait, judge)
    return kind, kept


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("persona-audit")
    except PackageNotFoundError:
        return "unknown"


def extract_vector(
    lm: Any,
    trait: Trait,
    settings: ExtractSettings | None = None,
    judge: Judge | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[PersonaVector, ExtractReport]:
    """Make ``trait``'s persona vector for ``lm``: (vector [L+1, d] with its sidecar meta, report).

    Answers (sampled or provided) -> judged pairs -> mean difference at every layer ->
    separation on held-out pairs -> the layer -> the vector with its sidecar.
    """
    settings = settings or ExtractSettings()
    settings.validate()
    judge = judge or NoJudge()
    say = progress or (lambda _msg: None)
    if settings.layer is not None and not 0 <= settings.layer <= lm.num_layers:
        raise VectorError(f"--layer {settings.layer} is outside 0..{lm.num_layers} for {lm.name}")
    judge.check()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    responses, kept, dropped = _judged_pairs(lm, trait, settings, judge, say, timings)
    vector, removed, removed_pairs = _direction(lm, trait, settings, kept, say, timings)
    reference, reference_meta = _reference_step(lm, trait, settings, vector, say, timings)
    t0 = time.perf_counter()
    kind, held, separation = _heldout_separation(lm, trait, settings, judge, vector, say)
    timings["heldout"] = time.perf_counter() - t0
    layer = settings.layer if settings.layer is not None else recommend_layer(separation, settings.exclude_edge_layers)
    seconds = time.perf_counter() - started
    norms = vector.norm(dim=1).tolist()
    if not norms[layer] > 0:
        raise VectorError(f"{trait.name}: the vector is zero at layer {layer}; the eliciting and suppressing answers are identical")
    counts = {
        "generated": len(responses) if settings.responses == "sampled" else 0,
        "responses": len(responses),
        "pairs": len(responses) // 2,
        "kept": len(kept),
        "dropped": dropped,
        "heldout_pairs": len(held),
    }
    meta = {**_vector_meta(lm, trait, settings, judge, counts, separation, kind, norms, seconds, removed), **reference_meta}
    if removed_pairs:
        meta["orthogonal_pairs"] = removed_pairs
    pv = PersonaVector(trait.name, vector.float().contiguous(), layer, meta, **reference)
    report = ExtractReport(
        trait=trait.name,
        mode=settings.responses,
        layer=layer,
        separation=separation,
        heldout_kind=kind,
        n_generated=counts["generated"],
        n_pairs=counts["pairs"],
        n_kept=len(kept),
        n_heldout=(len(held), len(held)),
        dropped=dropped,
        norms=norms,
        seconds=seconds,
        timings=timings,
    )
    return pv, report


def _direction(
    lm: Any, trait: Trait, settings: ExtractSettings, kept: list, say: Callable[[str], None], timings: dict[str, float]
) -> tuple[Any, dict[str, str], list[dict[str, str]]]:
    """The mean difference of the kept pairs at every layer ([L+1, d]), minus the directions of
    ``trait``'s ``orthogonal_to`` entries; and what was removed (name -> definition sha256; the
    entries restricted to some pairs, as ``{"trait", "pairs"}``)."""
    t0 = time.perf_counter()
    say(f"reading activations of {2 * len(kept)} answers at {lm.num_layers + 1} layers")
    vector = mean_difference(lm, kept, settings)
    timings["activations"] = time.perf_counter() - t0
    removed: dict[str, str] = {}
    used: list[dict[str, str]] = []
    if trait.orthogonal:
        t0 = time.perf_counter()
        say(f"removing the directions of {', '.join(o.describe() for o in trait.orthogonal)} (their written pairs) at every layer")
        others, removed, used = other_directions(lm, trait, settings)
        vector = remove_directions(vector, others)
        timings["orthogonal_to"] = time.perf_counter() - t0
    return vector, removed, used


def _reference_step(
    lm: Any, trait: Trait, settings: ExtractSettings, vector: Any, say: Callable[[str], None], timings: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The definition's learned reference, if it asks for one: (``PersonaVector`` keyword arguments, sidecar entries); both empty without."""
    if trait.reference is None:
        return {}, {}
    t0 = time.perf_counter()
    say(f"fitting the learned reference on the neutral answers of {', '.join(trait.reference.from_traits)} (alpha {trait.reference.alpha:g})")
    weights, bias, entry = learned_reference(lm, trait, vector, settings)
    timings["reference"] = time.perf_counter() - t0
    return {"reference": weights, "reference_bias": bias}, {"learned_reference": entry}


def _heldout_separation(
    lm: Any, trait: Trait, settings: ExtractSettings, judge: Judge, vector: Any, say: Callable[[str], None]
) -> tuple[str, list[tuple[Response, Response]], list[float]]:
    """Cohen's d of the held-out pairs' projections at every layer: (held-out kind, pairs, separation per layer)."""
    kind, held = heldout_responses(lm, trait, settings, judge)
    if len(held) < 2:
        raise VectorError(f"{trait.name}: only {len(held)} held-out pairs survived; cannot measure separation (sample more or use --heldout examples)")
    say(f"measuring separation on {len(held)} held-out pairs ({kind})")
    pos_h = response_means(lm, [p for p, _ in held], settings.batch_tokens)
    neg_h = response_means(lm, [q for _, q in held], settings.batch_tokens)
    return kind, held, layer_separation(pos_h, neg_h, vector)


def _judged_pairs(
    lm: Any, trait: Trait, settings: ExtractSettings, judge: Judge, say: Callable[[str], None], timings: dict[str, float]
) -> tuple[list[Response], list[tuple[Response, Response]], dict[str, int]]:
    """The extraction answers (sampled or provided) and the pairs the judge keeps: (answers, kept pairs, dropped counts)."""
    t0 = time.perf_counter()
    if settings.responses == "sampled":
        n = len(trait.extraction_questions) * len(trait.instructions) * settings.n_per_question * 2
        say(f"sampling {n} answers ({len(trait.extraction_questions)} questions x {len(trait.instructions)} instruction pairs x {settings.n_per_question} x 2)")
        responses = sample_responses(lm, trait, trait.extraction_questions, settings.n_per_question, settings, "extraction")
    else:
        responses = provided_responses(trait, "extraction", settings.context)
    timings["responses"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if judge.enabled:
        say(f"judging {len(responses)} answers with the {judge.name} judge")
    kept, dropped = judge_and_pair(responses, trait, judge)
    timings["judge"] = time.perf_counter() - t0
    if not kept:
        raise VectorError(
            f"{trait.name}: no pair of answers passed the filter ({', '.join(f'{k}: {v}' for k, v in dropped.items()) or 'none made'}); "
            "sample more (--n-per-question), use another judge, or use --responses provided"
        )
    return responses, kept, dropped


def _vector_meta(
    lm: Any,
    trait: Trait,
    settings: ExtractSettings,
    judge: Judge,
    counts: dict[str, Any],
    separation: list[float],
    kind: str,
    norms: list[float],
    seconds: float,
    removed: dict[str, str],
) -> dict[str, Any]:
    """The vector's sidecar: where it came from, how it was made, and what was measured."""
    import torch

    return {
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "model_source": lm.source,
        "dtype": lm.dtype,
        "device": lm.device,
        "mode": settings.responses,
        "layer_choice": "--layer"
        if settings.layer is not None
        else ("argmax of held-out separation over layers 1..L-1" if settings.exclude_edge_layers else "argmax of held-out separation"),
        "counts": counts,
        "judge": judge.describe(),
        "orthogonal_to": removed,
        "separation": [round(s, 6) if math.isfinite(s) else None for s in separation],
        "separation_heldout": kind,
        "norms": [round(x, 6) for x in norms],
        "seed": settings.seed,
        "settings": asdict(settings),
        "trait_file": trait.path,
        "trait_sha256": trait.sha256,
        "description": trait.description,
        "tool_version": tool_version(),
        "torch_version": torch.__version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extraction_seconds": round(seconds, 2),
    }


def cosine_at(a: PersonaVector | Any, b: PersonaVector | Any, layer: int) -> float:
    """Cosine similarity of two vectors' rows at ``layer``."""
    import torch

    va = (a.vector if isinstance(a, PersonaVector) else a)[layer].float()
    vb = (b.vector if isinstance(b, PersonaVector) else b)[layer].float()
    return float(torch.nn.functional.cosine_similarity(va, vb, dim=0))
