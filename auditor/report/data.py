"""What the report shows, read from the DuckDB store alone (never the model).

Everything is fetched in a fixed order (explicit ``ORDER BY`` with a unique tie-breaker)
on a single-threaded connection, so the same run always gives the same numbers to the
last bit and the page renders byte for byte the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from auditor.score import ScoreMeaning
from auditor.store import report_queries as rq
from auditor.store.queries import RunInfo, decode_json

# A metadata key gets a breakdown table when it has at most this many distinct values.
MAX_METADATA_VALUES = 40
MAX_METADATA_KEYS = 3
MAX_SOURCES = 100
MAX_REJECTS = 100


@dataclass
class TopSample:
    """One row of a trait's ranked table, with what its detail panel shows."""

    rank: int
    sample_id: str
    source: str
    line: int | None
    turn: int
    score: float | None
    delta: float | None
    proj_response: float | None
    proj_base: float | None
    flagged: bool
    context: list[dict[str, Any]]
    response: str
    base_response: str | None
    metadata: dict[str, Any]
    tokens: list[str] | None
    token_values: list[float] | None
    n_response_tokens: int | None
    n_base_tokens: int | None
    # trait -> (score, flagged) for every trait of the run
    all_scores: dict[str, tuple[float | None, bool]] = field(default_factory=dict)
    # preference pairs: the rejected answer, its projection and heat map; margin = proj_response - proj_rejected
    rejected_response: str | None = None
    proj_rejected: float | None = None
    margin: float | None = None
    rejected_tokens: list[str] | None = None
    rejected_token_values: list[float] | None = None
    n_rejected_tokens: int | None = None


@dataclass
class Histogram:
    lo: float
    hi: float
    counts: list[int]

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / len(self.counts)


@dataclass
class TraitData:
    trait: str
    layer: int | None
    meaning: ScoreMeaning  # what the score is: its column and labels
    threshold: float | None
    threshold_source: str
    vector_path: str | None
    vector_sha256: str | None
    n: int  # scored samples
    n_with_score: int  # of which have a score (a base response that tokenized to nothing has no delta)
    n_flagged: int
    mean_score: float | None
    mean_delta: float | None
    mean_proj_response: float | None
    mean_proj_base: float | None
    max_score: float | None
    min_score: float | None
    calibration_mean: float | None
    histogram: Histogram | None
    top: list[TopSample]


@dataclass
class CrossRow:
    sample_id: str
    source: str
    line: int | None
    n_flagged: int
    scores: dict[str, tuple[float | None, bool]]
    excerpt: str


@dataclass
class GroupRow:
    """One row of a breakdown: a source file or a metadata value."""

    key: str
    n: int
    per_trait: dict[str, tuple[float | None, int]]  # trait -> (mean score, flagged count)


@dataclass
class Breakdown:
    title: str
    column: str
    rows: list[GroupRow]
    n_groups: int


@dataclass
class ReportData:
    run: RunInfo
    started_at: Any
    finished_at: Any
    model_fingerprint: str | None
    dtype: str | None
    device: str | None
    timings: dict[str, float]
    versions: dict[str, str]
    traits: list[TraitData]
    cross: list[CrossRow]
    n_cross: int
    coflags: dict[tuple[str, str], int]
    by_source: Breakdown
    by_metadata: list[Breakdown]
    rejects: list[tuple[str, int | None, str]]
    n_rejects: int
    top_n: int


def excerpt_source(context: list[dict[str, Any]]) -> str:
    """The text a ranked table shows for a sample's prompt: its last user message."""
    for msg in reversed(context):
        if msg.get("role") == "user":
            return str(msg.get("content", ""))
    return str(context[-1].get("content", "")) if context else ""


def _histogram(con: Any, run_id: str, trait: str, col: str, lo: float, hi: float, n: int, marks: list[float]) -> Histogram:
    """Counts of ``col`` in equal bins over [lo, hi], widened to show marks that lie close by."""
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    for m in marks:
        # A threshold or calibration mean just outside the data still belongs on the chart;
        # one far outside would squash every bar, so the chart points to it instead.
        if lo - 0.5 * span <= m < lo:
            lo = m
        elif hi < m <= hi + 0.5 * span:
            hi = m
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = max(8, min(40, int(math.ceil(math.sqrt(n))) * 2))
    width = (hi - lo) / bins
    counts = [0] * bins
    for b, c in rq.histogram_counts(con, run_id, trait, col, lo, width, bins):
        counts[int(b)] = int(c)
    return Histogram(lo, hi, counts)


