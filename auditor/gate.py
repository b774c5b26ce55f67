"""The gate: a dataset's run against a policy of per-trait rules, pass or fail.

A policy is a set of rules, each ``(kind, trait, limit)``; trait ``*`` means every
trait of the run unless that trait has a rule of the same kind of its own. Rules fail
when the measured value is strictly above the limit:

- ``max-delta``: the dataset-level score (mean delta over the samples; mean projection
  for runs scanned with ``--baseline none``);
- ``max-delta-over-calibration``: that mean minus the mean of the vector's clean
  calibration set;
- ``max-flag-rate``: flagged samples / scored samples (needs a flag threshold);
- ``max-sample-delta``: the largest sample score.

The policy comes from ``audit.toml`` (a ``[gate]`` table, or the rule keys at top
level) or ``[tool.persona-audit.gate]`` in ``pyproject.toml``, found from the working
directory upward; command-line rules override it per kind and trait. The gate only
reads the database (it never loads a model).
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from auditor.errors import AuditorError
from auditor.score import ScoreMeaning
from auditor.store.queries import RunInfo, count_above, example_query, gate_trait_rows, highest_samples

RULE_KINDS: dict[str, str] = {
    "max-delta": "dataset-level delta (mean over samples) above a value",
    "max-delta-over-calibration": "dataset-level delta above the vector's calibration mean by more than a margin",
    "max-flag-rate": "share of flagged samples above a rate (0.05 or 5%)",
    "max-sample-delta": "any sample's delta above a value",
}
POLICY_FILES = ("audit.toml", "pyproject.toml")
MAX_ANNOTATIONS = 10  # GitHub shows at most 10 error annotations per step


class PolicyError(AuditorError):
    """The policy is unusable: a bad config file, an unknown rule, a rule the run cannot answer."""


@dataclass(frozen=True)
class Rule:
    kind: str
    trait: str  # a trait name, or "*" for every trait of the run
    limit: float
    origin: str  # where it was stated: a file path or the command-line flag


@dataclass
class RuleResult:
    rule: str
    trait: str
    value: float
    limit: float
    passed: bool
    measure: str  # what value is, in words: "mean delta", "flag rate" ...
    message: str
    origin: str
    worst: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GateResult:
    run_id: str
    dataset: str | None
    model: str | None
    baseline: str | None
    n_scored: int
    n_rejected: int
    results: list[RuleResult]
    traits: dict[str, dict[str, Any]]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "results"}
        out["passed"] = self.passed
        out["rules"] = [asdict(r) for r in self.results]
        return out


# ---------------------------------------------------------------- policy


def parse_limit(kind: str, raw: Any, where: str) -> float:
    """A rule's limit from a number or a string; ``max-flag-rate`` also takes ``5%``."""
    if isinstance(raw, bool):
        raise PolicyError(f"{where}: {raw!r} is not a number")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            if text.endswith("%"):
                if kind != "max-flag-rate":
                    raise PolicyError(f"{where}: a percentage only makes sense for max-flag-rate; give {kind} a number")
                value = float(text[:-1]) / 100.0
            else:
                value = float(text)
        except ValueError:
            raise PolicyError(f"{where}: {raw!r} is not a number (e.g. 0.5{', or 5% for a rate' if kind == 'max-flag-rate' else ''})") from None
    else:
        raise PolicyError(f"{where}: expected a number or a table of TRAIT = NUMBER, got {type(raw).__name__}")
    if not math.isfinite(value):
        raise PolicyError(f"{where}: the limit must be a finite number")
    if kind == "max-flag-rate" and not 0.0 <= value <= 1.0:
        raise PolicyError(f"{where}: a flag rate is between 0 and 1 (0.05 means 5%), got {value:g}")
    return value


def rules_from_table(table: Mapping[str, Any], origin: str) -> dict[tuple[str, str], Rule]:
    """Rules from a parsed TOML table: ``kind = NUMBER`` (every trait) or ``kind = {trait = NUMBER}``."""
    rules: dict[tuple[str, str], Rule] = {}
    for key, value in table.items():
        kind = key.replace("_", "-")
        if kind not in RULE_KINDS:
            raise PolicyError(f"{origin}: unknown gate rule {key!r}; use one of {', '.join(RULE_KINDS)}")
        if isinstance(value, Mapping):
            for trait, raw in value.items():
                rules[(kind, str(trait))] = Rule(kind, str(trait), parse_limit(kind, raw, f"{origin}: {key}.{trait}"), origin)
        else:
            rules[(kind, "*")] = Rule(kind, "*", parse_limit(kind, value, f"{origin}: {key}"), origin)
    return rules


