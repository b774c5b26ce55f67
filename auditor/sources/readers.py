"""Readers: local files, folders, globs and Hugging Face datasets -> raw records.

Every reader yields ``(source, line, record_or_error)``: the record is a dict, or an
InputError when that line cannot be read, so the pipeline decides whether to stop
(``--on-error fail``) or record the rejection (``skip``). Nothing is dropped silently.
Line numbers are 1-based physical lines for JSONL/CSV, 1-based item or row numbers
for JSON arrays, Parquet and Hugging Face datasets.

The line-based formats (JSONL, CSV) are read by :func:`raw_records`, which also keeps each
record's exact bytes: ``audit filter`` copies kept records through unchanged with the very
reader the scan used, so both commands accept the same files (a UTF-8 BOM, blank lines,
CSV rows that span lines) and number their records alike.

Adding an input file type: a suffix list in ``FILE_TYPES`` and a reader in ``read_file``
(plus, for ``audit filter``, a ``raw_records`` branch or a writer in ``auditor/filter.py``).
"""

from __future__ import annotations

import codecs
import csv
import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from auditor.errors import InputError, MissingDependency

# What errors="surrogateescape" turns undecodable bytes into.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
# The one list of supported input files: file type -> the suffixes that name it.
FILE_TYPES: dict[str, tuple[str, ...]] = {
    "jsonl": (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"),
    "json": (".json", ".json.gz"),
    "parquet": (".parquet",),
    "csv": (".csv", ".csv.gz"),
}
SUFFIXES = tuple(s for suffixes in FILE_TYPES.values() for s in suffixes)
Record = tuple[str, int, "dict[str, Any] | InputError"]


def file_type(path: str) -> str | None:
    """``jsonl``, ``json``, ``parquet`` or ``csv`` from the file name; None when unsupported."""
    name = path.lower()
    for kind, suffixes in FILE_TYPES.items():
        if name.endswith(suffixes):
            return kind
    return None


@dataclass
class RawRecord:
    """One record of a line-based file with the exact bytes of the physical lines it spans.

    ``line`` is None for bytes that hold no record (a blank line, the CSV header): a copy
    of the file writes them through. ``record`` is the dict the scan reads, or the
    InputError that rejects it.
    """

    line: int | None
    raw: bytes
    record: dict[str, Any] | InputError | None = None


def expand_paths(spec: str) -> list[str]:
    """A file, a folder (searched recursively for known suffixes) or a glob -> sorted files."""
    if spec.startswith("hf:"):
        return [spec]
    if os.path.isdir(spec):
        found = []
        for root, _dirs, files in os.walk(spec):
            found += [os.path.join(root, f) for f in files if f.endswith(SUFFIXES)]
        if not found:
            raise InputError(spec, None, "folder holds no dataset files", f"put files ending in {', '.join(SUFFIXES)} in it")
        return sorted(found)
    if any(c in spec for c in "*?["):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            raise InputError(spec, None, "pattern matches no files", "check the path and quote the pattern so the shell does not expand it")
        return found
    if not os.path.exists(spec):
        raise InputError(spec, None, "no such file", "check the path, or use hf:owner/name for a Hugging Face dataset")
    return [spec]


def read_records(spec: str, split: str = "train", config: str | None = None) -> Iterator[Record]:
    """All records of a file, folder, glob or ``hf:`` dataset, in a stable order."""
    for path in expand_paths(spec):
        yield from read_file(path, split=split, config=config)


def no_records_error(spec: str) -> InputError:
    """An empty dataset is an error: a gate that passes on nothing would hide a broken path or export."""
    return InputError(spec, None, "holds no records", "a dataset needs at least one record: check the path, or that the file was written completely")


def check_not_empty(spec: str) -> None:
    """Raise :func:`no_records_error` when local files hold no record at all (reads one record).

    Hub datasets are left to the scan itself: opening one only to peek costs a download.
    """
    if spec.startswith("hf:"):
        return
    for _ in read_records(spec):
        return
    raise no_records_error(spec)


def read_file(path: str, split: str = "train", config: str | None = None) -> Iterator[Record]:
    if path.startswith("hf:"):
        yield from _read_hf(path[3:], split, config)
        return
    kind = file_type(path)
    if kind in ("jsonl", "csv"):
        for r in raw_records(path, kind):
            if r.line is not None:
                yield path, r.line, r.record
    elif kind == "json":
        yield from _read_json(path)
    elif kind == "parquet":
        yield from _read_parquet(path)
    else:
        raise InputError(path, None, "unknown file type", f"use one of {', '.join(SUFFIXES)}")


def raw_records(path: str, kind: str) -> Iterator[RawRecord]:
    """Every record of a JSONL or CSV file with its bytes, in file order; the bytes of all items, joined, are the file."""
    return _read_jsonl(path) if kind == "jsonl" else _read_csv(path)


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_jsonl(path: str) -> Iterator[RawRecord]:
    with _open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            data = raw
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                data = raw[len(codecs.BOM_UTF8) :]  # editors on Windows start UTF-8 files with a BOM
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(number, raw, InputError(path, number, f"not valid UTF-8 (byte {e.start})", "re-encode the file as UTF-8"))
                continue
            if not text.strip():
                yield RawRecord(None, raw)  # a blank line holds no record
                continue
            try:
                # Without its line break, an error at the end of the line reports that line's column.
                yield RawRecord(number, raw, json.loads(text.rstrip("\r\n")))
            except json.JSONDecodeError as e:
                error = InputError(
                    path, number, f"malformed JSON ({e.msg} at column {e.colno})", "fix the line or remove it; each line must be one JSON object"
                )
                yield RawRecord(number, raw, error)


def _read_json(path: str) -> Iterator[Record]:
    try:
        with _open_binary(path) as fh:
            data = json.loads(fh.read().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(path, None, f"not valid UTF-8 (byte {e.start})", "re-encode the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"malformed JSON ({e.msg})", "fix the file; for one object per line name it .jsonl") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:
            data = data[lists[0]]
        else:
            data = [data]
    if not isinstance(data, list):
        raise InputError(path, None, "top level is not a list of records", "write a JSON array of objects")
    for number, item in enumerate(data, start=1):
        yield path, number, item


def open_parquet(path: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile``, or an InputError naming the file."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise InputError(path, None, f"not a readable Parquet file ({e})", "check the file was fully written") from None


def _read_parquet(path: str) -> Iterator[Record]:
    number = 0
    for batch in open_parquet(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield path, number, row


def _read_csv(path: str) -> Iterator[RawRecord]:
    with _open_binary(path) as fh:
        has_bom = fh.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8
        fh.seek(0)
        # Bad bytes decode to lone surrogates instead of stopping the file, so the row that
        # holds them is rejected by line like any other bad record. utf-8-sig: Excel's BOM.
        # surrogateescape also encodes each line back to its exact bytes (the BOM aside).
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
        pending: list[bytes] = [codecs.BOM_UTF8] if has_bom else []

        def lines() -> Iterator[str]:
            for line in text:
                pending.append(line.encode("utf-8", "surrogateescape"))
                yield line

        def take() -> bytes:
            raw = b"".join(pending)
            pending.clear()
            return raw

        reader = csv.reader(lines())
        header = next(reader, None)
        if header is None:
            if pending:
                yield RawRecord(None, take())
            return
        if any(_NOT_UTF8.search(name) for name in header):
            raise InputError(path, 1, "the header is not valid UTF-8", "re-encode the file as UTF-8")
        yield RawRecord(None, take())
        previous_end = 1  # record lines are numbered as if the header took one line (sample ids hold them)
        for row in reader:
            if not row:
                continue  # a blank line: its bytes go with the next record
            # The record starts on the line after the previous one ended (rows may span lines).
            start = previous_end + 1
            previous_end = reader.line_num
            yield RawRecord(start, take(), _csv_record(path, start, header, row))
        if pending:
            yield RawRecord(None, take())


def _csv_record(path: str, line: int, header: list[str], row: list[str]) -> dict[str, Any] | InputError:
    """A CSV row as a dict keyed by the header (missing trailing fields: None), or why it is rejected."""
    if len(row) > len(header):
        return InputError(path, line, "row has more fields than the header", "quote fields that contain commas")
    bad = [k for k, v in zip(header, row, strict=False) if _NOT_UTF8.search(v)]
    if bad:
        return InputError(path, line, f"not valid UTF-8 (column {bad[0]!r})", "re-encode the file as UTF-8")
    record: dict[str, Any] = dict(zip(header, row, strict=False))
    record.update({k: None for k in header[len(row) :]})
    return record


def _read_hf(name: str, split: str, config: str | None) -> Iterator[Record]:
    try:
        import datasets
    except ImportError:
        raise MissingDependency("datasets", "hf", "reading hf: datasets") from None
    label = f"hf:{name}[{split}]"
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise InputError(
            label,
            None,
            f"cannot open the dataset ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            "check the name, --split and --config; with no network, download it where you have one and pass hf:/path/to/local/copy or its files",
        ) from None
    for number, row in enumerate(ds, start=1):
        yield label, number, dict(row)
