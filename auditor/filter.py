"""``filter``: the dataset minus the samples a rule selects, each kept record unchanged.

The selection is computed in DuckDB, over the scores and samples the run stored, through
a read-only connection; it comes back ordered by line, and the input file is read as a
stream beside it (a merge of two sorted streams), so memory stays flat however large the
file is. Kept records are written exactly as they were read: the raw bytes of a JSONL
line or of a CSV record's lines, or the Parquet row with the file's own schema.

Before a record is written or dropped, the record at that line is parsed again and its
content hash compared with the one the scan stored: a file that changed since the scan
is refused rather than filtered with scores that belong to other text.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from auditor.config import default_of
from auditor.errors import AuditorError, InputError, StoreError
from auditor.hashing import sha256_file
from auditor.store.db import DEFAULT_DB
from auditor.store.filter_queries import forbid_file_access, rejected_lines, run_sources, selection_sql
from auditor.store.queries import RunInfo, complete_run_ids, resolve_run, stream_batches

# The columns a --where clause sees (one row per sample and trait of the run); margin and
# proj_rejected are those of preference pairs (NULL for other runs).
WHERE_COLUMNS = (
    "sample_id",
    "source",
    "line",
    "turn",
    "trait",
    "layer",
    "delta",
    "proj_response",
    "proj_base",
    "flagged",
    "score",
    "response",
    "proj_rejected",
    "margin",
)
# Inputs that cannot be copied byte for byte: read as records, written as JSONL or Parquet.
RECORD_KINDS = ("json", "hf")


class FilterError(AuditorError):
    """The filter cannot run: a bad rule, an unsupported file, or a file that changed since the scan."""


@dataclass
class FilterRule:
    """What to drop; a record goes when any part selects one of its samples."""

    where: str | None = None  # SQL boolean over WHERE_COLUMNS
    drop_top: str | None = None  # "5%" (per trait, rounded up) or "N" (per trait)
    drop_flagged: bool = False
    traits: list[str] | None = None  # only these traits count (default: all)

    def describe(self) -> dict[str, Any]:
        return {"where": self.where, "drop_top": self.drop_top, "drop_flagged": self.drop_flagged, "traits": self.traits}

    def top_limit(self) -> tuple[str, float] | None:
        """``("percent", 5.0)`` or ``("count", 10)`` from ``drop_top``."""
        if self.drop_top is None:
            return None
        text = str(self.drop_top).strip()
        try:
            if text.endswith("%"):
                pct = float(text[:-1])
                if not 0 < pct <= 100:
                    raise ValueError
                return "percent", pct
            count = int(text)
            if count < 1:
                raise ValueError
            return "count", float(count)
        except ValueError:
            raise FilterError(f"--drop-top {self.drop_top!r}: give a percentage (5%) or a number of samples per trait (100)") from None


@dataclass
class FilterResult:
    run_id: str
    input_path: str
    output_path: str
    rejects_path: str
    manifest_path: str
    counts: dict[str, int]
    manifest: dict[str, Any] = field(default_factory=dict)


def file_kind(path: str) -> str:
    """The input's file type (one list of suffixes: auditor.sources.readers.FILE_TYPES); jsonl, csv and parquet are copied as they are, json read as records."""
    from auditor.sources.readers import file_type

    kind = file_type(path)
    if kind is None:
        raise FilterError(
            f"{path}: audit filter reads and writes JSONL, Parquet or CSV files (and reads JSON arrays and hf: datasets); this one is none of them"
        )
    return kind


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def match_source(sources: list[str], path: str) -> str | None:
    """The source name the run stored for ``path``: the same file, else the only file of that name."""
    same = [s for s in sources if s == path or (os.path.exists(s) and _same_file(s, path))]
    if same:
        return same[0]
    by_name = [s for s in sources if os.path.basename(s) == os.path.basename(path)]
    return by_name[0] if len(by_name) == 1 else None