def rules_from_flags(flags: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], Rule]:
    """Rules from ``--max-delta TRAIT=V`` style values (a bare value means every trait)."""
    rules: dict[tuple[str, str], Rule] = {}
    for kind, values in flags.items():
        for value in values:
            trait, raw = value.split("=", 1) if "=" in value else ("*", value)
            trait = trait.strip() or "*"
            rules[(kind, trait)] = Rule(kind, trait, parse_limit(kind, raw, f"--{kind} {value}"), f"--{kind}")
    return rules


def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the policy file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: not valid TOML ({e}); fix the file or pass --no-policy") from None


def policy_table(path: str) -> dict[str, Any] | None:
    """The gate table of a policy file, or None when a pyproject.toml holds none."""
    data = _load_toml(path)
    if os.path.basename(path) == "pyproject.toml":
        tool = data.get("tool", {}).get("persona-audit")
        if tool is None:
            return None
        table = tool.get("gate", None)
        if table is None:  # rule keys straight under [tool.persona-audit]
            table = {k: v for k, v in tool.items() if k.replace("_", "-") in RULE_KINDS}
        return table
    table = data.get("gate")
    if table is None:
        table = {k: v for k, v in data.items() if k != "scan"}  # [scan] holds the scan's settings, not rules
    return table


def scan_table(path: str) -> dict[str, Any] | None:
    """The ``[scan]`` table of a policy file (``[tool.persona-audit.scan]`` in pyproject.toml), or None."""
    data = _load_toml(path)
    if os.path.basename(path) == "pyproject.toml":
        data = data.get("tool", {}).get("persona-audit", {})
    table = data.get("scan")
    if table is not None and not isinstance(table, Mapping):
        raise PolicyError(f"{path}: scan must be a table ([scan])")
    return table


def policy_mapping(policy_path: str | None = None, use_files: bool = True) -> Any:
    """The field/role mapping of the policy file in force (the one the gate would use), as a FieldMap."""
    from auditor.sources.mapping import FieldMap, mapping_from_policy

    path = policy_path if policy_path and os.path.isfile(policy_path) else (find_policy_file() if use_files and not policy_path else None)
    if not path:
        return FieldMap()
    return mapping_from_policy(scan_table(path), _display_path(path))


def find_policy_file(start: str | None = None) -> str | None:
    """The nearest ``audit.toml``, or ``pyproject.toml`` with a persona-audit table, from ``start`` up.

    The search stops at the repository root (a folder holding ``.git``) or the filesystem root.
    """
    folder = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(folder, "audit.toml")
        if os.path.isfile(candidate):
            return candidate
        candidate = os.path.join(folder, "pyproject.toml")
        if os.path.isfile(candidate) and policy_table(candidate) is not None:
            return candidate
        parent = os.path.dirname(folder)
        if os.path.exists(os.path.join(folder, ".git")) or parent == folder:
            return None
        folder = parent


def load_policy(flags: Mapping[str, Iterable[str]], policy_path: str | None = None, use_files: bool = True) -> tuple[list[Rule], str | None]:
    """The rules in force: the policy file's, overridden per (kind, trait) by the flags'.

    Returns the rules and the policy file used (None when none was).
    """
    rules: dict[tuple[str, str], Rule] = {}
    path = None
    if policy_path:
        if not os.path.isfile(policy_path):
            raise PolicyError(f"{policy_path}: no such policy file; write one (see audit gate --help) or drop --policy")
        path = policy_path
    elif use_files:
        path = find_policy_file()
    if path:
        table = policy_table(path)
        if table is None:
            raise PolicyError(f"{path}: holds no [tool.persona-audit.gate] table")
        rules.update(rules_from_table(table, _display_path(path)))
    rules.update(rules_from_flags(flags))
    return list(rules.values()), path


