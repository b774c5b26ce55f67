"""Calibration: the distribution of scores over clean reference conversations.

``scan`` flags a sample when its score is above a percentile (default 95) of what the
same vector, layer and baseline give on ordinary helpful conversations. This module
scans such a reference set once per baseline (``generate``, ``prompt-last``, ``none``)
with the ordinary scan pipeline and stores, in each vector's sidecar::

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
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from auditor.errors import AuditorError
from auditor.score import BASELINES, calibrated_columns
from auditor.vectors.persona import load_vector, save_vector

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
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
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


def calibrate(
    lm: Any,
    folder: str | os.PathLike,
    traits: Sequence[str],
    reference: str | None = None,
    split: str | None = DEFAULT_SPLIT,
    baselines: Sequence[str] = BASELINES,
    db: str | None = None,
    max_new_tokens: int = 256,
    max_prompt_tokens: int | None = 512,
    batch_tokens: int = 0,
    generation_batch_size: int = 0,
    layers_path: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Scan the reference set with every vector of ``traits`` in ``folder`` and store each one's calibration.

    The scan settings (``max_new_tokens``, ``max_prompt_tokens``) are scan's defaults:
    a threshold only means something for scores computed the same way.
    """
    import pyarrow.parquet as pq

    from auditor.pipeline import ScanConfig, resolve_generation_dtype, scan_run

    say = progress or (lambda _msg: None)
    ref = find_reference(reference)
    db = db or default_cache_db()
    os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
    work = tempfile.mkdtemp(prefix="calibrate-")
    try:
        source, n = split_rows(ref, split, work)
        columns: dict[str, dict[str, list[float]]] = {}
        for baseline in baselines:
            say(f"calibrating on {n} reference conversations ({ref.name}, split {split or 'all'}), baseline {baseline}")
            config = ScanConfig(
                source=source,
                traits=list(traits),
                vectors=str(folder),
                baseline=baseline,
                report=False,
                top_n=0,
                db=db,
                out_dir=os.path.join(work, baseline),
                dtype=lm.dtype,
                device=lm.device,
                max_new_tokens=max_new_tokens,
                max_prompt_tokens=max_prompt_tokens,
                batch_tokens=batch_tokens,
                generation_batch_size=generation_batch_size,
                layers_path=layers_path,
                on_error="skip",
            )
            result = scan_run(config, lm=lm)
            table = pq.read_table(result.parquet_path).to_pydict()
            columns[baseline] = table
        with open(ref, "rb") as fh:
            ref_hash = hashlib.sha256(fh.read()).hexdigest()
        try:
            shown = str(ref.resolve().relative_to(Path(__file__).resolve().parents[2]))
        except ValueError:
            shown = str(ref)
        out = {}
        for trait in traits:
            path = Path(folder) / f"{trait}.safetensors"
            pv = load_vector(path)
            scores: dict[str, dict[str, Any]] = {}
            n_scored = 0
            for baseline, table in columns.items():
                proj = table[f"{trait}_proj_response"]
                n_scored = len(proj)
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
                "generation_dtype": resolve_generation_dtype("auto", lm),
                "max_new_tokens": max_new_tokens,
                "max_prompt_tokens": max_prompt_tokens,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "scores": scores,
            }
            save_vector(pv, folder)
            out[trait] = pv.meta["calibration"]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
