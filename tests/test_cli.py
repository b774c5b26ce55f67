"""The CLI: every command has help, and scan works through click with real output files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import SMALL_CHATS, write_jsonl

from auditor.cli import COMMANDS, main


def _all_commands():
    ctx = main.make_context("audit", ["--help"], resilient_parsing=True)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        yield name, cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield f"{name} {sub.name}", sub


def test_every_command_has_help():
    found = list(_all_commands())
    assert [n for n, _ in found if " " not in n] == [n for n in COMMANDS if n in dict(found)]
    for name, cmd in found:
        assert cmd.help and len(cmd.help.strip()) > 20, f"audit {name} has no help text"
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"audit {name} {param.opts[0]} has no help text"


def test_help_does_not_import_torch():
    code = "import sys; from auditor.cli import main; sys.argv=['audit','--help']\ntry:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False False")


def scan_args(data: str, model: str, vectors: str, *extra: str) -> list[str]:
    """``audit scan DATA`` on the tiny model and vectors, without a report, plus ``extra``."""
    return ["scan", data, "--model", model, "--vectors", vectors, "--no-report", *extra]


def test_scan_cli_writes_outputs(tmp_path, tiny_model_dir, tiny_vectors):
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    args = scan_args(data, tiny_model_dir, tiny_vectors, "--max-new-tokens", "4", "--quiet", "--out", str(tmp_path / "run"), "--threshold", "0")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "6 scored, 0 rejected" in result.output
    assert "baseline prompt-last, nothing generated" in result.output  # the default generates no base response
    # --max-new-tokens was given, but nothing is generated: the scan says so instead of ignoring it silently.
    assert "note: --max-new-tokens has no effect with --baseline prompt-last" in result.stderr
    assert (tmp_path / "run" / "scores.parquet").exists()
    assert (tmp_path / "reports" / "audit.duckdb").exists()
    import duckdb

    con = duckdb.connect(str(tmp_path / "reports" / "audit.duckdb"), read_only=True)
    assert con.execute("SELECT baseline FROM runs").fetchall() == [("prompt-last",)]
    assert con.execute("SELECT count(*) FROM samples WHERE base_response IS NOT NULL").fetchone() == (0,)
    con.close()


def test_generation_options_left_at_their_defaults_give_no_note(tmp_path, tiny_model_dir, tiny_vectors):
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    result = CliRunner().invoke(main, scan_args(data, tiny_model_dir, tiny_vectors, "--out", str(tmp_path / "a")))
    assert result.exit_code == 0, result.output
    assert "no effect" not in result.stderr
    several = CliRunner().invoke(
        main, scan_args(data, tiny_model_dir, tiny_vectors, "--baseline", "none", "--generator", "hf", "--generation-dtype", "float32")
    )
    assert "note: --generation-dtype, --generator have no effect with --baseline none" in several.stderr


def test_scan_cli_generate_baseline_reports_its_base_responses(tmp_path, tiny_model_dir, tiny_vectors):
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    args = scan_args(data, tiny_model_dir, tiny_vectors, "--baseline", "generate", "--max-new-tokens", "4")
    first = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a"), "--no-reuse"])
    assert first.exit_code == 0, first.output
    n_prompts = len({json.dumps(c["messages"][:-1]) for c in SMALL_CHATS})
    assert f"base responses: {n_prompts} generated, 0 from cache" in first.output
    assert "no effect" not in first.stderr
    again = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--no-reuse"])
    assert f"base responses: 0 generated, {n_prompts} from cache" in again.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["scan", "missing.jsonl"], "missing.jsonl: no such file"),
        (["scan", "{data}", "--vectors", "{tmp}/novectors"], "no persona vectors at"),
        (["scan", "{data}", "--baseline", "bogus"], "Invalid value for '--baseline'"),
        (["scan", "{data}", "--threshold", "evil=high"], "expected TRAIT=NUMBER"),
    ],
)
def test_scan_cli_errors_are_clear(tmp_path, tiny_model_dir, args, message):
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:1])
    args = [a.format(data=data, tmp=tmp_path) for a in args] + ["--model", tiny_model_dir]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output


def test_missing_model_is_a_clear_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:1])
    result = CliRunner().invoke(main, ["scan", data, "--model", "no-such-owner/no-such-model-xyz"])
    assert result.exit_code == 2
    assert "not a local folder and is not in the Hugging Face cache" in result.output
    assert "--model DIR" in result.output
