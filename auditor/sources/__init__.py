"""Sources: raw records from files or hub datasets, turned into Samples."""

from __future__ import annotations

from collections.abc import Iterator

from auditor.errors import InputError
from auditor.sources.formats import FORMATS, detect_format, record_to_samples
from auditor.sources.readers import check_not_empty, expand_paths, no_records_error, read_records
from auditor.sources.sample import Rejected, Sample

__all__ = [
    "FORMATS",
    "Rejected",
    "Sample",
    "check_not_empty",
    "detect_format",
    "expand_paths",
    "iter_samples",
    "no_records_error",
    "read_records",
    "record_to_samples",
]


def iter_samples(
    spec: str,
    fmt: str = "auto",
    score_all_turns: bool = False,
    split: str = "train",
    config: str | None = None,
) -> Iterator[Sample | Rejected]:
    """Samples of a dataset in source order; unusable records come out as Rejected.

    Duplicate sample ids are rejected (the second and later occurrences), so ids
    stay a key in every output.
    """
    seen: set[str] = set()
    for source, line, record in read_records(spec, split=split, config=config):
        if isinstance(record, InputError):
            yield Rejected.of(record)
            continue
        try:
            samples = list(record_to_samples(record, source, line, fmt=fmt, score_all_turns=score_all_turns))
        except InputError as e:
            yield Rejected.of(e)
            continue
        for s in samples:
            if s.id in seen:
                yield Rejected.of(
                    InputError(source, line, f"duplicate id {s.id!r}", "give every record a unique 'id', or remove the 'id' field to use positions")
                )
                continue
            seen.add(s.id)
            yield s
