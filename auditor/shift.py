"""What fine-tuning did to a model: its shift along each persona vector, and a vector-free check.

For each trait, on the trait's EVALUATION questions (held out from extraction), a tuned
model is compared with its base with three measures:

- ``finetuning shift`` (the paper's measure): the hidden state ``h[l]`` at the last prompt
  token, projected on the unit vector at the vector's layer ``l``, averaged over the
  questions; tuned minus base. It reads the model's state before it answers.
- ``expression``: each model answers the questions greedily; each answer is scored as
  ``audit scan`` scores a response (mean of ``h[l]`` over its tokens, projected), always
  teacher-forced in the BASE model, so the two numbers compare what the texts say in one
  fixed frame; tuned minus base.
- ``behaviour`` (no vector involved): the mean per-token log-likelihood of the trait-showing
  written answer minus the trait-free one (the definition's ``examples.evaluation``) under
  each model; tuned minus base. It checks the vector-based measures against the model's
  output distribution, so the ground truth does not rest on the vector it is meant to test.

Any fine-tune drifts these numbers a little, whatever it trains on: compare against a
matched clean fine-tune or across datasets rather than reading one absolute shift alone.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from auditor.errors import AuditorError, MissingDependency, ModelError
from auditor.vectors.persona import PersonaVector
from auditor.vectors.traits import Trait

MEASURES = ("shift", "expression", "behaviour")  # the gate's rule names, in table order
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class TraitShift:
    """One trait's measures for one (base, tuned) pair. ``*_shift`` = tuned - base."""

    trait: str
    layer: int
    n_questions: int
    prompt_last_base: float
    prompt_last_tuned: float
    shift: float
    expression_base: float | None = None
    expression_tuned: float | None = None
    expression_shift: float | None = None
    margin_base: float | None = None
    margin_tuned: float | None = None
    behaviour_shift: float | None = None
    n_examples: int = 0
    answer_base: str = ""  # the first question's answers, for a look at what changed
    answer_tuned: str = ""

    def value(self, measure: str) -> float | None:
        return {"shift": self.shift, "expression": self.expression_shift, "behaviour": self.behaviour_shift}[measure]


@dataclass
class ShiftReport:
    base: str
    tuned: str
    base_fingerprint: str
    tuned_fingerprint: str
    traits: list[TraitShift] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def question_prompts(tokenizer: Any, questions: Sequence[str]) -> list[str]:
    """Chat prompts of single user questions (no system message), as the steering check builds them."""
    from auditor.vectors.steering import question_prompts as _prompts

    return _prompts(tokenizer, questions)


def prompt_last_projections(model: Any, tokenizer: Any, prompts: Sequence[str], layer: int, direction: Any, layers_path: str | None = None) -> list[float]:
    """Per prompt: ``h[layer]`` at its last token projected on ``direction`` (unit, [d])."""
    from auditor.activations import EncodedRow
    from auditor.scoring import score_rows

    rows = [EncodedRow(tuple(ids), len(ids), len(ids)) for ids in (tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts)]
    scores = score_rows(model, rows, {"v": (layer, direction)}, tokenizer.pad_token_id, layers_path=layers_path)
    return [s.prompt_last["v"] for s in scores]


def answer_projections(
    model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], layer: int, direction: Any, layers_path: str | None = None
) -> list[float]:
    """Per (prompt, answer): mean of ``h[layer]`` over the answer's tokens, projected; empty answers are skipped."""
    from auditor.activations import encode_pair
    from auditor.scoring import score_rows

    rows = [encode_pair(tokenizer, p, a) for p, a in zip(prompts, answers) if a.strip()]
    rows = [r for r in rows if r.end > r.start]
    if not rows:
        return []
    return [s.proj["v"] for s in score_rows(model, rows, {"v": (layer, direction)}, tokenizer.pad_token_id, layers_path=layers_path)]