def resolve_filter_run(con: Any, spec: str, path: str, db: str) -> tuple[RunInfo, str]:
    """The run and its stored source name for ``path``; ``latest`` is the newest complete run that scanned it."""
    if spec == "latest":
        for run_id in complete_run_ids(con):
            stored = match_source(run_sources(con, run_id), path)
            if stored is not None:
                return resolve_run(con, run_id, db), stored
        raise StoreError(f"{db}: no complete run scanned {path}; run audit scan {path} first, or pass --run RUN_ID (audit runs lists them)")
    run = resolve_run(con, spec, db)
    sources = run_sources(con, run.run_id)
    stored = match_source(sources, path)
    if stored is None:
        shown = ", ".join(sources[:5]) + (", ..." if len(sources) > 5 else "")
        raise FilterError(f"run {run.run_id} did not scan {path} (it scanned: {shown or 'nothing'}); pass the file the run scanned, or --run latest")
    return run, stored


def selection_query(run: RunInfo, stored_source: str, rule: FilterRule) -> tuple[str, dict[str, Any]]:
    """SQL giving, per sample of the file in line order: line, turn, sample_id, content_hash, reasons (NULL: kept)."""
    query = selection_sql(
        run, stored_source, where=rule.where, drop_flagged=rule.drop_flagged, top=rule.top_limit(), top_text=str(rule.drop_top), traits=rule.traits
    )
    if query is None:
        raise FilterError("no rule: give --where, --drop-top or --drop-flagged")
    return query


