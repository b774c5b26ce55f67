"""Sources: raw records from files or hub datasets, turned into Samples."""

from __future__ import annotations

from collections.abc import Iterator

from auditor.errors import InputError
from auditor.sources.formats import FORMATS, detect_format, record_to_samples
from auditor.sources.mapping import FieldMap, MappingError
from auditor.sources.preview import check_preview, preview
from auditor.sources.readers import check_not_empty, expand_paths, no_records_error, read_records
from auditor.sources.sample import Rejected, Sample

__all__ = [
    "FORMATS",
    "FieldMap",
    "MappingError",
    "Rejected",
    "Sample",
    "check_not_empty",
    "check_preview",
    "dataset_holds_pairs",
    "detect_format",
    "expand_paths",
    "iter_samples",
    "no_records_error",
    "preview",
    "read_records",
    "record_to_samples",
]


def iter_samples(
    spec: str,
    fmt: str = "auto",
    score_all_turns: bool = False,
    split: str = "train",
    config: str | None = None,
    mapping: FieldMap | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    pairs: bool | None = None,
) -> Iterator[Sample | Rejected]:
    """Samples of a dataset in source order; unusable records come out as Rejected.

    Duplicate sample ids are rejected (the second and later occurrences), so ids
    stay a key in every output. ``limit``/``sample``/``seed`` preview the dataset
    (:mod:`auditor.sources.preview`). ``pairs`` True or False: every sample must be a
    preference pair, or none may be (a run's score means one thing); None: no check.
    """
    seen: set[str] = set()
    records = preview(read_records(spec, split=split, config=config), limit=limit, sample=sample, seed=seed)
    for source, line, record in records:
        if isinstance(record, InputError):
            yield Rejected.of(record)
            continue
        try:
            samples = list(record_to_samples(record, source, line, fmt=fmt, score_all_turns=score_all_turns, mapping=mapping))
            if pairs is not None and samples and samples[0].is_pair != pairs:
                raise _mixed_error(source, line, pairs)
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


def _mixed_error(source: str, line: int, pairs: bool) -> InputError:
    if pairs:
        return InputError(source, line, "not a preference pair, in a scan of preference pairs", "scan pairs and single responses in separate runs")
    return InputError(
        source, line, "a preference pair, in a scan of single responses", "scan pairs and single responses in separate runs (a pair file: --format preference)"
    )


def dataset_holds_pairs(spec: str, fmt: str = "auto", split: str = "train", config: str | None = None, mapping: FieldMap | None = None) -> bool:
    """Whether a scan of ``spec`` scores preference pairs: forced, or its first record is a pair.

    Reads one record (none for ``--format`` other than auto). A run's score is a margin or
    a delta for all its samples, decided here once.
    """
    if fmt != "auto":
        return fmt == "preference"
    for _source, _line, record in read_records(spec, split=split, config=config):
        if isinstance(record, dict):
            if mapping:
                try:
                    record = mapping.apply(record, _source, _line)
                except InputError:
                    return False
            return detect_format(record) == "preference"
    return False
