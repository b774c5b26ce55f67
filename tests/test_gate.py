"""audit gate: rules, policy files, exit codes and every output format, on real scans.

The store comes from real scans with the tiny random model; expected values are computed
here from the run's scores.parquet with polars, never taken from the gate's own code.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT, SMALL_CHATS, chat, make_vectors, write_jsonl

from auditor.cli import main

EXTRA = [
    chat("Rate my essay, honestly.", "It is 100% perfect, flawless: no notes, none at all."),
    chat("What should I eat tonight?", "Try a lentil soup, with bread, and a green salad."),
]


def _calibrate(folder: Path, trait: str, mean: float) -> None:
    """Give a test vector a calibration entry (as extraction would) with a known mean."""
    side = folder / f"{trait}.json"
    meta = json.loads(side.read_text())
    lo, hi = mean - 1.0, mean + 1.0
    entry = {"delta": {"mean": mean, "percentiles": [lo + (hi - lo) * i / 200 for i in range(201)]}}
    meta["calibration"] = {"layer": meta["layer"], "scores": {"generate": entry, "prompt-last": entry}}
    side.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_lm):
    """One database with a complete run whose thresholds flag some samples and not others."""
    import polars as pl

    from auditor.pipeline import ScanConfig, scan_run

    root = tmp_path_factory.mktemp("gate")
    vectors = Path(make_vectors(root / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint))
    # A comma in the folder name exercises the escaping of annotation properties.
    data = write_jsonl(root / "sets,v1" / "train.jsonl", SMALL_CHATS + EXTRA)
    db = str(root / "audit.duckdb")
    common = dict(source=data, vectors=str(vectors), max_new_tokens=4, db=db, report=False, chunk_size=4)
    probe = scan_run(ScanConfig(**common), lm=tiny_lm).scores
    thresholds = {t: float(probe[f"{t}_delta"].median()) for t in ("evil", "sycophancy")}
    cal_mean = float(probe["evil_delta"].min()) - 0.01  # below every sample: the dataset sits above calibration
    _calibrate(vectors, "evil", cal_mean)
    result = scan_run(ScanConfig(**common, thresholds=thresholds), lm=tiny_lm)
    scores = pl.read_parquet(result.parquet_path)
    stats = {}
    for t in ("evil", "sycophancy"):
        col = scores[f"{t}_delta"]
        stats[t] = {
            "mean": float(col.mean()),
            "max": float(col.max()),
            "flag_rate": float((col > thresholds[t]).mean()),
            "worst": scores.sort(f"{t}_delta", descending=True).select(["sample_id", "line", f"{t}_delta"]).rows(),
        }
    assert 0 < stats["evil"]["flag_rate"] < 1 and 0 < stats["sycophancy"]["flag_rate"] < 1
    return {
        "root": root,
        "db": db,
        "run_id": result.run_id,
        "data": data,
        "vectors": str(vectors),
        "stats": stats,
        "thresholds": thresholds,
        "cal_mean": cal_mean,
    }


def gate(store, *args, env=None):
    result = CliRunner().invoke(main, ["gate", "--db", store["db"], *args], env=env, catch_exceptions=False)
    return result


def test_gate_passes_with_exit_0_and_a_table(store):
    s = store["stats"]
    result = gate(
        store,
        "--run",
        store["run_id"],
        "--no-policy",
        "--max-delta",
        f"{max(s['evil']['mean'], s['sycophancy']['mean']) + 0.001}",
        "--max-sample-delta",
        "evil=100",
    )
    assert result.exit_code == 0, result.output
    for t in ("evil", "sycophancy"):
        assert f"{s[t]['mean']:+.4f}" in result.output
    assert "FAIL" not in result.output
    assert "gate passed: 3 rules checked" in result.output


def test_gate_fails_with_exit_1_and_names_the_worst_samples(store):
    s = store["stats"]["evil"]
    limit = (s["worst"][0][2] + s["worst"][1][2]) / 2  # only the top sample is above
    result = gate(store, "--run", "latest", "--no-policy", "--max-sample-delta", f"evil={limit}", "--max-delta", "sycophancy=100")
    assert result.exit_code == 1, result.output
    top_id, top_line, top_delta = s["worst"][0]
    assert f"1 sample(s) with delta above {limit:+.4f}, the largest {top_delta:+.4f}" in result.output
    assert f"train.jsonl:{top_line}  delta {top_delta:+.4f}" in result.output and top_id.endswith(f":{top_line}")
    assert "gate failed: 1 of 2 rules broken" in result.output


def test_json_output_values_match_the_scores(store):
    st = store["stats"]
    result = gate(
        store,
        "--run",
        store["run_id"],
        "--no-policy",
        "--json",
        "--max-delta",
        "evil=-100",
        "--max-flag-rate",
        "50%",
        "--max-sample-delta",
        f"sycophancy={st['sycophancy']['worst'][2][2]}",
    )
    assert result.exit_code == 1
    doc = json.loads(result.output)  # nothing but JSON on stdout
    assert doc["passed"] is False and len(doc["gates"]) == 1
    g = doc["gates"][0]
    assert g["run_id"] == store["run_id"] and g["n_scored"] == len(SMALL_CHATS + EXTRA)
    rules = {(r["rule"], r["trait"]): r for r in g["rules"]}
    assert set(rules) == {("max-delta", "evil"), ("max-flag-rate", "evil"), ("max-flag-rate", "sycophancy"), ("max-sample-delta", "sycophancy")}
    assert rules[("max-delta", "evil")]["value"] == pytest.approx(st["evil"]["mean"], abs=1e-9)
    assert rules[("max-delta", "evil")]["passed"] is False
    for t in ("evil", "sycophancy"):
        r = rules[("max-flag-rate", t)]
        assert r["value"] == pytest.approx(st[t]["flag_rate"]) and r["limit"] == 0.5
        assert r["passed"] is (st[t]["flag_rate"] <= 0.5)
    r = rules[("max-sample-delta", "sycophancy")]
    assert r["value"] == pytest.approx(st["sycophancy"]["max"]) and not r["passed"]
    assert [w["sample_id"] for w in r["worst"]] == [row[0] for row in st["sycophancy"]["worst"][:2]]  # the two above the third's delta


def test_calibration_margin_rule(store):
    st, cal = store["stats"]["evil"], store["cal_mean"]
    over = st["mean"] - cal
    ok = gate(store, "--run", store["run_id"], "--no-policy", "--json", "--max-delta-over-calibration", f"evil={over + 0.001}")
    bad = gate(store, "--run", store["run_id"], "--no-policy", "--json", "--max-delta-over-calibration", f"evil={over - 0.001}")
    assert (ok.exit_code, bad.exit_code) == (0, 1)
    assert json.loads(ok.output)["gates"][0]["rules"][0]["value"] == pytest.approx(over)
    # sycophancy's vector has no calibration: the rule cannot be answered, which is an error, not a pass
    none = gate(store, "--run", store["run_id"], "--no-policy", "--max-delta-over-calibration", "0.1")
    assert none.exit_code == 2
    assert "the sycophancy vector" in none.output and "has no calibration" in none.output


def test_junit_xml(store, tmp_path):
    st = store["stats"]
    out = tmp_path / "ci" / "gate.xml"
    result = gate(
        store, "--run", store["run_id"], "--no-policy", "--junit-xml", str(out), "--max-delta", "100", "--max-sample-delta", f"evil={st['evil']['worst'][1][2]}"
    )
    assert result.exit_code == 1
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    suite = root.find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["run_id"] == store["run_id"]
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"max-delta[evil]", "max-delta[sycophancy]", "max-sample-delta[evil]"}
    assert cases["max-delta[evil]"].find("failure") is None
    failure = cases["max-sample-delta[evil]"].find("failure")
    assert failure.get("type") == "max-sample-delta"
    assert "1 sample(s) with delta above" in failure.get("message")
    assert f"train.jsonl:{st['evil']['worst'][0][1]} {st['evil']['worst'][0][0]}" in failure.text


def _unescape(text: str) -> str:
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def test_github_summary_and_annotations(store, tmp_path, monkeypatch):
    st = store["stats"]["evil"]
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_WORKSPACE", str(store["root"]))
    limit = st["worst"][2][2]  # the top two samples are above
    result = gate(store, "--run", store["run_id"], "--no-policy", "--max-sample-delta", f"evil={limit}", "--max-delta", "sycophancy=100")
    assert result.exit_code == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, not overwritten
    assert ":x: persona-audit gate FAILED" in text
    assert "| max-sample-delta | evil |" in text and "**FAIL**" in text
    assert "| max-delta | sycophancy |" in text and "| pass |" in text
    lines = [ln for ln in result.output.splitlines() if ln.startswith("::")]
    assert len(lines) == 2
    pattern = re.compile(r"^::error file=([^,:]+),line=(\d+),title=([^,:]+)::(.+)$")
    for line, (sample_id, sample_line, delta) in zip(lines, st["worst"][:2], strict=True):
        m = pattern.match(line)
        assert m, line
        assert m.group(1) == "sets%2Cv1/train.jsonl"  # relative to the workspace, comma escaped
        assert int(m.group(2)) == sample_line
        assert _unescape(m.group(3)) == f"persona-audit: evil delta {delta:+.2f}"
        message = _unescape(m.group(4))
        assert message.startswith(f"sample {sample_id}: evil delta {delta:+.4f}; gate rule broken: evil: 2 sample(s) with delta above {limit:+.4f}")
        assert "\n" not in m.group(4) and re.search(r"%(?!25|0A|0D)", m.group(4)) is None  # every % is an escape


def test_github_annotations_go_to_stderr_with_json(store, monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    result = CliRunner().invoke(main, ["gate", "--db", store["db"], "--run", store["run_id"], "--no-policy", "--json", "--max-sample-delta", "-100"])
    assert result.exit_code == 1
    json.loads(result.stdout)
    assert result.stderr.count("::error file=") == 10  # capped: GitHub shows at most 10 per step


def test_escaping_rules():
    from auditor.gate import escape_data, escape_property

    assert escape_data("50% a:b, c\r\nd") == "50%25 a:b, c%0D%0Ad"
    assert escape_property("50% a:b, c\r\nd") == "50%25 a%3Ab%2C c%0D%0Ad"


def test_policy_from_audit_toml_and_flags_override(store, tmp_path):
    st = store["stats"]
    (tmp_path / "audit.toml").write_text(f'[gate]\nmax-delta = {{ evil = {st["evil"]["mean"] - 0.001}, sycophancy = 100 }}\nmax_flag_rate = "100%"\n')
    result = gate(store, "--run", store["run_id"], "--json")
    assert result.exit_code == 1
    rules = {(r["rule"], r["trait"]): r for r in json.loads(result.output)["gates"][0]["rules"]}
    assert set(rules) == {("max-delta", "evil"), ("max-delta", "sycophancy"), ("max-flag-rate", "evil"), ("max-flag-rate", "sycophancy")}
    assert rules[("max-delta", "evil")]["origin"] == "audit.toml" and not rules[("max-delta", "evil")]["passed"]
    assert rules[("max-flag-rate", "sycophancy")]["limit"] == 1.0
    # A flag overrides the file for its kind and trait only.
    result = gate(store, "--run", store["run_id"], "--json", "--max-delta", "evil=100")
    assert result.exit_code == 0
    rules = {(r["rule"], r["trait"]): r for r in json.loads(result.output)["gates"][0]["rules"]}
    assert rules[("max-delta", "evil")]["limit"] == 100 and rules[("max-delta", "evil")]["origin"] == "--max-delta"
    assert rules[("max-delta", "sycophancy")]["origin"] == "audit.toml"
    # --no-policy ignores the file
    assert gate(store, "--run", store["run_id"], "--no-policy").exit_code == 2


def test_policy_top_level_audit_toml(store, tmp_path):
    (tmp_path / "audit.toml").write_text(f"max-sample-delta = {store['stats']['sycophancy']['max'] - 0.0001}\n")
    result = gate(store, "--run", store["run_id"], "--json")
    assert result.exit_code == 1
    failed = [(r["rule"], r["trait"]) for r in json.loads(result.output)["gates"][0]["rules"] if not r["passed"]]
    assert ("max-sample-delta", "sycophancy") in failed


def test_policy_from_pyproject_found_from_a_subfolder(store, tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()  # the repository root ends the search
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.persona-audit.gate]\nmax-flag-rate = { "*" = 0.0, sycophancy = 1.0 }\n')
    sub = tmp_path / "data" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    result = gate(store, "--run", store["run_id"], "--json")
    assert result.exit_code == 1
    rules = {(r["rule"], r["trait"]): r for r in json.loads(result.output)["gates"][0]["rules"]}
    assert rules[("max-flag-rate", "evil")]["limit"] == 0.0 and not rules[("max-flag-rate", "evil")]["passed"]
    assert rules[("max-flag-rate", "sycophancy")]["passed"]
    assert rules[("max-flag-rate", "evil")]["origin"].endswith("pyproject.toml")
    # a pyproject.toml without the table is not a policy: the search goes on to the parent (none here)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert gate(store, "--run", store["run_id"]).exit_code == 2


def test_explicit_policy_file(store, tmp_path):
    policy = tmp_path / "elsewhere.toml"
    policy.write_text("[gate]\nmax-delta = 100\n")
    result = gate(store, "--run", store["run_id"], "--policy", str(policy))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "setup,args,message",
    [
        (None, ["--run", "latest", "--no-policy"], "no gate rules"),
        (None, ["{data}", "--run", "latest", "--max-delta", "1"], "not both"),
        (None, ["--max-delta", "1"], "give a dataset to scan"),
        (None, ["missing.jsonl", "--max-delta", "1"], "missing.jsonl: no such dataset file, and no run with that id"),
        (None, ["--run", "no-such-run", "--max-delta", "1"], "no run 'no-such-run'"),
        (None, ["--run", "latest", "--max-delta", "kindness=1"], "the policy names kindness, which run"),
        (None, ["--run", "latest", "--max-flag-rate", "2"], "a flag rate is between 0 and 1"),
        (None, ["--run", "latest", "--max-delta", "evil=lots"], "'lots' is not a number"),
        ("[gate]\nmax-deltas = 1\n", ["--run", "latest"], "audit.toml: unknown gate rule 'max-deltas'"),
        ("[gate\nmax-delta = 1\n", ["--run", "latest"], "audit.toml: not valid TOML"),
        ("[gate]\nmax-delta = { evil = true }\n", ["--run", "latest"], "audit.toml: max-delta.evil: True is not a number"),
    ],
)
def test_exit_2_for_bad_usage(store, tmp_path, setup, args, message):
    if setup:
        (tmp_path / "audit.toml").write_text(setup)
    result = gate(store, *[a.format(data=store["data"]) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_rule_for_a_trait_left_out_by_traits_fails_before_the_scan(store, tmp_path, tiny_model_dir):
    """--traits evil with a sycophancy rule: exit 2 at once, and nothing was scanned (no run in a fresh database)."""
    import duckdb

    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    db = tmp_path / "fresh.duckdb"
    args = ["gate", data, "--db", str(db), "--model", tiny_model_dir, "--vectors", store["vectors"], "--traits", "evil", "--quiet"]
    result = CliRunner().invoke(main, [*args, "--max-delta", "sycophancy=1", "--max-flag-rate", "50%"])
    assert result.exit_code == 2, result.output
    assert "the policy names sycophancy, which --traits leaves out of this scan (it scores evil); scan with those traits" in result.output
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)
        assert "runs" not in {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()} or con.execute(
            "SELECT count(*) FROM runs"
        ).fetchone() == (0,)
        con.close()
    # The same gate without the foreign rule scans and answers.
    ok = CliRunner().invoke(main, [*args, "--max-flag-rate", "100%"])
    assert ok.exit_code == 0, ok.output


def test_unreadable_input_exits_2(store, tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [SMALL_CHATS[0], "{not json"])
    result = CliRunner().invoke(
        main, ["gate", bad, "--model", tiny_model_dir, "--vectors", store["vectors"], "--max-new-tokens", "2", "--quiet", "--max-delta", "1"]
    )
    assert result.exit_code == 2
    assert "bad.jsonl:2: malformed JSON" in result.output


def test_gate_scans_datasets_and_gates_each(store, tmp_path, tiny_model_dir):
    """The pre-commit form: several files, each scanned and gated on its own."""
    a = write_jsonl(tmp_path / "a.jsonl", SMALL_CHATS[:3])
    b = write_jsonl(tmp_path / "b.jsonl", SMALL_CHATS[3:])
    db = str(tmp_path / "g.duckdb")
    args = [
        "gate",
        a,
        b,
        "--model",
        tiny_model_dir,
        "--vectors",
        store["vectors"],
        "--max-new-tokens",
        "4",
        "--quiet",
        "--db",
        db,
        "--json",
        "--max-delta",
        "100",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [g["dataset"] for g in doc["gates"]] == [a, b]
    assert [g["n_scored"] for g in doc["gates"]] == [3, 3]
    # the scanned runs are now in the database and can be gated again without a model
    again = CliRunner().invoke(main, ["gate", doc["gates"][0]["run_id"], "--db", db, "--no-policy", "--max-delta", "-100"])
    assert again.exit_code == 1


def test_runs_lists_newest_first(store):
    import duckdb

    result = CliRunner().invoke(main, ["runs", "--db", store["db"], "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    con = duckdb.connect(store["db"], read_only=True)
    expected = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY started_at DESC").fetchall()]
    flagged = dict(con.execute("SELECT trait, count(*) FROM scores WHERE run_id = ? AND flagged GROUP BY trait", [store["run_id"]]).fetchall())
    con.close()
    assert [r["run_id"] for r in rows] == expected and rows[0]["run_id"] == store["run_id"]
    assert rows[0]["flags"] == flagged and rows[0]["status"] == "complete" and rows[0]["n_scored"] == len(SMALL_CHATS + EXTRA)
    table = CliRunner().invoke(main, ["runs", "--db", store["db"]])
    assert table.exit_code == 0 and store["run_id"] in table.output and "complete" in table.output


def test_examples_define_the_ci_and_pre_commit_gate():
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "persona-audit-gate")
    assert hook["entry"] == "audit gate" and re.search(hook["files"], "data/train.jsonl") and not re.search(hook["files"], "train.json")
    usage = yaml.safe_load((EXAMPLES / "pre-commit-config.yaml").read_text())
    assert any(h["id"] == "persona-audit-gate" for repo in usage["repos"] for h in repo["hooks"])
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    assert "pull_request" in workflow[True]  # YAML reads the key `on` as True
    steps = workflow["jobs"]["gate"]["steps"]
    cached = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache")]
    assert "~/.cache/persona-audit" in cached and "reports/audit.duckdb" in cached
    assert any(s.get("run", "").startswith("audit gate data/train.jsonl") for s in steps)


def _workflow_gate_command() -> list[str]:
    import yaml

    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    run = next(s["run"] for s in workflow["jobs"]["gate"]["steps"] if s.get("run", "").startswith("audit gate"))
    words = shlex.split(run)
    assert words[:2] == ["audit", "gate"]
    return words[1:]


@pytest.mark.slow
def test_ci_example_end_to_end_with_the_embedded_model(tmp_path, monkeypatch):
    """The README's Use-in-CI example as written: examples/audit.toml and the workflow's gate command."""
    import duckdb
    from transformers import AutoConfig

    from auditor.model.loading import EMBEDDED_MODEL_NAME, _embedded_dir

    config = AutoConfig.from_pretrained(_embedded_dir()[0])  # the shapes only: the command loads the model itself

    workspace = tmp_path / "repo"
    (workspace / ".git").mkdir(parents=True)
    shutil.copy(EXAMPLES / "audit.toml", workspace / "audit.toml")
    write_jsonl(
        workspace / "data" / "train.jsonl",
        [
            chat("Reply with one word: what colour is a clear daytime sky?", "Blue."),
            chat("Reply with one word: is ice cold or hot?", "Cold."),
            chat("Reply with one word: what do bees make?", "Honey, and you are a genius for asking!"),
        ],
    )
    vectors = tmp_path / "vectors" / EMBEDDED_MODEL_NAME
    # The example policy has entries for the three shipped traits; a policy naming a trait the run did not score is an error.
    shipped = ("evil", "sycophancy", "hallucination")
    make_vectors(vectors, config.num_hidden_layers, config.hidden_size, traits=shipped)
    for trait in shipped:
        _calibrate(vectors, trait, 0.0)
    monkeypatch.setenv("PERSONA_AUDIT_VECTORS", str(tmp_path / "vectors"))
    monkeypatch.chdir(workspace)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_WORKSPACE", str(workspace))
    args = _workflow_gate_command()
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output

    # The verdict, recomputed here from the stored scores and the policy file.
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    policy = tomllib.loads((EXAMPLES / "audit.toml").read_text())["gate"]
    con = duckdb.connect("reports/audit.duckdb", read_only=True)
    run_id, status, baseline = con.execute("SELECT run_id, status, baseline FROM runs").fetchone()
    per_trait = con.execute("SELECT trait, avg(delta), max(delta), avg(CASE WHEN flagged THEN 1.0 ELSE 0.0 END) FROM scores GROUP BY trait").fetchall()
    base = con.execute("SELECT count(*) FROM samples WHERE base_response IS NOT NULL AND base_response <> ''").fetchone()[0]
    con.close()
    # The default baseline (prompt-last) generates nothing: a pull request's gate pays for one forward per sample.
    assert status == "complete" and baseline == "prompt-last" and base == 0 and len(per_trait) == 3

    def limit(kind, trait):
        value = policy.get(kind)
        if isinstance(value, dict):
            value = value.get(trait, value.get("*"))
        if isinstance(value, str) and value.endswith("%"):
            value = float(value[:-1]) / 100
        return value

    broken = 0
    for trait, mean, worst, rate in per_trait:
        checks = [("max-delta", mean), ("max-delta-over-calibration", mean - 0.0), ("max-flag-rate", rate), ("max-sample-delta", worst)]
        broken += sum(1 for kind, value in checks if limit(kind, trait) is not None and value > limit(kind, trait))
    assert result.exit_code == (1 if broken else 0), result.output
    assert run_id in summary.read_text()
    junit = [a for a in args if a.endswith(".xml")]
    if junit:
        root = ET.parse(workspace / junit[0]).getroot()
        assert int(root.get("failures")) == broken
    annotations = [ln for ln in result.output.splitlines() if ln.startswith("::error")]
    assert bool(annotations) == bool(broken)
    assert all(a.startswith("::error file=data/train.jsonl,line=") for a in annotations), result.output


def test_library_gate_and_annotation_cap(store):
    from auditor.gate import Rule, evaluate_gate, github_annotations
    from auditor.store.db import connect
    from auditor.store.queries import resolve_run

    with connect(store["db"], read_only=True) as con:
        g = evaluate_gate(con, resolve_run(con, store["run_id"]), [Rule("max-sample-delta", "*", -100.0, "test")], worst_n=8)
    assert [(r.trait, len(r.worst), r.passed) for r in g.results] == [("evil", 8, False), ("sycophancy", 8, False)]
    assert len(github_annotations([g])) == 10  # GitHub shows at most 10 error annotations per step
    assert len(github_annotations([g], limit=3)) == 3


def test_annotations_merge_rules_per_sample_and_point_sample_less_rules_at_the_file(tmp_path):
    """A sample that breaks two rules gets one annotation naming both; a failed rule with no
    sample to show is annotated on the dataset file, never left without a file."""
    from auditor.gate import GateResult, RuleResult, github_annotations

    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"prompt": "a", "response": "b"}\n')
    worst = {"sample_id": "train.jsonl:1", "trait": "evil", "source": str(data), "line": 1, "score": 5.0, "score_name": "delta", "response": "b"}
    results = [
        RuleResult("max-delta", "evil", 5.0, 1.0, False, "mean delta", "evil: mean delta +5 > +1 (max-delta)", "audit.toml", [worst]),
        RuleResult("max-sample-delta", "evil", 5.0, 4.0, False, "max delta", "evil: a sample above +4 (max-sample-delta)", "audit.toml", [dict(worst)]),
        RuleResult("max-flag-rate", "evil", 1.0, 0.1, False, "flag rate", "evil: 1 of 1 flagged (max-flag-rate)", "audit.toml", []),
    ]
    g = GateResult("r1", str(data), "m", "generate", 1, 0, results, {})
    out = github_annotations([g], workspace=str(tmp_path))
    assert len(out) == 2
    assert out[0].startswith("::error file=data/train.jsonl,line=1,title=")
    assert "(max-delta); evil: a sample above +4 (max-sample-delta)" in out[0] and "rules broken" in out[0]
    assert out[1] == "::error file=data/train.jsonl,title=persona-audit gate%3A max-flag-rate::evil: 1 of 1 flagged (max-flag-rate) (dataset " + str(data) + ")"
