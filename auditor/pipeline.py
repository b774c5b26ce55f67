"""``scan``: source -> samples -> batches -> model -> activations -> scores -> store.

The dataset is read as a stream and processed in chunks of ``chunk_size`` records, so
memory stays flat however large it is. Each chunk is written as a Parquet part and,
in one transaction, to the DuckDB database; a finished run concatenates the parts into
``scores.parquet`` and renders the report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import heapq
import itertools
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from auditor.errors import AuditorError, InputError
from auditor.sources import Rejected, Sample, iter_samples

BASELINES = ("generate", "prompt-last", "none")
ON_ERROR = ("fail", "skip")


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
    batch_tokens: int = 8192
    generation_batch_size: int = 16
    chunk_size: int = 256
    flag_percentile: float = 95.0
    thresholds: dict[str, float] = field(default_factory=dict)
    on_error: str = "fail"
    db: str = os.path.join("reports", "audit.duckdb")
    out_dir: str | None = None
    report: bool = True
    top_n: int = 50
    trust_remote_code: bool = False
    layers_path: str | None = None

    def validate(self) -> None:
        if self.baseline not in BASELINES:
            raise AuditorError(f"unknown --baseline {self.baseline!r}; use one of {', '.join(BASELINES)}")
        if self.on_error not in ON_ERROR:
            raise AuditorError(f"unknown --on-error {self.on_error!r}; use fail or skip")
        if not 0 < self.flag_percentile < 100:
            raise AuditorError("--flag-percentile must be between 0 and 100 (e.g. 95)")
        for name in ("batch_tokens", "generation_batch_size", "chunk_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise AuditorError(f"--{name.replace('_', '-')} must be at least 1")


@dataclass
class TraitSummary:
    trait: str
    layer: int
    score: str  # the column flags are based on: delta or proj_response
    threshold: float | None
    threshold_source: str
    mean_delta: float | None
    mean_proj_response: float
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

    @property
    def scores(self):
        import polars as pl

        return pl.read_parquet(self.parquet_path)


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


def build_prompt(tokenizer: Any, sample: Sample) -> str:
    """``chat_template(x, add_generation_prompt=True)`` as text."""
    try:
        return tokenizer.apply_chat_template(list(sample.context), tokenize=False, add_generation_prompt=True)
    except Exception as e:  # templates raise their own errors (e.g. roles not alternating)
        raise InputError(sample.source, sample.line, f"the model's chat template rejects this conversation ({e})", "check the roles alternate user/assistant") from None


class _TopK:
    """The ``k`` highest-scoring rows per trait, with their token projections (report heat map)."""

    def __init__(self, k: int):
        self.k = k
        self.heaps: dict[str, list[tuple[float, int, str, list[int], list[float]]]] = {}
        self._tie = itertools.count()

    def would_enter(self, trait: str, score: float) -> bool:
        heap = self.heaps.get(trait, [])
        return len(heap) < self.k or score > heap[0][0]

    def push(self, trait: str, score: float, sample_id: str, ids: list[int], values: list[float]) -> None:
        heap = self.heaps.setdefault(trait, [])
        item = (score, next(self._tie), sample_id, ids, values)
        if len(heap) < self.k:
            heapq.heappush(heap, item)
        elif score > heap[0][0]:
            heapq.heapreplace(heap, item)


def scan_run(config: ScanConfig, lm: Any = None, progress: Callable[[dict[str, Any]], None] | None = None) -> ScanResult:
    """Scan a dataset and store the results; see the module docstring."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from auditor.activations import encode_pair
    from auditor.generation import GenerationSettings, generate_greedy, prompt_hash, prompt_ids
    from auditor.model import load_model
    from auditor.scoring import score_rows
    from auditor.store.db import connect, insert_arrow
    from auditor.vectors import load_vectors

    from auditor.sources import expand_paths

    config.validate()
    expand_paths(config.source)  # a missing file fails now, not after the model has loaded
    started = time.perf_counter()
    started_at = _dt.datetime.now()
    timings: dict[str, float] = {"load_model": 0.0, "read": 0.0, "generate": 0.0, "forward": 0.0, "write": 0.0}
    if lm is None:
        lm = load_model(config.model, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code)
        timings["load_model"] = lm.load_seconds
    vectors = load_vectors(
        config.vectors, lm.name, traits=config.traits, layers=config.layers,
        num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint,
    )
    directions = {pv.trait: (pv.layer, pv.direction()) for pv in vectors}
    score_col = "proj_response" if config.baseline == "none" else "delta"
    thresholds: dict[str, tuple[float | None, str]] = {}
    for pv in vectors:
        if pv.trait in config.thresholds:
            thresholds[pv.trait] = (config.thresholds[pv.trait], "--threshold")
        else:
            t = pv.threshold(config.baseline, score_col, config.flag_percentile)
            src = f"p{config.flag_percentile:g} of calibration set" if t is not None else "none (vector has no calibration for this baseline; pass --threshold TRAIT=VALUE)"
            thresholds[pv.trait] = (t, src)
    settings = GenerationSettings(config.max_new_tokens, config.max_prompt_tokens, lm.dtype)
    settings_key = settings.key()
    run_id = make_run_id(config.source)
    out_dir = config.out_dir or os.path.join(os.path.dirname(config.db) or ".", "runs", run_id)
    parts_dir = os.path.join(out_dir, "parts")
    os.makedirs(parts_dir, exist_ok=True)
    max_len = int(getattr(lm.model.config, "max_position_embeddings", 0) or 0) or None
    vector_info = {
        pv.trait: {"path": pv.path, "layer": pv.layer, "sha256": pv.sha256, "threshold": thresholds[pv.trait][0], "threshold_source": thresholds[pv.trait][1], "score": score_col}
        for pv in vectors
    }
    config_json = json.dumps(asdict(config), sort_keys=True, default=str)
    with connect(config.db) as con:
        con.execute(
            "INSERT INTO runs (run_id, status, started_at, dataset, model, model_fingerprint, baseline, dtype, device, output_dir, config, vectors, versions) "
            "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, started_at, config.source, lm.name, lm.fingerprint, config.baseline, lm.dtype, lm.device, out_dir, config_json, json.dumps(vector_info), json.dumps(_versions())],
        )

    counts = {"read": 0, "scored": 0, "rejected": 0, "generated": 0, "cached": 0, "tokens": 0}
    sums = {pv.trait: {"delta": 0.0, "n_delta": 0, "proj": 0.0, "flagged": 0} for pv in vectors}
    top = _TopK(config.top_n)
    rejects: list[Rejected] = []
    tok = lm.tokenizer
    stream = iter_samples(config.source, fmt=config.format, score_all_turns=config.score_all_turns, split=config.split, config=config.hf_config)
    part_files: list[str] = []
    try:
        t_read = time.perf_counter()
        for chunk_index, chunk in enumerate(chunked(stream, config.chunk_size)):
            timings["read"] += time.perf_counter() - t_read
            chunk_rejects: list[Rejected] = []
            ready: list[tuple[Sample, str, Any]] = []
            for item in chunk:
                if isinstance(item, Rejected):
                    chunk_rejects.append(item)
                    continue
                try:
                    prompt = build_prompt(tok, item)
                    row = encode_pair(tok, prompt, item.response, config.max_prompt_tokens)
                    if row.end <= row.start:
                        raise InputError(item.source, item.line, "the response tokenizes to zero tokens", "give it a non-empty response")
                    if max_len and row.length + (config.max_new_tokens if config.baseline == "generate" else 0) > max_len:
                        raise InputError(item.source, item.line, f"{row.length} tokens is longer than the model's context ({max_len})", "shorten the sample or lower --max-prompt-tokens")
                except InputError as e:
                    chunk_rejects.append(Rejected.of(e))
                    continue
                ready.append((item, prompt, row))
            if chunk_rejects and config.on_error == "fail":
                raise chunk_rejects[0].error
            rejects.extend(chunk_rejects)

            # Base responses: cached ones from the database, the rest generated in batches.
            base: dict[str, tuple[str, int]] = {}
            if config.baseline == "generate" and ready:
                hashes = sorted({prompt_hash(p) for _, p, _ in ready})
                with connect(config.db) as con:
                    found = con.execute(
                        "SELECT prompt_hash, response, n_tokens FROM base_responses WHERE model_fingerprint = ? AND settings_key = ? AND prompt_hash IN (SELECT unnest(?))",
                        [lm.fingerprint, settings_key, hashes],
                    ).fetchall()
                base = {h: (r, n) for h, r, n in found}
                counts["cached"] += sum(1 for _, p, _ in ready if prompt_hash(p) in base)
                missing: dict[str, str] = {}
                for _, p, _ in ready:
                    h = prompt_hash(p)
                    if h not in base and h not in missing:
                        missing[h] = p
                if missing:
                    t0 = time.perf_counter()
                    keys = list(missing)
                    gen = generate_greedy(lm, [prompt_ids(lm, missing[h], config.max_prompt_tokens) for h in keys], config.max_new_tokens, config.generation_batch_size)
                    timings["generate"] += time.perf_counter() - t0
                    now = _dt.datetime.now()
                    for h, (text, n) in zip(keys, gen):
                        base[h] = (text, n)
                    counts["generated"] += len(keys)
                    counts["tokens"] += sum(n for _, n in gen)
                    table = pa.table({
                        "model_fingerprint": [lm.fingerprint] * len(keys), "settings_key": [settings_key] * len(keys),
                        "prompt_hash": keys, "response": [base[h][0] for h in keys], "n_tokens": [base[h][1] for h in keys],
                        "created_at": [now] * len(keys),
                    })
                    with connect(config.db) as con:
                        name = "_incoming_cache"
                        con.register(name, table)
                        con.execute(f"INSERT INTO base_responses SELECT model_fingerprint, settings_key, prompt_hash, response, n_tokens, created_at FROM {name} ON CONFLICT DO NOTHING")
                        con.unregister(name)

            # One forward over the dataset responses and the base responses together.
            rows = [row for _, _, row in ready]
            base_rows: list[Any] = []
            base_index: list[int | None] = []
            if config.baseline == "generate":
                for _, p, _ in ready:
                    text, _n = base[prompt_hash(p)]
                    brow = encode_pair(tok, p, text, config.max_prompt_tokens)
                    if brow.end > brow.start:
                        base_index.append(len(rows) + len(base_rows))
                        base_rows.append(brow)
                    else:
                        base_index.append(None)  # the model answered nothing: no activation, no delta
            t0 = time.perf_counter()
            want_tokens = [True] * len(rows) + [False] * len(base_rows)
            results = score_rows(lm.model, rows + base_rows, directions, tok.pad_token_id, config.batch_tokens, want_tokens, config.layers_path) if ready else []
            timings["forward"] += time.perf_counter() - t0
            counts["tokens"] += sum(r.length for r in rows + base_rows)

            # Assemble, flag, write.
            t0 = time.perf_counter()
            wide: dict[str, list[Any]] = {k: [] for k in ("sample_id", "source", "line", "turn", "content_hash", "n_prompt_tokens", "n_response_tokens", "n_base_tokens")}
            long_rows: dict[str, list[Any]] = {k: [] for k in ("run_id", "sample_id", "trait", "layer", "proj_response", "proj_base", "delta", "flagged")}
            sample_rows: dict[str, list[Any]] = {k: [] for k in ("run_id", "sample_id", "source", "line", "turn", "content_hash", "context", "response", "base_response", "n_prompt_tokens", "n_response_tokens", "n_base_tokens", "metadata")}
            for pv in vectors:
                for col in ("proj_response", "proj_base", "delta", "flagged"):
                    wide[f"{pv.trait}_{col}"] = []
            for i, (sample, p, row) in enumerate(ready):
                res = results[i]
                base_text, base_n = base.get(prompt_hash(p), (None, None)) if config.baseline == "generate" else (None, None)
                bi = base_index[i] if config.baseline == "generate" else None
                for col, val in (("sample_id", sample.id), ("source", sample.source), ("line", sample.line), ("turn", sample.turn), ("content_hash", sample.content_hash), ("n_prompt_tokens", row.start), ("n_response_tokens", row.end - row.start), ("n_base_tokens", (rows + base_rows)[bi].end - (rows + base_rows)[bi].start if bi is not None else None)):
                    wide[col].append(val)
                sample_rows["run_id"].append(run_id)
                for col, val in (("sample_id", sample.id), ("source", sample.source), ("line", sample.line), ("turn", sample.turn), ("content_hash", sample.content_hash), ("context", json.dumps(list(sample.context), ensure_ascii=False)), ("response", sample.response), ("base_response", base_text), ("n_prompt_tokens", row.start), ("n_response_tokens", row.end - row.start), ("n_base_tokens", wide["n_base_tokens"][-1]), ("metadata", json.dumps(sample.metadata, ensure_ascii=False, default=str))):
                    sample_rows[col].append(val)
                for pv in vectors:
                    t = pv.trait
                    pr = res.proj[t]
                    if config.baseline == "generate":
                        pb = results[bi].proj[t] if bi is not None else None
                    elif config.baseline == "prompt-last":
                        pb = res.prompt_last[t]
                    else:
                        pb = None
                    delta = pr - pb if pb is not None else None
                    score = pr if score_col == "proj_response" else delta
                    threshold = thresholds[t][0]
                    flagged = bool(threshold is not None and score is not None and score > threshold)
                    wide[f"{t}_proj_response"].append(pr)
                    wide[f"{t}_proj_base"].append(pb)
                    wide[f"{t}_delta"].append(delta)
                    wide[f"{t}_flagged"].append(flagged)
                    for col, val in (("run_id", run_id), ("sample_id", sample.id), ("trait", t), ("layer", pv.layer), ("proj_response", pr), ("proj_base", pb), ("delta", delta), ("flagged", flagged)):
                        long_rows[col].append(val)
                    s = sums[t]
                    s["proj"] += pr
                    s["flagged"] += flagged
                    if delta is not None:
                        s["delta"] += delta
                        s["n_delta"] += 1
                    if score is not None and top.would_enter(t, score) and res.token_values:
                        top.push(t, score, sample.id, list(row.ids[row.start : row.end]), res.token_values[t])
            wide_table = pa.table(wide, schema=_wide_schema([pv.trait for pv in vectors]))
            part = os.path.join(parts_dir, f"part-{chunk_index:06d}.parquet")
            pq.write_table(wide_table, part + ".tmp")
            os.replace(part + ".tmp", part)
            part_files.append(part)
            n_read = len(chunk)
            with connect(config.db) as con:
                con.execute("BEGIN TRANSACTION")
                insert_arrow(con, "samples", pa.table(sample_rows))
                insert_arrow(con, "scores", pa.table(long_rows))
                if chunk_rejects:
                    insert_arrow(con, "rejects", pa.table({"run_id": [run_id] * len(chunk_rejects), "source": [r.source for r in chunk_rejects], "line": [r.line for r in chunk_rejects], "reason": [r.reason for r in chunk_rejects]}))
                con.execute("INSERT INTO run_chunks VALUES (?, ?, ?, ?, ?)", [run_id, chunk_index, n_read, len(ready), len(chunk_rejects)])
                con.execute("COMMIT")
            timings["write"] += time.perf_counter() - t0
            counts["read"] += n_read
            counts["scored"] += len(ready)
            counts["rejected"] += len(chunk_rejects)
            if progress:
                progress({"read": counts["read"], "scored": counts["scored"], "rejected": counts["rejected"], "tokens": counts["tokens"], "generated": counts["generated"], "cached": counts["cached"]})
            t_read = time.perf_counter()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        try:
            with connect(config.db, timeout=10) as con:
                con.execute("UPDATE runs SET status = ?, finished_at = ?, n_read = ?, n_scored = ?, n_rejected = ? WHERE run_id = ?", [status, _dt.datetime.now(), counts["read"], counts["scored"], counts["rejected"], run_id])
        except Exception:
            pass
        raise

    # Finish: one scores.parquet from the parts, the heat-map tokens, the summary.
    t0 = time.perf_counter()
    parquet_path = os.path.join(out_dir, "scores.parquet")
    schema = _wide_schema([pv.trait for pv in vectors])
    with pq.ParquetWriter(parquet_path + ".tmp", schema) as writer:
        for part in part_files:
            writer.write_table(pq.read_table(part, schema=schema))
    os.replace(parquet_path + ".tmp", parquet_path)
    shutil.rmtree(parts_dir, ignore_errors=True)
    summaries = []
    token_rows: dict[str, list[Any]] = {"run_id": [], "sample_id": [], "trait": [], "tokens": [], "token_values": []}
    for pv in vectors:
        t = pv.trait
        s = sums[t]
        entries = sorted(top.heaps.get(t, []), key=lambda e: -e[0])
        for score, _tie, sid, ids, values in entries:
            token_rows["run_id"].append(run_id)
            token_rows["sample_id"].append(sid)
            token_rows["trait"].append(t)
            token_rows["tokens"].append([tok.decode([i]) for i in ids])
            token_rows["token_values"].append(values)
        cal = pv.calibration or {}
        cal_entry = cal.get("scores", {}).get(config.baseline, {}).get(score_col) if cal.get("layer") == pv.layer else None
        summaries.append(TraitSummary(
            trait=t, layer=pv.layer, score=score_col, threshold=thresholds[t][0], threshold_source=thresholds[t][1],
            mean_delta=(s["delta"] / s["n_delta"]) if s["n_delta"] else None,
            mean_proj_response=(s["proj"] / counts["scored"]) if counts["scored"] else float("nan"),
            n_flagged=int(s["flagged"]), n=counts["scored"],
            calibration_mean=cal_entry.get("mean") if cal_entry else None,
            top=[{"sample_id": sid, "score": score} for score, _t, sid, _i, _v in entries[:5]],
        ))
    timings["total"] = time.perf_counter() - started
    with connect(config.db) as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM token_scores WHERE run_id = ?", [run_id])
        insert_arrow(con, "token_scores", pa.table(token_rows, schema=pa.schema([("run_id", pa.string()), ("sample_id", pa.string()), ("trait", pa.string()), ("tokens", pa.list_(pa.string())), ("token_values", pa.list_(pa.float64()))])))
        con.execute(
            "UPDATE runs SET status = 'complete', finished_at = ?, timings = ?, n_read = ?, n_scored = ?, n_rejected = ?, summary = ? WHERE run_id = ?",
            [_dt.datetime.now(), json.dumps(timings), counts["read"], counts["scored"], counts["rejected"], json.dumps([asdict(s) for s in summaries]), run_id],
        )
        con.execute("COMMIT")
    timings["write"] += time.perf_counter() - t0
    report_path = None
    if config.report:
        try:
            from auditor.report import render_report
        except ImportError:
            render_report = None
        if render_report is not None:
            report_path = render_report(run_id, db=config.db, out=os.path.join(out_dir, "report.html"), top_n=config.top_n)
    return ScanResult(
        run_id=run_id, out_dir=out_dir, parquet_path=parquet_path, report_path=report_path, db_path=config.db,
        n_read=counts["read"], n_scored=counts["scored"], n_rejected=counts["rejected"],
        n_generated=counts["generated"], n_cached=counts["cached"], seconds=time.perf_counter() - started,
        tokens=counts["tokens"], summaries=summaries, model_name=lm.name, rejects=rejects,
    )


def _wide_schema(traits: list[str]):
    import pyarrow as pa

    fields = [
        ("sample_id", pa.string()), ("source", pa.string()), ("line", pa.int64()), ("turn", pa.int32()),
        ("content_hash", pa.string()), ("n_prompt_tokens", pa.int32()), ("n_response_tokens", pa.int32()), ("n_base_tokens", pa.int32()),
    ]
    for t in traits:
        fields += [(f"{t}_proj_response", pa.float64()), (f"{t}_proj_base", pa.float64()), (f"{t}_delta", pa.float64()), (f"{t}_flagged", pa.bool_())]
    return pa.schema(fields)


def scan(source: str, traits: list[str] | None = None, model: str | None = None, **settings: Any):
    """Scan a dataset and return its scores as a polars DataFrame (one row per sample).

    ``settings`` are the fields of :class:`ScanConfig` (``baseline``, ``vectors``,
    ``db``, ``max_new_tokens`` ...). The run is also stored in the DuckDB database.
    """
    return scan_run(ScanConfig(source=source, traits=traits, model=model, **settings)).scores