def _check_read_query(sql: str, where: str | None) -> None:
    """The query (with the user's --where inside) must be one SELECT; anything else is refused."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise FilterError(f"--where {where!r} is not valid SQL ({str(e).splitlines()[0]}); write a boolean such as \"trait = 'evil' and delta > 3\"") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise FilterError(f"--where {where!r} must be one boolean expression (e.g. \"trait = 'evil' and delta > 3\"), not further statements")


def _rows(reader: Any) -> Iterator[tuple]:
    """Rows from a pyarrow RecordBatchReader, one batch in memory at a time."""
    for batch in reader:
        columns = [col.to_pylist() for col in batch.columns]
        yield from zip(*columns, strict=True)


class _Peek:
    def __init__(self, it: Iterator[Any]):
        self._it = iter(it)
        self._next: Any = None
        self._done = False
        self._advance()

    def _advance(self) -> None:
        try:
            self._next = next(self._it)
        except StopIteration:
            self._next = None
            self._done = True

    def peek(self) -> Any:
        return None if self._done else self._next

    def pop(self) -> Any:
        item = self._next
        self._advance()
        return item


# ---------------------------------------------------------------- record streams
# ---------------------------------------------------------------- the filter


@dataclass
class _Writer:
    """Writes kept records to a temporary file that replaces the output only when all went well."""

    kind: str
    path: str
    tmp: str
    schema: Any = None
    compression: str | None = None
    fh: Any = None
    pq_writer: Any = None

    def open(self) -> None:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            self.pq_writer = pq.ParquetWriter(self.tmp, self.schema, compression=self.compression or "snappy")
        elif self.path.endswith(".gz"):
            self.fh = gzip.open(self.tmp, "wb")
        else:
            self.fh = open(self.tmp, "wb")

    def close(self) -> None:
        if self.pq_writer is not None:
            self.pq_writer.close()
        if self.fh is not None:
            self.fh.close()


def default_side_paths(out: str) -> tuple[str, str]:
    """``clean.jsonl`` -> ``clean.rejects.jsonl``, ``clean.manifest.json``."""
    base = re.sub(r"(\.(jsonl|ndjson|csv|parquet))?(\.gz)?$", "", out, flags=re.IGNORECASE)
    return base + ".rejects.jsonl", base + ".manifest.json"


def filter_dataset(
    source: str,
    out: str,
    rule: FilterRule,
    run: str = "latest",
    db: str = DEFAULT_DB,
    rejects: str | None = None,
    manifest: str | None = None,
    split: str = default_of("split"),
) -> FilterResult:
    """Write ``source`` minus the records ``rule`` selects in run ``run``; see the module docstring.

    Returns the counts (``read = kept + dropped``), and writes the rejects file (JSONL: source,
    line, sample_id, sample_ids, reasons) and the manifest (counts, sha256 of input and output,
    the rule, the run, the time).
    """
    from auditor.store.db import connect

    path, kind, out_kind = _input_and_output_kinds(source, out)
    default_rejects, default_manifest = default_side_paths(out)
    rejects = rejects or default_rejects
    manifest = manifest or default_manifest
    if rule.top_limit() is None and not rule.where and not rule.drop_flagged:
        raise FilterError("no rule: give --where, --drop-top or --drop-flagged")

    with connect(db, read_only=True) as con:
        # The database is read-only already; this also keeps a --where clause from reading or writing files.
        forbid_file_access(con)
        scanned = f"hf:{path[3:]}[{split}]" if kind == "hf" else path  # how the scan's reader names it
        info, stored_source = resolve_filter_run(con, run, scanned, db)
        _check_not_a_preview(info)
        selection = _open_selection(con, info, stored_source, rule, db)
        rejected = _Peek(rejected_lines(con, info.run_id, stored_source))
        input_digest = hashlib.sha256() if kind == "hf" else None
        counts = _stream(path, kind, out, rejects, info, stored_source, selection, rejected, split=split, input_digest=input_digest, out_kind=out_kind)

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out_sha = sha256_file(out)
    if input_digest is not None:  # a dataset is not one file: the hash of its records as read (canonical JSON lines)
        described = {"path": path, "split": split, "sha256": input_digest.hexdigest(), "sha256_of": "records", "bytes": None, "format": kind}
    else:
        described = {"path": path, "sha256": sha256_file(path), "bytes": os.path.getsize(path), "format": kind}
    body = {
        "tool": "persona-audit filter",
        "created_at": created,
        "run_id": info.run_id,
        "db": db,
        "model": info.model,
        "rule": rule.describe(),
        "input": described,
        "output": {"path": out, "sha256": out_sha, "bytes": os.path.getsize(out)},
        "rejects": {"path": rejects, "sha256": sha256_file(rejects)},
        "counts": counts,
    }
    _write_json(manifest, body)
    return FilterResult(info.run_id, path, out, rejects, manifest, counts, body)


def _input_and_output_kinds(source: str, out: str) -> tuple[str, str, str]:
    """(input path, its kind, the output's kind); refuses several files, an output in another format, or the input itself."""
    from auditor.sources import expand_paths

    if source.startswith("hf:"):
        path, kind = source, "hf"
    else:
        paths = expand_paths(source)
        if len(paths) != 1:
            raise FilterError(f"{source}: names {len(paths)} files; filter one file at a time (the output is one file in the input's format)")
        path = paths[0]
        kind = file_kind(path)
    out_kind = file_kind(out)
    if kind in RECORD_KINDS:
        if out_kind not in ("jsonl", "parquet"):
            what = "an hf: dataset" if kind == "hf" else "a JSON array"
            raise FilterError(f"--out {out}: {what} is written as JSONL or Parquet; name the output .jsonl or .parquet")
    elif out_kind != kind:
        raise FilterError(f"--out {out}: the output keeps the input's format ({kind}); give it a {kind} name, e.g. {os.path.basename(path)}")
    if kind != "hf" and os.path.exists(out) and _same_file(out, path):
        raise FilterError(f"--out {out} is the input file; write the filtered dataset to a new file")
    return path, kind, out_kind


def _open_selection(con: Any, run: RunInfo, stored_source: str, rule: FilterRule, db: str) -> _Peek:
    """The selection's rows (line, turn, sample_id, content_hash, reasons), streamed in line order; a bad --where says which columns exist."""
    import duckdb

    sql, params = selection_query(run, stored_source, rule)
    _check_read_query(sql, rule.where)
    try:
        return _Peek(_rows(stream_batches(con, sql, params, 8192)))
    except duckdb.Error as e:
        first = str(e).splitlines()[0]
        if rule.where:
            raise FilterError(f"--where {rule.where!r}: {first}; the columns are {', '.join(WHERE_COLUMNS)}") from None
        raise StoreError(f"{db}: the selection query failed ({first})") from None


def _write_json(path: str, body: dict[str, Any]) -> None:
    """``body`` as indented JSON at ``path``, written whole or not at all."""
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _check_not_a_preview(run: RunInfo) -> None:
    """A --limit/--sample run scored part of the dataset: the rest has no score to keep or drop by."""
    for option in ("limit", "sample"):
        if run.config.get(option) is not None:
            raise FilterError(
                f"run {run.run_id} scanned a preview (--{option} {run.config[option]}); "
                "the filter needs a score for every record: scan the whole dataset and filter with that run"
            )


@dataclass
class _Matcher:
    """Walks the file's records beside the line-ordered selection: checks each record is the
    scanned one, says whether it goes, and writes a rejects line for each that does."""

    path: str
    run: RunInfo
    stored_source: str
    selection: _Peek
    rejected_lines: _Peek
    counts: dict[str, int]
    rejects_fh: Any = None

    def __post_init__(self) -> None:
        from auditor.sources import FieldMap

        # How the run read records into samples, to hash them again the same way.
        config = self.run.config
        self.fmt = config.get("format", "auto")
        self.all_turns = bool(config.get("score_all_turns", False))
        self.mapping = FieldMap.parse(config.get("fields"), config.get("roles"))

    def changed(self, line: int, why: str) -> FilterError:
        return FilterError(
            f"{self.path}:{line}: {why}: the file changed since run {self.run.run_id} scanned it; scan it again (audit scan {self.path}) and filter with that run"
        )

    def _expected(self, line: int) -> tuple[list[tuple], bool]:
        """The selection's rows for ``line``, and whether the scan rejected that line."""
        selection, rejected_lines = self.selection, self.rejected_lines
        expected = []
        if selection.peek() is not None and selection.peek()[0] < line:
            raise self.changed(selection.peek()[0], "the run scored a record on a line that now holds none")
        while selection.peek() is not None and selection.peek()[0] == line:
            expected.append(selection.pop())
        while rejected_lines.peek() is not None and rejected_lines.peek() < line:
            rejected_lines.pop()
        return expected, rejected_lines.peek() == line

    def _check_hashes(self, line: int, record: Any, expected: list[tuple]) -> None:
        """The record's samples must hash as the scanned ones did, turn by turn."""
        from auditor.sources import record_to_samples

        found: dict[int, str] = {}
        try:
            for sample in record_to_samples(record, self.stored_source, line, fmt=self.fmt, score_all_turns=self.all_turns, mapping=self.mapping):
                found[sample.turn] = sample.content_hash
        except InputError:
            pass  # a later turn may fail as it did in the scan; the turns compared below decide
        for _line, turn, _sid, content_hash, _reasons in expected:
            if found.get(turn) != content_hash:
                raise self.changed(line, "the record differs from the scanned one (content hash mismatch)")

    def decide(self, line: int, record: Any) -> list[str] | None:
        """The reasons to drop the record at ``line`` (None: keep it), after checking it is the scanned one."""
        expected, was_rejected = self._expected(line)
        if not expected:
            if not was_rejected:
                raise self.changed(line, "this record is not in the run")
            self.counts["unscored_kept"] += 1
            return None
        if isinstance(record, InputError):
            raise self.changed(line, f"the record no longer parses ({record.problem})")
        self._check_hashes(line, record, expected)
        chosen = [row for row in expected if row[4]]
        if not chosen:
            return None
        self.counts["samples_selected"] += len(chosen)
        reasons = [reason for row in chosen for reason in row[4]]
        ids = [row[2] for row in chosen]
        entry = {"source": self.path, "line": line, "sample_id": ids[0], "sample_ids": ids, "reasons": reasons}
        self.rejects_fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return reasons


def _stream(
    path: str,
    kind: str,
    out: str,
    rejects: str,
    run: RunInfo,
    stored_source: str,
    selection: _Peek,
    rejected_lines: _Peek,
    split: str = "train",
    input_digest: Any = None,
    out_kind: str | None = None,
) -> dict[str, int]:
    """Merge the file with the line-ordered selection; write kept records and the rejects file."""
    counts = {"read": 0, "kept": 0, "dropped": 0, "unscored_kept": 0, "samples_selected": 0}
    for target in (out, rejects):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tag = f".tmp-{os.getpid()}"
    writer = _Writer(out_kind or kind, out, out + tag)
    rejects_tmp = rejects + tag
    matcher = _Matcher(path, run, stored_source, selection, rejected_lines, counts)
    try:
        with open(rejects_tmp, "w", encoding="utf-8") as matcher.rejects_fh:
            if kind in RECORD_KINDS:
                _stream_records(path, split, run, writer, matcher.decide, counts, input_digest)
            elif kind == "parquet":
                _stream_parquet(path, writer, matcher.decide, counts)
            else:
                _stream_lines(path, kind, writer, matcher.decide, counts)
            leftover = selection.peek()
            if leftover is not None:
                raise matcher.changed(leftover[0], f"the run scored a record at line {leftover[0]}, past the end of the file")
        writer.close()
        os.replace(writer.tmp, out)
        os.replace(rejects_tmp, rejects)
    except BaseException:
        writer.close()
        for tmp in (writer.tmp, rejects_tmp):
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    assert counts["read"] == counts["kept"] + counts["dropped"]
    return counts


def _stream_lines(path: str, kind: str, writer: _Writer, decide: Any, counts: dict[str, int]) -> None:
    """JSONL and CSV: the scan's own reader, so both accept the same files; kept records copied byte for byte."""
    from auditor.sources.readers import raw_records

    writer.open()
    for r in raw_records(path, kind):
        if r.line is None:  # no record (a blank line, the CSV header): copied as it is
            writer.fh.write(r.raw)
            continue
        counts["read"] += 1
        if decide(r.line, r.record) is None:
            writer.fh.write(r.raw)
            counts["kept"] += 1
        else:
            counts["dropped"] += 1


_CODECS = {"UNCOMPRESSED": "none", "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli", "ZSTD": "zstd", "LZ4": "lz4", "LZ4_RAW": "lz4"}


def _stream_parquet(path: str, writer: _Writer, decide: Any, counts: dict[str, int], batch_size: int = 1024) -> None:
    """Kept rows of each batch, written with the input's schema (and its compression where known)."""
    import pyarrow as pa

    from auditor.sources.readers import open_parquet

    pf = open_parquet(path)
    writer.schema = pf.schema_arrow
    if pf.metadata.num_row_groups and pf.metadata.num_columns:
        codec = str(pf.metadata.row_group(0).column(0).compression).upper()
        writer.compression = _CODECS.get(codec, "snappy")
    writer.open()
    number = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        rows = batch.to_pylist()
        keep = []
        for row in rows:
            number += 1
            counts["read"] += 1
            dropped = decide(number, row) is not None
            keep.append(not dropped)
            counts["kept" if not dropped else "dropped"] += 1
        if any(keep):
            writer.pq_writer.write_batch(batch.filter(pa.array(keep)))


def _stream_records(path: str, split: str, run: RunInfo, writer: _Writer, decide: Any, counts: dict[str, int], digest: Any, batch_size: int = 1024) -> None:
    """JSON arrays and hf: datasets: the scan's own reader; kept records written as JSONL lines or Parquet rows."""
    import pyarrow as pa

    from auditor.sources import read_records

    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        if writer.pq_writer is None:
            writer.schema = pa.Table.from_pylist(pending).schema
            writer.open()
        try:
            writer.pq_writer.write_table(pa.Table.from_pylist(pending, schema=writer.schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise FilterError(f"{path}: the kept records do not share one Parquet schema ({e}); write the output as JSONL (--out NAME.jsonl)") from None
        pending.clear()

    if writer.kind == "jsonl":
        writer.open()
    for _source, line, record in read_records(path, split=split, config=run.config.get("hf_config")):
        if isinstance(record, InputError):
            raise FilterError(f"{record}; the filter cannot copy a record it cannot read")
        if digest is not None:
            digest.update(json.dumps(record, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8") + b"\n")
        counts["read"] += 1
        if decide(line, record) is not None:
            counts["dropped"] += 1
            continue
        counts["kept"] += 1
        if writer.kind == "jsonl":
            writer.fh.write(json.dumps(record, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
        else:
            pending.append(record)
            if len(pending) >= batch_size:
                flush()
    if writer.kind == "parquet":
        flush()
        if writer.pq_writer is None:  # nothing kept: a Parquet file without rows or columns
            writer.schema = pa.schema([])
            writer.open()


def rejects_of(path: str) -> Iterator[dict[str, Any]]:
    """The records of a rejects file (for tests and tools)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


__all__ = ["FilterError", "FilterResult", "FilterRule", "WHERE_COLUMNS", "default_side_paths", "file_kind", "filter_dataset"]
