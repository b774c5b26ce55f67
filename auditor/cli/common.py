"""Pieces shared by the commands: error handling, option parsing helpers."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from auditor.errors import AuditorError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn AuditorError into ``Error: ...`` and its exit code (2), Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditorError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper


def parse_pairs(values: tuple[str, ...], option: str, cast: Callable[[str], Any] = float) -> dict[str, Any]:
    """``("evil=20", "sycophancy=18")`` -> dict; a bare value applies to every trait as ``*``."""
    out: dict[str, Any] = {}
    for value in values:
        if "=" in value:
            key, raw = value.split("=", 1)
        else:
            key, raw = "*", value
        try:
            out[key.strip()] = cast(raw)
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected TRAIT=NUMBER or NUMBER", param_hint=option) from None
    return out


def split_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]