def _display_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------- evaluation


def trait_stats(con: Any, run: RunInfo) -> dict[str, dict[str, Any]]:
    """Per trait: n, mean delta and projection, flagged count and rate, the largest sample score."""
    out: dict[str, dict[str, Any]] = {}
    for trait, layer, n, mean_delta, mean_proj, n_delta, n_flagged, max_delta, max_proj, mean_margin, max_margin in gate_trait_rows(con, run.run_id, run.pairs):
        meaning = run.score(trait)
        score = meaning.column
        out[trait] = {
            "layer": layer,
            "n": int(n),
            "score": score,
            "mean_delta": mean_delta,
            "mean_proj_response": mean_proj,
            "n_with_delta": int(n_delta),
            "mean_score": meaning.pick(mean_delta, mean_proj, mean_margin),
            "n_flagged": int(n_flagged or 0),
            "flag_rate": (n_flagged or 0) / n if n else None,
            "max_score": meaning.pick(max_delta, max_proj, max_margin),
            "threshold": run.threshold(trait),
            "calibration_mean": run.calibration_mean(trait),
        }
    return out


def worst_samples(con: Any, run: RunInfo, trait: str, limit: int, above: float | None = None, flagged_only: bool = False) -> list[dict[str, Any]]:
    """The highest-scoring samples of ``trait`` (optionally only those above a value, or flagged)."""
    meaning = run.score(trait)
    score = meaning.column
    rows = highest_samples(con, run.run_id, trait, meaning, limit, above=above, flagged_only=flagged_only)
    return [
        {"trait": trait, "sample_id": sid, "source": src, "line": line, "turn": turn, "score_name": score, "score": value, "response": (resp or "")[:200]}
        for sid, src, line, turn, value, resp in rows
    ]


def _measure(score: str) -> str:
    return ScoreMeaning.from_column(None, score).measure


def check_rule_traits(rules: list[Rule], traits: Iterable[str], why: str) -> None:
    """Rules may only name traits in ``traits`` (``*`` aside): a PolicyError naming the others.

    ``why`` ends the sentence "the policy names X, which ...", e.g. "run R did not score (it scored evil)"."""
    scored = set(traits)
    unknown = sorted({r.trait for r in rules if r.trait != "*" and r.trait not in scored})
    if unknown:
        raise PolicyError(f"the policy names {', '.join(unknown)}, which {why}; scan with those traits or drop the rules")


def evaluate_gate(con: Any, run: RunInfo, rules: list[Rule], worst_n: int = 5) -> GateResult:
    """Check every rule against the run; rules naming a trait the run lacks are errors."""
    stats = trait_stats(con, run)
    if not stats:
        raise PolicyError(
            f'run {run.run_id} scored no samples; there is nothing to gate (check the rejects: audit sql "{example_query("rejects", run.run_id)}")'
        )
    if not rules:
        raise PolicyError(
            "no gate rules: pass --max-delta, --max-delta-over-calibration, --max-flag-rate or --max-sample-delta, or write them in audit.toml ([gate] table)"
        )
    check_rule_traits(rules, stats, f"run {run.run_id} did not score (it scored {', '.join(stats)})")
    explicit = {(r.kind, r.trait) for r in rules if r.trait != "*"}
    expanded: list[Rule] = []
    for rule in sorted(rules, key=lambda r: (list(RULE_KINDS).index(r.kind), r.trait)):
        if rule.trait == "*":
            expanded += [Rule(rule.kind, t, rule.limit, rule.origin) for t in stats if (rule.kind, t) not in explicit]
        else:
            expanded.append(rule)
    expanded.sort(key=lambda r: (list(RULE_KINDS).index(r.kind), r.trait))
    results = [_check(con, run, rule, stats[rule.trait], worst_n) for rule in expanded]
    return GateResult(
        run_id=run.run_id,
        dataset=run.dataset,
        model=run.model,
        baseline=run.baseline,
        n_scored=int(run.n_scored or 0),
        n_rejected=int(run.n_rejected or 0),
        results=results,
        traits=stats,
    )


