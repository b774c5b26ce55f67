"""Previews of a large dataset: its first N records, or a reproducible sample of N.

Both work on the stream of raw records (a record that cannot be read counts as one, so
``n_read`` of a preview is N when the dataset has that many) and keep at most N records
in memory, however large the dataset is.

The sample is a *bottom-k* sample: every record gets a key, a seeded hash of where it is
(file name and line), and the N records with the smallest keys are kept, then yielded in
source order. The same seed and the same dataset give the same sample on any machine and
in any process (no random generator state), and a record's fate does not depend on the
records around it, so the sample of a file that grew keeps every earlier pick that still
ranks among the N smallest.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from auditor.errors import AuditorError

T = TypeVar("T")


def check_preview(limit: int | None, sample: int | None, seed: int | None = None) -> None:
    """Refuse nonsensical combinations with the option names in the message."""
    if limit is not None and sample is not None:
        raise AuditorError("give --limit or --sample, not both (--limit takes the first N records, --sample N spread over the whole dataset)")
    for name, value in (("--limit", limit), ("--sample", sample)):
        if value is not None and value < 1:
            raise AuditorError(f"{name} must be at least 1")
    if seed is not None and sample is None:
        raise AuditorError("--seed only applies to --sample; add --sample N, or drop --seed")


def sample_key(seed: int, source: str, line: int | None, position: int) -> int:
    """The record's rank key: a 64-bit seeded hash of its file name and line (position when it has no line)."""
    name = os.path.basename(source.replace("\\", "/").rstrip("/"))
    where = f"{line}" if line is not None else f"#{position}"
    digest = hashlib.blake2b(f"{seed}\x00{name}\x00{where}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def first_records(records: Iterable[T], limit: int) -> Iterator[T]:
    """The first ``limit`` records; the rest of the stream is never read."""
    return itertools.islice(records, limit)


def sample_records(records: Iterable[tuple[str, int | None, Any]], size: int, seed: int = 0) -> Iterator[tuple[str, int | None, Any]]:
    """``size`` records of ``(source, line, record)`` chosen by seeded hash, in source order.

    Memory: ``size`` records (a heap of the smallest keys so far), whatever the stream's length.
    """
    heap: list[tuple[int, int, Any]] = []  # (-key, -position, item): the root is the largest kept key
    for position, item in enumerate(records):
        key = sample_key(seed, item[0], item[1], position)
        entry = (-key, -position, item)
        if len(heap) < size:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:  # a smaller key than the largest kept one (ties: the earlier record)
            heapq.heapreplace(heap, entry)
    for _key, _position, item in sorted(heap, key=lambda e: -e[1]):
        yield item


def preview(
    records: Iterable[tuple[str, int | None, Any]], limit: int | None = None, sample: int | None = None, seed: int = 0
) -> Iterable[tuple[str, int | None, Any]]:
    """The whole stream, its first ``limit`` records, or a ``sample`` of it (see the module docstring)."""
    check_preview(limit, sample)
    if limit is not None:
        return first_records(records, limit)
    if sample is not None:
        return sample_records(records, sample, seed)
    return records
