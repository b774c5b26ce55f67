"""``scan``: source -> samples -> batches -> model -> activations -> scores -> store.

The dataset is read as a stream and cut into chunks of ``chunk_size`` records. Each
chunk is scored by :class:`ChunkScorer` (a pure function of the chunk, the cached base
responses and the model, so the local loop, shards and Ray workers all run the same
code and form the same batches), written as a Parquet part, and committed to the DuckDB
database in one transaction together with a ledger row. That ledger is what ``--resume``
reads: a killed scan restarts after its last committed chunk and ends with exactly the
results of an uninterrupted run. A finished run concatenates the parts into
``scores.parquet``, computes the summary from the store, and renders the report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from auditor.config import ScanConfig  # declared there; importable from here too
from auditor.errors import AuditorError, InputError
from auditor.score import ScoreMeaning
from auditor.sources import Rejected, Sample, iter_samples
from auditor.store.runs import WRITE_WAIT, commit_chunk, lookup_base  # noqa: F401 (WRITE_WAIT: part of this module's API)
from auditor.store.schema import wide_schema


@dataclass
class TraitSummary:
    trait: str
    layer: int
    score: str  # the column flags are based on: delta, proj_response or margin
    threshold: float | None
    threshold_source: str
    mean_delta: float | None
    mean_proj_response: float | None
    n_flagged: int
    n: int
    calibration_mean: float | None = None
    top: list[dict[str, Any]] = field(default_factory=list)
    mean_margin: float | None = None  # preference pairs

    @property
    def mean_score(self) -> float | None:
        """The dataset-level mean of the score flags use."""
        return {"delta": self.mean_delta, "proj_response": self.mean_proj_response, "margin": self.mean_margin}.get(self.score)


@dataclass
class ScanResult:
    run_id: str
    out_dir: str
    parquet_path: str
    report_path: str | None
    db_path: str
    n_read: int
    n_scored: int
    n_rejected: int
    n_generated: int
    n_cached: int
    seconds: float
    tokens: int
    summaries: list[TraitSummary]
    model_name: str
    baseline: str  # what delta subtracts (ScanConfig.baseline); only "generate" makes base responses
    rejects: list[Rejected] = field(default_factory=list)
    resumed_chunks: int = 0
    n_reused: int = 0  # of n_scored: taken from an earlier complete run, not computed
    heat_maps: dict[str, int] = field(default_factory=dict)  # where the report's heat maps came from: forward, earlier_run, second_pass

    @property
    def n_computed(self) -> int:
        return self.n_scored - self.n_reused

    @property
    def scores(self):
        import polars as pl

        return pl.read_parquet(self.parquet_path)


@dataclass
class ScoredSample:
    """One sample through the chunk step: its encoded response, its base, and per-trait projections.

    ``proj_base`` is empty with --baseline none; a trait whose base response was empty maps to None.
    A sample reused from an earlier run (incremental scans) has no ``row``: its token counts
    and projections are the stored ones.
    """

    sample: Sample
    row: Any  # auditor.activations.EncodedRow of prompt + response; None when reused
    base_response: str | None = None
    n_base_tokens: int | None = None
    proj_response: dict[str, float] = field(default_factory=dict)
    proj_base: dict[str, float | None] = field(default_factory=dict)
    # preference pairs: the rejected answer's encoded row and projections (proj_response is the chosen one's)
    rejected_row: Any = None
    proj_rejected: dict[str, float] = field(default_factory=dict)
    n_prompt_tokens: int | None = None
    n_response_tokens: int | None = None
    token_values: dict[str, list[float]] | None = None  # per response token and trait, for the heat maps (computed samples)
    n_rejected_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.row is not None:
            self.n_prompt_tokens, self.n_response_tokens = self.row.start, self.row.end - self.row.start
        if self.rejected_row is not None:
            self.n_rejected_tokens = self.rejected_row.end - self.rejected_row.start

    @classmethod
    def reused(cls, sample: Sample, stored: Any) -> ScoredSample:
        """A sample whose values come from an earlier run (``auditor.store.reuse.SampleValues``)."""
        return cls(
            sample,
            None,
            base_response=stored.base_response,
            n_base_tokens=stored.n_base_tokens,
            proj_response=dict(stored.proj_response),
            proj_base=dict(stored.proj_base),
            n_prompt_tokens=stored.n_prompt_tokens,
            n_response_tokens=stored.n_response_tokens,
            proj_rejected=dict(stored.proj_rejected or {}),
            n_rejected_tokens=stored.n_rejected_tokens,
        )


@dataclass
class ChunkOutput:
    """Everything one chunk adds to the store."""

    index: int
    fingerprint: str
    wide: Any  # pyarrow.Table: the scores.parquet rows of this chunk
    samples: Any  # pyarrow.Table for the samples table
    scores: Any  # pyarrow.Table for the scores table (long form)
    rejects: list[Rejected]
    new_base: Any  # pyarrow.Table of base responses generated for this chunk (cache rows)
    n_read: int
    n_scored: int
    n_generated: int
    n_cached: int
    tokens: int
    seconds: dict[str, float]
    n_reused: int = 0
    heat: Any = None  # pyarrow.Table (store.schema.heat_part_schema): this chunk's heat-map candidates

    @property
    def n_rejected(self) -> int:
        return len(self.rejects)


def fail_on_reject(rejects: list[Rejected], on_error: str) -> None:
    """With ``--on-error fail``, a chunk's first bad record stops the scan (its own error, or one naming its place)."""
    if rejects and on_error == "fail":
        first = rejects[0]
        raise first.error or InputError(first.source, first.line, first.reason)


