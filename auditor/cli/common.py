"""Pieces shared by the commands: error handling, option parsing helpers."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from auditor.config import split_list, trait_values  # noqa: F401 (split_list: the commands' comma lists)
from auditor.errors import AuditorError

DEBUG_ENV = "AUDIT_DEBUG"
EXIT_ERROR = 2  # bad usage, unreadable input, or an unexpected error: never 1, which gate keeps for "a rule failed"
EXIT_INTERRUPTED = 130


def debug_enabled() -> bool:
    """``audit --debug ...`` or ``AUDIT_DEBUG=1``: unexpected errors print their traceback."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and turn every failure into one line on stderr and a documented exit code.

    AuditorError: its message and its code (2). Ctrl-C: 130. Any other exception is
    unexpected: one line naming it and exit 2 (the traceback too with --debug). Click's own
    exits and usage errors (2) pass through unchanged.
    """
    try:
        return fn()
    except AuditorError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
        raise
    except KeyboardInterrupt:
        click.echo("\nInterrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if debug_enabled():
            import traceback

            traceback.print_exc(file=sys.stderr)
        text = " ".join(str(e).split())
        text = text if len(text) <= 300 else text[:299] + "…"
        hint = "" if debug_enabled() else f" (run audit --debug ..., or set {DEBUG_ENV}=1, for the traceback)"
        click.echo(f"Error: unexpected {type(e).__name__}: {text or 'no message'}{hint}", err=True)
        sys.exit(EXIT_ERROR)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command's guard: see ``run_guarded`` (AuditorError and unexpected errors exit 2, Ctrl-C 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run_guarded(lambda: fn(*args, **kwargs))

    return wrapper


def parse_pairs(values: tuple[str, ...], option: str, cast: Callable[[str], Any] = float) -> dict[str, Any]:
    """``("evil=20", "sycophancy=18")`` -> dict; a bare value applies to every trait as ``*`` (``auditor.config.trait_values``)."""
    try:
        return trait_values(values, cast)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None