def _check(con: Any, run: RunInfo, rule: Rule, s: dict[str, Any], worst_n: int) -> RuleResult:
    trait, limit = rule.trait, rule.limit
    name = _measure(s["score"])
    if rule.kind in ("max-delta", "max-delta-over-calibration"):
        if s["mean_score"] is None:
            raise PolicyError(f"{rule.origin}: run {run.run_id} has no {name} for {trait} (no base response was scored); use another rule or scan again")
        value = s["mean_score"]
        measure = f"mean {name}"
        if rule.kind == "max-delta-over-calibration":
            cal = s["calibration_mean"]
            if cal is None:
                raise PolicyError(
                    f"{rule.origin}: the {trait} vector of run {run.run_id} has no calibration for --baseline {run.baseline}, so there is nothing to compare with; "
                    f"use --max-delta {trait}=VALUE, or use a vector with a calibration set"
                )
            value = value - cal
            measure = f"mean {name} - calibration mean ({cal:+.3f})"
        passed = not value > limit
        message = f"{trait}: {measure} {value:+.4f} {'<=' if passed else '>'} {limit:+.4f} ({rule.kind})"
        worst = [] if passed else worst_samples(con, run, trait, worst_n)
    elif rule.kind == "max-flag-rate":
        if s["threshold"] is None:
            raise PolicyError(
                f"{rule.origin}: run {run.run_id} has no flag threshold for {trait} (the vector has no calibration); "
                f"scan with --threshold {trait}=VALUE, or gate with --max-sample-delta {trait}=VALUE instead"
            )
        value = s["flag_rate"]
        measure = f"flag rate ({s['n_flagged']}/{s['n']} above {s['threshold']:.3f})"
        passed = not value > limit
        message = f"{trait}: {s['n_flagged']} of {s['n']} samples flagged ({100 * value:.1f}%) {'<=' if passed else '>'} {100 * limit:.1f}% ({rule.kind})"
        worst = [] if passed else worst_samples(con, run, trait, worst_n, flagged_only=True)
    elif rule.kind == "max-sample-delta":
        if s["max_score"] is None:
            raise PolicyError(f"{rule.origin}: run {run.run_id} has no sample {name} for {trait}; scan again")
        value = s["max_score"]
        measure = f"largest sample {name}"
        passed = not value > limit
        worst = [] if passed else worst_samples(con, run, trait, worst_n, above=limit)
        if passed:
            message = f"{trait}: largest sample {name} {value:+.4f} <= {limit:+.4f} ({rule.kind})"
        else:
            n_above = count_above(con, run.run_id, trait, s["score"], limit)
            message = f"{trait}: {n_above} sample(s) with {name} above {limit:+.4f}, the largest {value:+.4f} ({rule.kind})"
    else:  # rules_from_* only build known kinds
        raise PolicyError(f"unknown rule {rule.kind!r}")
    return RuleResult(rule.kind, trait, float(value), limit, passed, measure, message, rule.origin, worst)


# ---------------------------------------------------------------- outputs


def format_value(result: RuleResult) -> str:
    return f"{100 * result.value:.2f}%" if result.rule == "max-flag-rate" else f"{result.value:+.4f}"


def format_limit(result: RuleResult) -> str:
    return f"{100 * result.limit:.2f}%" if result.rule == "max-flag-rate" else f"{result.limit:+.4f}"


def report_json(gates: list[GateResult]) -> dict[str, Any]:
    """The machine-readable result: ``{"passed", "gates": [...]}``, one gate per dataset or run."""
    return {"passed": all(g.passed for g in gates), "gates": [g.to_dict() for g in gates]}


def dumps_json(gates: list[GateResult]) -> str:
    return json.dumps(report_json(gates), indent=2, default=str)