@dataclass
class ChunkWork:
    """One chunk, ready for the chunk step: its records, what earlier runs already scored, the prepared rest and its cached base responses."""

    index: int
    items: list[Sample | Rejected]
    reused: dict[str, Any]  # content hash -> stored values (auditor.store.reuse.SampleValues)
    prepared: tuple[list[Any], list[Rejected]]  # ChunkScorer.prepare: (samples to compute, rejects)
    cached: dict[str, tuple[str, int]]  # prompt hash -> cached base response

    @property
    def n_compute(self) -> int:
        return len(self.prepared[0])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("persona-audit", "torch", "transformers", "duckdb", "pyarrow", "polars"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def make_run_id(source: str) -> str:
    stem = os.path.basename(os.path.normpath(source.replace("hf:", "hf-"))).split(".")[0] or "dataset"
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:40]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    salt = hashlib.sha256(f"{source}{time.time_ns()}{os.getpid()}".encode()).hexdigest()[:6]
    return f"{stem}-{stamp}-{salt}"


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def chunk_fingerprint(items: list[Sample | Rejected]) -> str:
    """Identifies a chunk's input: a resumed scan checks the dataset did not change."""
    h = hashlib.sha256()
    for item in items:
        h.update((f"S{item.id}\x00{item.content_hash}" if isinstance(item, Sample) else f"R{item.source}:{item.line}\x00{item.reason}").encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()[:32]


def build_prompt(tokenizer: Any, sample: Sample) -> str:
    """``chat_template(x, add_generation_prompt=True)`` as text."""
    try:
        return tokenizer.apply_chat_template(list(sample.context), tokenize=False, add_generation_prompt=True)
    except Exception as e:  # templates raise their own errors (e.g. roles not alternating)
        has_system = any(m.get("role") == "system" for m in sample.context)
        fix = (
            "this model's template takes no system message: merge it into the first user message, or skip such records with --on-error skip"
            if has_system and "system" in str(e).lower()
            else "check the roles alternate user/assistant"
        )
        raise InputError(sample.source, sample.line, f"the model's chat template rejects this conversation ({e})", fix) from None


def resolve_thresholds(config: ScanConfig, vectors: list[Any]) -> tuple[ScoreMeaning, dict[str, tuple[float | None, str]]]:
    """The score flags use, and per trait (threshold, where it came from)."""
    meaning = ScoreMeaning.of(config.baseline, config.flag_on, pairs=bool(config.pairs))
    out: dict[str, tuple[float | None, str]] = {}
    for pv in vectors:
        given = config.thresholds.get(pv.trait, config.thresholds.get("*"))
        if given is not None:
            out[pv.trait] = (float(given), "--threshold")
            continue
        t = meaning.threshold(pv.calibration, pv.layer, config.flag_percentile)
        of = "the calibration set's delta (generate), centred on its median" if meaning.kind == "margin" else "the calibration set"
        src = (
            f"p{config.flag_percentile:g} of {of}"
            if t is not None
            else "none: the vector has no calibration for this baseline and layer; pass --threshold TRAIT=VALUE"
        )
        out[pv.trait] = (t, src)
    return meaning, out


def vector_hashes(vectors: list[Any]) -> dict[str, str]:
    """trait -> the vector file's sha256 and the layer used."""
    return {pv.trait: f"{pv.sha256}@{pv.layer}" for pv in vectors}


class ChunkScorer:
    """Scores one chunk of samples: base responses (cached or generated), one forward, flags.

    Holds no database connection: cached base responses come in, new ones go out in
    the ChunkOutput, so the same object runs in the local loop, a shard or a Ray actor.
    """

    def __init__(self, config: ScanConfig, lm: Any, vectors: list[Any], run_id: str):
        from auditor.generation import GenerationSettings, default_generation_batch_size, resolve_generation_dtype
        from auditor.scoring import default_batch_tokens

        self.config = config
        self.lm = lm
        self.vectors = vectors
        self.run_id = run_id
        from auditor.scoring import vector_targets

        self.directions, self.references = vector_targets(vectors)
        self.meaning, self.thresholds = resolve_thresholds(config, vectors)
        self.generation_dtype = resolve_generation_dtype(config.generation_dtype, lm)
        self.settings_key = GenerationSettings(config.max_new_tokens, config.max_prompt_tokens, self.generation_dtype, config.generator).key()
        self._generation_lm = lm if self.generation_dtype == lm.dtype else None  # loaded when first needed (a Ray driver never needs it)
        # 0 means: what suits this process's device (a Ray actor may hold another one).
        self.batch_tokens = config.batch_tokens or default_batch_tokens(lm)
        self.generation_batch_size = config.generation_batch_size or default_generation_batch_size(lm, config.max_new_tokens, config.max_prompt_tokens)
        self.max_len = lm.max_length
        self.pairs = bool(config.pairs)
        self.schema = wide_schema([pv.trait for pv in vectors], self.pairs)
        self.reuse_key = config.reuse_key(lm, vector_hashes(vectors), self.generation_dtype)
        self.layers_path = config.layers_path or lm.layers_path  # where the decoder blocks are; None: found by name

    def generation_lm(self) -> Any:
        """The model that generates base responses: the scoring model, or its copy in the generation dtype."""
        if self._generation_lm is None:
            from auditor.model import load_model

            lm = self.lm
            self._generation_lm = load_model(
                None if lm.source == "embedded" else lm.source,
                dtype=self.generation_dtype,
                device=lm.device,
                trust_remote_code=self.config.trust_remote_code,
                layers_path=self.layers_path,
            )
        return self._generation_lm

    def prepare(self, items: list[Sample | Rejected], skip: set[str] | None = None) -> tuple[list[tuple[Sample, str, Any]], list[Rejected]]:
        """Prompts and token ids of the usable samples; everything else becomes a Rejected.

        Samples whose content hash is in ``skip`` (reused from an earlier run) are left out.
        """
        from auditor.activations import encode_pair

        tok = self.lm.tokenizer
        cfg = self.config
        ready, rejects = [], []
        for item in items:
            if isinstance(item, Rejected):
                rejects.append(item)
                continue
            if skip and item.content_hash in skip:
                continue
            try:
                prompt = build_prompt(tok, item)
                row = encode_pair(tok, prompt, item.response, cfg.max_prompt_tokens)
                if row.end <= row.start:
                    raise InputError(item.source, item.line, "the response tokenizes to zero tokens", "give it a non-empty response")
                budget = row.length + (cfg.max_new_tokens if cfg.baseline == "generate" else 0)
                if self.max_len and budget > self.max_len:
                    raise InputError(
                        item.source,
                        item.line,
                        f"{row.length} tokens (plus {cfg.max_new_tokens} to generate) is longer than the model's context ({self.max_len})",
                        "shorten the sample, lower --max-prompt-tokens or --max-new-tokens",
                    )
                rejected_row = self._rejected_row(item, prompt) if self.pairs else None
            except InputError as e:
                rejects.append(Rejected.of(e))
                continue
            ready.append((item, prompt, row, rejected_row))
        return ready, rejects

    def _rejected_row(self, item: Sample, prompt: str) -> Any:
        """The rejected answer of a pair, encoded after the same prompt as the chosen one."""
        from auditor.activations import encode_pair

        row = encode_pair(self.lm.tokenizer, prompt, item.rejected or "", self.config.max_prompt_tokens)
        if row.end <= row.start:
            raise InputError(item.source, item.line, "the rejected answer tokenizes to zero tokens", "give it a non-empty rejected answer")
        if self.max_len and row.length > self.max_len:
            raise InputError(
                item.source, item.line, f"the rejected answer's {row.length} tokens are longer than the model's context ({self.max_len})", "shorten it"
            )
        return row

    def prompt_hashes(self, ready: list[tuple[Sample, str, Any]]) -> list[str]:
        from auditor.generation import prompt_hash

        return sorted({prompt_hash(p) for _, p, *_ in ready})

    def score(
        self,
        index: int,
        items: list[Sample | Rejected],
        cached: dict[str, tuple[str, int]] | None = None,
        prepared: tuple | None = None,
        reused: dict[str, Any] | None = None,
    ) -> ChunkOutput:
        """The chunk step for one chunk: prepare -> base responses -> one forward -> flags -> rows for the store.

        ``reused``: content hash -> values an earlier complete run stored (auditor.store.reuse);
        those samples skip the first two steps.
        """
        reused = reused or {}
        prepared = prepared if prepared is not None else self.prepare(items, skip=set(reused))
        fail_on_reject(prepared[1], self.config.on_error)
        return self.score_group([ChunkWork(index, items, reused, prepared, cached or {})])[0]

    def score_group(self, group: list[ChunkWork]) -> list[ChunkOutput]:
        """The chunk step for chunks planned together (``plan_work``, whose rejects were checked against
        ``--on-error`` there): one generation and one forward over all their samples to compute, then each
        chunk's rows on their own (what the store commits)."""
        ready = [r for work in group for r in work.prepared[0]]
        cached = {k: v for work in group for k, v in work.cached.items()}
        base, new_base, n_cached, seconds = self.base_responses(ready, cached)
        t0 = time.perf_counter()
        computed, tokens = self.forward(ready, base)
        seconds["forward"] = time.perf_counter() - t0
        outputs, start = [], 0
        for k, work in enumerate(group):
            mine = computed[start : start + len(work.prepared[0])]
            start += len(work.prepared[0])
            # The group's shared costs (generation, cache hits, tokens, seconds) are counted once, on its first chunk.
            shared = k == 0
            outputs.append(
                self.chunk_output(work, mine, new_base if shared else {}, n_cached if shared else 0, tokens if shared else 0, seconds if shared else {})
            )
        return outputs

    def chunk_output(
        self, work: ChunkWork, computed: list[ScoredSample], new_base: dict[str, tuple[str, int]], n_cached: int, tokens: int, seconds: dict[str, float]
    ) -> ChunkOutput:
        """Step 3 for one chunk: its samples in dataset order (with the reused ones), rows, heat-map candidates."""
        from auditor.heatmaps import chunk_candidates

        scored = self.in_order(work.items, computed, work.reused)
        wide, samples, scores = self.rows(scored)
        heat = chunk_candidates(
            [
                (x.sample.id, {t: self.score_of(x, t) for t in self.directions}, x.row.ids[x.row.start : x.row.end], x.token_values)
                for x in computed
                if x.token_values is not None
            ],
            list(self.directions),
            self.config.top_n,
        )
        return ChunkOutput(
            index=work.index,
            fingerprint=chunk_fingerprint(work.items),
            wide=wide,
            samples=samples,
            scores=scores,
            rejects=work.prepared[1],
            new_base=self.cache_rows(new_base),
            n_read=len(work.items),
            n_scored=len(scored),
            n_generated=len(new_base),
            n_cached=n_cached,
            tokens=tokens + sum(n for _, n in new_base.values()),
            seconds={"generate": seconds.get("generate", 0.0), "forward": seconds.get("forward", 0.0)},
            n_reused=len(scored) - len(computed),
            heat=heat,
        )

    @staticmethod
    def in_order(items: list[Sample | Rejected], computed: list[ScoredSample], reused: dict[str, Any]) -> list[ScoredSample]:
        """The chunk's scored samples in dataset order: computed ones, and the reused ones from their stored values."""
        by_id = {x.sample.id: x for x in computed}
        out = []
        for item in items:
            if isinstance(item, Sample):
                if item.id in by_id:
                    out.append(by_id[item.id])
                elif item.content_hash in reused:
                    out.append(ScoredSample.reused(item, reused[item.content_hash]))
        return out

    @staticmethod
    def delta(item: ScoredSample, trait: str) -> float | None:
        pb = item.proj_base.get(trait)
        return item.proj_response[trait] - pb if pb is not None else None

    @staticmethod
    def margin(item: ScoredSample, trait: str) -> float | None:
        prej = item.proj_rejected.get(trait)
        return item.proj_response[trait] - prej if prej is not None else None

    def score_of(self, item: ScoredSample, trait: str) -> float | None:
        """The value this run flags and ranks on (``ScoreMeaning.pick``)."""
        return self.meaning.pick(self.delta(item, trait), item.proj_response[trait], self.margin(item, trait))

    def base_responses(
        self, ready: list[tuple[Sample, str, Any]], cached: dict[str, tuple[str, int]]
    ) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]], int, dict[str, float]]:
        """Step 1: every prompt's base response (prompt hash -> (text, n_tokens)), generating those not cached.

        Returns (all base responses, the newly generated ones, how many were cached, seconds).
        """
        from auditor.generation import generate_base, prompt_hash, prompt_ids

        cfg = self.config
        seconds = {"generate": 0.0, "forward": 0.0}
        base = dict(cached)
        new_base: dict[str, tuple[str, int]] = {}
        if cfg.baseline != "generate" or not ready:
            return base, new_base, 0, seconds
        hashes = [prompt_hash(p) for _, p, *_ in ready]
        n_cached = sum(1 for h in hashes if h in base)
        missing: dict[str, str] = {}
        for (_, p, *_), h in zip(ready, hashes):
            if h not in base and h not in missing:
                missing[h] = p
        if missing:
            t0 = time.perf_counter()
            keys = list(missing)
            prompts = [prompt_ids(self.lm, missing[h], cfg.max_prompt_tokens) for h in keys]
            gen = generate_base(self.generation_lm(), prompts, cfg.max_new_tokens, self.generation_batch_size, cfg.generator, cfg.trust_remote_code)
            seconds["generate"] = time.perf_counter() - t0
            for h, result in zip(keys, gen):
                base[h] = new_base[h] = result
        return base, new_base, n_cached, seconds

    def forward(self, ready: list[tuple[Sample, str, Any]], base: dict[str, tuple[str, int]]) -> tuple[list[ScoredSample], int]:
        """Step 2: one forward over the dataset responses (both answers of a pair) and the base responses together; (scored samples, tokens)."""
        from auditor.activations import encode_pair
        from auditor.generation import prompt_hash
        from auditor.scoring import score_rows

        cfg, lm, tok = self.config, self.lm, self.lm.tokenizer
        rows = [row for _, _, row, _ in ready]
        rejected_rows = [rrow for _, _, _, rrow in ready] if self.pairs else []
        base_rows: list[Any] = []
        base_at: list[int | None] = []
        if cfg.baseline == "generate":
            for _, p, *_ in ready:
                brow = encode_pair(tok, p, base[prompt_hash(p)][0], cfg.max_prompt_tokens)
                if brow.end > brow.start:
                    base_at.append(len(rows) + len(rejected_rows) + len(base_rows))
                    base_rows.append(brow)
                else:
                    base_at.append(None)  # the model answered nothing: no activation, so no delta
        all_rows = rows + rejected_rows + base_rows
        # The dataset responses' per-token projections feed the report's heat maps (auditor.heatmaps);
        # a pair run's heat maps show both answers and come from heat_map_tokens' second pass.
        want_tokens = [cfg.top_n > 0 and not self.pairs] * len(rows) + [False] * (len(rejected_rows) + len(base_rows))
        results = (
            score_rows(lm.model, all_rows, self.directions, tok.pad_token_id, self.batch_tokens, want_tokens, self.layers_path, self.references)
            if ready
            else []
        )
        scored = []
        for i, (sample, p, row, rrow) in enumerate(ready):
            res = results[i]
            item = ScoredSample(sample, row, proj_response=dict(res.proj), token_values=res.token_values)
            if self.pairs:
                item = ScoredSample(sample, row, proj_response=dict(res.proj), rejected_row=rrow, proj_rejected=dict(results[len(rows) + i].proj))
            if cfg.baseline == "generate":
                bi = base_at[i]
                item.base_response = base[prompt_hash(p)][0]
                item.n_base_tokens = (all_rows[bi].end - all_rows[bi].start) if bi is not None else None
                item.proj_base = {t: (results[bi].proj[t] if bi is not None else None) for t in self.directions}
            elif cfg.baseline == "prompt-last":
                item.proj_base = dict(res.prompt_last)
            scored.append(item)
        return scored, sum(r.length for r in all_rows)

    def rows(self, scored: list[ScoredSample]) -> tuple[Any, Any, Any]:
        """Step 3: flags, and the Arrow tables a chunk adds (scores.parquet rows, samples, long-form scores)."""
        import pyarrow as pa

        from auditor.store.schema import SAMPLE_COLUMNS, SCORE_COLUMNS, samples_schema, scores_schema

        wide: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        samples: dict[str, list[Any]] = {k: [] for k in SAMPLE_COLUMNS}
        long: dict[str, list[Any]] = {k: [] for k in SCORE_COLUMNS}
        for item in scored:
            sample = item.sample
            common = {
                "sample_id": sample.id,
                "source": sample.source,
                "line": sample.line,
                "turn": sample.turn,
                "content_hash": sample.content_hash,
                "n_prompt_tokens": item.n_prompt_tokens,
                "n_response_tokens": item.n_response_tokens,
                "n_base_tokens": item.n_base_tokens,
            }
            if self.pairs:
                common["n_rejected_tokens"] = item.n_rejected_tokens
            for k, v in common.items():
                wide[k].append(v)
                samples[k].append(v)
            if not self.pairs:
                samples["n_rejected_tokens"].append(None)
            samples["rejected_response"].append(sample.rejected)
            samples["run_id"].append(self.run_id)
            samples["context"].append(json.dumps(list(sample.context), ensure_ascii=False))
            samples["response"].append(sample.response)
            samples["base_response"].append(item.base_response)
            samples["metadata"].append(json.dumps(sample.metadata, ensure_ascii=False, sort_keys=True, default=str))
            for pv in self.vectors:
                t = pv.trait
                pr, pb = item.proj_response[t], item.proj_base.get(t)
                delta, prej, margin = self.delta(item, t), item.proj_rejected.get(t), self.margin(item, t)
                flagged = self.meaning.flags(self.score_of(item, t), self.thresholds[t][0])
                for col, val in (("proj_response", pr), ("proj_base", pb), ("delta", delta), ("flagged", flagged)):
                    wide[f"{t}_{col}"].append(val)
                    long[col].append(val)
                if self.pairs:
                    wide[f"{t}_proj_rejected"].append(prej)
                    wide[f"{t}_margin"].append(margin)
                long["proj_rejected"].append(prej)
                long["margin"].append(margin)
                long["run_id"].append(self.run_id)
                long["sample_id"].append(sample.id)
                long["trait"].append(t)
                long["layer"].append(pv.layer)
        return pa.table(wide, schema=self.schema), pa.table(samples, schema=samples_schema()), pa.table(long, schema=scores_schema())

    def cache_rows(self, new_base: dict[str, tuple[str, int]]) -> Any:
        """The base-response cache rows of newly generated responses."""
        import pyarrow as pa

        from auditor.store.schema import base_responses_schema

        now = _dt.datetime.now()
        keys = list(new_base)
        columns = {
            "model_fingerprint": [self.lm.fingerprint] * len(keys),
            "settings_key": [self.settings_key] * len(keys),
            "prompt_hash": keys,
            "response": [new_base[h][0] for h in keys],
            "n_tokens": [new_base[h][1] for h in keys],
            "created_at": [now] * len(keys),
        }
        return pa.table(columns, schema=base_responses_schema())


