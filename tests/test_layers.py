"""Layers import only downwards: the lower layers never import the scan pipeline or the commands."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "auditor"
LOWER = ["vectors", "store", "model", "sources", "score.py", "scoring.py", "activations.py", "generation.py", "errors.py", "config.py"]
UPPER = ("auditor.pipeline", "auditor.distributed", "auditor.calibration", "auditor.cli")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_lower_layers_do_not_import_the_pipeline_or_the_commands():
    files = [p for name in LOWER for p in ((ROOT / name).rglob("*.py") if (ROOT / name).is_dir() else [ROOT / name])]
    assert len(files) > 20  # the walk found the packages
    upward = {str(p.relative_to(ROOT.parent)): sorted(m for m in imported_modules(p) if m.startswith(UPPER)) for p in files}
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from auditor.pipeline import scan_run\n    import auditor.cli.common\n", encoding="utf-8")
    assert imported_modules(sample) == {"auditor.pipeline", "auditor.cli.common"}
