"""Fine-tuning with persona vectors in the loop: monitor the persona, or steer it away preventively.

- :class:`PersonaMonitor`: a ``transformers`` ``TrainerCallback`` that measures the
  finetuning shift of each trait (``auditor.shift``: the last-prompt-token projection on the
  trait's evaluation questions, now minus before training) every ``every`` steps and appends
  it to ``trainer.state.log_history`` as ``persona_shift/<trait>``.
- :class:`PreventativeSteering`: adds ``alpha * scale * v[l] / ||v[l]||`` to ``h[l]`` during
  TRAINING forwards only (the hook does nothing while the model is in eval mode) and is
  removed when training ends (callback) or the ``with`` block closes (context manager).
  A positive alpha pushes toward the trait while the weights learn: the steering supplies the
  trait direction the data asks for, so the weights need not move toward it (the paper's
  preventative steering). After removal the model computes exactly what it computes without
  the hook.
- :func:`chat_features` and :func:`fine_tune`: the small supervised fine-tuning loop the
  tests and ``bench/finetune.py`` use (loss on the final assistant message only).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from transformers import TrainerCallback

from auditor.errors import AuditorError
from auditor.vectors.persona import PersonaVector


def steering_scale(lm: Any, questions: Sequence[str], layer: int) -> float:
    """Norm added per unit of alpha in ``audit vectors steer`` units: median ``||h[l]||`` over the prompts / ALPHA_UNIT."""
    from auditor.shift import question_prompts
    from auditor.vectors.steering import ALPHA_UNIT, residual_norm

    return residual_norm(lm, question_prompts(lm.tokenizer, questions), layer) / ALPHA_UNIT


class PreventativeSteering(TrainerCallback):
    """Add ``alpha * scale * unit(v[layer])`` to ``h[layer]`` in training forwards.

    ``scale`` is the norm added per unit of alpha: 1.0 (alpha is the added norm itself) or
    :func:`steering_scale` for the units of ``audit vectors steer``. Use it as a Trainer
    callback (attached at ``on_train_begin``, removed at ``on_train_end``) or, in any loop,
    ``with PreventativeSteering(pv, alpha).applied(model): ...``.
    """

    def __init__(self, vector: PersonaVector, alpha: float, scale: float = 1.0, layer: int | None = None, layers_path: str | None = None):
        self.layer = vector.layer if layer is None else int(layer)
        self.delta = vector.direction(self.layer) * float(alpha) * float(scale)  # [d]
        self.alpha, self.scale, self.trait = float(alpha), float(scale), vector.trait
        self.layers_path = layers_path
        self._handle: Any = None

    def attach(self, model: Any) -> None:
        """Register the hook on ``model`` (once; a second attach is an error)."""
        from auditor.model.layers import decoder_layers

        if self._handle is not None:
            raise AuditorError("PreventativeSteering is already attached to a model; detach it first")
        if self.layer == 0:
            module = model.get_input_embeddings()
        else:
            blocks = decoder_layers(model, self.layers_path)
            if not 1 <= self.layer <= len(blocks):
                raise AuditorError(f"steering layer {self.layer} is outside 0..{len(blocks)}")
            module = blocks[self.layer - 1]
        delta = self.delta

        def hook(mod: Any, _inputs: Any, output: Any) -> Any:
            if not mod.training:
                return None  # eval / generation: untouched
            h = output[0] if isinstance(output, tuple) else output
            steered = h + delta.to(device=h.device, dtype=h.dtype)
            return (steered,) + tuple(output[1:]) if isinstance(output, tuple) else steered

        self._handle = module.register_forward_hook(hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[PreventativeSteering]:
        self.attach(model)
        try:
            yield self
        finally:
            self.detach()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.attach(model)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.detach()


class PersonaMonitor(TrainerCallback):
    """Log each trait's finetuning shift every ``every`` optimizer steps (and at the end).

    The reference is the model as it is when training begins. Entries go to
    ``state.log_history`` as ``{"step": s, "persona_shift/<trait>": value, ...}`` and to
    ``self.history``. ``traits`` maps each vector's trait to its definition (evaluation questions).
    """

    def __init__(self, tokenizer: Any, vectors: Sequence[PersonaVector], traits: dict[str, Any], every: int = 10, layers_path: str | None = None):
        from auditor.shift import question_prompts

        if every < 1:
            raise AuditorError("PersonaMonitor: every must be at least 1 (steps between measurements)")
        missing = [pv.trait for pv in vectors if pv.trait not in traits]
        if missing:
            raise AuditorError(f"PersonaMonitor: no trait definition for {', '.join(missing)}; pass its Trait (auditor.vectors.traits.load_trait)")
        self.tokenizer, self.vectors, self.every, self.layers_path = tokenizer, list(vectors), every, layers_path
        self.prompts = {pv.trait: question_prompts(tokenizer, traits[pv.trait].evaluation_questions) for pv in vectors}
        self.reference: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def measure(self, model: Any) -> dict[str, float]:
        """Mean last-prompt-token projection per trait for ``model`` as it is now (eval mode, no grad)."""
        from auditor.shift import prompt_last_projections

        was_training = model.training
        model.eval()
        try:
            return {
                pv.trait: statistics.fmean(prompt_last_projections(model, self.tokenizer, self.prompts[pv.trait], pv.layer, pv.direction(), self.layers_path))
                for pv in self.vectors
            }
        finally:
            model.train(was_training)

    def _log(self, state: Any, model: Any) -> None:
        now = self.measure(model)
        entry = {f"persona_shift/{t}": now[t] - self.reference[t] for t in now}
        entry["step"] = state.global_step
        self.history.append(entry)
        state.log_history.append(dict(entry))

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.reference = self.measure(model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self._log(state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._log(state, model)


def chat_features(tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]], max_length: int | None = None) -> list[dict[str, list[int]]]:
    """Tokenize chats for supervised fine-tuning: labels only on the final assistant message (and its end-of-turn).

    Each conversation is a list of ``{"role", "content"}`` messages ending with the assistant's.
    """
    out = []
    for i, messages in enumerate(conversations):
        if not messages or messages[-1].get("role") != "assistant":
            raise AuditorError(f"conversation {i}: the last message must be the assistant's (the text to train on)")
        prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(messages), tokenize=False)
        if not full.startswith(prompt):
            raise AuditorError(f"conversation {i}: the chat template does not extend the prompt with the answer; fine-tune with your own tokenization")
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if max_length is not None:
            ids = ids[:max_length]
        labels = [-100] * min(p, len(ids)) + ids[p:]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


@dataclass(frozen=True)
class FinetuneSettings:
    """The hyper-parameters of :func:`fine_tune` (recorded with every bench result)."""

    epochs: float = 3.0
    batch_size: int = 4
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "constant"
    max_length: int = 160
    seed: int = 0
    bf16: bool = False

    def record(self) -> dict[str, Any]:
        return asdict(self)


def fine_tune(
    lm: Any, conversations: Sequence[Sequence[dict[str, str]]], settings: FinetuneSettings, output_dir: str, callbacks: Sequence[Any] = ()
) -> tuple[Any, Any]:
    """Full fine-tune of a COPY of ``lm.model`` with a ``transformers.Trainer``; ``lm`` is untouched.

    Returns (the tuned LoadedModel, the trainer's final state). Nothing is saved to disk
    (``save_strategy="no"``); ``output_dir`` only holds the Trainer's scratch files.
    """
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(settings.seed)
    model = copy.deepcopy(lm.model).float().train().requires_grad_(True)
    features = chat_features(lm.tokenizer, conversations, settings.max_length)
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type=settings.scheduler,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=settings.bf16,
        use_cpu=str(model.device) == "cpu",
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForSeq2Seq(lm.tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collator, callbacks=list(callbacks))
    trainer.train()
    model.eval().requires_grad_(False)
    tuned = replace(lm, model=model.to(lm.torch_dtype), name=f"{lm.name}-tuned", source=f"{lm.source} (tuned in memory)", fingerprint=f"{lm.fingerprint}-tuned")
    return tuned, trainer.state


def clean_loss(lm: Any, conversations: Sequence[Sequence[dict[str, str]]], max_length: int = 160) -> float:
    """Mean per-token cross-entropy of ``lm`` on the assistant answers of ``conversations`` (held-out cost of a fine-tune)."""
    import torch

    features = chat_features(lm.tokenizer, conversations, max_length)
    total, count = 0.0, 0
    model = lm.model
    with torch.inference_mode():
        for f in features:
            ids = torch.tensor([f["input_ids"]], device=model.device)
            labels = torch.tensor(f["labels"][1:], device=model.device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            keep = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    if not count:
        raise AuditorError("clean_loss: the conversations have no answer tokens")
    return total / count
