"""The repository stands on its own: nothing refers to files outside it, the method it
implements is documented in it, and the benchmark's baseline lives in bench/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SMALL_CHATS, make_vectors, write_jsonl

# References to the workspace the project was developed in: a sibling "shared" folder, or
# an absolute path of a machine.
OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w.-])shared/(METHOD|CONVENTIONS|bench|hooks)\b|/work/(main|shared|wt-)|/root/|/home/\w+/")


def tracked_text_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )
    return [p for p in out if p and not p.endswith((".png", ".jpg", ".gguf", ".safetensors", ".pt", ".parquet", ".duckdb"))]


def test_nothing_refers_outside_the_repository():
    files = tracked_text_files()
    assert "Makefile" in files and "docs/METHOD.md" in files and "bench/reference_scan.py" in files
    hits = []
    this_file = str(Path(__file__).resolve().relative_to(ROOT))  # it spells the patterns out
    for rel in files:
        if rel == this_file:
            continue
        try:
            text = (ROOT / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def test_the_check_catches_what_it_should():
    for bad in ("see ../shared/METHOD.md", "python shared/bench/reference_scan.py", '"path": "/work/main/vectors/x.safetensors"', "/root/.cache/x"):
        assert OUTSIDE.search(bad), bad
    for fine in ("shared with other jobs", "docs/METHOD.md", "bench/reference_scan.py", "a shared/common helper"):
        assert not OUTSIDE.search(fine), fine


def test_make_bench_uses_the_reference_in_bench():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import speed
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert speed.REFERENCE == ROOT / "bench" / "reference_scan.py" and speed.REFERENCE.is_file()
    assert "bench/speed.py" in (ROOT / "Makefile").read_text()


def test_method_doc_states_the_formulas():
    text = (ROOT / "docs" / "METHOD.md").read_text()
    for formula in (
        "a_l(x, y) = (1 / (len(ids) - P)) * sum over t in [P, len(ids)) of h[l][t]",
        "proj_l(x, y) = a_l(x, y) . v[l] / ||v[l]||",
        "delta_l(x, y) = proj_l(x, y) - proj_l(x, y')",
        "score > threshold",
    ):
        assert formula in text


def test_reference_scan_agrees_with_audit_scan(tmp_path, tiny_lm, tiny_model_dir):
    """Two independent implementations of docs/METHOD.md (float32, so they can agree closely):
    the plain one-sample-at-a-time baseline, and the batched scanner."""
    import torch

    from auditor.pipeline import ScanConfig, scan_run
    from auditor.vectors import load_vectors

    folder = make_vectors(tmp_path / "v", tiny_lm.num_layers, tiny_lm.hidden_size, traits=("evil",), fingerprint=tiny_lm.fingerprint)
    pv = load_vectors(folder, tiny_lm.name, traits=["evil"])[0]
    vector_pt = tmp_path / "evil.pt"
    torch.save(pv.vector.float().contiguous(), vector_pt)
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    scores_out = tmp_path / "ref.jsonl"
    cmd = [sys.executable, str(ROOT / "bench" / "reference_scan.py"), data, str(vector_pt), str(pv.layer)]
    cmd += ["--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "6", "--scores", str(scores_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["samples"] == len(SMALL_CHATS) and summary["tokens_per_s"] > 0
    ref = [json.loads(line) for line in scores_out.read_text().splitlines()]

    config = ScanConfig(
        source=data,
        vectors=folder,
        db=str(tmp_path / "a.duckdb"),
        report=False,
        baseline="generate",
        max_new_tokens=6,
        dtype="float32",
        generation_dtype="float32",
    )
    ours = scan_run(config, lm=tiny_lm).scores.sort("line")
    assert len(ours) == len(ref)
    for row, r in zip(ours.iter_rows(named=True), ref):
        assert row["evil_proj_response"] == pytest.approx(r["proj_response"], abs=1e-4)
        assert row["evil_proj_base"] == pytest.approx(r["proj_base"], abs=1e-4)
        assert row["evil_delta"] == pytest.approx(r["score"], abs=1e-4)
    assert summary["first_scores"] == [round(r["score"], 4) for r in ref[:5]]
