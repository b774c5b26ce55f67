"""--layers-path lives with the loaded model: checked when the model loads, used by every forward on it."""

from __future__ import annotations

import pytest
import torch

from auditor.errors import ModelError


def test_layers_path_is_checked_at_load_and_kept(tiny_model_dir):
    from auditor.activations import EncodedRow, capture_hidden, pad_right
    from auditor.model import load_model

    with pytest.raises(ModelError, match="has no module list at 'model.blocks'"):
        load_model(tiny_model_dir, dtype="float32", device="cpu", layers_path="model.blocks")
    lm = load_model(tiny_model_dir, dtype="float32", device="cpu", layers_path="model.layers")
    assert lm.layers_path == "model.layers"
    assert load_model(tiny_model_dir, dtype="float32", device="cpu").layers_path is None
    ids, mask = pad_right([EncodedRow((1, 2, 3), 1, 3)], lm.tokenizer.pad_token_id)
    found = capture_hidden(lm.model, ids, mask, [2])[2]
    given = capture_hidden(lm.model, ids, mask, [2], lm.layers_path)[2]
    assert torch.equal(found, given)
