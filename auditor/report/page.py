"""The report page: run header, one section per trait, cross-trait view, breakdowns.

Pure function of :class:`ReportData` -> HTML text. Sample text only ever enters the page
through :mod:`auditor.report.markup` (escaped); the script reads the page, never data.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from auditor.report.assets import CONTENT_SECURITY_POLICY, CSS, JS
from auditor.report.charts import fmt_num, histogram_svg, rate_bar
from auditor.report.data import Breakdown, ReportData, TopSample, TraitData, excerpt_source
from auditor.report.markup import Markup, el, join

EXCERPT_CHARS = 140
ID_CHARS = 60
HEAT_LEVELS = 10

BASELINE_TEXT = {
    "generate": "generate: vs the base model's own greedy answer",
    "prompt-last": "prompt-last: vs the prompt's last token",
    "none": "none: raw projection, no comparison",
}


def fmt(x: float | None, signed: bool = False, digits: int = 3) -> str:
    """A number as the page shows it: fixed digits, a real minus sign, ``+`` when asked, ``\u2013`` for none."""
    if x is None or not math.isfinite(float(x)):
        return "\u2013"
    text = fmt_num(float(x), digits)
    if signed and x > 0 and any(c in "123456789" for c in text):
        text = "+" + text
    return text


def sort_value(x: float | None) -> str:
    """What a numeric cell sorts by (``repr`` is exact and stable)."""
    return "" if x is None else repr(float(x))


def pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "\u2013"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2013"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def one_line(value: str, limit: int) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


def slugs(names: list[str]) -> dict[str, str]:
    """Ids for anchors: readable from the trait name, unique, never raw user text."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, name in enumerate(names):
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or f"trait{i + 1}"
        slug = base
        k = 2
        while slug in used:
            slug = f"{base}-{k}"
            k += 1
        used.add(slug)
        out[name] = slug
    return out


def where(source: str, line: int | None) -> str:
    name = os.path.basename(source.rstrip("/")) or source
    return f"{name}:{line}" if line is not None else name


def short_id(sample_id: str) -> str:
    return sample_id if len(sample_id) <= ID_CHARS else sample_id[: ID_CHARS - 1] + "\u2026"


def align_tokens(response: str, pieces: list[str], values: list[float]) -> list[tuple[str, float, int]] | None:
    """Cut ``response`` into the stored token pieces: [(text, value, number of tokens)].

    Tokens decoded one at a time can hold part of a character (byte-level BPE splits an
    emoji or a CJK character over several tokens; each piece then decodes to U+FFFD) or lose
    a leading space (SentencePiece). Such runs are given the response text between their
    neighbours and the mean of their values, so the heat map reads as the exact response.
    Returns None when the pieces do not line up with the response.
    """
    out: list[tuple[str, float, int]] = []
    pending: list[int] = []
    pos = 0

    def flush(text: str) -> bool:
        if len(text.encode("utf-8")) < len(pending):  # every token stands for at least one byte
            return False
        out.append((text, sum(values[i] for i in pending) / len(pending), len(pending)))
        pending.clear()
        return True

    for i, piece in enumerate(pieces):
        if not piece or "\ufffd" in piece:
            pending.append(i)
            continue
        at = response.find(piece, pos)
        if at < 0:
            return None
        gap = response[pos:at]
        if pending:
            if not flush(gap):
                return None
            out.append((piece, values[i], 1))
        elif gap.strip():  # skipping real text means the pieces are not this response's
            return None
        else:
            out.append((gap + piece, values[i], 1))
        pos = at + len(piece)
    rest = response[pos:]
    if pending:
        if not flush(rest):
            return None
    elif rest.strip():
        return None
    elif rest and out:
        text, v, n = out[-1]
        out[-1] = (text + rest, v, n)
    return out if "".join(p for p, _, _ in out) == response else None


