"""Incremental scans: scores (and heat maps) of samples an earlier complete run already computed.

Every run stores a ``reuse_key``: the hash of everything that decides a sample's
projections besides its text (the model's weights, its dtype and device type, the vectors
and their layers, the baseline and the settings that shape the base response; see
``ScanConfig.reuse_key``). A sample of a new run whose ``content_hash`` (its conversation
and response) matches a sample of a *complete* run with the same key gets that sample's
stored projections instead of a forward pass. Flags are not stored state: the new run
applies its own thresholds to the reused projections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from auditor.store.db import connect
from auditor.store.runs import WRITE_WAIT


@dataclass(frozen=True)
class SampleValues:
    """A sample's computed values besides its text: what a reused sample takes from the earlier run."""

    base_response: str | None
    n_prompt_tokens: int
    n_response_tokens: int
    n_base_tokens: int | None
    proj_response: dict[str, float | None]
    proj_base: dict[str, float | None]
    n_rejected_tokens: int | None = None  # preference pairs: the rejected answer's length and projections
    proj_rejected: dict[str, float | None] | None = None


# The newest complete run with the key wins; within it, the first sample id with that content.
_PICK = """
    SELECT m.content_hash, m.run_id, m.sample_id, m.base_response, m.n_prompt_tokens, m.n_response_tokens, m.n_base_tokens, m.n_rejected_tokens,
           row_number() OVER (PARTITION BY m.content_hash ORDER BY r.finished_at DESC, r.run_id, m.sample_id) AS pick
    FROM samples m JOIN runs r USING (run_id)
    WHERE r.status = 'complete' AND r.reuse_key = ? AND m.content_hash IN (SELECT unnest(?))
"""


def find_reusable(db: str, reuse_key: str, content_hashes: list[str], traits: list[str]) -> dict[str, SampleValues]:
    """content hash -> stored values, for the hashes with a score for every trait in ``traits``."""
    if not content_hashes or not os.path.exists(db):
        return {}
    with connect(db, timeout=WRITE_WAIT) as con:
        rows = _reusable_rows(con, reuse_key, content_hashes, traits)
    found: dict[str, dict[str, Any]] = {}
    for h, base, n_prompt, n_response, n_base, n_rejected, trait, pr, pb, prej in rows:
        entry = found.setdefault(
            h,
            dict(
                base_response=base,
                n_prompt_tokens=n_prompt,
                n_response_tokens=n_response,
                n_base_tokens=n_base,
                n_rejected_tokens=n_rejected,
                proj_response={},
                proj_base={},
                proj_rejected={},
            ),
        )
        entry["proj_response"][trait] = pr
        entry["proj_base"][trait] = pb
        entry["proj_rejected"][trait] = prej
    wanted = set(traits)
    out = {}
    for h, entry in found.items():
        if set(entry["proj_response"]) == wanted:
            if entry["n_rejected_tokens"] is None:  # not a pair: no rejected answer
                entry["proj_rejected"] = None
            out[h] = SampleValues(**entry)
    return out


def _reusable_rows(con: Any, reuse_key: str, content_hashes: list[str], traits: list[str]) -> list[tuple[Any, ...]]:
    return con.execute(
        f"""SELECT c.content_hash, c.base_response, c.n_prompt_tokens, c.n_response_tokens, c.n_base_tokens, c.n_rejected_tokens,
                   s.trait, s.proj_response, s.proj_base, s.proj_rejected
            FROM ({_PICK}) c JOIN scores s ON s.run_id = c.run_id AND s.sample_id = c.sample_id
            WHERE c.pick = 1 AND s.trait IN (SELECT unnest(?))""",
        [reuse_key, sorted(set(content_hashes)), traits],
    ).fetchall()


def stored_heat_maps(db: str, reuse_key: str, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[list[str], list[float]]]:
    """(content hash, trait) -> (tokens, token values) stored by a complete run with the same key."""
    if not wanted:
        return {}
    hashes = sorted({h for h, _ in wanted})
    with connect(db) as con:
        rows = con.execute(
            """SELECT m.content_hash, t.trait, first(t.tokens ORDER BY t.run_id, t.sample_id), first(t.token_values ORDER BY t.run_id, t.sample_id)
               FROM token_scores t JOIN samples m USING (run_id, sample_id) JOIN runs r USING (run_id)
               WHERE r.status = 'complete' AND r.reuse_key = ? AND m.content_hash IN (SELECT unnest(?))
               GROUP BY m.content_hash, t.trait""",
            [reuse_key, hashes],
        ).fetchall()
    want = set(wanted)
    return {(h, t): (tokens, values) for h, t, tokens, values in rows if (h, t) in want}