def open_run(config: ScanConfig, lm: Any, vectors: list[Any], scorer: ChunkScorer) -> tuple[str, str, dict[int, str]]:
    """Register a new run, or find the unfinished one to resume: (run_id, out_dir, done chunks)."""
    from auditor.store.runs import find_resumable, register_run, resume_run

    key = config.result_key(lm.fingerprint, vector_hashes(vectors))
    resumable = find_resumable(config.db, key) if config.resume else None
    if config.resume and resumable is None:
        raise AuditorError(f"nothing to resume in {config.db}: no unfinished run with these settings and this model; run the scan without --resume")
    if resumable:
        run_id, out_dir = resumable
        done = resume_run(config.db, run_id, out_dir)
    else:
        done = {}
        run_id = make_run_id(config.source)
        out_dir = config.out_dir or os.path.join(os.path.dirname(config.db) or ".", "runs", run_id)
        vector_info = {
            pv.trait: {
                "path": pv.path,
                "layer": pv.layer,
                "sha256": pv.sha256,
                "threshold": scorer.thresholds[pv.trait][0],
                "threshold_source": scorer.thresholds[pv.trait][1],
                "score": scorer.meaning.column,
            }
            for pv in vectors
        }
        row = {
            "run_id": run_id,
            "started_at": _dt.datetime.now(),
            "dataset": config.source,
            "model": lm.name,
            "model_fingerprint": lm.fingerprint,
            "baseline": config.baseline,
            "dtype": lm.dtype,
            "device": lm.device,
            "output_dir": out_dir,
            "config": json.dumps(asdict(config), sort_keys=True, default=str),
            "vectors": json.dumps(vector_info),
            "versions": json.dumps(_versions()),
            "result_key": key,
            "reuse_key": scorer.reuse_key,
        }
        register_run(config.db, row)
    scorer.run_id = run_id
    os.makedirs(os.path.join(out_dir, "parts"), exist_ok=True)
    return run_id, out_dir, done


