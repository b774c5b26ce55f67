"""Model loading (embedded default, Hugging Face id, local directory), fingerprint, layer access."""

from auditor.model.layers import decoder_layers, final_norm
from auditor.model.loading import EMBEDDED_MODEL_NAME, LoadedModel, load_model, resolve_dtype

__all__ = ["EMBEDDED_MODEL_NAME", "LoadedModel", "decoder_layers", "final_norm", "load_model", "resolve_dtype"]