def _trait_data(con: Any, run: RunInfo, trait: str, top_n: int) -> TraitData:
    meaning = run.score(trait)
    col = meaning.column
    info = run.vectors.get(trait, {})
    n, n_with, n_flagged, mean_delta, mean_proj, mean_base, mean_margin, layer = rq.trait_totals(con, run.run_id, trait, col, run.pairs)
    lo, hi = rq.score_range(con, run.run_id, trait, col)
    threshold = run.threshold(trait)
    calibration_mean = run.calibration_mean(trait)
    hist = None
    if n_with:
        marks = [m for m in (threshold, calibration_mean) if m is not None]
        hist = _histogram(con, run.run_id, trait, col, float(lo), float(hi), int(n_with), marks)
    top = _top_samples(con, run, trait, top_n) if top_n > 0 else []
    return TraitData(
        trait=trait,
        layer=info.get("layer", layer),
        meaning=meaning,
        threshold=threshold,
        threshold_source=str(info.get("threshold_source") or ""),
        vector_path=info.get("path"),
        vector_sha256=info.get("sha256"),
        n=int(n),
        n_with_score=int(n_with),
        n_flagged=int(n_flagged),
        mean_score=meaning.pick(mean_delta, mean_proj, mean_margin),
        mean_delta=mean_delta,
        mean_proj_response=mean_proj,
        mean_proj_base=mean_base,
        max_score=hi,
        min_score=lo,
        calibration_mean=calibration_mean,
        histogram=hist,
        top=top,
    )


def _optional_list(values: Any) -> list | None:
    return list(values) if values is not None else None


def _top_sample(meaning: ScoreMeaning, row: tuple) -> TopSample:
    """One row of :func:`auditor.store.report_queries.top_sample_rows` as a ranked-table entry."""
    rank, sid, source, line, turn, delta, pr, pb, flagged, context, response, base, metadata, tokens, values, n_resp, n_base = row[:17]
    rejected, prej, margin, rtokens, rvalues, n_rej = row[17:]
    return TopSample(
        rank=int(rank),
        sample_id=sid,
        source=source or "",
        line=line,
        turn=int(turn or 0),
        score=meaning.pick(delta, pr, margin),
        delta=delta,
        proj_response=pr,
        proj_base=pb,
        flagged=bool(flagged),
        context=decode_json(context, []),
        response=response or "",
        base_response=base,
        metadata=decode_json(metadata, {}),
        tokens=_optional_list(tokens),
        token_values=_optional_list(values),
        n_response_tokens=n_resp,
        n_base_tokens=n_base,
        rejected_response=rejected,
        proj_rejected=prej,
        margin=margin,
        rejected_tokens=_optional_list(rtokens),
        rejected_token_values=_optional_list(rvalues),
        n_rejected_tokens=n_rej,
    )


def _top_samples(con: Any, run: RunInfo, trait: str, top_n: int) -> list[TopSample]:
    # The ranking is the store's top_samples view: the run's flag score, NULLs last, then id.
    meaning = run.score(trait)
    return [_top_sample(meaning, row) for row in rq.top_sample_rows(con, run.run_id, trait, top_n, run.pairs)]


def _scores_by_sample(con: Any, run: RunInfo, sample_ids: list[str]) -> dict[str, dict[str, tuple[float | None, bool]]]:
    """sample id -> trait -> (the run's score, flagged), for every trait of these samples."""
    found: dict[str, dict[str, tuple[float | None, bool]]] = {}
    for sid, trait, delta, pr, margin, flagged in rq.sample_scores(con, run.run_id, sample_ids, run.pairs):
        found.setdefault(sid, {})[trait] = (run.score(trait).pick(delta, pr, margin), bool(flagged))
    return found


def _attach_all_scores(con: Any, run: RunInfo, traits: list[TraitData]) -> None:
    """Every trait's score of each shown sample (the detail panel lists them all)."""
    wanted = sorted({s.sample_id for t in traits for s in t.top})
    if not wanted:
        return
    found = _scores_by_sample(con, run, wanted)
    for t in traits:
        for s in t.top:
            s.all_scores = found.get(s.sample_id, {})