def pending_chunks(config: ScanConfig, run_id: str, done: dict[int, str]) -> Iterator[tuple[int, list[Sample | Rejected]]]:
    """The chunks this process still has to score: its shard, minus committed chunks (checked unchanged).

    Raises once the stream ends if the dataset held no record at all, or if it now ends
    before a chunk the interrupted run had stored (the file was cut short).
    """
    from auditor.sources import no_records_error

    stream = iter_samples(
        config.source,
        fmt=config.format,
        score_all_turns=config.score_all_turns,
        split=config.split,
        config=config.hf_config,
        mapping=config.mapping(),
        limit=config.limit,
        sample=config.sample,
        seed=config.seed,
        pairs=bool(config.pairs),
    )
    last = -1
    for index, items in enumerate(chunked(stream, config.chunk_size)):
        last = index
        if index % config.num_shards != config.shard_index:
            continue
        if index in done:
            if done[index] != chunk_fingerprint(items):
                raise AuditorError(f"{config.source} changed since run {run_id} was interrupted (chunk {index} differs); scan it again without --resume")
            continue
        yield index, items
    if last < 0:
        raise no_records_error(config.source)
    beyond = sorted(i for i in done if i > last)
    if beyond:
        raise AuditorError(
            f"{config.source} changed since run {run_id} was interrupted (it now ends before chunk {beyond[0]}, which was already stored); scan it again without --resume"
        )


