"""Chat formats: turn one raw record (a dict) into Samples.

Recognised automatically, or forced with ``--format``:

- ``messages``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (OpenAI style)
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}``
- ``alpaca``: ``{"instruction", "input"?, "output"}``
- ``prompt-response``: ``prompt``/``response``, ``prompt``/``completion``,
  ``question``/``answer`` (optional ``system``)

With ``auto`` each record is recognised on its own, so one file may mix formats (a
concatenation of datasets is common and every record says what it is). A forced
``--format`` rejects every record that is not in that format, naming file and line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from auditor.errors import InputError
from auditor.sources.readers import file_type
from auditor.sources.sample import Sample

FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt-response")

_PAIR_KEYS = (("prompt", "response"), ("prompt", "completion"), ("question", "answer"))
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bing": "assistant",
    "system": "system",
}
_ROLES = ("system", "user", "assistant")
# Fields consumed by a format; everything else is kept as metadata.
_FORMAT_FIELDS = {
    "messages": {"messages"},
    "sharegpt": {"conversations"},
    "alpaca": {"instruction", "input", "output", "system"},
    "prompt-response": {"prompt", "response", "completion", "question", "answer", "system"},
}
FORMAT_HELP = (
    "use --format messages|sharegpt|alpaca|prompt-response, or give each record 'messages', 'conversations', 'instruction'/'output' or 'prompt'/'response'"
)


def detect_format(record: dict[str, Any]) -> str | None:
    """Name of the format a record is in, or None."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    for p, r in _PAIR_KEYS:
        if p in record and r in record:
            return "prompt-response"
    return None


def _text(value: Any, source: str, line: int, what: str) -> str:
    """Message content as text; OpenAI content-part lists are joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        parts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if all(isinstance(p, str) for p in parts) and parts:
            return "".join(parts)
    raise InputError(source, line, f"{what} is {type(value).__name__}, not text", "make it a string")


def _messages(record: dict, fmt: str, source: str, line: int) -> list[dict[str, str]]:
    if fmt == "messages":
        raw = record["messages"]
        if not isinstance(raw, list):
            raise InputError(source, line, "'messages' is not a list", "give a list of {role, content} objects")
        out = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise InputError(source, line, f"message {i} {_lacks(m, ('role', 'content'))}", 'write each message as {"role": ..., "content": ...}')
            role = m["role"]
            if role not in _ROLES:
                raise InputError(source, line, f"message {i} has role {role!r}", "use one of system, user, assistant")
            out.append({"role": role, "content": _text(m["content"], source, line, f"message {i} content")})
        return out
    if fmt == "sharegpt":
        raw = record["conversations"]
        if not isinstance(raw, list):
            raise InputError(source, line, "'conversations' is not a list", "give a list of {from, value} objects")
        out = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or "from" not in m or "value" not in m:
                raise InputError(source, line, f"conversation turn {i} {_lacks(m, ('from', 'value'))}", 'write each turn as {"from": ..., "value": ...}')
            role = _SHAREGPT_ROLES.get(str(m["from"]).lower())
            if role is None:
                raise InputError(source, line, f"conversation turn {i} is from {m['from']!r}", "use human, gpt or system")
            out.append({"role": role, "content": _text(m["value"], source, line, f"turn {i} value")})
        return out
    if fmt == "alpaca":
        instruction = _text(record["instruction"], source, line, "'instruction'")
        extra = record.get("input") or ""
        user = instruction if not extra else f"{instruction}\n\n{_text(extra, source, line, 'input')}"
        msgs = [{"role": "system", "content": _text(record["system"], source, line, "'system'")}] if record.get("system") else []
        return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], source, line, "'output'")}]
    if fmt == "prompt-response":
        for p, r in _PAIR_KEYS:
            if p in record and r in record:
                msgs = [{"role": "system", "content": _text(record["system"], source, line, "'system'")}] if record.get("system") else []
                return msgs + [
                    {"role": "user", "content": _text(record[p], source, line, f"'{p}'")},
                    {"role": "assistant", "content": _text(record[r], source, line, f"'{r}'")},
                ]
        raise InputError(source, line, "no prompt/response pair", "give 'prompt' and 'response' (or 'completion'), or 'question' and 'answer'")
    raise InputError(source, line, f"unknown format {fmt!r}", FORMAT_HELP)


def record_to_samples(
    record: Any,
    source: str,
    line: int,
    fmt: str = "auto",
    score_all_turns: bool = False,
) -> Iterator[Sample]:
    """Samples of one record: the final assistant message, or every assistant turn.

    Raises InputError naming ``source:line`` for anything unusable.
    """
    if not isinstance(record, dict):
        raise InputError(source, line, f"record is a {type(record).__name__}, not an object", "write one JSON object per line")
    use = detect_format(record) if fmt == "auto" else fmt
    if use is None:
        names = sorted(map(str, record))
        keys = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") if names else "none"
        # Tabular sources (Parquet, CSV, hub datasets) have columns: say so, it is what the user sees.
        noun = "columns" if source.startswith("hf:") or file_type(source) in ("parquet", "csv") else "fields"
        raise InputError(source, line, f"unknown format ({noun}: {keys})", FORMAT_HELP)
    if fmt != "auto" and not _has_fields(record, fmt):
        raise InputError(source, line, f"record lacks the fields of the {fmt} format", FORMAT_HELP)
    msgs = _messages(record, use, source, line)
    assistant_at = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if not assistant_at:
        raise InputError(source, line, "no assistant message", "add the assistant's reply as the last message (without one there is nothing to score)")
    if assistant_at[-1] != len(msgs) - 1:
        raise InputError(
            source, line, f"the last message is from {msgs[-1]['role']!r}, not the assistant", "end each conversation with the assistant reply to score"
        )
    record_id = record.get("id")
    base_id = str(record_id) if isinstance(record_id, (str, int)) and not isinstance(record_id, bool) else f"{_short(source)}:{line}"
    metadata = {k: v for k, v in record.items() if k not in _FORMAT_FIELDS[use] and k != "id" and _scalar(v)}
    targets = assistant_at if score_all_turns else assistant_at[-1:]
    for turn_index, pos in enumerate(assistant_at):
        if pos not in targets:
            continue
        response = msgs[pos]["content"]
        if not response.strip():
            raise InputError(
                source,
                line,
                "the assistant response is empty" if not response else "the assistant response is only whitespace",
                "remove the record or give it a response (--on-error skip records it as rejected)",
            )
        yield Sample(
            id=f"{base_id}#t{turn_index}" if score_all_turns else base_id,
            context=tuple(msgs[:pos]),
            response=response,
            source=source,
            line=line,
            turn=turn_index,
            metadata=metadata,
        )


def _lacks(item: Any, keys: tuple[str, str]) -> str:
    """``has no 'role'`` / ``has no 'role' and no 'content'`` / ``is a str, not an object``."""
    if not isinstance(item, dict):
        return f"is a {type(item).__name__}, not an object"
    return "has no " + " and no ".join(repr(k) for k in keys if k not in item)


def _has_fields(record: dict, fmt: str) -> bool:
    if fmt == "messages":
        return "messages" in record
    if fmt == "sharegpt":
        return "conversations" in record
    if fmt == "alpaca":
        return "instruction" in record and "output" in record
    if fmt == "prompt-response":
        return any(p in record and r in record for p, r in _PAIR_KEYS)
    return False


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _short(source: str) -> str:
    return source.replace("\\", "/").rsplit("/", 1)[-1]
