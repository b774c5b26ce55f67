"""Field and role mapping: datasets whose fields or roles are named differently from ours.

``--field prompt=question --field response=best_answer`` reads the prompt from a record's
``question`` and the response from ``best_answer``; ``--field messages=conversation`` finds
the message list under ``conversation``; ``--field role=speaker --field content=text``
renames the keys inside each message; ``--role user=human --role assistant=bot`` renames
role values. The mapping is applied to each raw record before its format is recognised,
so every format (and ``auto``) sees our names. Mapped fields are consumed like our own
names: they are not kept as metadata.

Everything here is pure: no I/O, no heavy imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from auditor.errors import AuditorError, InputError

# Our names a --field can map to. Record-level fields first, then the keys inside a message.
RECORD_FIELDS = ("prompt", "response", "system", "messages", "chosen", "rejected", "id")
MESSAGE_KEYS = ("role", "content")
FIELD_TARGETS = RECORD_FIELDS + MESSAGE_KEYS
ROLE_TARGETS = ("system", "user", "assistant")
# Mapped fields a record may lack without being an error.
_OPTIONAL = ("system", "id")
# Fields that may hold a message list (the role/content keys and role names apply inside them).
_MESSAGE_LISTS = ("messages", "conversations", "prompt", "chosen", "rejected")

# Name fragments for suggestions, most specific first. Only used to word a hint.
_HINTS = {
    "prompt": ("prompt", "question", "query", "instruction", "input", "request", "user", "human", "problem", "title"),
    "response": ("response", "answer", "completion", "output", "reply", "target", "assistant", "solution", "bot", "text"),
    "chosen": ("chosen", "preferred", "accepted", "better", "good", "winner", "positive"),
    "rejected": ("rejected", "dispreferred", "worse", "bad", "loser", "negative"),
}
_ROLE_HINTS = {
    "user": ("user", "human", "person", "customer", "client", "prompter", "question", "questioner", "patient", "student"),
    "assistant": ("assistant", "bot", "gpt", "model", "ai", "agent", "chatbot", "answer", "answerer", "helper", "doctor", "teacher"),
    "system": ("system", "sys", "instruction", "instructions"),
}


class MappingError(AuditorError):
    """A --field or --role option (or the policy file's [scan] table) is malformed."""


@dataclass(frozen=True)
class FieldMap:
    """Our field name -> the dataset's, and our role name -> the dataset's."""

    fields: tuple[tuple[str, str], ...] = ()
    roles: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(
        cls,
        fields: Iterable[str] | Mapping[str, str] | None = None,
        roles: Iterable[str] | Mapping[str, str] | None = None,
        origin: str = "--field",
        role_origin: str = "--role",
    ) -> FieldMap:
        """From ``["prompt=question", ...]`` (the CLI) or ``{"prompt": "question"}`` (Python, TOML)."""
        f = _pairs(fields, FIELD_TARGETS, origin, "field")
        r = _pairs(roles, ROLE_TARGETS, role_origin, "role")
        actual = list(r.values())
        if len(set(actual)) != len(actual):
            raise MappingError(f"{role_origin}: one dataset role is mapped to two of ours ({', '.join(sorted(actual))})")
        return cls(tuple(sorted(f.items())), tuple(sorted(r.items())))

    def merged(self, override: FieldMap) -> FieldMap:
        """This mapping with ``override``'s entries replacing ours name by name (flags over the policy file)."""
        return FieldMap(
            tuple(sorted({**dict(self.fields), **dict(override.fields)}.items())), tuple(sorted({**dict(self.roles), **dict(override.roles)}.items()))
        )

    def __bool__(self) -> bool:
        return bool(self.fields or self.roles)

    def describe(self) -> dict[str, dict[str, str]]:
        """JSON-able form, stored with a run's config (and accepted back by :meth:`from_config`)."""
        return {"fields": dict(self.fields), "roles": dict(self.roles)}

    @classmethod
    def from_config(cls, value: Any) -> FieldMap:
        """The inverse of :meth:`describe`; ``None`` or ``{}`` is the empty mapping."""
        if isinstance(value, FieldMap):
            return value
        value = value or {}
        return cls.parse(value.get("fields"), value.get("roles"))

    def apply(self, record: Any, source: str, line: int | None) -> Any:
        """The record with our names; non-dict records pass through (the format reports them)."""
        if not self or not isinstance(record, dict):
            return record
        fields = dict(self.fields)
        out = dict(record)
        for ours, theirs in fields.items():
            if ours in MESSAGE_KEYS or ours == theirs:
                continue
            if theirs not in record:
                if ours in _OPTIONAL:
                    continue
                raise InputError(
                    source, line, f"no field {theirs!r} (--field {ours}={theirs}); the record has {describe_keys(record)}", "check the name, or change --field"
                )
            if ours in record and ours not in fields.values():
                raise InputError(
                    source,
                    line,
                    f"the record has both {ours!r} and {theirs!r} (--field {ours}={theirs})",
                    f"map {ours} to one of them, or rename the other field",
                )
            out.pop(theirs)
        for ours, theirs in fields.items():
            if ours not in MESSAGE_KEYS and theirs in record:
                out[ours] = record[theirs]
        if self.roles or any(k in fields for k in MESSAGE_KEYS):
            for name in _MESSAGE_LISTS:
                if isinstance(out.get(name), list):
                    out[name] = [self._message(m) for m in out[name]]
                elif isinstance(out.get(name), dict):
                    out[name] = self._message(out[name])
        return out

    def _message(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        fields = dict(self.fields)
        out = dict(message)
        for key in MESSAGE_KEYS:
            theirs = fields.get(key)
            if theirs and theirs != key and theirs in message:
                out.pop(theirs)
                out[key] = message[theirs]
        for key in ("role", "from"):  # "from": ShareGPT turns
            if key in out:
                ours = {theirs: ours for ours, theirs in self.roles}.get(str(out[key]))
                if ours is not None:
                    out[key] = ours
        return out


def _pairs(values: Iterable[str] | Mapping[str, str] | None, allowed: tuple[str, ...], origin: str, noun: str) -> dict[str, str]:
    if not values:
        return {}
    items = list(values.items()) if isinstance(values, Mapping) else [_split(v, origin, noun) for v in values]
    out: dict[str, str] = {}
    for ours, theirs in items:
        if ours not in allowed:
            raise MappingError(f"{origin} {ours}={theirs}: {ours!r} is not one of ours; map one of {', '.join(allowed)}")
        if not isinstance(theirs, str) or not theirs:
            raise MappingError(f"{origin} {ours}: give the dataset's {noun} name as text, e.g. {origin} {ours}=NAME")
        if ours in out and out[ours] != theirs:
            raise MappingError(f"{origin} {ours} is given twice ({out[ours]!r} and {theirs!r}); keep one")
        out[ours] = theirs
    return out


def _split(value: str, origin: str, noun: str) -> tuple[str, str]:
    ours, sep, theirs = str(value).partition("=")
    if not sep or not ours.strip() or not theirs.strip():
        example = "prompt=question" if noun == "field" else "user=human"
        raise MappingError(f"{origin} {value!r}: write OURS=THEIRS, e.g. {origin} {example}")
    return ours.strip(), theirs.strip()


def describe_keys(record: Mapping[str, Any], limit: int = 8) -> str:
    """``fields 'a', 'b' and 3 more`` for error messages."""
    names = [str(k) for k in record]
    if not names:
        return "no fields"
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"fields {shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _pick(names: list[str], fragments: tuple[str, ...], taken: set[str]) -> str | None:
    for fragment in fragments:
        for name in names:
            if name not in taken and fragment in name.lower():
                return name
    return None


def suggest_mapping(record: Mapping[str, Any]) -> str | None:
    """A guess at the --field/--role options for a record we did not recognise, or None.

    Only a hint for the error message: it never changes how a record is read.
    """
    names = [str(k) for k in record]
    lists = [n for n in names if _is_message_list(record[n])]
    texts = [n for n in names if isinstance(record[n], str)]
    if lists:
        candidates = [n for n in lists if n not in ("messages", "conversations")] or lists
        key = candidates[0]
        parts = [] if key == "messages" else [f"--field messages={key}"]
        messages = record[key]
        keys = set().union(*(m.keys() for m in messages))
        role_key = "role" if "role" in keys else _pick(sorted(keys), ("role", "from", "speaker", "author", "sender", "type"), set())
        content_key = "content" if "content" in keys else _pick(sorted(keys), ("content", "value", "text", "message", "body", "utterance"), {role_key or ""})
        if role_key and role_key != "role":
            parts.append(f"--field role={role_key}")
        if content_key and content_key != "content":
            parts.append(f"--field content={content_key}")
        if role_key:
            values = sorted({str(m.get(role_key)) for m in messages if m.get(role_key) is not None})
            for value in values:
                if value in ROLE_TARGETS:
                    continue
                ours = next((r for r, hints in _ROLE_HINTS.items() if value.lower() in hints), None)
                if ours:
                    parts.append(f"--role {ours}={value}")
        return " ".join(parts) or None
    taken: set[str] = set()
    found: dict[str, str] = {}
    for ours in ("chosen", "rejected", "prompt", "response"):
        if ours in ("response",) and "chosen" in found:
            break
        name = _pick(texts, _HINTS[ours], taken)
        if name:
            found[ours] = name
            taken.add(name)
    if "chosen" in found and "rejected" not in found:
        found.pop("chosen")
    if "chosen" not in found and not ("prompt" in found and "response" in found):
        return None
    return " ".join(f"--field {ours}={theirs}" for ours, theirs in found.items() if ours != theirs) or None


def suggest_role(role: str) -> str | None:
    """``--role user=human`` for a role value we do not know, when its name says which it is."""
    ours = next((r for r, hints in _ROLE_HINTS.items() if str(role).lower() in hints), None)
    return f"--role {ours}={role}" if ours else None


def mapping_from_policy(table: Mapping[str, Any] | None, origin: str) -> FieldMap:
    """The ``fields``/``roles`` tables of a policy file's ``[scan]`` table (empty when absent)."""
    table = table or {}
    unknown = sorted(set(table) - {"fields", "roles"})
    if unknown:
        raise MappingError(f'{origin}: [scan] holds {", ".join(unknown)}; it knows fields and roles (e.g. [scan.fields] prompt = "question")')
    for key in ("fields", "roles"):
        if key in table and not isinstance(table[key], Mapping):
            example = 'prompt = "question"' if key == "fields" else 'user = "human"'
            raise MappingError(f"{origin}: [scan] {key} must be a table, e.g. [scan.{key}] {example}")
    return FieldMap.parse(table.get("fields"), table.get("roles"), origin=f"{origin} [scan.fields]", role_origin=f"{origin} [scan.roles]")
