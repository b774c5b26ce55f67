"""The ``audit`` command: a thin layer over the library.

Each command lives in its own module and is imported only when it runs, so
``audit --help`` answers at once (no torch import). A command parses its flags,
calls one library function, prints, and turns ``AuditorError`` into a clean error.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

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
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="persona-audit", prog_name="audit")
def main() -> None:
    """persona-audit: find the fine-tuning samples that would push a model toward a trait.

    \b
    Quick start:
      audit scan examples/demo.jsonl        score a dataset (embedded model, shipped vectors)
      audit sql "SELECT * FROM flagged"      read the flagged samples
      audit gate data.jsonl                 fail CI when a dataset is risky
    """
