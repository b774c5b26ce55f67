"""The scan summary at 80 columns: no table cell wrapped word by word, each trait's top
samples on one line with their ids intact, the query command on one (soft-wrapped) line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import SMALL_CHATS, make_vectors, write_jsonl

from auditor.cli import main


def _scan(tmp_path, tiny_lm, tiny_model_dir, columns: int):
    vectors = make_vectors(tmp_path / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    # A long file name makes long sample ids, as real datasets do.
    data = write_jsonl(tmp_path / "customer-support-conversations-2026-v2.jsonl", SMALL_CHATS)
    args = [
        "scan",
        data,
        "--model",
        tiny_model_dir,
        "--vectors",
        vectors,
        "--max-new-tokens",
        "4",
        "--db",
        str(tmp_path / "a.duckdb"),
        "--no-report",
        "--quiet",
    ]
    result = CliRunner().invoke(main, [*args, "--threshold", "evil=0", "--threshold", "sycophancy=0"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("columns", [80, 100])
def test_summary_reads_well_when_narrow(tmp_path, tiny_lm, tiny_model_dir, columns):
    out = _scan(tmp_path, tiny_lm, tiny_model_dir, columns)
    lines = out.splitlines()
    query = [ln for ln in lines if ln.lstrip().startswith("query    audit sql")]
    assert len(query) == 1 and query[0].rstrip().endswith(".duckdb")  # one intact, copyable command
    for ln in lines:
        if ln not in query:
            assert len(ln) <= columns, ln
    # The table: one row per trait, no continuation rows (a wrapped cell leaves a row with an empty trait).
    rows = [ln for ln in lines if ln.startswith("│")]
    assert sorted(r.split("│")[1].strip() for r in rows) == ["evil", "sycophancy"]
    # The top samples: two lines per trait (the trait named on the first), one whole id on each.
    top_at = lines.index("top samples (score):")
    block = lines[top_at + 1 : top_at + 5]
    assert sorted(ln.split()[0] for ln in block if not ln.startswith("   ")) == ["evil", "sycophancy"]
    for ln in block:
        sample_id = ln.split()[-1]
        assert sample_id.startswith("customer-support-conversations-2026-v2.jsonl:") and sample_id.split(":")[-1].isdigit(), ln
        float(ln.split()[-2])  # the score beside it


def test_wide_terminals_keep_the_top_samples_column(tmp_path, tiny_lm, tiny_model_dir):
    out = _scan(tmp_path, tiny_lm, tiny_model_dir, 160)
    assert "top samples (score)" in out and "top samples (score):" not in out
    rows = [ln for ln in out.splitlines() if ln.startswith("│")]
    # Two lines per trait, one top sample on each, its id whole.
    assert [r.split("│")[1].strip() for r in rows] in (["evil", "", "sycophancy", ""], ["sycophancy", "", "evil", ""])
    for r in rows:
        sample_id = r.split("│")[7].split()[0]
        assert sample_id.startswith("customer-support-conversations-2026-v2.jsonl:") and sample_id.split(":")[-1].isdigit(), r
