"""Hostile content: nothing a vector file, a model folder or a dataset carries gets to run or be read.

Each test also shows its payload is live (it does run when loaded the unsafe way), so a
passing test means persona-audit refused it, not that the payload was inert.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import chat, make_vectors, write_jsonl
from robust_helpers import subprocess_env

from auditor.cli import main
from auditor.errors import VectorError


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_in_a_pt_vector_is_refused(tmp_path):
    import torch

    from auditor.vectors import load_vector

    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"vector": _Payload(str(marker))}, path)

    with pytest.raises(VectorError) as err:
        load_vector(path, layer=1)
    assert str(err.value) == f"{path}: not a plain tensor file (UnpicklingError); persona-audit never unpickles objects"
    assert not marker.exists()

    torch.load(path, weights_only=False)  # the control: plain unpickling runs the payload
    assert marker.exists()


def test_a_pt_vector_holding_a_plain_tensor_loads(tmp_path):
    import torch

    from auditor.vectors import load_vector

    torch.save(torch.ones(5, 8), tmp_path / "evil.pt")
    pv = load_vector(tmp_path / "evil.pt", layer=2)
    assert (pv.num_layers, pv.hidden_size, pv.layer) == (4, 8, 2)


def _model_with_remote_code(src: str, dest: Path, marker: Path, model_type: str) -> Path:
    """A copy of the tiny model whose config points to a .py file that creates ``marker`` on import."""
    shutil.copytree(src, dest)
    (dest / "evil_model.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil-llama'\n\n\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    config = json.loads((dest / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil_model.EvilConfig", "AutoModelForCausalLM": "evil_model.EvilModel"}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_model_code_does_not_run_without_trust_remote_code(tmp_path, tiny_model_dir, tiny_lm):
    marker = tmp_path / "model-code-ran"
    model = _model_with_remote_code(tiny_model_dir, tmp_path / "evil-model", marker, model_type="evil-llama")
    vectors = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size)
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    res = CliRunner().invoke(main, ["scan", data, "--model", str(model), "--vectors", vectors, "--no-report", "-q"])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"Error: model {str(model)!r} needs its own code to run; pass --trust-remote-code if you trust it"
    assert not marker.exists()

    # The control, in a child process with its own module cache: trusted, the file runs.
    env = subprocess_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf-modules")
    code = f"from auditor.model import load_model; load_model({str(model)!r}, dtype='float32', device='cpu', trust_remote_code=True)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_auto_map_on_a_known_architecture_loads_the_library_class_not_the_file(tmp_path, tiny_model_dir):
    from auditor.model import load_model

    marker = tmp_path / "model-code-ran"
    model = _model_with_remote_code(tiny_model_dir, tmp_path / "llama-with-auto-map", marker, model_type="llama")
    lm = load_model(str(model), dtype="float32", device="cpu")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_file_paths_in_a_dataset_are_text_never_opened(tmp_path, tiny_lm):
    """A record that names a file is scored as that literal text; the file is not read."""
    from auditor.pipeline import ScanConfig, scan_run
    from auditor.store.db import connect

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    texts = ["/etc/passwd", "file:///etc/passwd", str(secret), f"file://{secret}", "../secret.txt", "~/.ssh/id_rsa", "@secret.txt", "$(cat secret.txt)"]
    rows = [chat(f"Read {t}", t, id=f"p{i}") for i, t in enumerate(texts)]
    rows.append({"id": "pr", "prompt": str(secret), "response": f"file://{secret}"})
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    vectors = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size)
    db = str(tmp_path / "audit.duckdb")
    scan_run(ScanConfig(source=data, vectors=vectors, db=db, max_new_tokens=2, report=False, top_n=2), lm=tiny_lm)
    with connect(db, read_only=True) as con:
        stored = dict(con.execute("SELECT sample_id, response FROM samples").fetchall())
        contexts = dict(con.execute("SELECT sample_id, context FROM samples").fetchall())
        everything = json.dumps(con.execute("SELECT * FROM samples").fetchall(), default=str)
    assert stored == {**{f"p{i}": t for i, t in enumerate(texts)}, "pr": f"file://{secret}"}
    assert json.loads(contexts["pr"]) == [{"role": "user", "content": str(secret)}]
    assert "TOP-SECRET-CONTENT" not in everything
    if os.path.exists("/etc/passwd"):
        with open("/etc/passwd") as fh:
            assert fh.readline().strip() not in everything
