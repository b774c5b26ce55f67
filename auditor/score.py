"""What a run's score means: which baseline, and which number flags a sample.

A run stores, per sample and trait, the response projection, the base projection and
their difference (``delta``). Exactly one of these is *the* score: the one that is
compared with the threshold, ranks the top samples, names the report's columns, is kept
by merge and filter, and is read from a vector's calibration. :class:`ScoreMeaning` is
that choice, worked out once (from ``--baseline`` and ``--flag-on`` at scan time, or from
what the run stored) and asked everywhere else. A new kind of score (e.g. a margin
between two responses) is one more entry in ``KINDS`` and one more branch in ``value``.

No heavy imports: the store, the report and the CLI use this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BASELINES = ("generate", "prompt-last", "none")
FLAG_ON = ("delta", "projection")

# kind -> the store column that holds it
KINDS: dict[str, str] = {"delta": "delta", "projection": "proj_response", "margin": "margin"}
COLUMNS = tuple(KINDS.values())


@dataclass(frozen=True)
class ScoreMeaning:
    """The score flags and rankings use: ``kind`` (delta | projection | margin) over ``baseline``.

    ``margin`` is a preference pair's score, proj(chosen) - proj(rejected); its calibration is
    the clean generate-baseline delta centred on its median (:meth:`calibration_entry`).
    """

    baseline: str
    kind: str = "delta"

    @classmethod
    def of(cls, baseline: str | None, flag_on: str = "delta", pairs: bool = False) -> ScoreMeaning:
        """The meaning a scan gives its score: pairs flag on their margin; baseline none has no delta, so it flags on the projection."""
        baseline = baseline or "generate"
        if pairs:
            return cls(baseline, "margin")
        return cls(baseline, "projection" if baseline == "none" or flag_on == "projection" else "delta")

    @classmethod
    def from_column(cls, baseline: str | None, column: str | None) -> ScoreMeaning:
        """The meaning a stored run recorded (its column name); older runs without one follow the baseline."""
        for kind, col in KINDS.items():
            if col == column:
                return cls(baseline or "generate", kind)
        return cls.of(baseline)

    @property
    def column(self) -> str:
        """The column of the ``scores`` table (and the ``<trait>_`` suffix in scores.parquet)."""
        return KINDS[self.kind]

    @property
    def is_delta(self) -> bool:
        return self.kind == "delta"

    @property
    def label(self) -> str:
        """How the report and the CLI name the score."""
        if self.kind == "projection":
            return "proj response"
        if self.kind == "margin":
            return "margin"
        return "delta (prompt-last)" if self.baseline == "prompt-last" else "delta"

    @property
    def base_label(self) -> str | None:
        """How the report names the base projection, or None when the score does not use one."""
        if self.kind == "margin":
            return "proj rejected"
        if self.kind != "delta":
            return None
        return "proj last prompt token" if self.baseline == "prompt-last" else "proj base"

    @property
    def reference(self) -> str | None:
        """What a delta is measured from, in words (the report's explanation), or None for other scores."""
        if self.kind != "delta":
            return None
        if self.baseline == "prompt-last":
            return "the base model's state as it starts to answer the same prompt (its last prompt token; with a learned reference, what a neutral answer from that state is expected to project to)"
        return "the base model's own answer to the same prompt"

    @property
    def mean_label(self) -> str:
        """The CLI's heading for the dataset-level mean of the score."""
        return "dataset \u0394" if self.is_delta else "mean margin" if self.kind == "margin" else "mean proj"

    @property
    def measure(self) -> str:
        """One word for gate messages: delta or projection."""
        return self.kind

    def value(self, row: Mapping[str, Any], prefix: str = "") -> float | None:
        """The score in a row holding ``delta``/``proj_response`` (or ``<prefix>delta`` ...)."""
        return row.get(prefix + self.column)

    def pick(self, delta: Any, proj_response: Any, margin: Any = None) -> Any:
        """The score out of the (delta, projection, margin) values, e.g. their aggregates."""
        return {"delta": delta, "projection": proj_response, "margin": margin}[self.kind]

    def order_by(self, alias: str = "") -> str:
        """SQL ranking, best first: the score descending, samples without one last, then by id."""
        prefix = f"{alias}." if alias else ""
        return f"{prefix}{self.column} DESC NULLS LAST, {prefix}sample_id"

    def calibration_entry(self, calibration: Mapping[str, Any] | None, layer: int) -> dict[str, Any] | None:
        """The clean reference distribution of this score in a vector's calibration (None: none for this layer)."""
        cal = calibration or {}
        if cal.get("layer") != layer:
            return None
        if self.kind == "margin":
            return centred_delta(cal.get("scores", {}).get("generate", {}).get("delta"))
        return cal.get("scores", {}).get(self.baseline, {}).get(self.column)

    def threshold(self, calibration: Mapping[str, Any] | None, layer: int, percentile: float) -> float | None:
        """The calibrated flag threshold: the clean reference set's ``percentile`` of this score."""
        entry = self.calibration_entry(calibration, layer)
        if not entry:
            return None
        quantiles = entry["percentiles"]  # 0..100 in steps of 0.5 -> 201 values
        pos = percentile * 2
        lo = int(pos)
        hi = min(lo + 1, len(quantiles) - 1)
        frac = pos - lo
        return float(quantiles[lo] * (1 - frac) + quantiles[hi] * frac)

    def flags(self, value: float | None, threshold: float | None) -> bool:
        """Whether a sample with this score is flagged (no score or no threshold: never)."""
        return bool(threshold is not None and value is not None and value > threshold)


def centred_delta(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A margin's clean reference: the clean delta (generate baseline) minus its median.

    A clean pair's margin is the difference between two acceptable answers to one prompt,
    as the calibration's delta is (a clean answer minus the model's own). Only the delta's
    shift (the reference answers' style against the model's) does not carry over: the two
    sides of a pair are exchangeable, so their margin centres on zero. docs/formats.md.
    """
    if not entry or not entry.get("percentiles"):
        return None
    quantiles = entry["percentiles"]
    median = quantiles[len(quantiles) // 2]  # 201 values, 0..100 by 0.5: index 100 is p50
    return {"mean": 0.0, "percentiles": [q - median for q in quantiles]}


def calibrated_columns(baseline: str) -> tuple[str, ...]:
    """The score columns a calibration records for ``baseline`` (no delta without a base)."""
    return ("proj_response",) if baseline == "none" else ("proj_response", "delta")


# The SQL expression of a stored run's flag column for one trait, for views that join
# ``runs r`` and ``scores s``: the run's per-trait recorded column, else the baseline rule.
SQL_RUN_SCORE_COLUMN = (
    "coalesce(json_extract_string(r.vectors, '$.\"' || s.trait || '\".score'), CASE WHEN r.baseline = 'none' THEN 'proj_response' ELSE 'delta' END)"
)
