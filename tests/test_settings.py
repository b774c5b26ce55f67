"""Every scan setting is declared once (auditor/config.py) and the CLI follows that declaration."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from auditor.cli import main
from auditor.cli.gate_cmd import gate
from auditor.cli.scan_cmd import config_from_options, scan, scan_options
from auditor.config import ScanConfig, cli_settings, default_of

ROOT = Path(__file__).resolve().parents[1]
# The scan command's parameters that are not ScanConfig settings (written out by hand).
SCAN_OWN = {"source", "quiet", "as_json"}
ENGINE = {"engine", "workers", "num_gpus_per_worker", "ray_address"}


def field_default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def mismatches(command: click.Command, scan_only: bool = True) -> list[str]:
    """Settings whose click option in ``command`` is missing, or says another flag, help or default than the field."""
    bad = []
    for f, option in cli_settings():
        if option.scan_only and not scan_only:
            continue
        declared = [p for p in command.params if p.name == (option.param or f.name) or option.flag_name in p.opts]
        if not declared or any(option.flag_name not in p.opts or p.help != option.help or option.to_field(p.default) != field_default(f) for p in declared):
            bad.append(f.name)
    return bad


def flat(text: str) -> str:
    return "".join(text.split())  # --help wraps lines; compare without whitespace


def test_scan_and_gate_options_follow_the_fields():
    assert mismatches(scan) == []
    assert mismatches(gate, scan_only=False) == []


def test_the_check_catches_an_option_declared_a_second_time():
    @click.command()
    @click.option("--chunk-size", default=128, show_default=True, type=int, help="Records per stored chunk (memory and resume granularity).")
    @scan_options
    def rogue(**kw):
        pass

    assert mismatches(rogue, scan_only=False) == ["chunk_size"]

    @click.command()
    @click.option("--chunk-size", default=256, help="another help")
    def other(**kw):
        pass

    assert "chunk_size" in mismatches(other, scan_only=False)  # (and every other setting is missing)


def test_every_scan_parameter_is_a_setting_an_engine_option_or_scans_own():
    settings = {option.param or f.name for f, option in cli_settings()}
    names = {p.name for p in scan.params}
    assert names - settings == SCAN_OWN | ENGINE
    assert {p.name for p in gate.params} >= {option.param or f.name for f, option in cli_settings() if not option.scan_only} | ENGINE
    assert not {"out_dir", "no_report", "top_n"} & {p.name for p in gate.params}


def test_scan_help_shows_each_setting_with_its_help_and_default():
    out = CliRunner().invoke(main, ["scan", "--help"], terminal_width=100).output
    shown = flat(out)
    for f, option in cli_settings():
        assert option.flag_name in out, f.name
        assert flat(option.help) in shown, f.name
    # defaults are shown where they were before settings were declared once
    for flag, default in [
        ("--max-new-tokens", "256"),
        ("--max-prompt-tokens", "512"),
        ("--chunk-size", "256"),
        ("--flag-percentile", "95.0"),
        ("--db", "reports/audit.duckdb"),
        ("--top-n", "50"),
        ("--baseline", "prompt-last"),
        ("--seed", "0"),
    ]:
        assert re.search(re.escape(flag) + r".*?\[default:\s*" + re.escape(default) + r"\]", out, re.S), flag
    assert "[default: False]" not in out and "[default: ()]" not in out  # flags and repeatables show no default


def _options(args: list[str]) -> dict:
    """What click parses for ``audit scan SOURCE args`` (the command's own options taken out)."""
    params = scan.make_context("scan", ["data.jsonl", *args]).params
    return {k: v for k, v in params.items() if k not in SCAN_OWN}


def test_no_options_give_the_dataclass_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no audit.toml above: no policy mapping
    assert config_from_options("data.jsonl", **_options([])) == ScanConfig(source="data.jsonl")
    assert config_from_options("data.jsonl") == ScanConfig(source="data.jsonl")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--layer", "sycophancy=12"], {"layers": {"sycophancy": 12}}),
        (["--layer", "20", "--layer", "evil=9"], {"layers": {"*": 20, "evil": 9}}),
        (["--threshold", "evil=1.5"], {"thresholds": {"evil": 1.5}}),
        (["--max-prompt-tokens", "0"], {"max_prompt_tokens": None}),
        (["--max-prompt-tokens", "64"], {"max_prompt_tokens": 64}),
        (["--no-reuse"], {"reuse": False}),
        (["--traits", "a,b"], {"traits": ["a", "b"]}),
        (["--no-report", "--top-n", "7", "--out", "o"], {"report": False, "top_n": 7, "out_dir": "o"}),
        (["--field", "prompt=question", "--role", "user=human"], {"fields": {"prompt": "question"}, "roles": {"user": "human"}}),
        (["--format", "alpaca", "--config", "c1", "--split", "test"], {"format": "alpaca", "hf_config": "c1", "split": "test"}),
        (["--sample", "5", "--seed", "3"], {"sample": 5, "seed": 3}),
        (["--score-all-turns", "--trust-remote-code", "--resume"], {"score_all_turns": True, "trust_remote_code": True, "resume": True}),
        (
            ["--flag-on", "projection", "--flag-percentile", "90", "--generator", "vllm"],
            {"flag_on": "projection", "flag_percentile": 90.0, "generator": "vllm"},
        ),
        (["--engine", "ray", "--workers", "3"], {}),  # engine options do not reach the config
    ],
)
def test_options_convert_to_config_values(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    assert config_from_options("data.jsonl", **_options(args)) == dataclasses.replace(ScanConfig(source="data.jsonl"), **expected)


def test_field_flags_override_the_policy_mapping_name_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit.toml").write_text('[scan.fields]\nprompt = "question"\nresponse = "best_answer"\n')
    config = config_from_options("data.jsonl", **_options(["--field", "response=reply"]))
    assert (config.fields, config.roles) == ({"prompt": "question", "response": "reply"}, {})
    assert config_from_options("data.jsonl", use_policy=False, **_options([])).fields == {}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seed", "3"], "--seed only applies to --sample; add --sample N"),
        (["--layer", "evil=x"], "'evil=x': expected TRAIT=NUMBER or NUMBER"),
        (["--threshold", "high"], "'high': expected TRAIT=NUMBER or NUMBER"),
        (["--field", "prompt"], "--field"),
    ],
)
def test_bad_option_values_are_clear_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "d.jsonl"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_gate_builds_the_same_config_with_its_report_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = gate.make_context("gate", ["data.jsonl", "--max-delta", "1", "--layer", "evil=3", "--chunk-size", "8"]).params
    shared = {p.name for p in click.command()(scan_options(lambda **kw: None)).params}
    scan_kw = {k: v for k, v in params.items() if k in shared}
    config = config_from_options("data.jsonl", report=params["report"], **scan_kw)
    assert config == ScanConfig(source="data.jsonl", layers={"evil": 3}, chunk_size=8, report=False)