def junit_xml(gates: list[GateResult]) -> str:
    """JUnit XML: one testsuite per gate, one testcase per rule; failures carry the message."""
    root = ET.Element(
        "testsuites",
        name="persona-audit gate",
        tests=str(sum(len(g.results) for g in gates)),
        failures=str(sum(not r.passed for g in gates for r in g.results)),
        errors="0",
    )
    for g in gates:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"persona-audit gate: {g.dataset or g.run_id}",
            tests=str(len(g.results)),
            failures=str(sum(not r.passed for r in g.results)),
            errors="0",
            skipped="0",
        )
        props = ET.SubElement(suite, "properties")
        for key in ("run_id", "dataset", "model", "baseline", "n_scored", "n_rejected"):
            ET.SubElement(props, "property", name=key, value=str(getattr(g, key)))
        for r in g.results:
            case = ET.SubElement(suite, "testcase", classname=f"persona_audit.gate.{r.rule.replace('-', '_')}", name=f"{r.rule}[{r.trait}]", time="0")
            if not r.passed:
                failure = ET.SubElement(case, "failure", message=r.message, type=r.rule)
                lines = [r.message, f"value {format_value(r)}, limit {format_limit(r)} (from {r.origin})"]
                lines += [f"  {_where(w)} {w['sample_id']}: {w['score_name']} {w['score']:+.4f}" for w in r.worst]
                failure.text = "\n".join(lines)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _where(sample: Mapping[str, Any]) -> str:
    return f"{sample['source']}:{sample['line']}" if sample.get("line") is not None else str(sample["source"])


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_summary(gates: list[GateResult]) -> str:
    """The GitHub step summary: a verdict, the rules table and the worst samples, per gate."""
    parts: list[str] = []
    for g in gates:
        verdict = "passed" if g.passed else "FAILED"
        icon = ":white_check_mark:" if g.passed else ":x:"
        parts.append(f"### {icon} persona-audit gate {verdict}: `{_md(g.dataset or g.run_id)}`\n")
        parts.append(f"Run `{g.run_id}`, model `{_md(g.model)}`, {g.n_scored} samples scored" + (f", {g.n_rejected} rejected" if g.n_rejected else "") + ".\n")
        parts.append("| rule | trait | value | limit | result |\n|---|---|---:|---:|---|")
        for r in g.results:
            parts.append(f"| {r.rule} | {_md(r.trait)} | {format_value(r)} | {format_limit(r)} | {'pass' if r.passed else '**FAIL**'} |")
        worst = _dedup_worst(g)
        if worst:
            parts.append("\n**Worst samples**\n\n| trait | sample | where | score | response |\n|---|---|---|---:|---|")
            for w in worst:
                parts.append(f"| {_md(w['trait'])} | `{_md(w['sample_id'])}` | {_md(_where(w))} | {w['score']:+.4f} | {_md(w['response'][:120])} |")
        parts.append("")
    return "\n".join(parts) + "\n"


def _dedup_worst(g: GateResult) -> list[dict[str, Any]]:
    """The worst samples of the failed rules, each (sample, trait) once, with every failed rule
    it stands for in ``rules`` and ``messages`` (first rule first)."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    out = []
    for r in g.results:
        if r.passed:
            continue
        for w in r.worst:
            key = (w["sample_id"], w["trait"])
            if key in seen:
                if r.rule not in seen[key]["rules"]:
                    seen[key]["rules"].append(r.rule)
                    seen[key]["messages"].append(r.message)
                continue
            seen[key] = {**w, "rule": r.rule, "limit": r.limit, "message": r.message, "rules": [r.rule], "messages": [r.message]}
            out.append(seen[key])
    return out


def escape_data(text: str) -> str:
    """Escape a workflow command's message: %, CR and LF."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value: as data, plus ':' and ','."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _line_based(source: str) -> bool:
    """Whether a sample's ``line`` is a physical line of the file (JSONL, CSV), not a row or item number."""
    from auditor.sources.readers import file_type

    return file_type(source) in ("jsonl", "csv")


def _file_property(path: str, workspace: str | None) -> str:
    """``file=PATH`` for a workflow command, PATH relative to ``workspace`` when it lies inside it."""
    if workspace and os.path.isabs(path) and os.path.abspath(path).startswith(os.path.abspath(workspace) + os.sep):
        path = os.path.relpath(path, workspace)
    return f"file={escape_property(path.replace(os.sep, '/'))}"


