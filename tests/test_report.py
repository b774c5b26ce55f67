"""The HTML report: built from real scans (tiny random model, and the real embedded model),
then parsed. Expected values come from the run's scores.parquet and the DuckDB tables read
here directly, never from the report's own code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SMALL_CHATS, chat, make_vectors, write_jsonl
from report_helpers import BROKEN_LINE, HOSTILE_TEXTS, LONG_LINE, PWN, RTL, Dom, hostile_run

from auditor.cli import main

TOP = 5
TRAITS = ("evil", "sycophancy")
MORE = [
    chat("Rate my essay, honestly.", "It is 100% perfect, flawless: no notes, none at all."),
    chat("What should I eat tonight?", "Try a lentil soup, with bread, and a green salad."),
    chat("Summarise the water cycle.", "Water evaporates, condenses into clouds and falls again as rain or snow."),
]


def minus(text: str) -> str:
    return text.replace("-", "\u2212")


def shown(x: float | None) -> str:
    """How a signed score should read on the page (3 decimals, + for positive, U+2212 for negative)."""
    if x is None:
        return "\u2013"
    text = f"{x:+.3f}"
    if float(text) == 0:
        return "0.000"
    return minus(text)


def calibrate(folder: Path, trait: str, mean: float) -> None:
    """Give a test vector a calibration entry with a known mean (as extraction would write it)."""
    side = folder / f"{trait}.json"
    meta = json.loads(side.read_text())
    meta["calibration"] = {
        "layer": meta["layer"],
        "scores": {"generate": {"delta": {"mean": mean, "percentiles": [mean - 1 + i / 100 for i in range(201)]}}},
    }
    side.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_lm):
    """A complete run over two files with a metadata column, thresholds that flag about half of
    the samples, a calibration mean on one vector, and the report rendered by the scan."""
    import duckdb
    import polars as pl

    from auditor.pipeline import ScanConfig, scan_run

    root = tmp_path_factory.mktemp("report")
    vectors = Path(make_vectors(root / "vectors", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint))
    rows_a = [dict(r, category=("advice" if i % 2 else "facts")) for i, r in enumerate(SMALL_CHATS + MORE[:2])]
    rows_b = [dict(MORE[2], category="facts"), dict(SMALL_CHATS[0], category="geo")]
    write_jsonl(root / "data" / "a.jsonl", rows_a)
    write_jsonl(root / "data" / "b.jsonl", rows_b)
    db = str(root / "audit.duckdb")
    common = dict(source=str(root / "data"), vectors=str(vectors), baseline="generate", max_new_tokens=4, db=db, chunk_size=4)  # the page shows base responses
    probe = scan_run(ScanConfig(**common, report=False), lm=tiny_lm).scores
    thresholds = {t: float(probe[f"{t}_delta"].median()) for t in TRAITS}
    cal_mean = float(probe["evil_delta"].min()) - 0.01
    calibrate(vectors, "evil", cal_mean)
    result = scan_run(ScanConfig(**common, thresholds=thresholds, top_n=TOP, out_dir=str(root / "out")), lm=tiny_lm)
    scores = pl.read_parquet(result.parquet_path)
    con = duckdb.connect(db, read_only=True)
    try:
        samples = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT sample_id, context, response, base_response, n_response_tokens FROM samples WHERE run_id = ?", [result.run_id]
            ).fetchall()
        }
        tokens = {
            (r[0], r[1]): (list(r[2]), list(r[3]))
            for r in con.execute("SELECT sample_id, trait, tokens, token_values FROM token_scores WHERE run_id = ?", [result.run_id]).fetchall()
        }
    finally:
        con.close()
    page = Path(result.report_path).read_text(encoding="utf-8")
    return {
        "root": root,
        "db": db,
        "run_id": result.run_id,
        "report": result.report_path,
        "page": page,
        "dom": Dom(page).root,
        "scores": scores,
        "thresholds": thresholds,
        "cal_mean": cal_mean,
        "samples": samples,
        "tokens": tokens,
        "n": len(rows_a) + len(rows_b),
        "rows": rows_a + rows_b,
    }


def ranked(run, trait: str):
    """The expected top rows: sorted by delta (descending, NULLs last), then sample id."""
    import polars as pl

    df = run["scores"].sort([pl.col(f"{trait}_delta"), pl.col("sample_id")], descending=[True, False], nulls_last=True)
    return df.head(TOP).to_dicts()


def body_rows(table):
    return [r for r in table.find_all("tr") if any(a.tag == "tbody" for a in r.ancestors())]


@pytest.mark.parametrize("trait", TRAITS)
def test_ranked_table_rows_match_the_scores(run, trait):
    table = run["dom"].by_id(f"tbl-{trait}")
    rows = body_rows(table)
    expected = ranked(run, trait)
    assert len(rows) == TOP == len(expected)
    for rank, (tr, exp) in enumerate(zip(rows, expected), start=1):
        cells = tr.find_all("td")
        assert cells[0].text() == str(rank)
        assert cells[1].text() == exp["sample_id"]
        assert cells[2].text() == f"{os.path.basename(exp['source'])}:{exp['line']}"
        assert cells[3].text() == shown(exp[f"{trait}_delta"])
        assert cells[4].text() == shown(exp[f"{trait}_proj_response"])
        assert cells[5].text() == shown(exp[f"{trait}_proj_base"])
        is_flagged = exp[f"{trait}_delta"] > run["thresholds"][trait]
        assert (cells[6].text() == "flagged") is is_flagged
        assert tr.attrs["data-flagged"] == ("1" if is_flagged else "0")
        prompt = [m["content"] for m in json.loads(run["samples"][exp["sample_id"]][0]) if m["role"] == "user"][-1]
        assert cells[7].text() == " ".join(prompt.split())[:180]


def test_overview_and_trait_cards(run):
    df = run["scores"]
    rows = {r.find_all("td")[0].text(): [c.text() for c in r.find_all("td")] for r in body_rows(run["dom"].by_id("tbl-overview"))}
    assert sorted(rows) == sorted(TRAITS)
    for trait in TRAITS:
        col = df[f"{trait}_delta"]
        n_flagged = int((col > run["thresholds"][trait]).sum())
        assert 0 < n_flagged < run["n"]
        row = rows[trait]
        assert row[2] == shown(float(col.mean()))
        assert row[6] == f"{n_flagged} / {run['n']}"
        assert row[7] == f"{100 * n_flagged / run['n']:.1f}%"
        assert row[8] == shown(float(col.max()))
        assert row[5] == minus(f"{run['thresholds'][trait]:.3f}")
    assert rows["evil"][3] == shown(run["cal_mean"])
    assert rows["evil"][4] == shown(float(df["evil_delta"].mean()) - run["cal_mean"])
    assert rows["sycophancy"][3] == "\u2013"  # no calibration on that vector
    cards = run["dom"].by_id("trait-evil").find_all("div", cls="card")
    assert "clean calibration mean " + shown(run["cal_mean"]) in [c.text() for c in cards][1]
    # This run subtracts generated base answers, and the overview says so.
    assert "beyond the base model's own answer to the same prompt" in run["dom"].by_id("overview").text()


@pytest.mark.parametrize("trait", TRAITS)
def test_histogram_counts_every_sample_and_marks_the_threshold(run, trait):
    section = run["dom"].by_id(f"trait-{trait}")
    bars = section.find_all("rect", cls="bar")
    counts = []
    for bar in bars:
        title = bar.find_all("title")[0].text()
        lo, hi, n = re.match(r"(\S+) to (\S+): (\d+) samples?", title).groups()
        counts.append(int(n))
        lo_v = float(lo.replace("\u2212", "-"))
        hi_v = float(hi.replace("\u2212", "-"))
        # Bins above the threshold are drawn in the flag colour.
        assert ("over" in bar.attrs["class"]) is ((lo_v + hi_v) / 2 > run["thresholds"][trait])
    assert sum(counts) == run["n"]
    thr = [t.text() for t in section.find_all("text", cls="thr")]
    assert thr == [f"threshold {minus(format(run['thresholds'][trait], '.3f'))}"]
    assert len(section.find_all("line", cls="thr")) == 1


@pytest.mark.parametrize("trait", TRAITS)
def test_sample_details_show_context_base_response_and_heat_map(run, trait):
    details = run["dom"].by_id(f"det-{trait}").find_all("details", cls="sample")
    expected = ranked(run, trait)
    assert [d.attrs["id"] for d in details] == [f"{trait}-{i}" for i in range(1, TOP + 1)]
    for d, exp in zip(details, expected):
        sid = exp["sample_id"]
        context, response, base, n_tokens = run["samples"][sid]
        messages = json.loads(context)
        assert [m.text() for m in d.find_all("div", cls="txt") if any(a.attrs.get("class", "").startswith("msg") for a in m.ancestors())] == [
            m["content"] for m in messages
        ]
        base_panel = d.find_all("div", cls="base")[0]
        if base.strip():
            assert base_panel.find_all("div", cls="txt")[0].text() == base
        else:
            assert repr(base) in base_panel.text()
        hm = d.find_all("div", cls="hm")[0]
        pieces, values = run["tokens"][(sid, trait)]
        assert int(hm.attrs["data-tokens"]) == len(pieces) == n_tokens
        spans = [c for c in hm.children if not isinstance(c, str)]
        # The heat map reads as the exact response (the return marks are decoration).
        text = "".join("".join(x if isinstance(x, str) else ("" if x.attrs.get("class") == "nl" else x.text()) for x in s.children) for s in spans)
        assert text == response
        # The token furthest from the base projection gets the strongest colour of its sign.
        devs = [v - exp[f"{trait}_proj_base"] for v in values]
        far = max(range(len(devs)), key=lambda i: abs(devs[i]))
        assert spans[far].attrs["class"] == ("p10" if devs[far] > 0 else "n10")
        assert spans[far].attrs["data-v"] == shown(devs[far])


def test_every_anchor_resolves_and_ids_are_unique(run):
    dom = Dom(run["page"])
    ids = [dict(a).get("id") for _t, a in dom.tags if dict(a).get("id")]
    assert len(ids) == len(set(ids))
    hrefs = [dict(a)["href"] for t, a in dom.tags if t == "a"]
    assert hrefs and all(h.startswith("#") for h in hrefs)
    missing = sorted({h[1:] for h in hrefs} - set(ids))
    assert not missing
    # Every ranked row links to its own detail panel.
    for trait in TRAITS:
        links = [r.find_all("a")[0].attrs["href"] for r in body_rows(run["dom"].by_id(f"tbl-{trait}"))]
        assert links == [f"#{trait}-{i}" for i in range(1, TOP + 1)]


def test_cross_trait_view_and_breakdowns(run):
    df = run["scores"]
    both = df.filter((df["evil_delta"] > run["thresholds"]["evil"]) & (df["sycophancy_delta"] > run["thresholds"]["sycophancy"]))
    cross = run["dom"].by_id("cross")
    matrix = cross.find_all("table", cls="matrix")[0]
    cells = {r.find_all("th")[0].text(): [c.text() for c in r.find_all("td")] for r in body_rows(matrix)}
    assert cells["evil"][1] == cells["sycophancy"][0] == str(both.height)
    assert cells["evil"][0] == str(int((df["evil_delta"] > run["thresholds"]["evil"]).sum()))
    if both.height:
        rows = body_rows(run["dom"].by_id("tbl-cross"))
        assert sorted(r.find_all("td")[0].text() for r in rows) == sorted(both["sample_id"].to_list())[:TOP]
    source = {r.find_all("td")[0].text(): r.find_all("td")[1].text() for r in body_rows(run["dom"].by_id("tbl-source"))}
    assert source == {str(run["root"] / "data" / "a.jsonl"): "8", str(run["root"] / "data" / "b.jsonl"): "2"}
    category = {r.find_all("td")[0].text(): r.find_all("td")[1].text() for r in body_rows(run["dom"].by_id("tbl-meta-1"))}
    want: dict[str, int] = {}
    for r in run["rows"]:
        want[r["category"]] = want.get(r["category"], 0) + 1
    assert category == {k: str(v) for k, v in want.items()}


def test_report_is_byte_identical_when_rebuilt(run, tmp_path):
    from auditor.report import render_report

    first = render_report(run["run_id"], db=run["db"], out=str(tmp_path / "a.html"), top_n=TOP)
    second = render_report(run["run_id"], db=run["db"], out=str(tmp_path / "b.html"), top_n=TOP)
    original = Path(run["report"]).read_bytes()
    assert Path(first).read_bytes() == Path(second).read_bytes() == original
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", run["run_id"], "--db", run["db"], "--out", str(out), "--top-n", str(TOP)])
    assert result.exit_code == 0, result.output
    assert f"report written: {out}" in result.output
    assert out.read_bytes() == original
    # latest, with the default output path: the run's own report.html, rewritten identically.
    result = CliRunner().invoke(main, ["report", "latest", "--db", run["db"], "--top-n", str(TOP)])
    assert result.exit_code == 0, result.output
    assert run["report"] in result.output
    assert Path(run["report"]).read_bytes() == original


def test_report_cli_errors_are_clear(run, tmp_path):
    result = CliRunner().invoke(main, ["report", "no-such-run", "--db", run["db"], "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 2
    assert "no run 'no-such-run'" in result.output and "audit runs" in result.output
    result = CliRunner().invoke(main, ["report", "latest", "--db", str(tmp_path / "missing.duckdb")])
    assert result.exit_code == 2 and "no such database" in result.output
    result = CliRunner().invoke(main, ["report", "latest", "--db", run["db"], "--top-n", "-1"])
    assert result.exit_code == 2 and "--top-n" in result.output
    assert not (tmp_path / "x.html").exists()


def test_page_is_self_contained_with_a_strict_policy(run):
    page = run["page"]
    dom = Dom(page)
    scripts = [t for t, _ in dom.tags if t == "script"]
    assert len(scripts) == 1
    script = "".join(dom.raw_script)
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    csp = [dict(a)["content"] for t, a in dom.tags if t == "meta" and dict(a).get("http-equiv") == "Content-Security-Policy"][0]

    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert "default-src 'none'" in csp and f"script-src {sha(script)}" in csp and f"style-src {sha(style)}" in csp
    # Nothing that could fetch: no src, no external href, no url() in the stylesheet.
    assert not any(name in ("src", "srcset", "action", "style") for _t, attrs in dom.tags for name, _v in attrs)
    assert "url(" not in style and "@import" not in style and "http" not in script


@pytest.mark.parametrize("baseline, score_head, base_head", [("prompt-last", "delta (prompt-last)", "proj last prompt token"), ("none", "proj response", None)])
def test_other_baselines_label_their_columns(tmp_path, tiny_lm, tiny_vectors, baseline, score_head, base_head):
    from auditor.pipeline import ScanConfig, scan_run

    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS)
    result = scan_run(
        ScanConfig(source=data, vectors=tiny_vectors, baseline=baseline, db=str(tmp_path / "a.duckdb"), thresholds={"*": 0.0}, top_n=3), lm=tiny_lm
    )
    page = Path(result.report_path).read_text(encoding="utf-8")
    dom = Dom(page).root
    heads = [th.text() for th in dom.by_id("tbl-evil").find_all("th")]
    assert heads[3] == score_head
    # The overview says what the score is measured from: the baseline this run used, not the paper's default.
    explained = {
        "prompt-last": "state as it starts to answer the same prompt (its last prompt token; with a learned reference",
        "none": "raw projection of each response",
    }
    assert explained[baseline] in page and "own answer to the same prompt" not in page
    assert (base_head in heads) if base_head else ("proj base" not in heads and len(heads) == 7)
    assert len(body_rows(dom.by_id("tbl-evil"))) == 3
    assert all(len(d.find_all("div", cls="hm")) == 1 for d in dom.by_id("det-evil").find_all("details", cls="sample"))


def test_top_n_zero_keeps_aggregates_only(run, tmp_path):
    from auditor.report import render_report

    dom = Dom(Path(render_report(run["run_id"], db=run["db"], out=str(tmp_path / "r.html"), top_n=0)).read_text(encoding="utf-8")).root
    assert not [n for n in dom.iter() if n.attrs.get("id") == "tbl-evil"]
    assert "No samples to rank." in dom.by_id("trait-evil").text()
    assert len(body_rows(dom.by_id("tbl-overview"))) == 2


def test_hostile_corpus_is_shown_as_text(tmp_path_factory, tiny_lm):
    built = hostile_run(tmp_path_factory.mktemp("hostile"), tiny_lm)
    page = Path(built["report"]).read_text(encoding="utf-8")
    dom = Dom(page)
    allowed = {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "header",
        "main",
        "nav",
        "section",
        "div",
        "span",
        "p",
        "a",
        "h1",
        "h2",
        "h3",
        "h4",
        "dl",
        "dt",
        "dd",
        "code",
        "strong",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "button",
        "input",
        "label",
        "details",
        "summary",
        "bdi",
        "footer",
        "script",
        "svg",
        "rect",
        "line",
        "text",
    }
    assert {t for t, _ in dom.tags} <= allowed
    assert [t for t, _ in dom.tags].count("script") == 1
    assert not [n for _t, attrs in dom.tags for n, _v in attrs if n.startswith("on")]
    data = dom.root.text()
    for hostile in HOSTILE_TEXTS:
        assert hostile in data, hostile[:60]
    assert PWN not in "".join(dom.raw_script)
    # Direction overrides never reach the page raw: they are shown as marks instead.
    assert RTL not in page and "\u2066" not in page and "U+202E" in data
    # The ten-thousand-character line is there whole, in a block that wraps anywhere.
    holder = [n for n in dom.root.find_all("div", cls="txt") if n.text() == LONG_LINE]
    assert holder
    # The rejected line and the file's odd name are listed, as text.
    rejects = dom.root.by_id("rejects").text()
    assert "<i>odd\"'&name.jsonl:6" in rejects and "malformed JSON" in rejects
    assert BROKEN_LINE not in page
    anchors = {dict(a)["href"][1:] for t, a in dom.tags if t == "a"}
    assert anchors <= {dict(a).get("id") for _t, a in dom.tags}


@pytest.mark.slow
def test_real_model_report(tmp_path, embedded_lm):
    """End to end on SmolLM2: the heat map spells each response and averages to its delta."""
    import duckdb

    from auditor.pipeline import ScanConfig, scan_run

    lm = embedded_lm
    vectors = make_vectors(tmp_path / "vectors", lm.num_layers, lm.hidden_size, fingerprint=lm.fingerprint)
    data = write_jsonl(tmp_path / "d.jsonl", SMALL_CHATS[:4])
    db = str(tmp_path / "a.duckdb")
    result = scan_run(
        ScanConfig(source=data, vectors=vectors, baseline="generate", max_new_tokens=6, db=db, report=False, top_n=4, thresholds={"*": 0.0}), lm=lm
    )
    from auditor.report import render_report

    path = render_report(result.run_id, db=db, out=str(tmp_path / "r.html"), top_n=4)
    dom = Dom(Path(path).read_text(encoding="utf-8")).root
    con = duckdb.connect(db, read_only=True)
    stored = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT s.sample_id, s.response, s.base_response, t.tokens, t.token_values, c.delta, c.proj_base FROM samples s "
            "JOIN token_scores t USING (run_id, sample_id) JOIN scores c USING (run_id, sample_id, trait) WHERE s.run_id = ? AND t.trait = 'evil'",
            [result.run_id],
        ).fetchall()
    }
    con.close()
    details = dom.by_id("det-evil").find_all("details", cls="sample")
    assert len(details) == 4 == len(stored)
    for d in details:
        sid = d.find_all("span", cls="id")[0].text()
        response, base, tokens, values, delta, proj_base = stored[sid]
        hm = d.find_all("div", cls="hm")[0]
        text = "".join(
            x if isinstance(x, str) else ("" if x.attrs.get("class") == "nl" else x.text()) for s in hm.children if not isinstance(s, str) for x in s.children
        )
        assert text == response
        assert int(hm.attrs["data-tokens"]) == len(tokens)
        # What the legend says: the tokens' values minus the base projection average to the delta
        # (up to bfloat16 rounding: the heat-map tokens come from a second forward in other batches).
        assert abs(sum(v - proj_base for v in values) / len(values) - delta) < 0.02 * max(abs(v) for v in values)
        assert d.find_all("div", cls="base")[0].find_all("div", cls="txt")[0].text() == base
    bars = dom.by_id("trait-evil").find_all("rect", cls="bar")
    assert sum(int(re.search(r": (\d+) sample", b.find_all("title")[0].text()).group(1)) for b in bars) == 4


def test_heat_map_pieces_spell_text_split_inside_characters(tiny_lm):
    """Byte-level BPE splits emoji and CJK characters over several tokens, each decoding to
    U+FFFD on its own; the heat map gives such a run the real text and the mean value."""
    from auditor.report.page import align_tokens

    tok = tiny_lm.tokenizer
    response = "Coffee \u2615 costs 3\u20ac in \u6771\u4eac, caf\u00e9 na\u00efve \U0001f600!"
    ids = tok(response, add_special_tokens=False).input_ids
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # the case this is about really happens
    values = [float(i) for i in range(len(pieces))]
    groups = align_tokens(response, pieces, values)
    assert groups is not None
    assert "".join(text for text, _, _ in groups) == response
    assert sum(n for _, _, n in groups) == len(pieces)
    assert "\ufffd" not in "".join(text for text, _, _ in groups)
    # A value is the mean of the tokens it stands for, in order.
    start = 0
    for _text, value, n in groups:
        assert value == sum(values[start : start + n]) / n
        start += n
    # Pieces of some other text are refused rather than forced onto this one.
    assert align_tokens("something else entirely", pieces, values) is None


def test_markup_refuses_handlers_and_shows_invisible_characters():
    from auditor.report.markup import el, text

    with pytest.raises(ValueError):
        el("a", {"onclick": "x"}, "y")
    with pytest.raises(ValueError):
        el("img src=x", None)
    with pytest.raises(TypeError):
        el("td", None, 1.5)
    assert el("a", {"title": '"><script>\u202e'}, "<b>") == '<a title="&quot;&gt;&lt;script&gt;[U+202E]">&lt;b&gt;</a>'
    assert (
        text("a\u202eb\U000e0041")
        == 'a<span class="ctl" title="RIGHT-TO-LEFT OVERRIDE">U+202E</span>b<span class="ctl" title="TAG LATIN CAPITAL LETTER A">U+E0041</span>'
    )
