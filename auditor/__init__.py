"""persona-audit: audit fine-tuning datasets with persona vectors (Chen et al. 2025).

``auditor.scan(source, traits=..., model=...)`` returns a polars DataFrame of scores;
the ``audit`` command is a thin layer over the same functions.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["scan", "__version__"]


def scan(source: str, traits: list[str] | None = None, model: str | None = None, **settings: Any):
    """Scan a dataset; see :func:`auditor.pipeline.scan`."""
    from auditor.pipeline import scan as _scan

    return _scan(source, traits=traits, model=model, **settings)
