"""Building HTML safely: every string is escaped unless our own code marked it as markup.

The report is assembled from small calls to :func:`el`. A plain ``str`` child is always
sample text as far as this module knows: it is escaped with ``html.escape(quote=True)``
and its invisible control characters (bidi overrides, C0/C1 controls) are shown as
visible marks, so a training sample can neither inject markup nor silently reorder the
text around it. Attribute values are escaped the same way. Only :class:`Markup` (what
:func:`el` and the chart code return) passes through unchanged.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
# Characters that are invisible or change how the text around them is shown: C0/C1
# controls (tab, newline and carriage return excepted), directional marks, embeddings,
# overrides and isolates (the "Trojan Source" characters), line/paragraph separators,
# zero-width space, word joiner and invisible operators, byte-order mark, and the Unicode
# tag characters (used to hide instructions in text). Zero-width (non-)joiners stay: emoji
# and several scripts need them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
)
_VOID = frozenset({"br", "hr", "meta", "input", "link", "col", "wbr"})


class Markup(str):
    """A string that is already HTML (made by this module): inserted as is."""

    __slots__ = ()


Child = Any  # str, Markup, None, or an iterable of them


def attr_escape(value: str) -> str:
    return html.escape(value, quote=True)


def _control_mark(ch: str) -> str:
    code = f"U+{ord(ch):04X}"
    name = unicodedata.name(ch, "control character")
    return f'<span class="ctl" title="{attr_escape(name)}">{code}</span>'


def text(value: str) -> Markup:
    """Sample text as HTML: escaped, with invisible control characters shown as ``U+XXXX`` marks."""
    out = []
    last = 0
    for m in _INVISIBLE.finditer(value):
        out.append(html.escape(value[last : m.start()], quote=True))
        out.append(_control_mark(m.group()))
        last = m.end()
    out.append(html.escape(value[last:], quote=True))
    return Markup("".join(out))


def attr_value(value: str) -> str:
    """An attribute value: escaped, and invisible controls written as ``[U+XXXX]`` (a tooltip shows them)."""
    return attr_escape(_INVISIBLE.sub(lambda m: f"[U+{ord(m.group()):04X}]", value))


def render(child: Child) -> str:
    if child is None:
        return ""
    if isinstance(child, Markup):
        return child
    if isinstance(child, str):
        return text(child)
    if isinstance(child, (int, float)):
        raise TypeError("format numbers before putting them in the page (see auditor.report.page.fmt)")
    return "".join(render(c) for c in child)


def el(tag: str, attrs: dict[str, str | bool | None] | None = None, *children: Child) -> Markup:
    """``<tag attrs>children</tag>``; attribute values and ``str`` children are escaped."""
    if not _NAME.match(tag):
        raise ValueError(f"bad tag name {tag!r}")
    parts = [f"<{tag}"]
    for name, value in (attrs or {}).items():
        if not _NAME.match(name) or name.startswith("on"):
            # Attribute names come from our code; an event handler never belongs in the report.
            raise ValueError(f"bad attribute name {name!r}")
        if value is None or value is False:
            continue
        parts.append(f" {name}" if value is True else f' {name}="{attr_value(str(value))}"')
    parts.append(">")
    if tag in _VOID:
        return Markup("".join(parts))
    parts.append(render(list(children)))
    parts.append(f"</{tag}>")
    return Markup("".join(parts))


def join(items: Iterable[Child], sep: str = "") -> Markup:
    return Markup(html.escape(sep).join(render(i) for i in items))
