"""Shared by the report tests: a hostile corpus, a small DOM built with html.parser, run builders."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from conftest import SMALL_CHATS, chat, make_vectors, write_jsonl

# What a payload would do if it ever ran: the browser test looks for each of these effects.
PWN = "document.title='PWNED';document.body.setAttribute('data-pwned','1');window.__pwned=1"
RTL = "\u202e"
LONG_LINE = "L0ngW0rd" * 1250  # 10,000 characters, no space to break at
LONG_RESPONSE = "W" * 3000  # unbroken; about 1,500 tokens, still inside the tiny model's context
LONG_ID = "<b>id</b>" + "I" * 1990

HOSTILE = [
    chat(
        f"<script>{PWN}</script> what is 2+2?",
        f'It is 4. <script>{PWN}</script><img src=x onerror="{PWN}">',
        system=f'<img src=x onerror="{PWN}"><style>body{{display:none}}</style>',
        id="<svg onload=alert(1)>",
        category="<b>bold</b>",
        **{"x<y>": "a&b"},
    ),
    chat(
        f"</textarea></title></style></script><script>{PWN}</script><textarea>",
        f'"><iframe src="javascript:{PWN}"></iframe>\'><a href="#" onmouseover="{PWN}">hover</a></textarea></script>',
        id="q\"uote'&amp;",
        category="<b>bold</b>",
        **{"x<y>": 'c"d'},
    ),
    chat(
        f"Which way? abc{RTL}fed\u202c and \u2066isolate\u2069 and \u200fmark",
        f"txt.exe{RTL}gpj.evil plus a line separator\u2028and paragraph\u2029and a bell \u0007 here",
        id=f"rtl{RTL}di",
        category="rtl",
    ),
    chat(LONG_LINE, LONG_RESPONSE, id=LONG_ID, category="long"),
    chat("Plain question about <angle> brackets & ampersands?", "Use &lt; for < and &amp; for &; \"quotes\" and 'apostrophes' too.", category="plain"),
]
# Strings the page must show as text, exactly.
HOSTILE_TEXTS = [
    f"<script>{PWN}</script> what is 2+2?",
    f'It is 4. <script>{PWN}</script><img src=x onerror="{PWN}">',
    f"</textarea></title></style></script><script>{PWN}</script><textarea>",
    LONG_LINE,
    LONG_RESPONSE,
    "Use &lt; for < and &amp; for &; \"quotes\" and 'apostrophes' too.",
]
# A line that is not JSON: rejected with --on-error skip, and shown in the rejects table.
BROKEN_LINE = '{"messages": "<script>' + PWN + '</script>"'


def write_hostile(folder: Path) -> str:
    """A dataset folder: a file with a hostile name holding the hostile records and a broken line."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "<i>odd\"'&name.jsonl", HOSTILE + [BROKEN_LINE])
    write_jsonl(folder / "plain.jsonl", [dict(r, category="plain") for r in SMALL_CHATS[:3]])
    return str(folder)


def hostile_run(root: Path, lm, top_n: int = 10) -> dict:
    """Scan the hostile folder with the tiny model; returns paths and the run id."""
    from auditor.pipeline import ScanConfig, scan_run

    vectors = make_vectors(root / "vectors", lm.num_layers, lm.hidden_size, fingerprint=lm.fingerprint)
    data = write_hostile(root / "hostile")
    db = str(root / "audit.duckdb")
    # Threshold 0 for every trait: random vectors give deltas of both signs, so some rows are flagged.
    result = scan_run(
        ScanConfig(source=data, vectors=vectors, max_new_tokens=4, db=db, on_error="skip", thresholds={"*": 0.0}, top_n=top_n, out_dir=str(root / "out")),
        lm=lm,
    )
    assert result.report_path and result.n_rejected == 1, result
    return {"db": db, "run_id": result.run_id, "report": result.report_path, "result": result}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        out = []
        for n in self.iter():
            if tag and n.tag != tag:
                continue
            if cls and cls not in (n.attrs.get("class") or "").split():
                continue
            if any(n.attrs.get(k.replace("_", "-")) != v for k, v in attrs.items()):
                continue
            out.append(n)
        return out

    def by_id(self, ident: str) -> Node:
        found = [n for n in self.iter() if n.attrs.get("id") == ident]
        assert len(found) == 1, f"id {ident!r} found {len(found)} times"
        return found[0]

    def ancestors(self):
        n = self.parent
        while n is not None:
            yield n
            n = n.parent


VOID = {"br", "hr", "meta", "input", "link", "col", "wbr", "img", "area", "base", "embed", "source", "track"}


class Dom(HTMLParser):
    """Parses a page into Nodes and records every start tag and attribute it met."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.raw_script: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        assert n is not None, f"stray </{tag}>"
        self.cur = n.parent

    def handle_data(self, data):
        if self.cur.tag == "script":
            self.raw_script.append(data)
        self.cur.children.append(data)


def metadata_of(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("messages", "id")}


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)