# Set by the CLI's SIGINT handler (auditor.cli.scan_cmd.interruptible). Libraries that catch
# the KeyboardInterrupt a Ctrl-C raises and raise an error of their own instead (DuckDB:
# RuntimeError("Query interrupted") or duckdb.InterruptException, depending on where the
# signal lands) must still leave the run marked interrupted, not failed.
SIGINT_RECEIVED = threading.Event()


def is_interruption(exc: BaseException) -> bool:
    """True when ``exc`` is how a Ctrl-C surfaced, whichever library it passed through."""
    if isinstance(exc, KeyboardInterrupt) or SIGINT_RECEIVED.is_set():
        return True
    if type(exc) is RuntimeError and str(exc) == "Query interrupted":
        return True
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.InterruptException)


def mark_run(config: ScanConfig, run_id: str, exc: BaseException) -> None:
    """Record why a run stopped (best effort: the database may be what failed)."""
    from auditor.store.runs import mark_stopped

    mark_stopped(config.db, run_id, "interrupted" if is_interruption(exc) else "failed")


def new_counts() -> dict[str, int]:
    return {"read": 0, "scored": 0, "rejected": 0, "generated": 0, "cached": 0, "tokens": 0, "reused": 0}


def lookup_reused(db: str, scorer: ChunkScorer, items: list[Sample | Rejected]) -> dict[str, Any]:
    """Stored values of this chunk's samples that an earlier complete run computed (none with reuse off)."""
    from auditor.store.reuse import find_reusable

    if not scorer.config.reuse:
        return {}
    return find_reusable(db, scorer.reuse_key, [i.content_hash for i in items if isinstance(i, Sample)], list(scorer.directions))


