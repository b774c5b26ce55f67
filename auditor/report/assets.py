"""The report's stylesheet and script, inlined into every page.

The page's Content-Security-Policy allows exactly these two blocks (by hash) and nothing
else: no network, no other script, no inline event handler. So even if some sample text
escaped escaping, a browser would refuse to run it or fetch anything.
"""

from __future__ import annotations

import base64
import hashlib

CSS = """
:root {
  color-scheme: light dark;
  --bg: #ffffff; --bg2: #f6f8fa; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0;
  --accent: #0969da; --flag: #cf222e; --flag-bg: #ffebe9; --ok: #1a7f37; --bar: #8c959f;
  --hot: 207, 34, 46; --cold: 9, 105, 218; --cal: #8250df; --code: #eff2f5;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --bg2: #151b23; --fg: #e6edf3; --muted: #9198a1; --line: #3d444d;
    --accent: #4493f8; --flag: #ff7b72; --flag-bg: #3c1618; --ok: #3fb950; --bar: #6e7681;
    --hot: 248, 81, 73; --cold: 56, 139, 253; --cal: #ab7df8; --code: #1f2630;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 0 24px 48px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
h1 { font-size: 22px; margin: 0; line-height: 1.3; overflow-wrap: anywhere; }
h2 { font-size: 19px; margin: 0; }
h3 { font-size: 15px; margin: 24px 0 8px; }
h4 { font-size: 13px; margin: 0 0 6px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.num { font-variant-numeric: tabular-nums; text-align: right; white-space: nowrap; }
.muted { color: var(--muted); }
.small { font-size: 12px; }
header.top { border-bottom: 1px solid var(--line); background: var(--bg2); margin-bottom: 20px; }
header.top .inner { max-width: 1240px; margin: 0 auto; padding: 16px 24px 12px; }
.brand { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .06em; }
.runid { color: var(--muted); margin-top: 2px; }
dl.meta { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 6px 24px; margin: 12px 0 0; font-size: 13px; }
dl.meta div { min-width: 0; }
dl.meta dt { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
nav.toc { position: sticky; top: 0; z-index: 5; background: var(--bg); border-bottom: 1px solid var(--line);
  padding: 8px 0; margin-bottom: 8px; display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 13px; }
nav.toc a.flagged::after { content: " \\25CF"; color: var(--flag); }
section { margin: 28px 0 0; scroll-margin-top: 48px; }
.sechead { display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; border-bottom: 2px solid var(--line); padding-bottom: 6px; margin-bottom: 14px; }
.sechead .sub { color: var(--muted); font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin-bottom: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--bg2); min-width: 0; }
.card .label { font-size: 11.5px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; line-height: 1.3; }
.card .note { font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.card.alert { border-color: var(--flag); }
.card.alert .value { color: var(--flag); }
.chart { border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px 4px; margin-bottom: 14px; }
svg.hist { width: 100%; height: auto; display: block; font-size: 12px; }
svg.hist .bar { fill: var(--bar); }
svg.hist .bar.over { fill: var(--flag); }
svg.hist .bar:hover { opacity: .75; }
svg.hist .grid { stroke: var(--line); stroke-dasharray: 2 3; }
svg.hist .axisline, svg.hist .tick { stroke: var(--muted); }
svg.hist .axis { fill: var(--muted); }
svg.hist line.mark { stroke-width: 1.5; stroke-dasharray: 5 3; }
svg.hist line.thr { stroke: var(--flag); }
svg.hist text.thr { fill: var(--flag); }
svg.hist line.mean { stroke: var(--accent); }
svg.hist text.mean { fill: var(--accent); }
svg.hist line.cal { stroke: var(--cal); }
svg.hist text.cal { fill: var(--cal); }
svg.ratebar { width: 60px; height: 8px; vertical-align: middle; margin-left: 6px; }
svg.ratebar .track { fill: var(--line); }
svg.ratebar .fill { fill: var(--flag); }
.tools { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; margin: 6px 0 8px; font-size: 13px; }
.tools input[type=search] { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg); color: var(--fg); min-width: 240px; }
.tools label { display: inline-flex; gap: 5px; align-items: center; }
.tools .count { color: var(--muted); }
.tools button, .linkbtn { font: inherit; font-size: 12.5px; padding: 3px 10px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg2); color: var(--fg); cursor: pointer; }
.tablewrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; text-align: left; }
tbody tr:last-child > * { border-bottom: 0; }
td.pos a { color: var(--flag); }
thead th { background: var(--bg2); font-weight: 600; white-space: nowrap; position: sticky; top: 0; }
th button { all: unset; cursor: pointer; }
th button:focus-visible { outline: 2px solid var(--accent); }
th[aria-sort=ascending] button::after { content: " \\25B2"; font-size: 9px; }
th[aria-sort=descending] button::after { content: " \\25BC"; font-size: 9px; }
tbody tr:hover { background: var(--bg2); }
tr.isflagged td.rank { box-shadow: inset 3px 0 0 var(--flag); }
td.excerpt { min-width: 260px; max-width: 520px; overflow-wrap: anywhere; color: var(--muted); }
td.id { max-width: 220px; overflow-wrap: anywhere; }
td.where { max-width: 220px; overflow-wrap: anywhere; }
td.key { min-width: 200px; max-width: 420px; overflow-wrap: anywhere; }
summary .excerpt { flex: 1 1 200px; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-size: 12.5px; }
.pill { display: inline-block; font-size: 11px; padding: 0 7px; border-radius: 10px; border: 1px solid var(--line); white-space: nowrap; }
.pill.flag { color: var(--flag); border-color: var(--flag); background: var(--flag-bg); }
.pos { color: var(--flag); }
.neg { color: var(--accent); }
details.sample { border: 1px solid var(--line); border-radius: 8px; margin: 8px 0; scroll-margin-top: 48px; }
details.sample[open] { box-shadow: 0 1px 6px rgba(0,0,0,.08); }
details.sample > summary { cursor: pointer; padding: 8px 12px; display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap;
  background: var(--bg2); border-radius: 8px; list-style-position: inside; }
details.sample > summary .id { font-weight: 600; overflow-wrap: anywhere; min-width: 0; }
details.sample:target > summary, details.sample.hl > summary { outline: 2px solid var(--accent); }
.detail { padding: 12px 14px 14px; }
.scorechips { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 10px; }
.chip { font-size: 12px; border: 1px solid var(--line); border-radius: 6px; padding: 1px 8px; }
.chip.flag { border-color: var(--flag); color: var(--flag); }
.chip.this { font-weight: 600; }
.msgs { display: flex; flex-direction: column; gap: 6px; margin-bottom: 12px; }
.msg { border-left: 3px solid var(--line); padding: 2px 10px; }
.msg.system { border-left-color: var(--cal); }
.msg.user { border-left-color: var(--accent); }
.role { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
.txt { white-space: pre-wrap; overflow-wrap: anywhere; unicode-bidi: plaintext; margin: 0; }
.facts { overflow-wrap: anywhere; margin: 0 0 10px; }
.msg .txt { max-height: 22em; overflow-y: auto; }
/* Long plain text scrolls in its box; the heat map does not (its hover labels would be clipped). */
.panel .txt { max-height: 36em; overflow-y: auto; }
.chip { max-width: 100%; overflow-wrap: anywhere; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 14px; }
@media (max-width: 860px) { .pair { grid-template-columns: minmax(0, 1fr); } }
.panel { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; min-width: 0; }
.panel.base { background: var(--bg2); }
.hm { white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.85; unicode-bidi: plaintext; }
.hm > span { position: relative; border-radius: 3px; padding: 1px 0; }
.hm > span:hover { outline: 1px solid var(--fg); }
.hm > span:hover::after { content: attr(data-v); position: absolute; left: 0; bottom: 100%; z-index: 3; white-space: nowrap;
  font: 11px/1.4 ui-monospace, Menlo, Consolas, monospace; background: var(--fg); color: var(--bg); padding: 1px 6px; border-radius: 4px; pointer-events: none; }
.hm .nl { color: var(--muted); font-size: 10px; user-select: none; }
.p1 { background: rgba(var(--hot), .08); } .p2 { background: rgba(var(--hot), .16); } .p3 { background: rgba(var(--hot), .24); }
.p4 { background: rgba(var(--hot), .32); } .p5 { background: rgba(var(--hot), .40); } .p6 { background: rgba(var(--hot), .48); }
.p7 { background: rgba(var(--hot), .56); } .p8 { background: rgba(var(--hot), .64); } .p9 { background: rgba(var(--hot), .72); }
.p10 { background: rgba(var(--hot), .80); }
.n1 { background: rgba(var(--cold), .08); } .n2 { background: rgba(var(--cold), .16); } .n3 { background: rgba(var(--cold), .24); }
.n4 { background: rgba(var(--cold), .32); } .n5 { background: rgba(var(--cold), .40); } .n6 { background: rgba(var(--cold), .48); }
.n7 { background: rgba(var(--cold), .56); } .n8 { background: rgba(var(--cold), .64); } .n9 { background: rgba(var(--cold), .72); }
.n10 { background: rgba(var(--cold), .80); }
.legend { font-size: 11.5px; color: var(--muted); margin-top: 10px; }
.legend .row { display: flex; flex-wrap: wrap; align-items: center; gap: 4px 6px; margin-bottom: 2px; }
.legend .row span { white-space: nowrap; }
.legend .scale { flex: none; }
.legend .scale { display: inline-flex; border-radius: 3px; overflow: hidden; border: 1px solid var(--line); }
.legend .scale span { width: 10px; height: 12px; }
.ctl { font: 10px/1 ui-monospace, Menlo, Consolas, monospace; border: 1px solid var(--flag); color: var(--flag); border-radius: 3px;
  padding: 0 2px; margin: 0 1px; unicode-bidi: isolate; }
bdi { unicode-bidi: isolate; }
.plain { margin-top: 8px; font-size: 12.5px; }
.plain summary { cursor: pointer; color: var(--muted); }
.backlink { font-size: 12.5px; margin-top: 10px; display: inline-block; }
.tablewrap.fit { display: inline-block; max-width: 100%; }
.tablewrap.fit table { width: auto; }
.matrix td, .matrix th { text-align: right; min-width: 90px; }
.matrix th:first-child { text-align: left; }
.empty { color: var(--muted); font-style: italic; padding: 8px 0; }
footer { margin-top: 40px; padding-top: 12px; border-top: 1px solid var(--line); color: var(--muted); font-size: 12px; }
@media print { nav.toc { position: static; } details.sample { break-inside: avoid; } }
""".strip()

