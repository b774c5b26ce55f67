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

from auditor.errors import AuditorError, InputError, StoreError
from auditor.sources import Rejected, Sample, iter_samples

BASELINES = ("generate", "prompt-last", "none")
ON_ERROR = ("fail", "skip")
FLAG_ON = ("delta", "projection")
# A scan waits this long for a reader to let go of the database before a chunk write fails:
# long enough to outlast a big export or filter, instead of losing a scored chunk.
WRITE_WAIT = 600.0
# Settings that do not change any score: excluded from the resume key.
_NOT_RESULT_SETTINGS = ("out_dir", "report", "top_n", "db", "resume", "reuse")
# The settings (besides the model, the vectors and the generation dtype) that change a sample's
# projections: the reuse key of incremental scans. Batch sizes and chunking change them only
# at float rounding level, as the rows sharing a forward do, so they are not part of it.
_PROJECTION_SETTINGS = ("baseline", "max_new_tokens", "max_prompt_tokens", "generator", "layers_path")
# Bump when the scoring arithmetic changes (aggregation, masks, projection): stored scores of
# earlier versions are then never reused.
SCORING_VERSION = 1


SAMPLE_COLUMNS = (
    "run_id",
    "sample_id",
    "source",
    "line",
    "turn",
    "content_hash",
    "context",
    "response",
    "base_response",
    "n_prompt_tokens",
    "n_response_tokens",
    "n_base_tokens",
    "metadata",
)
LONG_COLUMNS = ("run_id", "sample_id", "trait", "layer", "proj_response", "proj_base", "delta", "flagged")  # the scores table


@dataclass
class ScanConfig:
    """Every setting of a scan; stored with the run."""

    source: str
    traits: list[str] | None = None
    model: str | None = None
    vectors: str | None = None
    layers: dict[str, int] = field(default_factory=dict)
    baseline: str = "generate"
    format: str = "auto"
    split: str = "train"
    hf_config: str | None = None
    score_all_turns: bool = False
    max_new_tokens: int = 256
    max_prompt_tokens: int | None = 512
    dtype: str = "auto"
    device: str = "auto"
    batch_tokens: int = 0  # 0: auto (scoring.default_batch_tokens)
    generation_batch_size: int = 0  # 0: auto (scoring.default_generation_batch_size)
    generator: str = "hf"
    generation_dtype: str = "auto"  # auto: float32 on CPU (batch-invariant greedy tokens), the model's dtype on a GPU
    chunk_size: int = 256
    flag_percentile: float = 95.0
    flag_on: str = "delta"  # delta | projection (proj_response); baseline none always flags on the projection
    thresholds: dict[str, float] = field(default_factory=dict)
    on_error: str = "fail"
    db: str = os.path.join("reports", "audit.duckdb")
    out_dir: str | None = None
    report: bool = True
    top_n: int = 50
    trust_remote_code: bool = False
    layers_path: str | None = None
    resume: bool = False
    num_shards: int = 1
    shard_index: int = 0
    reuse: bool = True  # take unchanged samples' scores from earlier complete runs (auditor.store.reuse)

    def validate(self) -> None:
        if self.baseline not in BASELINES:
            raise AuditorError(f"unknown --baseline {self.baseline!r}; use one of {', '.join(BASELINES)}")
        from auditor.generation import GENERATORS

        if self.generator not in GENERATORS:
            raise AuditorError(f"unknown --generator {self.generator!r}; use one of {', '.join(GENERATORS)}")
        if self.on_error not in ON_ERROR:
            raise AuditorError(f"unknown --on-error {self.on_error!r}; use fail or skip")
        if not 0 < self.flag_percentile < 100:
            raise AuditorError("--flag-percentile must be between 0 and 100 (e.g. 95)")
        for name in ("chunk_size", "max_new_tokens", "num_shards"):
            if getattr(self, name) < 1:
                raise AuditorError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("batch_tokens", "generation_batch_size"):
            if getattr(self, name) < 0:
                raise AuditorError(f"--{name.replace('_', '-')} must be at least 1 (or 0 for automatic)")
        from auditor.model.loading import DTYPES

        if self.generation_dtype not in DTYPES:
            raise AuditorError(f"unknown --generation-dtype {self.generation_dtype!r}; use one of {', '.join(DTYPES)}")
        if self.flag_on not in FLAG_ON:
            raise AuditorError(f"unknown --flag-on {self.flag_on!r}; use one of {', '.join(FLAG_ON)}")
        if not 0 <= self.shard_index < self.num_shards:
            raise AuditorError(f"--shard-index must be between 0 and {self.num_shards - 1} for --num-shards {self.num_shards}")

    def result_key(self, model_fingerprint: str, vector_hashes: dict[str, str]) -> str:
        """Hash of everything that determines the scores: equal keys give equal results."""
        settings = {k: v for k, v in asdict(self).items() if k not in _NOT_RESULT_SETTINGS}
        settings["model_fingerprint"] = model_fingerprint
        settings["vectors"] = vector_hashes
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def reuse_key(self, lm: Any, vector_hashes: dict[str, str], generation_dtype: str) -> str:
        """Hash of everything besides a sample's text that decides its projections (incremental scans)."""
        from auditor import __version__

        settings = {k: getattr(self, k) for k in _PROJECTION_SETTINGS}
        if self.baseline != "generate":  # no base response: its settings do not matter
            settings.update(max_new_tokens=None, generator=None)
        settings.update(
            model_fingerprint=lm.fingerprint,
            dtype=str(lm.dtype),
            device=str(lm.device).split(":")[0],
            generation_dtype=generation_dtype if self.baseline == "generate" else None,
            vectors=vector_hashes,
            scoring=SCORING_VERSION,
            persona_audit=__version__,
        )
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class TraitSummary:
    trait: str
    layer: int
    score: str  # the column flags are based on: delta or proj_response
    threshold: float | None
    threshold_source: str
    mean_delta: float | None
    mean_proj_response: float | None
    n_flagged: int
    n: int
    calibration_mean: float | None = None
    top: list[dict[str, Any]] = field(default_factory=list)


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
    heat: Any = None  # pyarrow.Table (auditor.heatmaps.part_schema): this chunk's heat-map candidates

    @property
    def n_rejected(self) -> int:
        return len(self.rejects)


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
        raise InputError(
            sample.source, sample.line, f"the model's chat template rejects this conversation ({e})", "check the roles alternate user/assistant"
        ) from None