def add_counts(counts: dict[str, int], out: ChunkOutput) -> None:
    for k, v in (
        ("read", out.n_read),
        ("scored", out.n_scored),
        ("rejected", out.n_rejected),
        ("generated", out.n_generated),
        ("cached", out.n_cached),
        ("tokens", out.tokens),
        ("reused", out.n_reused),
    ):
        counts[k] += v


# A re-scan computes few samples per chunk; chunks are grouped until the group holds a chunk's worth to
# compute (one generation and one forward for all), at most this many chunks (the records they hold in memory).
MAX_CHUNKS_PER_GROUP = 64


def plan_work(config: ScanConfig, run_id: str, done: dict[int, str], scorer: ChunkScorer) -> Iterator[list[ChunkWork]]:
    """The pending chunks, prepared and grouped for the chunk step.

    A chunk with nothing reused is a group of its own (so a scan without reuse batches exactly
    as before); chunks with reused samples share one group until it holds ``chunk_size``
    samples to compute, so a re-scan that changed
    a few records runs one forward of full batches instead of a small one per chunk. Each chunk
    is still committed on its own (resume and the run's counts stay per chunk).
    """
    group: list[ChunkWork] = []
    for index, items in pending_chunks(config, run_id, done):
        reused = lookup_reused(config.db, scorer, items)
        prepared = scorer.prepare(items, skip=set(reused))
        fail_on_reject(prepared[1], config.on_error)  # before any work is spent on the group
        cached = lookup_base(config.db, scorer.lm.fingerprint, scorer.settings_key, scorer.prompt_hashes(prepared[0])) if config.baseline == "generate" else {}
        work = ChunkWork(index, items, reused, prepared, cached)
        if not reused:  # nothing reused: the chunk goes alone, batched exactly as in a scan without reuse
            if group:
                yield group
                group = []
            yield [work]
            continue
        group.append(work)
        if sum(w.n_compute for w in group) >= config.chunk_size or len(group) >= MAX_CHUNKS_PER_GROUP:
            yield group
            group = []
    if group:
        yield group


class LocalExecutor:
    """Runs the chunk step in this process, one group at a time."""

    def __init__(self, scorer: ChunkScorer):
        self.scorer = scorer
        self._finished: list[ChunkOutput] = []

    def submit(self, group: list[ChunkWork]) -> None:
        self._finished.extend(self.scorer.score_group(group))

    def finished(self) -> list[ChunkOutput]:
        """Outputs ready to commit (here: everything submitted)."""
        out, self._finished = self._finished, []
        return out

    def drain(self) -> list[ChunkOutput]:
        return self.finished()

    def token_values(self, rows: list[Any]) -> list[Any]:
        """Per-token projections of encoded rows (the heat maps' plain second pass)."""
        from auditor.scoring import score_rows

        sc = self.scorer
        return score_rows(sc.lm.model, rows, sc.directions, sc.lm.tokenizer.pad_token_id, sc.batch_tokens, [True] * len(rows), sc.layers_path)


