"""Where a model keeps its decoder blocks: found in exactly one place."""

from __future__ import annotations

from typing import Any

from auditor.errors import ModelError

# Attribute paths of the decoder block list, from the model's top (CausalLM) object.
_LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi3, SmolLM
    "model.language_model.layers",  # multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "transformer.norm_f",
)
LAYERS_HELP = "pass --layers-path with the dotted path of the decoder block list (e.g. model.layers)"


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: Any, override: str | None = None) -> Any:
    """The ``nn.ModuleList`` of decoder blocks; block ``l - 1`` outputs ``h[l]``."""
    import torch

    paths = (override,) if override else _LAYER_PATHS
    for path in paths:
        try:
            layers = _get(model, path)
        except AttributeError:
            continue
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return layers
    if override:
        raise ModelError(f"{type(model).__name__} has no module list at '{override}'; {LAYERS_HELP}")
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}; {LAYERS_HELP}")


def final_norm(model: Any, override: str | None = None) -> Any:
    """The norm applied after the last block (so ``h[L]`` matches ``transformers``), or None."""
    if override:
        prefix = override.rsplit(".", 1)[0]
        for name in ("norm", "ln_f", "final_layer_norm", "norm_f"):
            try:
                return _get(model, f"{prefix}.{name}")
            except AttributeError:
                continue
    for path in _NORM_PATHS:
        try:
            return _get(model, path)
        except AttributeError:
            continue
    return None
