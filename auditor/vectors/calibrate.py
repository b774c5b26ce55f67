"""Calibration: the distribution of scores over clean reference conversations.

``scan`` flags a sample when its score is above a percentile (default 95) of what the
same vector, layer and baseline give on ordinary helpful conversations. This module
turns the scores of such a reference set, scanned once per baseline (``generate``,
``prompt-last``, ``none``) by the ordinary scan pipeline (:mod:`auditor.calibration` runs
those scans: this layer does not import the pipeline), into each vector's sidecar::

    calibration = {"layer": L, "reference": path, "n": N,
                   "scores": {baseline: {score: {"mean", "std", "percentiles": [201 values, 0..100 by 0.5]}}}}

where ``score`` is ``delta`` for the generate and prompt-last baselines (plus
``proj_response`` for reference) and ``proj_response`` for ``none``:
exactly what :meth:`PersonaVector.threshold` reads.

The shipped reference is ``examples/eval/clean.jsonl``, and only its ``dev`` split is
used: the quality benchmark reports flag rates on the ``test`` split, which must not be
the data the thresholds were fitted on.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auditor.errors import AuditorError
from auditor.hashing import sha256_file
from auditor.resources import shipped_root
from auditor.score import calibrated_columns
from auditor.vectors.persona import load_vector, portable_path, save_vector

DEFAULT_REFERENCE = os.path.join("examples", "eval", "clean.jsonl")
DEFAULT_SPLIT = "dev"
PERCENTILES = [i / 2 for i in range(201)]


def find_reference(path: str | None = None) -> Path:
    """The reference file: as given, else examples/eval/clean.jsonl here or beside the package."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise AuditorError(f"{path}: no such reference file; pass --reference with a JSONL of clean conversations")
        return p
    for root in (Path.cwd(), shipped_root()):
        p = root / DEFAULT_REFERENCE
        if p.is_file():
            return p
    raise AuditorError(f"no reference set found ({DEFAULT_REFERENCE}); pass --reference FILE.jsonl or use --no-calibrate")


def default_cache_db() -> str:
    """A database kept between calibrations so the base responses are generated once per model."""
    from auditor.model.loading import cache_root

    return os.path.join(cache_root(), "calibration.duckdb")


def split_rows(reference: Path, split: str | None, folder: str) -> tuple[str, int]:
    """Write the reference's rows of ``split`` (all rows when None) to a JSONL in ``folder``: (path, n)."""
    out = os.path.join(folder, f"reference-{split or 'all'}.jsonl")
    n = 0
    with open(reference, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line_no, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise AuditorError(f"{reference}:{line_no}: not valid JSON ({e.msg}); fix the line") from None
            if split is not None and record.get("split") != split:
                continue
            dst.write(line if line.endswith("\n") else line + "\n")
            n += 1
    if n == 0:
        raise AuditorError(f"{reference}: no record has split {split!r}; pass --reference-split all, or add a split field")
    return out, n


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """mean, std and the 201 percentiles 0, 0.5, ..., 100 (linear interpolation)."""
    import numpy as np

    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        raise AuditorError("calibration produced no scores (every reference sample was rejected)")
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0, "percentiles": [float(v) for v in np.percentile(x, PERCENTILES)]}


def store_calibration(
    lm: Any,
    folder: str | os.PathLike,
    traits: Sequence[str],
    reference: Path,
    split: str | None,
    columns: Mapping[str, Mapping[str, list]],
    settings: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Write each trait's calibration into its sidecar from the reference scans' score columns.

    ``columns``: baseline -> the scan's scores table as columns (``{trait}_{score}`` -> values).
    ``settings``: what the scores depend on beyond the model (``generation_dtype``,
    ``max_new_tokens``, ``max_prompt_tokens``), recorded so a scan can tell whether they match.
    Returns trait -> the calibration stored.
    """
    ref_hash = sha256_file(reference)
    shown = portable_path(str(reference.resolve()))
    out = {}
    for trait in traits:
        pv = load_vector(Path(folder) / f"{trait}.safetensors")
        scores: dict[str, dict[str, Any]] = {}
        n_scored = 0
        for baseline, table in columns.items():
            n_scored = len(table[f"{trait}_proj_response"])
            # Every score a scan of this baseline can flag on (auditor.score), so each has a threshold.
            scores[baseline] = {col: distribution(table[f"{trait}_{col}"]) for col in calibrated_columns(baseline)}
        pv.meta["calibration"] = {
            "layer": pv.layer,
            "reference": shown,
            "reference_sha256": ref_hash,
            "split": split or "all",
            "n": n_scored,
            "model_fingerprint": lm.fingerprint,
            "dtype": lm.dtype,
            "generation_dtype": settings["generation_dtype"],
            "max_new_tokens": settings["max_new_tokens"],
            "max_prompt_tokens": settings["max_prompt_tokens"],
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "scores": scores,
        }
        save_vector(pv, folder)
        out[trait] = pv.meta["calibration"]
    return out