def run_chunks(
    config: ScanConfig,
    run_id: str,
    done: dict[int, str],
    scorer: ChunkScorer,
    executor: Any,
    parts_dir: str,
    timings: dict[str, float],
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """The scan loop of every engine: plan the pending chunks, hand each group to ``executor``
    (``LocalExecutor``, or ``auditor.distributed.RayExecutor``), commit each chunk it returns.

    Returns the run's counts; marks the run interrupted or failed if anything stops it.
    """
    counts = new_counts()
    chunks_done = len(done)

    def commit(outputs: list[ChunkOutput]) -> None:
        nonlocal chunks_done
        for out in outputs:
            t0 = time.perf_counter()
            commit_chunk(config.db, run_id, parts_dir, out)
            timings["write"] += time.perf_counter() - t0
            timings["generate"] += out.seconds["generate"]
            timings["forward"] += out.seconds["forward"]
            add_counts(counts, out)
            chunks_done += 1
            if progress:
                progress(dict(counts, chunks_done=chunks_done))

    try:
        for group in plan_work(config, run_id, done, scorer):
            executor.submit(group)
            commit(executor.finished())
        commit(executor.drain())
    except BaseException as exc:
        mark_run(config, run_id, exc)
        raise
    return counts


def scan_run(config: ScanConfig, lm: Any = None, progress: Callable[[dict[str, Any]], None] | None = None) -> ScanResult:
    """Scan a dataset and store the results; see the module docstring."""
    from auditor.model import load_model
    from auditor.sources import check_not_empty, expand_paths

    config.validate()
    expand_paths(config.source)  # a missing file fails now, not after the model has loaded
    check_not_empty(config.source)  # so does an empty one
    resolve_pairs(config)
    started = time.perf_counter()
    timings: dict[str, float] = {"load_model": 0.0, "generate": 0.0, "forward": 0.0, "write": 0.0}
    if lm is None:
        lm = load_model(config.model, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code, layers_path=config.layers_path)
        timings["load_model"] = lm.load_seconds
    return execute_scan(config, lm, scan_vectors(config, lm), lambda scorer, run_id: LocalExecutor(scorer), started, timings, progress)


def scan_vectors(config: ScanConfig, lm: Any) -> list[Any]:
    """The run's vectors (``--vectors``, or the shipped ones of the model), checked against the model."""
    from auditor.vectors import load_vectors

    return load_vectors(
        config.vectors,
        lm.name,
        traits=config.traits,
        layers=config.layers,
        num_layers=lm.num_layers,
        hidden_size=lm.hidden_size,
        fingerprint=lm.fingerprint,
    )


def execute_scan(
    config: ScanConfig,
    lm: Any,
    vectors: list[Any],
    make_executor: Callable[[ChunkScorer, str], Any],
    started: float,
    timings: dict[str, float],
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ScanResult:
    """Register (or resume) the run, score its pending chunks with the executor ``make_executor(scorer, run_id)`` gives, finalize."""
    scorer = ChunkScorer(config, lm, vectors, run_id="")
    run_id, out_dir, done = open_run(config, lm, vectors, scorer)
    executor = make_executor(scorer, run_id)
    counts = run_chunks(config, run_id, done, scorer, executor, os.path.join(out_dir, "parts"), timings, progress)
    return finalize_run(
        config,
        run_id,
        out_dir,
        lm=lm,
        vectors=vectors,
        scorer=scorer,
        started=started,
        timings=timings,
        counts=counts,
        resumed=len(done),
        score_fn=executor.token_values,
    )


def resolve_pairs(config: ScanConfig) -> None:
    """Decide once whether the run scores preference pairs (forced, or the first record is one)."""
    from auditor.sources import dataset_holds_pairs

    if config.pairs is None:
        config.pairs = dataset_holds_pairs(config.source, config.format, config.split, config.hf_config, config.mapping())


def finalize_run(
    config: ScanConfig,
    run_id: str,
    out_dir: str,
    lm: Any,
    vectors: list[Any],
    scorer: ChunkScorer,
    started: float,
    timings: dict[str, float],
    counts: dict[str, int],
    resumed: int,
    score_fn: Callable[[list[Any]], list[Any]],
) -> ScanResult:
    """Concatenate the parts, compute the summary from the store, heat-map tokens, mark complete, report.

    ``score_fn``: per-token projections of encoded rows (the executor's ``token_values``).
    """
    from auditor.store.runs import committed_chunks, complete_run

    t0 = time.perf_counter()
    parts_dir = os.path.join(out_dir, "parts")
    chunks, totals = committed_chunks(config.db, run_id)
    parquet_path = write_scores_parquet(out_dir, chunks, scorer.schema)
    summaries = trait_summaries(config.db, run_id, vectors, scorer)
    t_heat = time.perf_counter()
    token_table, heat_sources = heat_map_tokens(config, run_id, lm.tokenizer, scorer, score_fn, parts_dir, chunks)
    timings["heat_maps"] = time.perf_counter() - t_heat
    timings["total"] = time.perf_counter() - started
    fields = {
        "timings": json.dumps(timings),
        **{k: totals[k] for k in ("n_read", "n_scored", "n_rejected", "n_reused")},
        "summary": json.dumps([asdict(s) for s in summaries]),
    }
    rejects = [Rejected(src, ln, r) for src, ln, r in complete_run(config.db, run_id, token_table, fields)]
    # Only now: a crash before the run is complete leaves it resumable, and resuming reads the parts.
    shutil.rmtree(parts_dir, ignore_errors=True)
    timings["write"] += time.perf_counter() - t0
    return ScanResult(
        run_id=run_id,
        out_dir=out_dir,
        parquet_path=parquet_path,
        report_path=write_report(config, run_id, out_dir),
        db_path=config.db,
        n_read=totals["n_read"],
        n_scored=totals["n_scored"],
        n_rejected=totals["n_rejected"],
        n_generated=counts["generated"],
        n_cached=counts["cached"],
        seconds=time.perf_counter() - started,
        tokens=counts["tokens"],
        summaries=summaries,
        model_name=lm.name,
        rejects=rejects,
        resumed_chunks=resumed,
        n_reused=totals["n_reused"],
        heat_maps=heat_sources,
        baseline=config.baseline,
    )


def write_scores_parquet(out_dir: str, chunks: list[int], schema: Any) -> str:
    """scores.parquet: the committed chunks' parts in chunk order (written aside, then moved into place)."""
    import pyarrow.parquet as pq

    from auditor.store.runs import part_path

    parquet_path = os.path.join(out_dir, "scores.parquet")
    with pq.ParquetWriter(parquet_path + ".tmp", schema) as writer:
        for c in chunks:
            writer.write_table(pq.read_table(part_path(out_dir, c), schema=schema))
    os.replace(parquet_path + ".tmp", parquet_path)
    return parquet_path


def trait_summaries(db: str, run_id: str, vectors: list[Any], scorer: ChunkScorer) -> list[TraitSummary]:
    """Per trait: layer, threshold and where it came from, the clean reference, and the store's totals."""
    from auditor.store.runs import trait_totals

    summaries = []
    for pv in vectors:
        cal_entry = scorer.meaning.calibration_entry(pv.calibration, pv.layer)
        summaries.append(
            TraitSummary(
                trait=pv.trait,
                layer=pv.layer,
                score=scorer.meaning.column,
                threshold=scorer.thresholds[pv.trait][0],
                threshold_source=scorer.thresholds[pv.trait][1],
                calibration_mean=cal_entry.get("mean") if cal_entry else None,
                **trait_totals(db, run_id, pv.trait),
            )
        )
    return summaries


def write_report(config: ScanConfig, run_id: str, out_dir: str) -> str | None:
    """The run's HTML report next to its scores (none with ``report=False``)."""
    if not config.report:
        return None
    try:
        from auditor.report import render_report
    except ImportError:  # the report module is optional at this layer
        return None
    return render_report(run_id, db=config.db, out=os.path.join(out_dir, "report.html"), top_n=config.top_n)


def heat_map_tokens(
    config: ScanConfig, run_id: str, tokenizer: Any, scorer: ChunkScorer, score_fn: Callable[[list[Any]], list[Any]], parts_dir: str, chunks: list[int]
):
    """Each response token's projection for the report's top samples per trait (auditor.heatmaps).

    The samples are the store's ranking (top_samples), the ones the report lists. Their heat
    maps come from the chunks' candidate parts (the scan's own forward); for samples reused
    from an earlier run, from that run's stored heat maps; anything still missing (a chunk
    stored by an older version) from a second forward over just those samples. Returns the
    token_scores rows and how many heat maps came from each source.
    """
    import pyarrow as pa

    from auditor.heatmaps import decode_pieces, pair_heat_rows, read_parts, second_pass
    from auditor.store.reuse import stored_heat_maps
    from auditor.store.runs import heat_map_candidates
    from auditor.store.schema import token_scores_schema

    schema = token_scores_schema()
    rows: dict[str, list[Any]] = {name: [] for name in schema.names}
    sources = {"forward": 0, "earlier_run": 0, "second_pass": 0}
    if config.top_n <= 0:
        return pa.table(rows, schema=schema), sources
    wanted = heat_map_candidates(config.db, run_id, config.top_n)
    if scorer.pairs:  # both answers of each pair: the plain second pass (auditor.heatmaps.pair_heat_rows)
        sources["second_pass"] = len(wanted)
        for row in pair_heat_rows(tokenizer, run_id, wanted, config.max_prompt_tokens, score_fn):
            for name, value in zip(schema.names, row):
                rows[name].append(value)
        return pa.table(rows, schema=schema), sources
    keys = {(sid, trait): (context, response, h) for trait, sid, context, response, _rejected, h in wanted}
    found = {k: (decode_pieces(tokenizer, ids), values) for k, (ids, values) in read_parts(parts_dir, chunks, set(keys)).items()}
    sources["forward"] = len(found)
    missing = [k for k in keys if k not in found]
    if missing and config.reuse:
        stored = stored_heat_maps(config.db, scorer.reuse_key, [(keys[k][2], k[1]) for k in missing])
        for k in missing:
            if (keys[k][2], k[1]) in stored:
                found[k] = stored[(keys[k][2], k[1])]
                sources["earlier_run"] += 1
    missing_texts = {k: keys[k][:2] for k in keys if k not in found}
    for k, (ids, values) in second_pass(tokenizer, missing_texts, config.max_prompt_tokens, score_fn).items():
        found[k] = (decode_pieces(tokenizer, ids), values)
    sources["second_pass"] = len(missing_texts)
    for trait, sid, *_rest in wanted:
        tokens, values = found[(sid, trait)]
        for name, value in zip(schema.names, (run_id, sid, trait, tokens, values, None, None)):
            rows[name].append(value)
    return pa.table(rows, schema=schema), sources


def scan(source: str, traits: list[str] | None = None, model: str | None = None, **settings: Any):
    """Scan a dataset and return its scores as a polars DataFrame (one row per sample).

    ``settings`` are the fields of :class:`ScanConfig` (``baseline``, ``vectors``,
    ``db``, ``max_new_tokens`` ...). The run is also stored in the DuckDB database.
    """
    return scan_run(ScanConfig(source=source, traits=traits, model=model, **settings)).scores