def test_choices_are_checked_from_the_declaration():
    with pytest.raises(Exception, match=r"unknown --dtype 'float64'; use one of auto, float32, bfloat16, float16"):
        ScanConfig(source="x", dtype="float64").validate()
    with pytest.raises(Exception, match=r"unknown --on-error 'ignore'; use one of fail, skip"):
        ScanConfig(source="x", on_error="ignore").validate()


def test_resume_and_reuse_keys_are_unchanged(monkeypatch):
    """Keys computed by the code before the settings moved (same settings, same keys): stored runs still resume and reuse."""
    import auditor

    monkeypatch.setattr(auditor, "__version__", "0.0-test")
    lm = SimpleNamespace(fingerprint="fp0", dtype="float32", device="cpu")
    vectors = {"evil": "abc@12"}
    plain = ScanConfig(source="data.jsonl", baseline="generate")  # the default until prompt-last became it: its runs still resume
    custom = ScanConfig(
        source="data.jsonl",
        traits=["evil"],
        layers={"evil": 12},
        baseline="prompt-last",
        max_prompt_tokens=None,
        thresholds={"evil": 1.5},
        fields={"prompt": "q"},
        reuse=False,
        top_n=7,
    )
    assert (plain.result_key("fp0", vectors), plain.reuse_key(lm, vectors, "float32")) == ("6b8a65deb477f3955963f668", "57850a947d24c7ed199dc990")
    assert (custom.result_key("fp0", vectors), custom.reuse_key(lm, vectors, "float32")) == ("127c3f495dc37b499842b879", "68472822722ec9e8f4c658b8")


def test_library_defaults_follow_the_scan_settings():
    import inspect

    from auditor.calibration import calibrate
    from auditor.cli.filter_cmd import filter_ as filter_cmd
    from auditor.cli.report_cmd import report
    from auditor.filter import filter_dataset
    from auditor.report import render_report

    assert default_of("max_new_tokens") == 256 and default_of("max_prompt_tokens") == 512 and default_of("layers") == {}
    calibration = inspect.signature(calibrate).parameters
    assert (calibration["max_new_tokens"].default, calibration["max_prompt_tokens"].default) == (256, 512)
    assert inspect.signature(render_report).parameters["top_n"].default == 50
    assert {p.name: p.default for p in report.params}["top_n"] == 50
    assert inspect.signature(filter_dataset).parameters["split"].default == "train"
    assert {p.name: p.default for p in filter_cmd.params}["split"] == "train"


def test_the_database_path_default_is_written_once():
    pattern = re.compile(r"""os\.path\.join\(\s*["']reports["']\s*,\s*["']audit\.duckdb["']\s*\)|["']reports/audit\.duckdb["']""")
    found = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "auditor").rglob("*.py")) if pattern.search(p.read_text(encoding="utf-8"))]
    assert found == ["auditor/store/db.py"]