def answers(lm: Any, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy answers of ``lm`` to chat prompts (text)."""
    from auditor.generation import generate_greedy

    ids = [lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return [text for text, _n in generate_greedy(lm, ids, max_new_tokens)]


def behaviour_margin(lm: Any, trait: Trait) -> float | None:
    """Mean log-likelihood margin of the trait-showing over the trait-free written evaluation answer (None without examples)."""
    from auditor.vectors.steering import preference

    return preference(lm, trait)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


@dataclass
class TraitProfile:
    """One model's side of a trait's measures (what :func:`trait_shift` subtracts)."""

    prompt_last: float
    expression: float | None
    margin: float | None
    answer: str


def trait_profile(
    lm: Any, frame: Any, pv: PersonaVector, trait: Trait, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, expression: bool = True, layers_path: str | None = None
) -> TraitProfile:
    """``lm``'s prompt-last projection, expression (its answers read in ``frame``, the base) and margin for one trait."""
    tok = frame.tokenizer
    prompts = question_prompts(tok, trait.evaluation_questions)
    direction = pv.direction()
    prompt_last = statistics.fmean(prompt_last_projections(lm.model, tok, prompts, pv.layer, direction, layers_path))
    expressed, first = None, ""
    if expression:
        said = answers(lm, prompts, max_new_tokens)
        first = said[0]
        expressed = _mean(answer_projections(frame.model, tok, prompts, said, pv.layer, direction, layers_path))
    return TraitProfile(prompt_last, expressed, behaviour_margin(lm, trait), first)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def trait_shift(
    base: Any,
    tuned: Any,
    pv: PersonaVector,
    trait: Trait,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    expression: bool = True,
    layers_path: str | None = None,
    base_profile: TraitProfile | None = None,
) -> TraitShift:
    """The three measures of one trait for ``tuned`` against ``base`` (both LoadedModel-like).

    ``base_profile`` (from :func:`trait_profile` of the base with the same settings) saves
    recomputing the base side when one base is compared with many tuned models.
    """
    b = base_profile or trait_profile(base, base, pv, trait, max_new_tokens, expression, layers_path)
    t = trait_profile(tuned, base, pv, trait, max_new_tokens, expression, layers_path)
    return TraitShift(
        trait=pv.trait,
        layer=pv.layer,
        n_questions=len(trait.evaluation_questions),
        prompt_last_base=b.prompt_last,
        prompt_last_tuned=t.prompt_last,
        shift=t.prompt_last - b.prompt_last,
        expression_base=b.expression,
        expression_tuned=t.expression,
        expression_shift=_minus(t.expression, b.expression),
        margin_base=b.margin,
        margin_tuned=t.margin,
        behaviour_shift=_minus(t.margin, b.margin),
        n_examples=len(trait.evaluation_examples),
        answer_base=b.answer,
        answer_tuned=t.answer,
    )


def check_pair(base: Any, tuned: Any) -> None:
    """Refuse a tuned model that cannot be compared with the base (other shape or tokenizer)."""
    if (base.num_layers, base.hidden_size) != (tuned.num_layers, tuned.hidden_size):
        raise ModelError(
            f"{tuned.source} has {tuned.num_layers} layers of size {tuned.hidden_size}, the base {base.source} has "
            f"{base.num_layers} of size {base.hidden_size}: pass the base it was fine-tuned from with --base"
        )
    if base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
        raise ModelError(f"{tuned.source} uses another tokenizer than {base.source}: pass the base it was fine-tuned from with --base")


def measure_shift(
    base: Any,
    tuned: Any,
    vectors: Sequence[PersonaVector],
    traits: dict[str, Trait],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    expression: bool = True,
    layers_path: str | None = None,
    base_profiles: dict[str, TraitProfile] | None = None,
) -> ShiftReport:
    """Every trait's :class:`TraitShift`; ``traits`` maps each vector's trait to its definition.

    ``base_profiles`` (trait -> :func:`trait_profile` of the base) skips recomputing the base side.
    """
    started = time.perf_counter()
    check_pair(base, tuned)
    missing = [pv.trait for pv in vectors if pv.trait not in traits]
    if missing:
        raise AuditorError(f"no trait definition for {', '.join(missing)}: add vectors/traits/{missing[0]}.yaml (its evaluation questions are measured)")
    report = ShiftReport(
        base=base.source,
        tuned=tuned.source,
        base_fingerprint=base.fingerprint,
        tuned_fingerprint=tuned.fingerprint,
        settings={"max_new_tokens": max_new_tokens, "expression": expression, "dtype": base.dtype},
    )
    for pv in vectors:
        report.traits.append(trait_shift(base, tuned, pv, traits[pv.trait], max_new_tokens, expression, layers_path, (base_profiles or {}).get(pv.trait)))
    report.seconds = time.perf_counter() - started
    return report


def is_adapter(path: str) -> bool:
    """A PEFT adapter folder (adapter_config.json) rather than a full model."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "adapter_config.json"))


def adapter_base(path: str) -> str | None:
    """The base model an adapter folder names (``base_model_name_or_path``), if any."""
    with open(os.path.join(path, "adapter_config.json")) as fh:
        try:
            return json.load(fh).get("base_model_name_or_path") or None
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}/adapter_config.json: not valid JSON ({e.msg}, line {e.lineno}); save the adapter again") from None


def load_tuned(spec: str, base: Any, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False) -> Any:
    """The tuned model: a full model folder, or a PEFT/LoRA adapter applied to ``base``'s weights and merged.

    An adapter is applied to a fresh copy of the base (``base`` itself is left untouched).
    """
    from auditor.model import load_model

    if not is_adapter(spec):
        return load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingDependency("peft", "peft", f"{spec} is a PEFT adapter; reading it") from None
    fresh = load_model(base.path or base.source, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    try:
        merged = PeftModel.from_pretrained(fresh.model, spec).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise ModelError(
            f"{spec}: the adapter does not fit the base {base.source} ({str(e).splitlines()[0]}); pass the base it was trained on with --base"
        ) from None
    merged.eval().requires_grad_(False)
    from auditor.model.loading import directory_fingerprint

    return replace(
        fresh, model=merged, name=os.path.basename(os.path.normpath(spec)), source=os.path.abspath(spec), fingerprint=directory_fingerprint(spec), path=spec
    )


def broken_rules(report: ShiftReport, limits: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Gate: ``limits[measure][trait or '*']`` is the largest allowed tuned-minus-base value.

    Returns one entry per (rule, trait) checked, with ``passed``; a measure that could not be
    computed (no written examples, expression off) fails its rule rather than passing silently.
    """
    results = []
    for measure, per_trait in limits.items():
        if measure not in MEASURES:
            raise AuditorError(f"unknown shift measure {measure!r}; use one of {', '.join(MEASURES)}")
        for ts in report.traits:
            limit = per_trait.get(ts.trait, per_trait.get("*"))
            if limit is None:
                continue
            value = ts.value(measure)
            results.append({"rule": f"max-{measure}", "trait": ts.trait, "value": value, "limit": limit, "passed": value is not None and value <= limit})
    return results