def _cross(con: Any, run: RunInfo, trait_names: list[str], limit: int) -> tuple[list[CrossRow], int, dict[tuple[str, str], int]]:
    """Samples flagged for two traits or more, and how often each pair of traits is flagged together."""
    n_cross = rq.count_multi_flagged(con, run.run_id)
    ids = rq.multi_flagged(con, run.run_id, limit)
    rows: list[CrossRow] = []
    if ids:
        wanted = [sid for sid, _ in ids]
        meta = {sid: (source, line, decode_json(context, [])) for sid, source, line, context in rq.sample_places(con, run.run_id, wanted)}
        scores = _scores_by_sample(con, run, wanted)
        for sid, k in ids:
            source, line, context = meta.get(sid, ("", None, []))
            rows.append(CrossRow(sid, source or "", line, int(k), scores.get(sid, {}), excerpt_source(context)))
    coflags = {(a, b): int(c) for a, b, c in rq.coflag_counts(con, run.run_id)}
    return rows, int(n_cross), coflags


def _group_rows(run: RunInfo, rows: list[tuple]) -> dict[str, GroupRow]:
    """Rows (key, trait, n, avg delta, avg proj_response, flagged[, avg margin]) folded into one GroupRow per key."""
    out: dict[str, GroupRow] = {}
    for key, trait, n, mean_delta, mean_proj, flagged, *margin in rows:
        key = "" if key is None else str(key)
        row = out.setdefault(key, GroupRow(key, int(n), {}))
        row.per_trait[trait] = (run.score(trait).pick(mean_delta, mean_proj, margin[0] if margin else None), int(flagged))
    return out


def _by_source(con: Any, run: RunInfo, trait_names: list[str]) -> Breakdown:
    rows = _group_rows(run, rq.by_source_rows(con, run.run_id, run.pairs))
    ordered = sorted(rows.values(), key=lambda r: (-r.n, r.key))
    return Breakdown("By source file", "source", ordered[:MAX_SOURCES], len(ordered))


def _by_metadata(con: Any, run: RunInfo, trait_names: list[str]) -> list[Breakdown]:
    """One breakdown per metadata key with few distinct scalar values (a category, a language...)."""
    out = []
    for key, _k in rq.category_keys(con, run.run_id, MAX_METADATA_VALUES, MAX_METADATA_KEYS):
        rows = _group_rows(run, rq.by_metadata_rows(con, run.run_id, key, run.pairs))
        ordered = sorted(rows.values(), key=lambda r: (-r.n, r.key))
        out.append(Breakdown(f"By metadata: {key}", key, ordered, len(ordered)))
    return out


def load_report_data(con: Any, run: RunInfo, top_n: int) -> ReportData:
    """Everything the page shows, for one complete run."""
    rq.single_threaded(con)
    started_at, finished_at, fingerprint, dtype, device, timings, versions = rq.run_details(con, run.run_id)
    trait_names = rq.scored_traits(con, run.run_id)
    for t in sorted(run.vectors):
        if t not in trait_names:  # a trait with no scored sample still gets its (empty) section
            trait_names.append(t)
    trait_names.sort()
    traits = [_trait_data(con, run, t, top_n) for t in trait_names]
    _attach_all_scores(con, run, traits)
    cross, n_cross, coflags = _cross(con, run, trait_names, max(top_n, 1))
    n_rejects = rq.count_rejects(con, run.run_id)
    rejects = rq.first_rejects(con, run.run_id, MAX_REJECTS)
    return ReportData(
        run=run,
        started_at=started_at,
        finished_at=finished_at,
        model_fingerprint=fingerprint,
        dtype=dtype,
        device=device,
        timings=decode_json(timings, {}),
        versions=decode_json(versions, {}),
        traits=traits,
        cross=cross,
        n_cross=n_cross,
        coflags=coflags,
        by_source=_by_source(con, run, trait_names),
        by_metadata=_by_metadata(con, run, trait_names),
        rejects=[(s or "", ln, r or "") for s, ln, r in rejects],
        n_rejects=int(n_rejects),
        top_n=top_n,
    )
