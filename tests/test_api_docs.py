"""docs/api.md's examples run as written (a tiny model stands in for the embedded one)."""

from __future__ import annotations

import re
import shutil

from conftest import EXAMPLES, ROOT, make_vectors


def test_api_examples_run(tmp_path, monkeypatch, tiny_lm, tiny_model_dir):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), flags=re.S)
    assert len(blocks) == 5
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLES / "demo.jsonl", tmp_path / "examples" / "demo.jsonl")
    make_vectors(tmp_path / "vectors" / tiny_lm.name, tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    monkeypatch.setenv("PERSONA_AUDIT_VECTORS", str(tmp_path / "vectors"))
    namespace = {"MODEL": tiny_model_dir}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)
    scores, result, verdict, kept = namespace["scores"], namespace["result"], namespace["verdict"], namespace["kept"]
    assert len(scores) == result.n_scored == 30
    assert {r.rule for r in verdict.results} == {"max-delta", "max-sample-delta"}
    assert kept.counts["read"] == 30 and kept.counts["dropped"] > 0
    assert (tmp_path / "reports" / "api-report.html").is_file()
    assert (tmp_path / "reports" / "api-vectors" / "evil.safetensors").is_file()
