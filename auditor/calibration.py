"""Calibration runs: scan the clean reference set once per baseline, store the distributions.

The scans are ordinary scans (:func:`auditor.pipeline.scan_run`), so a threshold means
exactly what a scan's score means; :mod:`auditor.vectors.calibrate` turns their score
columns into each vector's sidecar. This module sits beside the pipeline (it runs it),
so that ``vectors/`` never imports the pipeline that imports ``vectors/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from auditor.config import default_of
from auditor.score import BASELINES
from auditor.vectors.calibrate import DEFAULT_SPLIT, default_cache_db, find_reference, split_rows, store_calibration


def calibrate(
    lm: Any,
    folder: str | os.PathLike,
    traits: Sequence[str],
    reference: str | None = None,
    split: str | None = DEFAULT_SPLIT,
    baselines: Sequence[str] = BASELINES,
    db: str | None = None,
    max_new_tokens: int = default_of("max_new_tokens"),
    max_prompt_tokens: int | None = default_of("max_prompt_tokens"),
    batch_tokens: int = 0,
    generation_batch_size: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Scan the reference set with every vector of ``traits`` in ``folder`` and store each one's calibration.

    The scan settings (``max_new_tokens``, ``max_prompt_tokens``) are scan's defaults:
    a threshold only means something for scores computed the same way.
    """
    import pyarrow.parquet as pq

    from auditor.generation import resolve_generation_dtype
    from auditor.pipeline import ScanConfig, scan_run

    say = progress or (lambda _msg: None)
    ref = find_reference(reference)
    db = db or default_cache_db()
    os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
    work = tempfile.mkdtemp(prefix="calibrate-")
    try:
        source, n = split_rows(ref, split, work)
        columns: dict[str, dict[str, list]] = {}
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
                layers_path=lm.layers_path,
                on_error="skip",
            )
            columns[baseline] = pq.read_table(scan_run(config, lm=lm).parquet_path).to_pydict()
        settings = {"generation_dtype": resolve_generation_dtype("auto", lm), "max_new_tokens": max_new_tokens, "max_prompt_tokens": max_prompt_tokens}
        return store_calibration(lm, folder, traits, ref, split, columns, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
