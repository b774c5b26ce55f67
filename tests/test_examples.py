"""The CI and pre-commit examples work as written.

- examples/github-actions.yml: its install lines, run unchanged against a wheel built here
  from this checkout (PERSONA_AUDIT = the wheel's path, as its comment allows), in a fresh
  virtualenv, then its gate line in a repository laid out as its comment says. The
  virtualenv sees the system's site-packages, so torch and the other dependencies are not
  downloaded again (pip runs with --no-index: nothing is fetched).
- examples/pre-commit-config.yaml (a `repo: local` hook) and .pre-commit-hooks.yaml: they
  parse as pre-commit reads them, and each hook's entry runs the gate the way pre-commit
  calls it (entry + args + the matching file names).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLES, ROOT, SMALL_CHATS, chat, make_vectors, write_jsonl

HOOK_KEYS = {"id", "name", "entry", "language"}
HOOK_LANGUAGES = {"python", "system"}


def _workflow_steps() -> list[dict]:
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    return workflow["jobs"]["gate"]["steps"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERSONA_AUDIT_VECTORS", "PERSONA_AUDIT_TRAITS", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", PIP_NO_INPUT="1", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def build_wheel(out: Path) -> Path:
    """A wheel of this checkout, built from a copy so the checkout gets no build/ folder."""
    src = out / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "build", "dist", "reports", "tests", "bench", ".venv", ".pytest_cache", ".ruff_cache"
        ),
    )
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out / "dist"), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (out / "dist").glob("persona_audit-*.whl")
    return wheel


def make_venv(folder: Path) -> Path:
    """A virtualenv on top of the system's packages; `pip` there is the system pip run by the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True, timeout=300)
    pip = folder / "bin" / "pip"
    pip.write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n')
    pip.chmod(0o755)
    return folder / "bin"


def run_lines(lines: list[str], cwd: Path, env: dict[str, str]) -> None:
    for line in lines:
        proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def test_workflow_installs_from_git_or_a_wheel_not_an_index():
    step = next(s for s in _workflow_steps() if s.get("name", "").startswith("Install persona-audit"))
    lines = [ln.strip() for ln in step["run"].splitlines() if ln.strip()]
    assert 'pip install "$PERSONA_AUDIT"' in lines
    assert "pip install persona-audit" not in lines  # it is not on a package index
    assert step["env"]["PERSONA_AUDIT"].startswith("git+https://")
    gate = next(s["run"] for s in _workflow_steps() if s.get("run", "").startswith("audit gate"))
    assert shlex.split(gate)[:3] == ["audit", "gate", "data/train.jsonl"]


@pytest.mark.slow
def test_ci_example_install_and_gate_lines_against_a_built_wheel(tmp_path):
    wheel = build_wheel(tmp_path)
    bin_dir = make_venv(tmp_path / "venv")
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PERSONA_AUDIT=str(wheel))
    step = next(s for s in _workflow_steps() if s.get("name", "").startswith("Install persona-audit"))
    run_lines([ln.strip() for ln in step["run"].splitlines() if ln.strip()], tmp_path, env)

    where = subprocess.run([str(bin_dir / "python"), "-c", "import auditor; print(auditor.__file__)"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(tmp_path / "venv")), where.stdout + where.stderr  # the wheel, not this checkout
    assert shutil.which("audit", path=env["PATH"]) == str(bin_dir / "audit")

    # The repository the workflow runs in: audit.toml at its root, the dataset in data/.
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    shutil.copy(EXAMPLES / "audit.toml", repo / "audit.toml")
    write_jsonl(
        repo / "data" / "train.jsonl",
        [chat("Reply with one word: what colour is the sky on a clear day?", "Blue."), chat("Reply with one word: what do bees make?", "Honey.")],
    )
    gate_line = next(s["run"] for s in _workflow_steps() if s.get("run", "").startswith("audit gate"))
    proc = subprocess.run(["bash", "-c", gate_line], cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("gate passed" if proc.returncode == 0 else "gate failed") in proc.stdout
    assert (repo / "reports" / "gate-junit.xml").is_file()

    import duckdb

    con = duckdb.connect(str(repo / "reports" / "audit.duckdb"), read_only=True)
    status, n_scored, vectors = con.execute("SELECT status, n_scored, vectors FROM runs").fetchone()
    con.close()
    assert status == "complete" and n_scored == 2
    used = json.loads(vectors)
    assert set(used) == {"evil", "sycophancy", "hallucination"}  # the shipped vectors, installed by the wheel
    assert all(str(tmp_path / "venv" / "share" / "persona-audit" / "vectors") in str(v) for v in used.values()), used


def _hooks(path: Path, local: bool) -> list[dict]:
    data = yaml.safe_load(path.read_text())
    if local:
        repos = data["repos"]
        assert all(r["repo"] == "local" for r in repos), "the example must work as written: a local hook, no placeholder repository"
        return [h for r in repos for h in r["hooks"]]
    return data


@pytest.mark.parametrize("path,local", [(ROOT / ".pre-commit-hooks.yaml", False), (EXAMPLES / "pre-commit-config.yaml", True)])
def test_pre_commit_hooks_parse_and_their_entry_runs(path, local, tmp_path, tiny_lm, tiny_model_dir):
    (hook,) = [h for h in _hooks(path, local) if h["id"] == "persona-audit-gate"]
    assert HOOK_KEYS <= set(hook) and hook["language"] in HOOK_LANGUAGES
    files = re.compile(hook.get("files", ""))
    assert files.search("data/train.jsonl") and not files.search("data/train.json")
    assert hook.get("pass_filenames", True) and hook.get("require_serial")

    vectors = make_vectors(tmp_path / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)
    repo = tmp_path / "repo"
    data = write_jsonl(repo / "data" / "train.jsonl", SMALL_CHATS[:3])
    extra = ["--model", tiny_model_dir, "--vectors", vectors, "--max-new-tokens", "4", "--no-policy"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for limit, code in (("100", 0), ("-100", 1)):
        # What pre-commit runs: entry, then args, then the changed files that match `files`.
        cmd = [*shlex.split(hook["entry"]), *hook.get("args", []), *extra, "--max-delta", limit, os.path.relpath(data, repo)]
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert ("gate passed" if code == 0 else "gate failed") in proc.stdout
