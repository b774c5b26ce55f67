"""The one unit of work that flows through every stage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from auditor.errors import InputError


@dataclass(frozen=True, slots=True)
class Sample:
    """One scored response and the conversation before it.

    ``context`` is every message before the scored assistant message (system
    message included), as ``{"role", "content"}`` dicts; ``response`` is that
    assistant message's text. ``source``/``line`` say where it came from
    (file path and 1-based line, or row for tabular files); ``turn`` is the
    index of the scored assistant message among the conversation's assistant
    messages (0 unless ``--score-all-turns``).

    A preference pair (``--format preference``) is one Sample: ``response`` is the chosen
    answer and ``rejected`` the rejected one, both after the same ``context``; ``rejected``
    is None for every other format.
    """

    id: str
    context: tuple[dict[str, str], ...]
    response: str
    source: str
    line: int
    turn: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    rejected: str | None = None

    @property
    def is_pair(self) -> bool:
        return self.rejected is not None

    @property
    def content_hash(self) -> str:
        """sha256 of the context and response (and rejected response): equal text gives an equal hash."""
        texts = [list(self.context), self.response] + ([self.rejected] if self.rejected is not None else [])
        payload = json.dumps(texts, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not become a Sample, with the reason (an InputError message)."""

    source: str
    line: int | None
    reason: str
    error: InputError | None = None

    @classmethod
    def of(cls, error: InputError) -> Rejected:
        return cls(error.source, error.line, str(error), error)
