"""The report's heat maps: each response token's projection, for the top samples per trait.

They come from the scan's own forward pass. Scoring a chunk yields every response
token's projection anyway (one matrix-vector product per trait on the captured hidden
states); the chunk keeps those of its own top ``top_n`` samples per trait (ranked exactly
as the store ranks: score descending, NaN first, missing last, ties by sample id) and
writes them next to its scores part. A sample in the run's top ``top_n`` is in its
chunk's top ``top_n``, so when the run is finished its heat maps are all on disk, however
the run was split into processes, Ray actors or resumed sessions. Memory stays bounded:
one chunk's token values at a time, and ``top_n`` heat maps per trait per chunk on disk.

Samples that were not computed in this run (reused from an earlier run, see
``auditor.store.reuse``) take the heat maps that run stored; any still missing get a small
second forward, the plain path (:func:`second_pass`).
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Key = tuple[str, str]  # (sample_id, trait)


def _rank(entry: tuple[str, float | None]) -> tuple[int, float, str]:
    """``ORDER BY score DESC NULLS LAST, sample_id`` as DuckDB sorts doubles (NaN above every number)."""
    sample_id, score = entry
    if score is None:
        return (2, 0.0, sample_id)
    if math.isnan(score):
        return (0, 0.0, sample_id)
    return (1, -score, sample_id)


def top_candidates(scored: Sequence[tuple[str, float | None]], n: int) -> list[int]:
    """Indices of the ``n`` best ``(sample_id, score)`` entries, best first, in the store's order."""
    if n <= 0:
        return []
    return heapq.nsmallest(n, range(len(scored)), key=lambda i: _rank(scored[i]))


def chunk_candidates(entries: Sequence[tuple[str, dict[str, float | None], Sequence[int], dict[str, list[float]]]], traits: Iterable[str], top_n: int):
    """A chunk's heat-map candidates as a table (``auditor.store.schema.heat_part_schema``).

    ``entries``: per computed sample ``(sample_id, score per trait, response token ids,
    token values per trait)``; only each trait's ``top_n`` best are kept.
    """
    import pyarrow as pa

    from auditor.store.schema import heat_part_schema

    cols: dict[str, list[Any]] = {name: [] for name in heat_part_schema().names}
    for trait in traits:
        for i in top_candidates([(e[0], e[1][trait]) for e in entries], top_n):
            sample_id, _scores, ids, values = entries[i]
            cols["sample_id"].append(sample_id)
            cols["trait"].append(trait)
            cols["token_ids"].append(list(ids))
            cols["token_values"].append(values[trait])
    return pa.table(cols, schema=heat_part_schema())


def read_parts(parts_dir: str, chunks: Iterable[int], wanted: set[Key]) -> dict[Key, tuple[list[int], list[float]]]:
    """The wanted heat maps found in the chunks' candidate parts (one part in memory at a time)."""
    import pyarrow.parquet as pq

    from auditor.store.runs import heat_part_path

    found: dict[Key, tuple[list[int], list[float]]] = {}
    for c in chunks:
        path = heat_part_path(parts_dir, c)
        if not wanted or not os.path.exists(path):  # a chunk stored before heat-map parts existed: second pass
            continue
        part = pq.read_table(path).to_pylist()
        for row in part:
            key = (row["sample_id"], row["trait"])
            if key in wanted:
                found[key] = (row["token_ids"], row["token_values"])
    return found


def forward_answers(
    tokenizer: Any, answers: dict[str, tuple[str, list[str]]], max_prompt_tokens: int | None, score_fn: Callable[[list[Any]], list[Any]]
) -> dict[str, list[tuple[list[int], Any]]]:
    """The plain path: one more forward over every answer of every sample, each after its sample's prompt.

    ``answers``: sample -> (context JSON, [answer, ...]). Returns sample -> [(the answer's token
    ids, its ``score_fn`` result), ...] in answer order.
    """
    import json

    from auditor.activations import encode_pair

    rows: dict[str, list[Any]] = {}
    for sid, (context, texts) in answers.items():
        prompt = tokenizer.apply_chat_template(json.loads(context), tokenize=False, add_generation_prompt=True)
        rows[sid] = [encode_pair(tokenizer, prompt, text, max_prompt_tokens) for text in texts]
    encoded = [row for sample_rows in rows.values() for row in sample_rows]
    results = iter(score_fn(encoded) if encoded else [])
    return {sid: [(list(row.ids[row.start : row.end]), next(results)) for row in sample_rows] for sid, sample_rows in rows.items()}


def second_pass(tokenizer: Any, wanted: dict[Key, tuple[str, str]], max_prompt_tokens: int | None, score_fn: Callable[[list[Any]], list[Any]]):
    """The plain path for samples without a heat map: ``wanted`` maps (sample, trait) -> (context JSON, response).

    Returns (sample, trait) -> (token ids, token values).
    """
    answers = {sid: (context, [response]) for (sid, _trait), (context, response) in wanted.items()}
    got = forward_answers(tokenizer, answers, max_prompt_tokens, score_fn)
    return {(sid, trait): (got[sid][0][0], got[sid][0][1].token_values[trait]) for sid, trait in wanted}


def decode_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token as the text it stands for (the report shows them side by side)."""
    return [tokenizer.decode([i]) for i in ids]


def pair_heat_rows(
    tokenizer: Any,
    run_id: str,
    wanted: Sequence[tuple[str, str, str, str, str | None, str]],
    max_prompt_tokens: int | None,
    score_fn: Callable[[list[Any]], list[Any]],
):
    """token_scores rows (run, sample, trait, tokens, values, rejected tokens, rejected values) for a pair run.

    ``wanted``: (trait, sample_id, context JSON, chosen, rejected, content hash) as the store
    ranks them. Both answers of each sample go through one more forward (the plain path).
    """
    answers: dict[str, tuple[str, list[str]]] = {}
    traits: dict[str, list[str]] = {}
    for trait, sid, context, response, rejected, _hash in wanted:
        answers.setdefault(sid, (context, [response] + ([rejected] if rejected is not None else [])))
        traits.setdefault(sid, []).append(trait)
    got = forward_answers(tokenizer, answers, max_prompt_tokens, score_fn)
    out = []
    for sid, scored in got.items():
        pieces = [decode_pieces(tokenizer, ids) for ids, _ in scored]
        for trait in sorted(traits[sid]):
            chosen = (pieces[0], scored[0][1].token_values[trait])
            rejected = (pieces[1], scored[1][1].token_values[trait]) if len(scored) > 1 else (None, None)
            out.append((run_id, sid, trait, *chosen, *rejected))
    return out