class Page:
    def __init__(self, data: ReportData):
        self.d = data
        self.baseline = data.run.baseline or "generate"
        self.meaning = data.run.score()  # the run-level score (every trait of a run flags on the same kind)
        self.slug = slugs([t.trait for t in data.traits])
        # (trait, sample id) -> anchor of its detail panel, for links between views.
        self.anchor: dict[tuple[str, str], str] = {(t.trait, s.sample_id): f"{self.slug[t.trait]}-{s.rank}" for t in data.traits for s in t.top}

    # ---- run header -------------------------------------------------------------
    def header(self) -> Markup:
        run = self.d.run
        cfg = run.config
        dataset = run.dataset or ""
        scored = run.n_scored or 0
        items: list[tuple[str, Any]] = [
            ("Dataset", el("code", None, dataset)),
            ("Samples", f"{scored:,} scored \u00b7 {run.n_rejected or 0:,} rejected \u00b7 {run.n_read or 0:,} read"),
            (
                "Model",
                [
                    run.model or "",
                    " ",
                    el("span", {"class": "muted small"}, f"{self.d.dtype or ''} \u00b7 {self.d.device or ''} \u00b7 {self.d.model_fingerprint or ''}"),
                ],
            ),
            (
                "Baseline",
                [BASELINE_TEXT.get(self.baseline, self.baseline)]
                + (
                    [el("span", {"class": "muted small"}, f" (\u2264 {cfg.get('max_new_tokens')} new tokens)")]
                    if self.baseline == "generate" and cfg.get("max_new_tokens")
                    else []
                ),
            ),
            ("Vectors and layers", join([el("span", {"class": "nowrap"}, f"{t.trait} L{t.layer}") for t in self.d.traits], sep=" \u00b7 ")),
            ("Started", self.d.started_at.strftime("%Y-%m-%d %H:%M:%S") if self.d.started_at is not None else "\u2013"),
            ("Duration", duration(self.d.timings.get("total"))),
        ]
        meta = el("dl", {"class": "meta"}, [el("div", None, el("dt", None, k), el("dd", None, v)) for k, v in items])
        title = os.path.basename(dataset.rstrip("/")) or dataset or run.run_id
        inner = el(
            "div",
            {"class": "inner"},
            el("div", {"class": "brand"}, "persona-audit report"),
            el("h1", None, el("bdi", None, title)),
            el("div", {"class": "runid mono"}, f"run {run.run_id}"),
            meta,
        )
        return el("header", {"class": "top"}, inner)

    def toc(self) -> Markup:
        links = [el("a", {"href": "#overview"}, "Overview")]
        for t in self.d.traits:
            links.append(el("a", {"href": f"#trait-{self.slug[t.trait]}", "class": "flagged" if t.n_flagged else None}, t.trait))
        links.append(el("a", {"href": "#cross"}, "Cross-trait"))
        links.append(el("a", {"href": "#breakdown"}, "Breakdown"))
        if self.d.n_rejects:
            links.append(el("a", {"href": "#rejects"}, f"Rejected ({self.d.n_rejects})"))
        return el("nav", {"class": "toc", "aria-label": "sections"}, links)

    # ---- overview -----------------------------------------------------------------
    def overview(self) -> Markup:
        pairs = any(t.meaning.kind == "margin" for t in self.d.traits)
        heads = [
            ("trait", "text"),
            ("layer", "num"),
            (self.meaning.mean_label, "num"),
            ("calibration mean", "num"),
            ("above calibration", "num"),
            ("threshold", "num"),
            ("flagged", "num"),
            ("flag rate", "num"),
            ("max", "num"),
        ]
        rows = []
        for t in self.d.traits:
            diff = t.mean_score - t.calibration_mean if t.mean_score is not None and t.calibration_mean is not None else None
            rate = t.n_flagged / t.n if t.n else None
            rows.append(
                el(
                    "tr",
                    None,
                    el("td", None, el("a", {"href": f"#trait-{self.slug[t.trait]}"}, t.trait)),
                    el("td", {"class": "num", "data-v": sort_value(t.layer)}, str(t.layer)),
                    el("td", {"class": "num", "data-v": sort_value(t.mean_score)}, fmt(t.mean_score, signed=True)),
                    el("td", {"class": "num", "data-v": sort_value(t.calibration_mean)}, fmt(t.calibration_mean, signed=True)),
                    el("td", {"class": "num" + (" pos" if diff is not None and diff > 0 else ""), "data-v": sort_value(diff)}, fmt(diff, signed=True)),
                    el("td", {"class": "num", "data-v": sort_value(t.threshold)}, fmt(t.threshold)),
                    el("td", {"class": "num", "data-v": sort_value(t.n_flagged)}, f"{t.n_flagged:,} / {t.n:,}"),
                    el("td", {"class": "num", "data-v": sort_value(rate)}, pct(t.n_flagged, t.n), rate_bar(rate or 0.0)),
                    el("td", {"class": "num", "data-v": sort_value(t.max_score)}, fmt(t.max_score, signed=True)),
                )
            )
        explain = el(
            "p",
            {"class": "muted small"},
            "The score of a preference pair is its margin: the chosen answer's projection onto the trait direction minus the "
            "rejected answer's, what preference training on the pair rewards. A clean pair's margin centres on zero; the threshold "
            "is the vector's clean delta distribution centred on its median (docs/formats.md)."
            if pairs
            else "The score is the projection difference \u0394: how far the dataset response sits along the trait direction "
            f"beyond {self.meaning.reference}. A positive dataset-level \u0394 means training on the data is "
            "expected to move the model toward the trait; compare it with the vector's clean calibration set."
            if self.meaning.is_delta
            else "The score is the raw projection of each response onto the trait direction"
            + (" (baseline none)." if self.baseline == "none" else " (--flag-on projection): the base projection is shown beside it, not subtracted."),
        )
        table = self.table("tbl-overview", heads, rows)
        return el("section", {"id": "overview"}, el("div", {"class": "sechead"}, el("h2", None, "Overview")), explain, table)

    def table(self, table_id: str, heads: list[tuple[str, str]], rows: list[Markup], cls: str = "sortable") -> Markup:
        th = [
            el("th", {"data-type": kind, "scope": "col", "class": "num" if kind == "num" else None}, el("button", {"type": "button"}, name))
            for name, kind in heads
        ]
        return el("div", {"class": "tablewrap"}, el("table", {"id": table_id, "class": cls}, el("thead", None, el("tr", None, th)), el("tbody", None, rows)))

    # ---- one trait ----------------------------------------------------------------
    def trait_section(self, t: TraitData) -> Markup:
        slug = self.slug[t.trait]
        score_name, base_name = t.meaning.label, t.meaning.base_label
        cards = self.trait_cards(t, score_name)
        if t.histogram is not None:
            title = f"Distribution of {score_name} over {t.n_with_score} samples for {t.trait}"
            chart = el("div", {"class": "chart"}, histogram_svg(t.histogram, score_name, t.threshold, t.calibration_mean, t.mean_score, title))
        else:
            chart = el("p", {"class": "empty"}, "No sample of this run has a score for this trait.")
        heads = [
            ("#", "num"),
            ("id", "text"),
            ("source:line", "text"),
            (score_name, "num"),
            ("proj chosen" if t.meaning.kind == "margin" else "proj response", "num"),
        ]
        if base_name:
            heads.append((base_name, "num"))
        heads += [("flag", "text"), ("prompt", "text")]
        rows = [self.ranked_row(t, s, base_name is not None) for s in t.top]
        head = el(
            "div",
            {"class": "sechead"},
            el("h2", None, el("bdi", None, t.trait)),
            el("span", {"class": "sub"}, f"layer {t.layer} \u00b7 score {score_name}"),
        )
        if not t.top:
            listing = el("p", {"class": "empty"}, "No samples to rank.")
            return el("section", {"id": f"trait-{slug}"}, head, cards, chart, listing)
        shown = f"Top {len(t.top)} of {t.n:,} samples, most trait-inducing first"
        tools = el(
            "div",
            {"class": "tools", "data-table": f"tbl-{slug}"},
            el("strong", None, shown),
            el("input", {"type": "search", "placeholder": "filter rows (id, file, prompt)", "aria-label": f"filter the {t.trait} table"}),
            el("label", None, el("input", {"type": "checkbox"}), "flagged only"),
            el("span", {"class": "count"}, f"{len(rows)} rows"),
            el("button", {"type": "button", "data-open": "1", "data-details": f"det-{slug}"}, "expand all details"),
            el("button", {"type": "button", "data-open": "0", "data-details": f"det-{slug}"}, "collapse all"),
        )
        table = self.table(f"tbl-{slug}", heads, rows)
        details = el(
            "div",
            {"id": f"det-{slug}"},
            el("h3", None, "Sample details"),
            el(
                "p",
                {"class": "muted small"},
                "Each pair's conversation and its chosen answer beside the rejected one, each as a token heat map: "
                "colour shows each token's projection onto the trait direction."
                if t.meaning.kind == "margin"
                else "Each sample's conversation, its response beside the base model's own, and a token heat map "
                "of the response: colour shows each token's projection onto the trait direction.",
            ),
            [self.sample_detail(t, s) for s in t.top],
        )
        return el("section", {"id": f"trait-{slug}"}, head, cards, chart, tools, table, details)

    def trait_cards(self, t: TraitData, score_name: str) -> Markup:
        cards = [
            el(
                "div",
                {"class": "card"},
                el("div", {"class": "label"}, f"dataset {score_name}"),
                el("div", {"class": "value"}, fmt(t.mean_score, signed=True)),
                el("div", {"class": "note"}, f"mean over {t.n_with_score:,} samples"),
            ),
        ]
        if t.calibration_mean is not None and t.mean_score is not None:
            diff = t.mean_score - t.calibration_mean
            cards.append(
                el(
                    "div",
                    {"class": "card alert" if diff > 0 else "card"},
                    el("div", {"class": "label"}, "vs calibration"),
                    el("div", {"class": "value"}, fmt(diff, signed=True)),
                    el("div", {"class": "note"}, f"clean calibration mean {fmt(t.calibration_mean, signed=True)}"),
                )
            )
        else:
            cards.append(
                el(
                    "div",
                    {"class": "card"},
                    el("div", {"class": "label"}, "vs calibration"),
                    el("div", {"class": "value muted"}, "\u2013"),
                    el("div", {"class": "note"}, "the vector has no calibration for this baseline and layer"),
                )
            )
        cards.append(
            el(
                "div",
                {"class": "card alert" if t.n_flagged else "card"},
                el("div", {"class": "label"}, "flagged"),
                el("div", {"class": "value"}, f"{t.n_flagged:,} ", el("span", {"class": "small muted"}, f"({pct(t.n_flagged, t.n)})")),
                el("div", {"class": "note"}, f"{score_name} > {fmt(t.threshold)}" if t.threshold is not None else "no threshold: pass --threshold TRAIT=VALUE"),
            )
        )
        cards.append(
            el(
                "div",
                {"class": "card"},
                el("div", {"class": "label"}, "threshold"),
                el("div", {"class": "value"}, fmt(t.threshold)),
                el("div", {"class": "note"}, t.threshold_source or "\u2013"),
            )
        )
        cards.append(
            el(
                "div",
                {"class": "card"},
                el("div", {"class": "label"}, "highest sample"),
                el("div", {"class": "value"}, fmt(t.max_score, signed=True)),
                el("div", {"class": "note"}, f"lowest {fmt(t.min_score, signed=True)}"),
            )
        )
        return el("div", {"class": "cards"}, cards)

    def ranked_row(self, t: TraitData, s: TopSample, with_base: bool) -> Markup:
        anchor = self.anchor[(t.trait, s.sample_id)]
        cells = [
            el("td", {"class": "num rank", "data-v": sort_value(s.rank)}, str(s.rank)),
            el(
                "td",
                {"class": "id mono", "data-v": s.sample_id},
                el("a", {"href": f"#{anchor}", "title": s.sample_id if len(s.sample_id) > ID_CHARS else None}, el("bdi", None, short_id(s.sample_id))),
            ),
            el("td", {"class": "where mono", "title": s.source, "data-v": f"{s.source}:{(s.line or 0):012d}"}, el("bdi", None, where(s.source, s.line))),
            el(
                "td",
                {"class": "num" + (" pos" if (s.score or 0) > 0 else " neg" if (s.score or 0) < 0 else ""), "data-v": sort_value(s.score)},
                fmt(s.score, signed=True),
            ),
            el("td", {"class": "num", "data-v": sort_value(s.proj_response)}, fmt(s.proj_response, signed=True)),
        ]
        if with_base:
            base = s.proj_rejected if t.meaning.kind == "margin" else s.proj_base
            cells.append(el("td", {"class": "num", "data-v": sort_value(base)}, fmt(base, signed=True)))
        cells.append(el("td", {"data-v": "1" if s.flagged else "0"}, el("span", {"class": "pill flag"}, "flagged") if s.flagged else ""))
        cells.append(el("td", {"class": "excerpt"}, el("bdi", None, one_line(excerpt_source(s.context), EXCERPT_CHARS))))
        return el("tr", {"data-flagged": "1" if s.flagged else "0", "class": "isflagged" if s.flagged else None}, cells)

    # ---- sample detail --------------------------------------------------------------
    def sample_detail(self, t: TraitData, s: TopSample) -> Markup:
        slug = self.slug[t.trait]
        score_name = t.meaning.label
        summary = el(
            "summary",
            None,
            el("span", {"class": "mono muted"}, f"#{s.rank}"),
            el("span", {"class": "id mono"}, el("bdi", None, short_id(s.sample_id))),
            el("span", {"class": "mono muted small"}, el("bdi", None, where(s.source, s.line))),
            el("span", {"class": "num"}, f"{score_name} {fmt(s.score, signed=True)}"),
            el("span", {"class": "pill flag"}, "flagged") if s.flagged else None,
            el("span", {"class": "excerpt muted"}, el("bdi", None, one_line(excerpt_source(s.context), 120))),
        )
        chips = []
        for trait in sorted(s.all_scores):
            score, flagged = s.all_scores[trait]
            label = f"{trait} {fmt(score, signed=True)}" + (" \u2691" if flagged else "")
            cls = "chip" + (" flag" if flagged else "") + (" this" if trait == t.trait else "")
            other = self.anchor.get((trait, s.sample_id))
            chips.append(el("a", {"class": cls, "href": f"#{other}"}, label) if other and trait != t.trait else el("span", {"class": cls}, label))
        facts = [f"id {s.sample_id}", f" \u00b7 {s.source}:{s.line}"]
        if s.turn:
            facts.append(f" \u00b7 assistant turn {s.turn}")
        facts.append(f" \u00b7 {s.n_response_tokens} {'chosen' if s.rejected_response is not None else 'response'} tokens")
        if s.n_rejected_tokens is not None:
            facts.append(f" \u00b7 {s.n_rejected_tokens} rejected tokens")
        if s.n_base_tokens is not None:
            facts.append(f" \u00b7 {s.n_base_tokens} base tokens")
        meta_items = [el("span", {"class": "chip"}, f"{k}: {self.meta_value(v)}") for k, v in sorted(s.metadata.items())]
        msgs = [
            el(
                "div",
                {"class": f"msg {self.role_class(m.get('role'))}"},
                el("div", {"class": "role"}, str(m.get("role", "?"))),
                el("div", {"class": "txt", "dir": "auto"}, str(m.get("content", ""))),
            )
            for m in s.context
        ]
        if s.rejected_response is not None:
            left, right = self.pair_panels(t, s)
        else:
            left = el(
                "div", {"class": "panel"}, el("h4", None, "dataset response \u00b7 token heat map" if s.tokens else "dataset response"), self.heat_map(t, s)
            )
            right = el("div", {"class": "panel base"}, el("h4", None, "base model's own response"), self.base_panel(s))
        body = el(
            "div",
            {"class": "detail"},
            el("div", {"class": "scorechips"}, chips, meta_items),
            el("p", {"class": "facts muted small mono"}, facts),
            el("h4", None, "context"),
            el("div", {"class": "msgs"}, msgs) if msgs else el("p", {"class": "empty"}, "no context messages"),
            el("div", {"class": "pair"}, left, right),
            el("a", {"class": "backlink", "href": f"#tbl-{slug}"}, f"\u2191 back to the {t.trait} table"),
        )
        return el("details", {"class": "sample", "id": self.anchor[(t.trait, s.sample_id)]}, summary, body)

    @staticmethod
    def meta_value(v: Any) -> str:
        import json

        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)

    @staticmethod
    def role_class(role: Any) -> str:
        return role if role in ("system", "user", "assistant") else "other"

    def base_panel(self, s: TopSample) -> Markup:
        if self.baseline == "generate":
            if s.base_response is None:
                return el("p", {"class": "empty"}, "no base response stored")
            note = el("p", {"class": "muted small"}, f"proj base {fmt(s.proj_base, signed=True)} \u00b7 proj response {fmt(s.proj_response, signed=True)}")
            if s.base_response.strip():
                text = el("div", {"class": "txt", "dir": "auto"}, s.base_response)
            else:
                text = el("p", {"class": "empty"}, f"(only whitespace: {s.base_response!r})" if s.base_response else "(the model answered nothing)")
            return Markup(text + note)
        if self.baseline == "prompt-last":
            return el(
                "p",
                {"class": "empty"},
                f"baseline prompt-last: compared with the reference point at the last prompt token ({fmt(s.proj_base, signed=True)}: its projection,"
                " or a learned reference's prediction there); no base response generated",
            )
        return el("p", {"class": "empty"}, "baseline none: the raw projection, no base response")

    def pair_panels(self, t: TraitData, s: TopSample) -> tuple[Markup, Markup]:
        """A pair's chosen and rejected answers, each as a heat map around the pair's mean projection."""
        both = [v for v in (s.proj_response, s.proj_rejected) if v is not None]
        centre = sum(both) / len(both) if both else 0.0
        centre_text = f"the pair's mean projection ({fmt(centre, signed=True)})"
        note = ". The two answers' means differ by this pair's margin."
        panels = []
        for side, text, tokens, values, proj in (
            ("chosen", s.response, s.tokens, s.token_values, s.proj_response),
            ("rejected", s.rejected_response or "", s.rejected_tokens, s.rejected_token_values, s.proj_rejected),
        ):
            title = f"{side} answer \u00b7 token heat map" if tokens else f"{side} answer"
            body = self.token_map(t, text, tokens, values, centre, centre_text, note)
            facts = el("p", {"class": "muted small"}, f"proj {side} {fmt(proj, signed=True)}")
            panels.append(el("div", {"class": "panel" if side == "chosen" else "panel base"}, el("h4", None, title), body, facts))
        return panels[0], panels[1]

    def heat_map(self, t: TraitData, s: TopSample) -> Markup:
        """The response, token by token, coloured by (token projection - centre).

        The centre is the base projection, so the mean of the tokens' values is the sample's
        delta; with baseline none it is the dataset's mean projection."""
        if s.proj_base is not None:
            centre, centre_text = s.proj_base, f"the base projection ({fmt(s.proj_base, signed=True)})"
        else:
            centre = t.mean_proj_response or 0.0
            centre_text = f"the dataset's mean projection ({fmt(centre, signed=True)})"
        note = ". Their mean is this sample's \u0394 (up to rounding)." if s.proj_base is not None and self.baseline != "none" else "."
        return self.token_map(t, s.response, s.tokens, s.token_values, centre, centre_text, note)

    def token_map(
        self, t: TraitData, text: str, tokens: list[str] | None, values: list[float] | None, centre: float, centre_text: str, mean_note: str
    ) -> Markup:
        """``text`` token by token, coloured by (token projection - ``centre``), with its legend."""
        plain = el("div", {"class": "txt", "dir": "auto"}, text)
        if not tokens or not values or len(tokens) != len(values):
            return Markup(plain + el("p", {"class": "muted small"}, "no token scores stored for this sample (only the top samples of each trait get them)"))
        pieces = align_tokens(text, tokens, values)
        exact_text = pieces is not None
        if pieces is None:  # the stored pieces do not spell the response: show them as they are
            pieces = [(p, v, 1) for p, v in zip(tokens, values)]
        devs = [v - centre for _, v, _ in pieces]
        mags = sorted(abs(d) for d in devs)
        # Saturate at the 95th percentile so one extreme token does not wash out the rest.
        scale = mags[min(len(mags) - 1, int(math.ceil(0.95 * len(mags))) - 1)] or mags[-1] or 1.0
        spans = []
        for (piece, _v, n), d in zip(pieces, devs):
            level = min(HEAT_LEVELS, int(math.ceil(abs(d) / scale * HEAT_LEVELS - 1e-9)))
            if abs(d) < scale * 0.05:
                level = 0
            cls = f"{'p' if d > 0 else 'n'}{level}" if level else None
            parts: list[Any] = []
            for i, chunk in enumerate(piece.split("\n")):
                if i:
                    parts.append(el("span", {"class": "nl", "aria-hidden": "true"}, "\u21b5"))
                    parts.append("\n")
                parts.append(chunk)
            tip = fmt(d, signed=True) + (f" (mean of {n} tokens)" if n > 1 else "")
            spans.append(el("span", {"class": cls, "data-v": tip}, parts))
        hm = el("div", {"class": "hm", "dir": "auto", "data-tokens": str(len(tokens))}, spans)
        scale_boxes = (
            [el("span", {"class": f"n{k}"}) for k in range(HEAT_LEVELS, 0, -1)]
            + [el("span", None)]
            + [el("span", {"class": f"p{k}"}) for k in range(1, HEAT_LEVELS + 1)]
        )
        note = f"Each token's projection minus {centre_text}; hover a token for its value" + mean_note
        if not exact_text:
            note += " The stored token pieces do not spell the response exactly (see the exact text below)."
        legend = el(
            "div",
            {"class": "legend"},
            el(
                "div",
                {"class": "row"},
                el("span", {"class": "mono"}, fmt(-scale)),
                el("span", {"class": "scale", "aria-hidden": "true"}, scale_boxes),
                el("span", {"class": "mono"}, fmt(scale, signed=True)),
                el("span", None, f"blue: away from {t.trait} \u00b7 red: toward it"),
            ),
            el("div", None, note),
        )
        exact = el("details", {"class": "plain"}, el("summary", None, "exact text"), plain)
        return Markup(hm + legend + exact)

    # ---- cross-trait ------------------------------------------------------------------
    def cross_section(self) -> Markup:
        names = [t.trait for t in self.d.traits]
        head = el("div", {"class": "sechead"}, el("h2", None, "Cross-trait"), el("span", {"class": "sub"}, "samples flagged for several traits"))
        if len(names) < 2:
            return el("section", {"id": "cross"}, head, el("p", {"class": "empty"}, "Only one trait was scored."))
        mrows = []
        for a in names:
            cells = [el("th", {"scope": "row"}, a)]
            for b in names:
                n = self.d.coflags.get((a, b), 0)
                cells.append(el("td", {"class": "num" + (" muted" if not n else "")}, str(n)))
            mrows.append(el("tr", None, cells))
        matrix = el(
            "div",
            {"class": "tablewrap fit"},
            el(
                "table",
                {"class": "matrix"},
                el("thead", None, el("tr", None, el("th", None, "flagged for both"), [el("th", {"scope": "col"}, b) for b in names])),
                el("tbody", None, mrows),
            ),
        )
        note = el("p", {"class": "muted small"}, "Counts of samples flagged for the row trait and the column trait; the diagonal is each trait's flag count.")
        if not self.d.cross:
            listing = el("p", {"class": "empty"}, "No sample is flagged for more than one trait.")
            return el("section", {"id": "cross"}, head, note, matrix, listing)
        heads = [("id", "text"), ("source:line", "text"), ("traits flagged", "num")] + [(n, "num") for n in names] + [("prompt", "text")]
        rows = []
        for r in self.d.cross:
            cells = [
                el("td", {"class": "id mono", "data-v": r.sample_id}, el("bdi", None, short_id(r.sample_id))),
                el("td", {"class": "where mono", "title": r.source, "data-v": f"{r.source}:{(r.line or 0):012d}"}, el("bdi", None, where(r.source, r.line))),
                el("td", {"class": "num", "data-v": str(r.n_flagged)}, str(r.n_flagged)),
            ]
            for n in names:
                score, flagged = r.scores.get(n, (None, False))
                label = fmt(score, signed=True) + (" \u2691" if flagged else "")
                anchor = self.anchor.get((n, r.sample_id))
                inner = el("a", {"href": f"#{anchor}"}, label) if anchor else label
                cells.append(el("td", {"class": "num" + (" pos" if flagged else ""), "data-v": sort_value(score)}, inner))
            cells.append(el("td", {"class": "excerpt"}, el("bdi", None, one_line(r.excerpt, EXCERPT_CHARS))))
            rows.append(el("tr", {"data-flagged": "1"}, cells))
        shown = (
            f"{len(rows)} of {self.d.n_cross} samples flagged for two traits or more"
            if self.d.n_cross > len(rows)
            else f"{len(rows)} samples flagged for two traits or more"
        )
        tools = el(
            "div",
            {"class": "tools", "data-table": "tbl-cross"},
            el("strong", None, shown),
            el("input", {"type": "search", "placeholder": "filter rows", "aria-label": "filter the cross-trait table"}),
            el("span", {"class": "count"}, f"{len(rows)} rows"),
        )
        return el("section", {"id": "cross"}, head, note, matrix, el("h3", None, "Samples"), tools, self.table("tbl-cross", heads, rows))

    # ---- breakdowns ---------------------------------------------------------------------
    def breakdown_table(self, b: Breakdown, table_id: str) -> Markup:
        names = [t.trait for t in self.d.traits]
        heads = [(b.column, "text"), ("samples", "num")]
        for n in names:
            heads += [(f"{n} mean", "num"), (f"{n} flagged", "num")]
        rows = []
        for r in b.rows:
            cells = [
                el("td", {"class": "key", "data-v": r.key}, el("bdi", None, r.key or "(empty)")),
                el("td", {"class": "num", "data-v": str(r.n)}, f"{r.n:,}"),
            ]
            for n in names:
                mean, flagged = r.per_trait.get(n, (None, 0))
                cells.append(el("td", {"class": "num", "data-v": sort_value(mean)}, fmt(mean, signed=True)))
                rate = flagged / r.n if r.n else None
                cells.append(el("td", {"class": "num" + (" pos" if flagged else ""), "data-v": sort_value(rate)}, f"{flagged:,} ({pct(flagged, r.n)})"))
            rows.append(el("tr", None, cells))
        shown = f"{len(b.rows)} of {b.n_groups} groups" if b.n_groups > len(b.rows) else f"{len(b.rows)} group" + ("s" if len(b.rows) != 1 else "")
        return Markup(el("h3", None, b.title, el("span", {"class": "muted small"}, f"  ({shown})")) + self.table(table_id, heads, rows))

    def breakdown_section(self) -> Markup:
        head = el("div", {"class": "sechead"}, el("h2", None, "Breakdown"), el("span", {"class": "sub"}, "mean score and flags per group"))
        parts = [self.breakdown_table(self.d.by_source, "tbl-source")]
        for i, b in enumerate(self.d.by_metadata):
            parts.append(self.breakdown_table(b, f"tbl-meta-{i + 1}"))
        if not self.d.by_metadata:
            parts.append(el("p", {"class": "muted small"}, "No metadata column with a few distinct values (such as a category) to break down by."))
        return el("section", {"id": "breakdown"}, head, parts)

    def rejects_section(self) -> Markup:
        if not self.d.n_rejects:
            return Markup("")
        rows = [
            el("tr", None, el("td", {"class": "where mono"}, el("bdi", None, where(s, ln))), el("td", {"class": "excerpt"}, el("bdi", None, reason)))
            for s, ln, reason in self.d.rejects
        ]
        more = f"showing {len(rows)} of {self.d.n_rejects}" if self.d.n_rejects > len(rows) else f"{self.d.n_rejects}"
        head = el("div", {"class": "sechead"}, el("h2", None, "Rejected records"), el("span", {"class": "sub"}, more))
        table = el(
            "div",
            {"class": "tablewrap"},
            el("table", None, el("thead", None, el("tr", None, el("th", None, "source:line"), el("th", None, "reason"))), el("tbody", None, rows)),
        )
        return el("section", {"id": "rejects"}, head, table)

    def footer(self) -> Markup:
        v = self.d.versions
        pieces = [f"persona-audit {v.get('persona-audit', '?')}", f"torch {v.get('torch', '?')}", f"transformers {v.get('transformers', '?')}"]
        return el(
            "footer",
            None,
            f"Rebuild this page with: audit report {self.d.run.run_id}  \u00b7  made by "
            + ", ".join(pieces)
            + f"  \u00b7  full results: the run's scores.parquet and the DuckDB store (top {self.d.top_n} samples per trait shown here)",
        )

    def render(self) -> str:
        run = self.d.run
        title = f"persona-audit report \u00b7 {os.path.basename((run.dataset or '').rstrip('/')) or run.run_id} \u00b7 {run.run_id}"
        head = Markup(
            '<meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="color-scheme" content="light dark">'
            '<meta name="referrer" content="no-referrer">'
        )
        body = el(
            "body",
            None,
            self.header(),
            el(
                "main",
                None,
                self.toc(),
                self.overview(),
                [self.trait_section(t) for t in self.d.traits],
                self.cross_section(),
                self.breakdown_section(),
                self.rejects_section(),
                self.footer(),
            ),
            Markup(f"<script>{JS}</script>"),
        )
        return "<!DOCTYPE html>\n" + el("html", {"lang": "en"}, el("head", None, head, el("title", None, title), Markup(f"<style>{CSS}</style>")), body) + "\n"


def render_page(data: ReportData) -> str:
    return Page(data).render()
