"""The ``shifts`` table: one row per (base, tuned, trait) measured by ``audit shift``.

Kept in its own module (and its own ``CREATE TABLE IF NOT EXISTS``) so it adds to any
database made by ``audit scan`` without touching the scan schema.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

SHIFTS_TABLE = """
CREATE TABLE IF NOT EXISTS shifts (
    measured_at TIMESTAMP NOT NULL,
    base VARCHAR NOT NULL,
    base_fingerprint VARCHAR,
    tuned VARCHAR NOT NULL,
    tuned_fingerprint VARCHAR,
    trait VARCHAR NOT NULL,
    layer INTEGER,
    n_questions INTEGER,
    prompt_last_base DOUBLE,
    prompt_last_tuned DOUBLE,
    shift DOUBLE,                 -- finetuning shift: tuned - base, last prompt token
    expression_base DOUBLE,
    expression_tuned DOUBLE,
    expression_shift DOUBLE,
    margin_base DOUBLE,
    margin_tuned DOUBLE,
    behaviour_shift DOUBLE,       -- vector-free: change of the written answers' log-likelihood margin
    settings JSON,
    PRIMARY KEY (base_fingerprint, tuned_fingerprint, trait)
);
"""

_COLUMNS = (
    "layer",
    "n_questions",
    "prompt_last_base",
    "prompt_last_tuned",
    "shift",
    "expression_base",
    "expression_tuned",
    "expression_shift",
    "margin_base",
    "margin_tuned",
    "behaviour_shift",
)


def save_shifts(db: str, report: Any) -> int:
    """Store (or replace) one row per trait of a :class:`auditor.shift.ShiftReport`; returns the row count."""
    from auditor.store.db import connect

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    columns = ("measured_at", "base", "base_fingerprint", "tuned", "tuned_fingerprint", "trait", *_COLUMNS, "settings")
    rows = [
        (
            now,
            report.base,
            report.base_fingerprint,
            report.tuned,
            report.tuned_fingerprint,
            ts.trait,
            *(getattr(ts, c) for c in _COLUMNS),
            json.dumps(report.settings),
        )
        for ts in report.traits
    ]
    with connect(db) as con:
        con.execute(SHIFTS_TABLE)
        con.executemany(f"INSERT OR REPLACE INTO shifts ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
    return len(rows)


def read_shifts(db: str, tuned_fingerprint: str | None = None) -> list[dict[str, Any]]:
    """Stored rows (newest first), optionally of one tuned model."""
    from auditor.store.db import connect

    with connect(db, read_only=True) as con:
        if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'shifts'").fetchone()[0]:
            return []
        where, args = ("WHERE tuned_fingerprint = ?", [tuned_fingerprint]) if tuned_fingerprint else ("", [])
        cur = con.execute(f"SELECT * FROM shifts {where} ORDER BY measured_at DESC, trait", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