JS = """
(function () {
  "use strict";
  function key(cell, numeric) {
    if (!cell) return null;
    if (numeric) {
      var v = cell.getAttribute("data-v");
      if (v === null || v === "") return null;
      var f = parseFloat(v);
      return isNaN(f) ? null : f;
    }
    return (cell.getAttribute("data-v") || cell.textContent || "").toLowerCase();
  }
  function sortTable(table, th, col) {
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var dir = current ? (current === "descending" ? 1 : -1) : (numeric ? -1 : 1);
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.map.call(body.rows, function (r, i) { return [key(r.cells[col], numeric), i, r]; });
    rows.sort(function (a, b) {
      if (a[0] === null && b[0] === null) return a[1] - b[1];
      if (a[0] === null) return 1;
      if (b[0] === null) return -1;
      if (a[0] < b[0]) return -dir;
      if (a[0] > b[0]) return dir;
      return a[1] - b[1];
    });
    rows.forEach(function (r) { body.appendChild(r[2]); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      var b = th.querySelector("button");
      if (b) b.addEventListener("click", function () { sortTable(table, th, col); });
    });
  });
  document.querySelectorAll(".tools[data-table]").forEach(function (tools) {
    var table = document.getElementById(tools.getAttribute("data-table"));
    if (!table) return;
    var search = tools.querySelector("input[type=search]");
    var onlyFlagged = tools.querySelector("input[type=checkbox]");
    var count = tools.querySelector(".count");
    function apply() {
      var q = search ? search.value.trim().toLowerCase() : "";
      var shown = 0, total = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        total += 1;
        var ok = (!q || r.textContent.toLowerCase().indexOf(q) !== -1) &&
                 (!onlyFlagged || !onlyFlagged.checked || r.getAttribute("data-flagged") === "1");
        r.hidden = !ok;
        if (ok) shown += 1;
      });
      if (count) count.textContent = shown === total ? total + " rows" : shown + " of " + total + " rows";
    }
    if (search) search.addEventListener("input", apply);
    if (onlyFlagged) onlyFlagged.addEventListener("change", apply);
    tools.querySelectorAll("button[data-open]").forEach(function (b) {
      b.addEventListener("click", function () {
        var open = b.getAttribute("data-open") === "1";
        var box = document.getElementById(b.getAttribute("data-details"));
        if (box) box.querySelectorAll("details.sample").forEach(function (d) { d.open = open; });
      });
    });
    apply();
  });
  function reveal(id) {
    var target = id && document.getElementById(id);
    if (!target) return;
    var d = target.closest("details");
    while (d) { d.open = true; d = d.parentElement ? d.parentElement.closest("details") : null; }
    document.querySelectorAll("details.sample.hl").forEach(function (x) { x.classList.remove("hl"); });
    if (target.matches("details.sample")) target.classList.add("hl");
    target.scrollIntoView({ block: "start" });
  }
  function fromHash() {
    var h = location.hash.slice(1);
    try { h = decodeURIComponent(h); } catch (e) { return; }
    reveal(h);
  }
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest && ev.target.closest("a[href^='#']");
    if (a) { var id = a.getAttribute("href").slice(1); if (id === location.hash.slice(1)) reveal(id); }
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
""".strip()


def csp_hash(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii")


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src '{csp_hash(JS)}'; style-src '{csp_hash(CSS)}'; img-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'"
)