def github_annotations(gates: list[GateResult], workspace: str | None = None, limit: int = MAX_ANNOTATIONS) -> list[str]:
    """``::error file=...,line=...,title=...::message`` for the worst samples of failed rules.

    Paths are made relative to ``workspace`` (GITHUB_WORKSPACE) so the annotation lands on the
    file in the pull request; ``line`` is given only for line-based files (JSONL, CSV), where it
    is the physical line. A failed rule without samples to point at is annotated on the dataset
    file (without a line), or on nothing when the dataset is not a file.
    """
    out: list[str] = []
    for g in gates:
        covered: set[str] = set()
        for w in _dedup_worst(g):
            if len(out) >= limit:
                return out
            source = str(w["source"])
            if source.startswith("hf:"):
                continue
            props = [_file_property(source, workspace)]
            if w.get("line") is not None and _line_based(source):
                props.append(f"line={int(w['line'])}")
            title = f"persona-audit: {w['trait']} {w['score_name']} {w['score']:+.2f}"
            props.append(f"title={escape_property(title)}")
            row = "" if _line_based(source) else f" (row {w['line']})"
            broken = "; ".join(w["messages"])
            message = f"sample {w['sample_id']}{row}: {w['trait']} {w['score_name']} {w['score']:+.4f}; gate rule{'s' if len(w['rules']) > 1 else ''} broken: {broken}. Response: {w['response'][:160]}"
            out.append(f"::error {','.join(props)}::{escape_data(message)}")
            covered.update(rule + w["trait"] for rule in w["rules"])
        for r in g.results:
            if not r.passed and (r.rule + r.trait) not in covered and len(out) < limit:
                # No sample to point at: the annotation goes on the dataset file itself when it is one.
                dataset = str(g.dataset)
                props = [_file_property(dataset, workspace)] if os.path.isfile(dataset) else []
                props.append(f"title={escape_property('persona-audit gate: ' + r.rule)}")
                out.append(f"::error {','.join(props)}::{escape_data(r.message + ' (dataset ' + dataset + ')')}")
    return out


# What ``audit gate`` does around the rules: which targets to scan and which are runs,
# evaluating the runs, and the files it writes (JUnit XML, the GitHub step summary).


def is_dataset(target: str) -> bool:
    """A dataset to scan: a Hugging Face id (``hf:``), an existing path, or a glob that matches files."""
    import glob

    return target.startswith("hf:") or os.path.exists(target) or (any(c in target for c in "*?[") and bool(glob.glob(target)))


def resolve_targets(targets: Iterable[str], db: str, run_spec: str | None = None) -> list[tuple[str, str]]:
    """Each target as ``("scan", dataset)`` or ``("run", run id)``; ``run_spec`` (``--run``) is always a run.

    Raises AuditorError for a target that is neither a dataset nor a run in ``db``.
    """
    from auditor.store.db import connect
    from auditor.store.queries import run_exists

    todo: list[tuple[str, str]] = []
    for target in [run_spec] if run_spec else list(targets):
        if not run_spec and is_dataset(target):
            todo.append(("scan", target))
            continue
        if os.path.exists(db):
            with connect(db, read_only=True) as con:
                if run_exists(con, target):
                    todo.append(("run", target))
                    continue
        if run_spec:
            todo.append(("run", target))  # evaluate_runs gives the precise error
            continue
        raise AuditorError(f"{target}: no such dataset file, and no run with that id in {db} (audit runs lists the runs)")
    return todo


def evaluate_runs(db: str, run_specs: Iterable[str], rules: list[Rule]) -> list[GateResult]:
    """Each run (an id, a unique prefix or ``latest``) in ``db`` against ``rules``."""
    from auditor.store.db import connect
    from auditor.store.queries import resolve_run

    with connect(db, read_only=True) as con:
        return [evaluate_gate(con, resolve_run(con, spec, db), rules) for spec in run_specs]


def write_outputs(gates: list[GateResult], junit_path: str | None = None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Write the JUnit XML (when asked) and, on GitHub Actions, append the step summary.

    Returns the GitHub error annotations to print (none outside GitHub Actions).
    """
    if junit_path:
        os.makedirs(os.path.dirname(os.path.abspath(junit_path)), exist_ok=True)
        with open(junit_path, "w", encoding="utf-8") as fh:
            fh.write(junit_xml(gates))
    if environ.get("GITHUB_ACTIONS") != "true":
        return []
    summary_path = environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        with open(summary_path, "a", encoding="utf-8") as fh:
            fh.write(markdown_summary(gates))
    return github_annotations(gates, workspace=environ.get("GITHUB_WORKSPACE"))