def wide_schema(traits: list[str]):
    import pyarrow as pa

    fields = [
        ("sample_id", pa.string()),
        ("source", pa.string()),
        ("line", pa.int64()),
        ("turn", pa.int32()),
        ("content_hash", pa.string()),
        ("n_prompt_tokens", pa.int32()),
        ("n_response_tokens", pa.int32()),
        ("n_base_tokens", pa.int32()),
    ]
    for t in traits:
        fields += [(f"{t}_proj_response", pa.float64()), (f"{t}_proj_base", pa.float64()), (f"{t}_delta", pa.float64()), (f"{t}_flagged", pa.bool_())]
    return pa.schema(fields)


def resolve_thresholds(config: ScanConfig, vectors: list[Any]) -> tuple[str, dict[str, tuple[float | None, str]]]:
    """The score column flags use, and per trait (threshold, where it came from)."""
    score_col = "proj_response" if config.baseline == "none" or config.flag_on == "projection" else "delta"
    out: dict[str, tuple[float | None, str]] = {}
    for pv in vectors:
        given = config.thresholds.get(pv.trait, config.thresholds.get("*"))
        if given is not None:
            out[pv.trait] = (float(given), "--threshold")
            continue
        t = pv.threshold(config.baseline, score_col, config.flag_percentile)
        src = (
            f"p{config.flag_percentile:g} of the calibration set"
            if t is not None
            else "none: the vector has no calibration for this baseline and layer; pass --threshold TRAIT=VALUE"
        )
        out[pv.trait] = (t, src)
    return score_col, out


def vector_hashes(vectors: list[Any]) -> dict[str, str]:
    """trait -> the vector file's sha256 and the layer used."""
    return {pv.trait: f"{pv.sha256}@{pv.layer}" for pv in vectors}


def resolve_generation_dtype(requested: str, lm: Any) -> str:
    """``auto``: float32 on CPU, the scoring model's dtype elsewhere.

    Greedy decoding in bfloat16 is not batch-invariant: measured on the embedded model, only
    11 of 32 base responses (128 tokens) were the same generated 32 at a time as 8 at a
    time, against 32 of 32 in float32, at half the speed (bench/NOTES.md "Throughput"). A
    base response that changes with the batch size moves that sample's delta by up to ~10,
    so on CPU base responses are generated in float32 by default (the scoring forward stays
    bfloat16, within the documented tolerance). On a GPU a float32 copy of a large model
    costs too much memory; pass --generation-dtype float32 there to get the same guarantee.
    """
    if requested != "auto":
        return requested
    return "float32" if str(lm.device).startswith("cpu") else lm.dtype


