"""Exit codes: documented in every command's --help; unexpected errors exit 2 with one line
(traceback only with --debug or AUDIT_DEBUG=1), never 1; gate keeps 0 / 1 / 2. And
``audit scan --json``, the machine-readable summary."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import SMALL_CHATS, make_vectors, write_jsonl

from auditor.cli import COMMANDS, main


def _help(*names: str) -> str:
    result = CliRunner().invoke(main, [*names, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_documents_its_exit_codes(name):
    text = _help(name)
    assert "Exit codes:" in text
    codes = [line.split()[0] for line in text.rsplit("Exit codes:", 1)[1].splitlines() if line.strip()]
    assert codes[0] == "0" and "2" in codes and "130" in codes
    assert ("1" in codes) == (name == "gate")


def test_vectors_subcommands_document_theirs():
    for sub in ("list", "show", "import", "check"):
        text = _help("vectors", sub)
        assert "Exit codes:" in text, sub
    assert "1    it does not" in _help("vectors", "check")
    assert "Exit codes (each command's --help lists its own)" in _help()


@pytest.fixture
def failing_policy(monkeypatch):
    """An injected internal error: the policy loader (a library function) crashes."""
    import auditor.gate

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure\nsecond line")

    monkeypatch.setattr(auditor.gate, "load_policy", boom)


def test_gate_exits_2_on_an_internal_error(failing_policy, monkeypatch):
    monkeypatch.delenv("AUDIT_DEBUG", raising=False)
    result = CliRunner().invoke(main, ["gate", "--run", "latest", "--max-delta", "1"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["Error: unexpected RuntimeError: injected failure second line (run audit --debug ..., or set AUDIT_DEBUG=1, for the traceback)"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback(failing_policy, monkeypatch, how):
    monkeypatch.delenv("AUDIT_DEBUG", raising=False)
    args = ["gate", "--run", "latest", "--max-delta", "1"]
    if how == "flag":
        result = CliRunner().invoke(main, ["--debug", *args])
    else:
        result = CliRunner().invoke(main, args, env={"AUDIT_DEBUG": "1"})
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "in boom" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: unexpected RuntimeError: injected failure second line"


def test_gate_exits_2_when_the_scan_crashes(monkeypatch, small_dataset):
    """A crash deep in a scan (not an AuditorError) is an error (2), not a failed rule (1)."""
    import auditor.pipeline

    def broken_scan(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(auditor.pipeline, "scan_run", broken_scan)
    result = CliRunner().invoke(main, ["gate", small_dataset, "--quiet", "--no-policy", "--max-delta", "1"])
    assert result.exit_code == 2, result.output
    assert "Error: unexpected ZeroDivisionError: division by zero" in result.stderr


def test_other_commands_exit_2_on_an_internal_error(monkeypatch, tmp_path):
    import auditor.sql

    monkeypatch.setattr(auditor.sql, "read_statements", lambda q: [][0])
    result = CliRunner().invoke(main, ["sql", "SELECT 1", "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 2
    assert "Error: unexpected IndexError: list index out of range" in result.stderr


def test_keyboard_interrupt_exits_130(monkeypatch, tmp_path):
    import auditor.sql

    def interrupted(q):
        raise KeyboardInterrupt

    monkeypatch.setattr(auditor.sql, "read_statements", interrupted)
    result = CliRunner().invoke(main, ["sql", "SELECT 1", "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 130


def test_usage_errors_still_exit_2():
    result = CliRunner().invoke(main, ["gate", "--no-policy"])
    assert result.exit_code == 2 and "give a dataset to scan" in result.output
    result = CliRunner().invoke(main, ["scan", "--no-such-option", "x"])
    assert result.exit_code == 2


def test_scan_json_summary(tmp_path, tiny_lm, tiny_model_dir):
    vectors = make_vectors(tmp_path / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS + ["{broken"])
    db = str(tmp_path / "audit.duckdb")
    args = ["scan", data, "--model", tiny_model_dir, "--vectors", vectors, "--max-new-tokens", "4", "--db", db, "--no-report", "--quiet", "--json"]
    result = CliRunner().invoke(main, [*args, "--on-error", "skip", "--threshold", "evil=0", "--threshold", "sycophancy=0"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # stdout is one JSON document, nothing else
    scores = pl.read_parquet(doc["scores_path"])
    assert doc["n_scored"] == len(scores) == len(SMALL_CHATS)
    assert doc["n_read"] == len(SMALL_CHATS) + 1 and doc["n_rejected"] == 1
    assert doc["rejects"][0]["line"] == len(SMALL_CHATS) + 1 and "malformed JSON" in doc["rejects"][0]["reason"]
    assert doc["dataset"] == data and doc["db_path"] == db and doc["report_path"] is None
    by_trait = {t["trait"]: t for t in doc["traits"]}
    assert set(by_trait) == {"evil", "sycophancy"}
    for trait, t in by_trait.items():
        col = scores[f"{trait}_delta"]
        assert col.null_count() == 0
        assert t["mean_delta"] == pytest.approx(float(col.mean()), rel=1e-6)
        assert t["mean_proj_response"] == pytest.approx(float(scores[f"{trait}_proj_response"].mean()), rel=1e-6)
        assert t["n"] == len(scores)
        assert t["n_flagged"] == int((col > 0).sum())
        assert t["flag_rate"] == pytest.approx(t["n_flagged"] / t["n"])
        assert t["threshold"] == 0
        assert t["top"][0]["score"] == pytest.approx(float(col.max()), rel=1e-6)
    import duckdb

    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [doc["run_id"]]).fetchone() == (1,)
    con.close()
