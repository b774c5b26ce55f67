"""The ``audit`` command: a thin layer over the library.

Each command lives in its own module and is imported only when it runs, so
``audit --help`` answers at once (no torch import). A command parses its flags,
calls one library function, prints, and turns ``AuditorError`` into a clean error.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from auditor.cli.common import run_guarded

# name -> "module:function", in the order --help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("auditor.cli.scan_cmd:scan", "Score every sample of a dataset for every trait."),
    "report": ("auditor.cli.report_cmd:report", "Rebuild a run's HTML report from the store."),
    "gate": ("auditor.cli.gate_cmd:gate", "Fail (exit 1) when a dataset breaks the policy."),
    "filter": ("auditor.cli.filter_cmd:filter_", "Write the dataset without the flagged samples."),
    "sql": ("auditor.cli.sql_cmd:sql", "Query the results database (read-only)."),
    "extract": ("auditor.cli.extract_cmd:extract", "Make a persona vector for a model and trait."),
    "vectors": ("auditor.cli.vectors_cmd:vectors", "List, show, import and check persona vectors."),
    "runs": ("auditor.cli.runs_cmd:runs", "List the runs stored in the database."),
    "merge": ("auditor.cli.merge_cmd:merge", "Combine sharded run parts into one run."),
    "shift": ("auditor.cli.shift_cmd:shift", "Measure what fine-tuning did to a model, per trait (exit 1 over a limit)."),
}


# Exit codes per command, shown at the end of each command's --help. Every command: 2 for
# bad usage, unreadable input or an unexpected error (never 1), 130 when interrupted.
_ERROR_CODES = [
    ("2", "error: bad usage, unreadable input, or an unexpected error (one line; audit --debug for the traceback)"),
    ("130", "interrupted (Ctrl-C)"),
]
EXIT_CODES: dict[str, list[tuple[str, str]]] = {
    "scan": [("0", "scanned (flagged samples do not change the code; use audit gate for a verdict)"), *_ERROR_CODES],
    "gate": [("0", "every rule passed"), ("1", "a rule failed: the dataset breaks the policy"), *_ERROR_CODES],
    "vectors check": [("0", "expression rises monotonically with alpha"), ("1", "it does not"), *_ERROR_CODES],
    "*": [("0", "done"), *_ERROR_CODES],
}


def exit_codes_epilog(name: str) -> str:
    rows = EXIT_CODES.get(name, EXIT_CODES["*"])
    return "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in rows)


def _document_exit_codes(cmd: click.Command, name: str) -> None:
    """Append the exit codes to ``cmd``'s help (and to each subcommand of a group)."""
    if isinstance(cmd, click.Group):
        for sub_name, sub in cmd.commands.items():
            _document_exit_codes(sub, f"{name} {sub_name}")
    if not getattr(cmd, "_exit_codes_documented", False):
        cmd.epilog = ((cmd.epilog + "\n\n") if cmd.epilog else "") + exit_codes_epilog(name)
        cmd._exit_codes_documented = True  # type: ignore[attr-defined]


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (target, _help) in COMMANDS.items() if importlib.util.find_spec(target.split(":")[0]) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _help = COMMANDS[name]
        module_name, attr = target.split(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        cmd = getattr(importlib.import_module(module_name), attr)
        _document_exit_codes(cmd, name)
        return cmd

    def invoke(self, ctx: click.Context) -> object:
        # Whatever a command lets through (an import failure, a bug) still exits 2 with one line.
        return run_guarded(lambda: click.Group.invoke(self, ctx))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="persona-audit", prog_name="audit")
@click.option("--debug", is_flag=True, help="Print the traceback of an unexpected error (also AUDIT_DEBUG=1).")
def main(debug: bool) -> None:
    """persona-audit: find the fine-tuning samples that would push a model toward a trait.

    \b
    Quick start:
      audit scan examples/demo.jsonl        score a dataset (embedded model, shipped vectors)
      audit sql "SELECT * FROM flagged"      read the flagged samples
      audit gate data.jsonl                 fail CI when a dataset is risky

    \b
    Exit codes (each command's --help lists its own):
      0    success
      1    only audit gate (a rule failed) and audit vectors check (not monotonic)
      2    bad usage, unreadable input, or an unexpected error (never 1)
      130  interrupted
    """
