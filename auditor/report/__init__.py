"""The HTML report of a run: one self-contained file rebuilt from the DuckDB store alone.

``render_report`` never loads the model or torch: everything it shows (scores, base
responses, heat-map tokens, calibration means, thresholds) was stored by the scan. The
page holds aggregates and the top ``top_n`` samples per trait; the full results stay in
Parquet and DuckDB. The same run always renders to the same bytes.
"""

from __future__ import annotations

import os

from auditor.config import default_of
from auditor.errors import StoreError


def build_report_html(run_id: str, db: str, top_n: int = default_of("top_n")) -> str:
    """The report of ``run_id`` (an id, a unique prefix, or ``latest``) as HTML text."""
    from auditor.report.data import load_report_data
    from auditor.report.page import render_page
    from auditor.store.db import connect
    from auditor.store.queries import resolve_run

    if top_n < 0:
        raise StoreError(f"--top-n must be 0 or more (got {top_n})")
    with connect(db, read_only=True) as con:
        run = resolve_run(con, run_id, db)
        data = load_report_data(con, run, top_n)
    return render_page(data)


def render_report(run_id: str, db: str, out: str, top_n: int = default_of("top_n")) -> str:
    """Write the report of ``run_id`` to ``out`` (folders created) and return the path written."""
    page = build_report_html(run_id, db, top_n)
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(page)
        os.replace(tmp, out)  # a reader never sees half a report
    except OSError as e:
        raise StoreError(f"{out}: cannot write the report ({e.strerror or e}); pass --out to a writable path") from None
    return out


__all__ = ["build_report_html", "render_report"]
