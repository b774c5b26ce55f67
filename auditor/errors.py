"""Errors that reach users. Every message says what went wrong, where, and what to do."""

from __future__ import annotations


class AuditorError(Exception):
    """Base class: the CLI turns these into a clean message and exit code 2."""

    exit_code = 2


class InputError(AuditorError):
    """A dataset record cannot be read or used.

    The message always names the file and the line (or row) and the fix:
    ``data.jsonl:17: no assistant message; use --format prompt-response or add one``.
    """

    def __init__(self, source: str, line: int | None, problem: str, fix: str | None = None):
        self.source = source
        self.line = line
        self.problem = problem
        self.fix = fix
        where = f"{source}:{line}" if line is not None else source
        text = f"{where}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)

    def __reduce__(self):
        # Rejected records cross process boundaries (shards, Ray workers): keep them picklable.
        return (InputError, (self.source, self.line, self.problem, self.fix))


class TraitError(AuditorError):
    """A trait definition file is invalid (names the file and the field)."""


class VectorError(AuditorError):
    """A persona vector is missing, malformed, or made for another model."""


class ModelError(AuditorError):
    """A model cannot be found or loaded."""


class StoreError(AuditorError):
    """The results database or Parquet output cannot be read or written."""


class JudgeError(AuditorError):
    """A judge endpoint is unreachable or answered something unusable."""


class MissingDependency(AuditorError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str):
        self.args_ = (package, extra, purpose)
        super().__init__(f"{purpose} needs the '{package}' package; install it with pip install 'persona-audit[{extra}]'")

    def __reduce__(self):
        return (MissingDependency, self.args_)
