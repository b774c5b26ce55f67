"""The code's shape (CONVENTIONS.md): SQL lives in the store, and long functions say why.

- Only ``auditor/store/`` and ``auditor/sql.py`` hold SQL statements: string literals
  elsewhere (docstrings aside) name no ``SELECT``, ``INSERT INTO``, ``CREATE`` ...
- A function or method in ``auditor/`` over ``MAX_LINES`` lines (from its ``def`` to the
  end of its body) carries a ``# long: <reason>`` comment on the line above its ``def`` or
  within its signature.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "auditor"
SQL_HOMES = ("auditor/store/", "auditor/sql.py")
# Upper case and followed by what SQL puts next, so prose ("select the rows", "Create") does not count.
SQL_STATEMENT = re.compile(r"\b(SELECT |INSERT INTO|CREATE |UPDATE |DELETE FROM|ALTER TABLE|DROP |ATTACH |COPY \(|PRAGMA |SET |WITH \w+ AS \()")
MAX_LINES = 60
LONG_REASON = "# long:"

# Functions allowed over MAX_LINES without a reason while a rewrite is under way (none now);
# an entry that is no longer long makes the test fail, so the list cannot go stale.
PENDING_REWRITE: set[tuple[str, str]] = set()


def _python_files() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40  # the walk found the package
    return files


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def sql_strings(source: str, name: str = "<string>") -> list[tuple[int, str]]:
    """(line, start of the string) of each string literal in ``source`` (f-string parts included) that holds an SQL statement; docstrings and comments do not count."""
    tree = ast.parse(source, filename=name)
    docstrings = _docstring_nodes(tree)
    return sorted(
        (node.lineno, node.value[:60])
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings and SQL_STATEMENT.search(node.value)
    )


def long_functions(source: str, name: str = "<string>") -> list[tuple[str, int, int]]:
    """(name, def line, length) of each function or method over MAX_LINES lines without a ``# long:`` comment next to its def."""
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        if length <= MAX_LINES:
            continue
        # The line above the def (below its decorators), or any line of the signature up to the body.
        nearby = lines[node.lineno - 2 : node.body[0].lineno - 1]
        if not any(line.strip().startswith(LONG_REASON) and len(line.strip()) > len(LONG_REASON) + 3 for line in nearby):
            out.append((node.name, node.lineno, length))
    return sorted(out, key=lambda f: f[1])


def test_no_sql_outside_the_store():
    found = {}
    for path in _python_files():
        rel = _relative(path)
        if rel.startswith(SQL_HOMES):
            continue
        hits = sql_strings(path.read_text(encoding="utf-8"), rel)
        if hits:
            found[rel] = hits
    assert found == {}, "move these queries into auditor/store/ (a named function with a docstring), and call it"


def test_long_functions_give_a_reason():
    found = {}
    for path in _python_files():
        rel = _relative(path)
        for name, line, length in long_functions(path.read_text(encoding="utf-8"), rel):
            if (rel, name) not in PENDING_REWRITE:
                found[f"{rel}:{line} {name}"] = length
    assert found == {}, f"split these into named steps, or put '{LONG_REASON} <why>' on the line above the def"


def test_the_pending_list_names_only_long_functions():
    """An entry whose function was shortened (or renamed) must leave the list, so it empties as the rewrite lands."""
    still_long = set()
    for rel in {rel for rel, _ in PENDING_REWRITE}:
        source = (ROOT / rel).read_text(encoding="utf-8")
        still_long |= {(rel, name) for name, _, _ in long_functions(source, rel)}
    assert PENDING_REWRITE - still_long == set()


def test_the_sql_check_sees_strings_and_f_string_parts_but_not_docstrings_or_comments():
    source = '''"""Module docstring: SELECT * FROM scores is prose here."""
def f(con, col):
    """Docstring: INSERT INTO runs ... is prose here too."""
    # a comment: DELETE FROM scores
    con.execute(f"SELECT {col} FROM scores")
    note = "select the rows you want; update the report"
    return con.execute("UPDATE runs SET status = 'x'")
'''
    assert sql_strings(source) == [(5, "SELECT "), (7, "UPDATE runs SET status = 'x'")]


def test_the_length_check_counts_from_def_to_the_end_and_reads_the_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    long_def = "def work():\n" + body  # 61 lines
    short_def = "def work():\n" + "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES - 1))  # 60 lines
    assert long_functions(long_def) == [("work", 1, MAX_LINES + 1)]
    assert long_functions(short_def) == []
    assert long_functions("# long: one table drawn in order\n" + long_def) == []
    assert long_functions("@decorator\n# long: one table drawn in order\n" + long_def) == []
    assert long_functions("# long:\n" + long_def) == [("work", 2, MAX_LINES + 1)]  # a reason must be given
    assert long_functions("# long: a reason far above\n\n" + long_def) == [("work", 3, MAX_LINES + 1)]
    method = "class C:\n    def work(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(MAX_LINES))
    assert long_functions(method) == [("work", 2, MAX_LINES + 1)]