class ChunkScorer:
    """Scores one chunk of samples: base responses (cached or generated), one forward, flags.

    Holds no database connection: cached base responses come in, new ones go out in
    the ChunkOutput, so the same object runs in the local loop, a shard or a Ray actor.
    """

    def __init__(self, config: ScanConfig, lm: Any, vectors: list[Any], run_id: str):
        from auditor.generation import GenerationSettings
        from auditor.scoring import default_batch_tokens, default_generation_batch_size

        self.config = config
        self.lm = lm
        self.vectors = vectors
        self.run_id = run_id
        self.directions = {pv.trait: (pv.layer, pv.direction()) for pv in vectors}
        self.score_col, self.thresholds = resolve_thresholds(config, vectors)
        self.generation_dtype = resolve_generation_dtype(config.generation_dtype, lm)
        self.settings_key = GenerationSettings(config.max_new_tokens, config.max_prompt_tokens, self.generation_dtype, config.generator).key()
        self._generation_lm = lm if self.generation_dtype == lm.dtype else None  # loaded when first needed (a Ray driver never needs it)
        # 0 means: what suits this process's device (a Ray actor may hold another one).
        self.batch_tokens = config.batch_tokens or default_batch_tokens(lm)
        self.generation_batch_size = config.generation_batch_size or default_generation_batch_size(lm, config.max_new_tokens, config.max_prompt_tokens)
        self.max_len = lm.max_length
        self.schema = wide_schema([pv.trait for pv in vectors])
        self.reuse_key = config.reuse_key(lm, vector_hashes(vectors), self.generation_dtype)

    def generation_lm(self) -> Any:
        """The model that generates base responses: the scoring model, or its copy in the generation dtype."""
        if self._generation_lm is None:
            from auditor.model import load_model

            lm = self.lm
            self._generation_lm = load_model(
                None if lm.source == "embedded" else lm.source, dtype=self.generation_dtype, device=lm.device, trust_remote_code=self.config.trust_remote_code
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
            except InputError as e:
                rejects.append(Rejected.of(e))
                continue
            ready.append((item, prompt, row))
        return ready, rejects

    def prompt_hashes(self, ready: list[tuple[Sample, str, Any]]) -> list[str]:
        from auditor.generation import prompt_hash

        return sorted({prompt_hash(p) for _, p, _ in ready})

    def score(
        self,
        index: int,
        items: list[Sample | Rejected],
        cached: dict[str, tuple[str, int]] | None = None,
        prepared: tuple | None = None,
        reused: dict[str, Any] | None = None,
    ) -> ChunkOutput:
        """Score a chunk. ``reused``: content hash -> stored values (auditor.store.reuse) of samples not to compute."""
        reused = reused or {}
        seconds = {"generate": 0.0, "forward": 0.0}
        ready, rejects = prepared if prepared is not None else self.prepare(items, skip=set(reused))
        if rejects and self.config.on_error == "fail":
            raise rejects[0].error or InputError(rejects[0].source, rejects[0].line, rejects[0].reason)
        base, new_base, n_cached, tokens, seconds["generate"] = self._base_responses(ready, cached)
        t0 = time.perf_counter()
        computed, heat_entries, forward_tokens = self._forward(ready, base)
        seconds["forward"] = time.perf_counter() - t0
        values: list[tuple[Sample, Any]] = []
        n_reused = 0
        for item in items:
            if not isinstance(item, Sample):
                continue
            if item.id in computed:
                values.append((item, computed[item.id]))
            elif item.content_hash in reused:
                values.append((item, reused[item.content_hash]))
                n_reused += 1
        wide, samples, long = self._tables(values)
        from auditor.heatmaps import chunk_candidates

        return ChunkOutput(
            index=index,
            fingerprint=chunk_fingerprint(items),
            wide=wide,
            samples=samples,
            scores=long,
            rejects=rejects,
            new_base=self._cache_rows(new_base),
            n_read=len(items),
            n_scored=len(values),
            n_generated=len(new_base),
            n_cached=n_cached,
            tokens=tokens + forward_tokens,
            seconds=seconds,
            n_reused=n_reused,
            heat=chunk_candidates(heat_entries, [pv.trait for pv in self.vectors], self.config.top_n),
        )

    def _base_responses(self, ready: list[tuple[Sample, str, Any]], cached: dict[str, tuple[str, int]] | None):
        """(base response by prompt hash, the newly generated ones, how many came from the cache, tokens generated, seconds)."""
        from auditor.generation import generate_base, prompt_hash, prompt_ids

        cfg, lm = self.config, self.lm
        base: dict[str, tuple[str, int]] = dict(cached or {})
        new_base: dict[str, tuple[str, int]] = {}
        if cfg.baseline != "generate" or not ready:
            return base, new_base, 0, 0, 0.0
        hashes = [prompt_hash(p) for _, p, _ in ready]
        n_cached = sum(1 for h in hashes if h in base)
        missing: dict[str, str] = {}
        for (_, p, _), h in zip(ready, hashes):
            if h not in base and h not in missing:
                missing[h] = p
        if not missing:
            return base, new_base, n_cached, 0, 0.0
        t0 = time.perf_counter()
        keys = list(missing)
        gen = generate_base(
            self.generation_lm(),
            [prompt_ids(lm, missing[h], cfg.max_prompt_tokens) for h in keys],
            cfg.max_new_tokens,
            self.generation_batch_size,
            cfg.generator,
            cfg.trust_remote_code,
        )
        for h, result in zip(keys, gen):
            base[h] = new_base[h] = result
        return base, new_base, n_cached, sum(n for _, n in gen), time.perf_counter() - t0

    def _forward(self, ready: list[tuple[Sample, str, Any]], base: dict[str, tuple[str, int]]):
        """One forward over the dataset responses and the base responses together.

        Returns (values by sample id, heat-map entries of the computed samples, tokens forwarded).
        """
        from auditor.activations import encode_pair
        from auditor.generation import prompt_hash
        from auditor.scoring import score_rows
        from auditor.store.reuse import SampleValues

        cfg, tok = self.config, self.lm.tokenizer
        if not ready:
            return {}, [], 0
        rows = [row for _, _, row in ready]
        base_rows: list[Any] = []
        base_at: list[int | None] = []
        if cfg.baseline == "generate":
            for _, p, _ in ready:
                brow = encode_pair(tok, p, base[prompt_hash(p)][0], cfg.max_prompt_tokens)
                base_at.append(len(rows) + len(base_rows) if brow.end > brow.start else None)  # None: the model answered nothing, so no delta
                if brow.end > brow.start:
                    base_rows.append(brow)
        all_rows = rows + base_rows
        # The dataset responses' per-token projections feed the report's heat maps (auditor.heatmaps).
        want_tokens = [cfg.top_n > 0] * len(rows) + [False] * len(base_rows)
        results = score_rows(self.lm.model, all_rows, self.directions, tok.pad_token_id, self.batch_tokens, want_tokens, cfg.layers_path)
        computed: dict[str, Any] = {}
        heat: list[tuple[str, dict[str, float | None], Any, dict[str, list[float]]]] = []
        for i, (sample, p, row) in enumerate(ready):
            res = results[i]
            bi = base_at[i] if cfg.baseline == "generate" else None
            if cfg.baseline == "generate":
                pb = {t: (results[bi].proj[t] if bi is not None else None) for t in res.proj}
            elif cfg.baseline == "prompt-last":
                pb = dict(res.prompt_last)
            else:
                pb = {t: None for t in res.proj}
            values = SampleValues(
                base_response=base[prompt_hash(p)][0] if cfg.baseline == "generate" else None,
                n_prompt_tokens=row.start,
                n_response_tokens=row.end - row.start,
                n_base_tokens=(all_rows[bi].end - all_rows[bi].start) if bi is not None else None,
                proj_response=dict(res.proj),
                proj_base=pb,
            )
            computed[sample.id] = values
            if res.token_values is not None:
                heat.append((sample.id, {t: self._score(values, t) for t in res.proj}, row.ids[row.start : row.end], res.token_values))
        return computed, heat, sum(r.length for r in all_rows)

    def _score(self, values: Any, trait: str) -> float | None:
        """The number flags and rankings use (the run's score column) for one trait."""
        pr, pb = values.proj_response[trait], values.proj_base[trait]
        return pr if self.score_col == "proj_response" else (pr - pb if pb is not None else None)

    def _tables(self, values: list[tuple[Sample, Any]]):
        """The chunk's rows: scores.parquet (wide), the samples table and the scores table (long)."""
        import pyarrow as pa

        wide: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        samples: dict[str, list[Any]] = {k: [] for k in SAMPLE_COLUMNS}
        long: dict[str, list[Any]] = {k: [] for k in LONG_COLUMNS}
        for sample, v in values:
            common = {
                "sample_id": sample.id,
                "source": sample.source,
                "line": sample.line,
                "turn": sample.turn,
                "content_hash": sample.content_hash,
                "n_prompt_tokens": v.n_prompt_tokens,
                "n_response_tokens": v.n_response_tokens,
                "n_base_tokens": v.n_base_tokens,
            }
            for k, val in common.items():
                wide[k].append(val)
                samples[k].append(val)
            samples["run_id"].append(self.run_id)
            samples["context"].append(json.dumps(list(sample.context), ensure_ascii=False))
            samples["response"].append(sample.response)
            samples["base_response"].append(v.base_response)
            samples["metadata"].append(json.dumps(sample.metadata, ensure_ascii=False, sort_keys=True, default=str))
            for pv in self.vectors:
                t = pv.trait
                pr, pb = v.proj_response[t], v.proj_base[t]
                delta = pr - pb if pb is not None else None
                score = self._score(v, t)
                threshold = self.thresholds[t][0]
                flagged = bool(threshold is not None and score is not None and score > threshold)
                for col, val in (("proj_response", pr), ("proj_base", pb), ("delta", delta), ("flagged", flagged)):
                    wide[f"{t}_{col}"].append(val)
                    long[col].append(val)
                long["run_id"].append(self.run_id)
                long["sample_id"].append(sample.id)
                long["trait"].append(t)
                long["layer"].append(pv.layer)
        f64 = pa.float64()
        long_schema = pa.schema(
            [("run_id", pa.string()), ("sample_id", pa.string()), ("trait", pa.string()), ("layer", pa.int32())]
            + [("proj_response", f64), ("proj_base", f64), ("delta", f64), ("flagged", pa.bool_())]
        )
        samples_schema = pa.schema(
            [
                (k, pa.int64() if k == "line" else pa.int32() if k in ("turn", "n_prompt_tokens", "n_response_tokens", "n_base_tokens") else pa.string())
                for k in SAMPLE_COLUMNS
            ]
        )
        return pa.table(wide, schema=self.schema), pa.table(samples, schema=samples_schema), pa.table(long, schema=long_schema)

    def _cache_rows(self, new_base: dict[str, tuple[str, int]]):
        """Newly generated base responses as rows of the base_responses table."""
        import pyarrow as pa

        now = _dt.datetime.now()
        keys = list(new_base)
        return pa.table(
            {
                "model_fingerprint": [self.lm.fingerprint] * len(keys),
                "settings_key": [self.settings_key] * len(keys),
                "prompt_hash": keys,
                "response": [new_base[h][0] for h in keys],
                "n_tokens": [new_base[h][1] for h in keys],
                "created_at": [now] * len(keys),
            },
            schema=pa.schema(
                [
                    ("model_fingerprint", pa.string()),
                    ("settings_key", pa.string()),
                    ("prompt_hash", pa.string()),
                    ("response", pa.string()),
                    ("n_tokens", pa.int32()),
                    ("created_at", pa.timestamp("us")),
                ]
            ),
        )


def lookup_base(db: str, fingerprint: str, settings_key: str, hashes: list[str]) -> dict[str, tuple[str, int]]:
    """Cached base responses for these prompt hashes."""
    from auditor.store.db import connect

    if not hashes:
        return {}
    with connect(db, timeout=WRITE_WAIT) as con:
        found = con.execute(
            "SELECT prompt_hash, response, n_tokens FROM base_responses WHERE model_fingerprint = ? AND settings_key = ? AND prompt_hash IN (SELECT unnest(?))",
            [fingerprint, settings_key, hashes],
        ).fetchall()
    return {h: (r, n) for h, r, n in found}


def lookup_reused(db: str, scorer: ChunkScorer, items: list[Sample | Rejected]) -> dict[str, Any]:
    """Stored values of this chunk's samples that an earlier complete run computed (empty with reuse off)."""
    from auditor.store.db import connect
    from auditor.store.reuse import find_reusable

    hashes = [item.content_hash for item in items if isinstance(item, Sample)]
    if not scorer.config.reuse or not hashes or not os.path.exists(db):
        return {}
    with connect(db, timeout=WRITE_WAIT) as con:
        return find_reusable(con, scorer.reuse_key, hashes, [pv.trait for pv in scorer.vectors])


def commit_chunk(db: str, run_id: str, parts_dir: str, out: ChunkOutput) -> None:
    """Write the chunk's Parquet part, then everything else in one database transaction."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from auditor.store.db import connect, insert_arrow

    part = os.path.join(parts_dir, f"part-{out.index:06d}.parquet")
    if not os.path.isdir(parts_dir):
        raise StoreError(f"run {run_id}: {parts_dir} is gone: another process finished this run meanwhile, or the folder was deleted; see audit runs")
    if out.heat is not None and out.heat.num_rows:
        from auditor.heatmaps import part_path

        heat = part_path(parts_dir, out.index)
        pq.write_table(out.heat, heat + ".tmp")
        os.replace(heat + ".tmp", heat)
    pq.write_table(out.wide, part + ".tmp")
    os.replace(part + ".tmp", part)  # a reader sees the old part or the new one, never half of one
    with connect(db, timeout=WRITE_WAIT) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            if con.execute("SELECT count(*) FROM run_chunks WHERE run_id = ? AND chunk = ?", [run_id, out.index]).fetchall()[0][0]:
                raise StoreError(
                    f"run {run_id}: chunk {out.index} was stored by another process meanwhile (is a second audit scan --resume of this run running?); "
                    "let that one finish, then check audit runs"
                )
            if out.new_base.num_rows:
                con.register("_incoming_cache", out.new_base)
                con.execute("INSERT INTO base_responses SELECT * FROM _incoming_cache ON CONFLICT DO NOTHING")
                con.unregister("_incoming_cache")
            insert_arrow(con, "samples", out.samples)
            insert_arrow(con, "scores", out.scores)
            if out.rejects:
                insert_arrow(
                    con,
                    "rejects",
                    pa.table(
                        {
                            "run_id": [run_id] * len(out.rejects),
                            "source": [r.source for r in out.rejects],
                            "line": pa.array([r.line for r in out.rejects], pa.int64()),
                            "reason": [r.reason for r in out.rejects],
                        }
                    ),
                )
            con.execute(
                "INSERT INTO run_chunks (run_id, chunk, n_read, n_scored, n_rejected, fingerprint, n_generated, n_cached, tokens, n_reused) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, out.index, out.n_read, out.n_scored, out.n_rejected, out.fingerprint, out.n_generated, out.n_cached, out.tokens, out.n_reused],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _find_resumable(db: str, key: str) -> tuple[str, str] | None:
    from auditor.store.db import connect

    if not os.path.exists(db):
        return None
    with connect(db) as con:
        row = con.execute(
            "SELECT run_id, output_dir FROM runs WHERE result_key = ? AND status <> 'complete' ORDER BY started_at DESC LIMIT 1", [key]
        ).fetchone()
    return (row[0], row[1]) if row else None


def open_run(config: ScanConfig, lm: Any, vectors: list[Any], scorer: ChunkScorer) -> tuple[str, str, dict[int, str]]:
    """Register a new run, or find the unfinished one to resume: (run_id, out_dir, done chunks)."""
    from auditor.store.db import connect

    key = config.result_key(lm.fingerprint, vector_hashes(vectors))
    resumable = _find_resumable(config.db, key) if config.resume else None
    if config.resume and resumable is None:
        raise AuditorError(f"nothing to resume in {config.db}: no unfinished run with these settings and this model; run the scan without --resume")
    if resumable:
        run_id, out_dir = resumable
        with connect(config.db) as con:
            done = dict(con.execute("SELECT chunk, fingerprint FROM run_chunks WHERE run_id = ?", [run_id]).fetchall())
            # The final scores.parquet is built from the parts: a stored chunk without one cannot be finished.
            lost = [c for c in sorted(done) if not os.path.exists(os.path.join(out_dir, "parts", f"part-{c:06d}.parquet"))]
            if lost:
                raise StoreError(
                    f"run {run_id} cannot be resumed: {os.path.join(out_dir, 'parts', f'part-{lost[0]:06d}.parquet')} is missing"
                    + (f" (and {len(lost) - 1} more parts)" if len(lost) > 1 else "")
                    + "; scan again without --resume"
                )
            con.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [run_id])
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
                "score": scorer.score_col,
            }
            for pv in vectors
        }
        with connect(config.db) as con:
            con.execute(
                "INSERT INTO runs (run_id, status, started_at, dataset, model, model_fingerprint, baseline, dtype, device, output_dir, config, vectors, versions, result_key, reuse_key) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    _dt.datetime.now(),
                    config.source,
                    lm.name,
                    lm.fingerprint,
                    config.baseline,
                    lm.dtype,
                    lm.device,
                    out_dir,
                    json.dumps(asdict(config), sort_keys=True, default=str),
                    json.dumps(vector_info),
                    json.dumps(_versions()),
                    key,
                    scorer.reuse_key,
                ],
            )
    scorer.run_id = run_id
    os.makedirs(os.path.join(out_dir, "parts"), exist_ok=True)
    return run_id, out_dir, done


def pending_chunks(config: ScanConfig, run_id: str, done: dict[int, str]) -> Iterator[tuple[int, list[Sample | Rejected]]]:
    """The chunks this process still has to score: its shard, minus committed chunks (checked unchanged).

    Raises once the stream ends if the dataset held no record at all, or if it now ends
    before a chunk the interrupted run had stored (the file was cut short).
    """
    from auditor.sources import no_records_error

    stream = iter_samples(config.source, fmt=config.format, score_all_turns=config.score_all_turns, split=config.split, config=config.hf_config)
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
    from auditor.store.db import connect

    status = "interrupted" if is_interruption(exc) else "failed"
    try:
        with connect(config.db, timeout=10) as con:
            con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", [status, _dt.datetime.now(), run_id])
    except Exception:
        pass


def new_counts() -> dict[str, int]:
    return {"read": 0, "scored": 0, "rejected": 0, "generated": 0, "cached": 0, "tokens": 0, "reused": 0}


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


def scan_run(config: ScanConfig, lm: Any = None, progress: Callable[[dict[str, Any]], None] | None = None) -> ScanResult:
    """Scan a dataset and store the results; see the module docstring."""
    from auditor.model import load_model
    from auditor.sources import check_not_empty, expand_paths
    from auditor.vectors import load_vectors

    config.validate()
    expand_paths(config.source)  # a missing file fails now, not after the model has loaded
    check_not_empty(config.source)  # so does an empty one
    started = time.perf_counter()
    timings: dict[str, float] = {"load_model": 0.0, "generate": 0.0, "forward": 0.0, "write": 0.0}
    if lm is None:
        lm = load_model(config.model, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code)
        timings["load_model"] = lm.load_seconds
    vectors = load_vectors(
        config.vectors,
        lm.name,
        traits=config.traits,
        layers=config.layers,
        num_layers=lm.num_layers,
        hidden_size=lm.hidden_size,
        fingerprint=lm.fingerprint,
    )
    scorer = ChunkScorer(config, lm, vectors, run_id="")
    run_id, out_dir, done = open_run(config, lm, vectors, scorer)
    parts_dir = os.path.join(out_dir, "parts")
    counts = new_counts()
    try:
        for index, items in pending_chunks(config, run_id, done):
            reused = lookup_reused(config.db, scorer, items)
            prepared = scorer.prepare(items, skip=set(reused))
            cached = lookup_base(config.db, lm.fingerprint, scorer.settings_key, scorer.prompt_hashes(prepared[0])) if config.baseline == "generate" else {}
            out = scorer.score(index, items, cached, prepared=prepared, reused=reused)
            t0 = time.perf_counter()
            commit_chunk(config.db, run_id, parts_dir, out)
            timings["write"] += time.perf_counter() - t0
            timings["generate"] += out.seconds["generate"]
            timings["forward"] += out.seconds["forward"]
            add_counts(counts, out)
            if progress:
                progress(dict(counts, chunks_done=index + 1))
    except BaseException as exc:
        mark_run(config, run_id, exc)
        raise
    return finalize_run(config, run_id, out_dir, lm=lm, vectors=vectors, scorer=scorer, started=started, timings=timings, counts=counts, resumed=len(done))


def local_score_fn(lm: Any, config: ScanConfig, scorer: ChunkScorer) -> Callable[[list[Any]], list[Any]]:
    """Per-token projections of encoded rows with the model in this process."""
    from auditor.scoring import score_rows

    return lambda rows: score_rows(lm.model, rows, scorer.directions, lm.tokenizer.pad_token_id, scorer.batch_tokens, [True] * len(rows), config.layers_path)


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
    resumed: int = 0,
    score_fn: Callable[[list[Any]], list[Any]] | None = None,
) -> ScanResult:
    """Concatenate the parts, compute the summary from the store, heat-map tokens, report."""
    import pyarrow.parquet as pq

    from auditor.store.db import connect

    t0 = time.perf_counter()
    parts_dir = os.path.join(out_dir, "parts")
    parquet_path = os.path.join(out_dir, "scores.parquet")
    with connect(config.db) as con:
        chunks = [c for (c,) in con.execute("SELECT chunk FROM run_chunks WHERE run_id = ? ORDER BY chunk", [run_id]).fetchall()]
        totals = con.execute(
            "SELECT coalesce(sum(n_read),0), coalesce(sum(n_scored),0), coalesce(sum(n_rejected),0), coalesce(sum(n_generated),0), coalesce(sum(n_cached),0), "
            "coalesce(sum(tokens),0), coalesce(sum(n_reused),0) FROM run_chunks WHERE run_id = ?",
            [run_id],
        ).fetchone()
    with pq.ParquetWriter(parquet_path + ".tmp", scorer.schema) as writer:
        for c in chunks:
            writer.write_table(pq.read_table(os.path.join(parts_dir, f"part-{c:06d}.parquet"), schema=scorer.schema))
    os.replace(parquet_path + ".tmp", parquet_path)
    n_read, n_scored, n_rejected, n_generated, n_cached, _tokens, n_reused = (int(x) for x in totals)

    summaries = []
    with connect(config.db) as con:
        for pv in vectors:
            t = pv.trait
            mean_delta, mean_proj, n_flagged, n = con.execute(
                "SELECT avg(delta), avg(proj_response), count(*) FILTER (WHERE flagged), count(*) FROM scores WHERE run_id = ? AND trait = ?", [run_id, t]
            ).fetchone()
            order = "delta" if scorer.score_col == "delta" else "proj_response"
            top = con.execute(
                f"SELECT sample_id, {order} FROM scores WHERE run_id = ? AND trait = ? AND {order} IS NOT NULL ORDER BY {order} DESC, sample_id LIMIT 5",
                [run_id, t],
            ).fetchall()
            cal = pv.calibration or {}
            cal_entry = cal.get("scores", {}).get(config.baseline, {}).get(scorer.score_col) if cal.get("layer") == pv.layer else None
            summaries.append(
                TraitSummary(
                    trait=t,
                    layer=pv.layer,
                    score=scorer.score_col,
                    threshold=scorer.thresholds[t][0],
                    threshold_source=scorer.thresholds[t][1],
                    mean_delta=mean_delta,
                    mean_proj_response=mean_proj,
                    n_flagged=int(n_flagged or 0),
                    n=int(n or 0),
                    calibration_mean=cal_entry.get("mean") if cal_entry else None,
                    top=[{"sample_id": sid, "score": s} for sid, s in top],
                )
            )
    t_heat = time.perf_counter()
    token_table, heat_sources = heat_map_tokens(config, run_id, lm.tokenizer, scorer, score_fn or local_score_fn(lm, config, scorer), parts_dir, chunks)
    timings["heat_maps"] = time.perf_counter() - t_heat
    timings["total"] = time.perf_counter() - started
    with connect(config.db) as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM token_scores WHERE run_id = ?", [run_id])
        from auditor.store.db import insert_arrow

        insert_arrow(con, "token_scores", token_table)
        con.execute(
            "UPDATE runs SET status = 'complete', finished_at = ?, timings = ?, n_read = ?, n_scored = ?, n_rejected = ?, n_reused = ?, summary = ? WHERE run_id = ?",
            [_dt.datetime.now(), json.dumps(timings), n_read, n_scored, n_rejected, n_reused, json.dumps([asdict(s) for s in summaries]), run_id],
        )
        con.execute("COMMIT")
        rejects = [
            Rejected(s, ln, r)
            for s, ln, r in con.execute("SELECT source, line, reason FROM rejects WHERE run_id = ? ORDER BY source, line", [run_id]).fetchall()
        ]
    # Only now: a crash before the commit above leaves the run resumable, and resuming reads the parts.
    shutil.rmtree(parts_dir, ignore_errors=True)
    timings["write"] += time.perf_counter() - t0
    report_path = None
    if config.report:
        try:
            from auditor.report import render_report
        except ImportError:  # the report module is optional at this layer
            render_report = None
        if render_report is not None:
            report_path = render_report(run_id, db=config.db, out=os.path.join(out_dir, "report.html"), top_n=config.top_n)
    return ScanResult(
        run_id=run_id,
        out_dir=out_dir,
        parquet_path=parquet_path,
        report_path=report_path,
        db_path=config.db,
        n_read=n_read,
        n_scored=n_scored,
        n_rejected=n_rejected,
        n_generated=counts["generated"],
        n_cached=counts["cached"],
        seconds=time.perf_counter() - started,
        tokens=counts["tokens"],
        summaries=summaries,
        model_name=lm.name,
        rejects=rejects,
        resumed_chunks=resumed,
        n_reused=n_reused,
        heat_maps=heat_sources,
    )


def heat_map_tokens(
    config: ScanConfig, run_id: str, tokenizer: Any, scorer: ChunkScorer, score_fn: Callable[[list[Any]], list[Any]], parts_dir: str, chunks: list[int]
):
    """Each response token's projection for the report's top samples per trait (auditor.heatmaps).

    From the chunks' candidate parts (the scan's own forward); for samples reused from an
    earlier run, that run's stored heat maps; anything still missing (a chunk stored by an
    older version) from a second forward over just those samples. Returns the token_scores
    rows and how many heat maps came from each source.
    """
    import pyarrow as pa

    from auditor.heatmaps import decode_pieces, read_parts, second_pass, token_scores_schema
    from auditor.store.db import connect
    from auditor.store.reuse import stored_heat_maps

    schema = token_scores_schema()
    rows: dict[str, list[Any]] = {name: [] for name in schema.names}
    sources = {"forward": 0, "earlier_run": 0, "second_pass": 0}
    if config.top_n <= 0:
        return pa.table(rows, schema=schema), sources
    order = "delta" if scorer.score_col == "delta" else "proj_response"
    with connect(config.db) as con:
        wanted = con.execute(
            f"""SELECT s.trait, m.sample_id, m.context, m.response, m.content_hash FROM (
                    SELECT trait, sample_id, row_number() OVER (PARTITION BY trait ORDER BY {order} DESC NULLS LAST, sample_id) AS rank
                    FROM scores WHERE run_id = ?) s
                JOIN samples m ON m.run_id = ? AND m.sample_id = s.sample_id
                WHERE s.rank <= ? ORDER BY s.trait, s.rank""",
            [run_id, run_id, config.top_n],
        ).fetchall()
        keys = {(sid, trait): (context, response, h) for trait, sid, context, response, h in wanted}
        found: dict[tuple[str, str], tuple[list[str], list[float]]] = {
            k: (decode_pieces(tokenizer, ids), values) for k, (ids, values) in read_parts(parts_dir, chunks, set(keys)).items()
        }
        sources["forward"] = len(found)
        missing = [k for k in keys if k not in found]
        if missing and config.reuse:
            stored = stored_heat_maps(con, scorer.reuse_key, [(keys[k][2], k[1]) for k in missing])
            for k in missing:
                if (keys[k][2], k[1]) in stored:
                    found[k] = stored[(keys[k][2], k[1])]
                    sources["earlier_run"] += 1
    missing = {k: keys[k][:2] for k in keys if k not in found}
    for k, (ids, values) in second_pass(tokenizer, missing, config.max_prompt_tokens, score_fn).items():
        found[k] = (decode_pieces(tokenizer, ids), values)
    sources["second_pass"] = len(missing)
    for trait, sid, *_rest in wanted:
        tokens, values = found[(sid, trait)]
        rows["run_id"].append(run_id)
        rows["sample_id"].append(sid)
        rows["trait"].append(trait)
        rows["tokens"].append(tokens)
        rows["token_values"].append(values)
    return pa.table(rows, schema=schema), sources


def scan(source: str, traits: list[str] | None = None, model: str | None = None, **settings: Any):
    """Scan a dataset and return its scores as a polars DataFrame (one row per sample).

    ``settings`` are the fields of :class:`ScanConfig` (``baseline``, ``vectors``,
    ``db``, ``max_new_tokens`` ...). The run is also stored in the DuckDB database.
    """
    return scan_run(ScanConfig(source=source, traits=traits, model=model, **settings)).scores
